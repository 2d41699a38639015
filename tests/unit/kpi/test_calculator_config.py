"""The kpi_calculator's settings from the environment and its catch-up rule (no I/O)."""

from __future__ import annotations

import asyncio
import time

import pytest

from workers.kpi_calculator import consumer
from workers.kpi_calculator.consumer import Calculator, CalculatorConfig


def test_config_defaults_and_environment(monkeypatch):
    for name in ("TOWERCO_KPI_PARTITIONS", "TOWERCO_KPI_BATCH", "TOWERCO_KPI_RECOMPUTE_MAX_DELAY_S"):
        monkeypatch.delenv(name, raising=False)
    cfg = CalculatorConfig.from_env(16)
    assert cfg.partitions == tuple(range(16)) and cfg.replica == "all"
    assert cfg.batch == 100 and cfg.recompute_max_delay_s == 10.0
    monkeypatch.setenv("TOWERCO_KPI_PARTITIONS", "0-3,9")
    monkeypatch.setenv("TOWERCO_KPI_BATCH", "250")
    monkeypatch.setenv("TOWERCO_KPI_RECOMPUTE_MAX_DELAY_S", "2.5")
    cfg = CalculatorConfig.from_env(16)
    assert cfg.partitions == (0, 1, 2, 3, 9) and cfg.replica == "p0_1_2_3_9"
    assert cfg.batch == 250 and cfg.recompute_max_delay_s == 2.5
    monkeypatch.setenv("TOWERCO_KPI_PARTITIONS", "15-16")
    with pytest.raises(ValueError, match="outside"):
        CalculatorConfig.from_env(16)


def calculator(**kw) -> Calculator:
    return Calculator(None, None, config=CalculatorConfig(partitions=(0,), **kw), partition_count=16)  # type: ignore[arg-type]


async def test_reevaluation_does_not_wait_without_a_backlog():
    calc = calculator()
    t = time.monotonic()
    await calc._while_catching_up()
    assert time.monotonic() - t < 0.05


async def test_reevaluation_waits_for_the_consumers_to_catch_up():
    calc = calculator(recompute_max_delay_s=5.0)
    stop_at = time.monotonic() + 0.5

    async def backlog():  # full fetches every 50 ms for half a second
        while time.monotonic() < stop_at:
            calc._full_fetch_at = time.monotonic()
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(backlog())
    await asyncio.sleep(0)
    t = time.monotonic()
    await calc._while_catching_up()
    waited = time.monotonic() - t
    await feeder
    # until the last full fetch plus the quiet time, and not much longer
    assert 0.5 + consumer.CATCH_UP_QUIET_S - 0.1 <= waited < 0.5 + consumer.CATCH_UP_QUIET_S + 1.0


async def test_reevaluation_waits_at_most_the_maximum_delay():
    calc = calculator(recompute_max_delay_s=0.3)
    calc._full_fetch_at = time.monotonic() + 3600  # a backlog that never ends
    t = time.monotonic()
    await calc._while_catching_up()
    assert 0.25 <= time.monotonic() - t < 1.5
