"""The kpi_calculator's settings from the environment and when it re-evaluates a site (no I/O)."""

from __future__ import annotations

import pytest

from workers.kpi_calculator.consumer import Calculator, CalculatorConfig
from workers.kpi_calculator.domain import Settling


def test_config_defaults_and_environment(monkeypatch):
    for name in ("TOWERCO_KPI_PARTITIONS", "TOWERCO_KPI_BATCH", "TOWERCO_KPI_RECOMPUTE_MAX_DELAY_S",
                 "TOWERCO_KPI_SETTLE_S"):
        monkeypatch.delenv(name, raising=False)
    cfg = CalculatorConfig.from_env(16)
    assert cfg.partitions == tuple(range(16)) and cfg.replica == "all"
    assert cfg.batch == 100 and cfg.recompute_max_delay_s == 10.0 and cfg.settle_s == 0.5
    monkeypatch.setenv("TOWERCO_KPI_PARTITIONS", "0-3,9")
    monkeypatch.setenv("TOWERCO_KPI_BATCH", "250")
    monkeypatch.setenv("TOWERCO_KPI_RECOMPUTE_MAX_DELAY_S", "2.5")
    monkeypatch.setenv("TOWERCO_KPI_SETTLE_S", "0.25")
    cfg = CalculatorConfig.from_env(16)
    assert cfg.partitions == (0, 1, 2, 3, 9) and cfg.replica == "p0_1_2_3_9"
    assert cfg.batch == 250 and cfg.recompute_max_delay_s == 2.5 and cfg.settle_s == 0.25
    monkeypatch.setenv("TOWERCO_KPI_PARTITIONS", "15-16")
    with pytest.raises(ValueError, match="outside"):
        CalculatorConfig.from_env(16)


def test_a_site_is_due_once_it_goes_quiet():
    s = Settling(settle_s=1.0, max_delay_s=10.0)
    s.touch(["A", "B"], now=100.0)
    s.touch(["A"], now=100.8)
    assert s.due(["A", "B", "C"], now=101.0) == ["B", "C"]  # C: never touched here, due at once
    assert s.due(["A", "B"], now=101.8) == ["A", "B"]
    s.evaluated(["A", "B"], started=101.8)
    assert not s.waiting()


def test_a_site_that_never_goes_quiet_is_due_every_max_delay():
    s = Settling(settle_s=1.0, max_delay_s=10.0)
    due_at = []
    for tick in range(250):  # touched every 0.1 s for 25 s
        t = tick / 10
        s.touch(["A"], now=t)
        if s.due(["A"], now=t):
            due_at.append(t)
            s.evaluated(["A"], started=t)
    assert due_at == [10.0, 20.0]  # after the evaluation it waits from the evaluation's start


def test_touched_during_an_evaluation_waits_again_and_unmarked_sites_are_forgotten():
    s = Settling(settle_s=1.0, max_delay_s=10.0)
    s.touch(["A", "B"], now=0.0)
    started = 5.0
    s.touch(["A"], now=5.5)  # new data while the round runs
    s.evaluated(["A", "B"], started=started)
    assert s.waiting() and s.due(["A"], now=6.0) == [] and s.due(["A"], now=6.5) == ["A"]
    s.forget_all_but(["B"])  # A's marks were taken by another path
    assert not s.waiting() and s.next_due_in(7.0) == 0.0


def test_the_loop_sleeps_until_the_first_site_is_due():
    s = Settling(settle_s=1.0, max_delay_s=10.0)
    s.touch(["A"], now=0.0)
    s.touch(["B"], now=0.5)
    assert s.next_due_in(0.6) == pytest.approx(0.4)  # A settles at 1.0
    for tick in range(1, 100):  # B touched every 0.1 s: due at max delay, 10 s after its first touch
        s.touch(["B"], now=0.5 + tick / 10)
    s.evaluated(["A"], started=1.0)
    assert s.next_due_in(9.0) == pytest.approx(1.5)
    assert s.next_due_in(12.0) == 0.0


def calculator(**kw) -> Calculator:
    return Calculator(None, None, config=CalculatorConfig(partitions=(0,), **kw), partition_count=16)  # type: ignore[arg-type]


def test_the_calculator_schedules_with_its_settings():
    calc = calculator(settle_s=2.5, recompute_max_delay_s=30.0)
    assert (calc._settle.settle_s, calc._settle.max_delay_s) == (2.5, 30.0)
