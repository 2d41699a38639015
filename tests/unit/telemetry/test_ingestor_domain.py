"""The ingestor's pure decisions: partitions needed, upkeep window, plausibility, settings."""

from __future__ import annotations

from datetime import date

import pytest

from workers.ingestor import domain

DAY = 86_400
T = 1_750_000_000  # 2025-06-15T15:06:40Z


def test_days_needed_only_when_a_day_is_missing():
    d = domain.day_of(T)
    assert d == date(2025, 6, 15)
    assert domain.days_needed(T, T + 2 * DAY, {d, date(2025, 6, 16), date(2025, 6, 17)}) is None
    assert domain.days_needed(T, T + 2 * DAY, {d, date(2025, 6, 17)}) == (d, date(2025, 6, 17))
    assert domain.days_needed(T - DAY, T, set()) == (date(2025, 6, 14), d)


def test_upkeep_window():
    today, last, cutoff = domain.upkeep_window(T, retention_days=30, ahead_days=3)
    assert (today, last, cutoff) == (date(2025, 6, 15), date(2025, 6, 18), date(2025, 5, 16))


def test_plausible_span():
    assert domain.plausible_span(T - 10 * DAY, T, now_s=T, retention_days=30)
    assert not domain.plausible_span(T - 40 * DAY, T, now_s=T, retention_days=30)
    assert not domain.plausible_span(T, T + 2 * DAY, now_s=T, retention_days=30)
    assert not domain.plausible_span(0, T, now_s=T, retention_days=30)


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("TOWERCO_TELEMETRY_RETENTION_DAYS", "7")
    monkeypatch.setenv("TOWERCO_INGESTOR_BATCH", "50")
    monkeypatch.setenv("TOWERCO_INGESTOR_ACK_WAIT_S", "2.5")
    cfg = domain.IngestorConfig.from_env()
    assert (cfg.retention_days, cfg.batch, cfg.ack_wait_s, cfg.concurrency) == (7, 50, 2.5, 2)


@pytest.mark.parametrize(("name", "value"), [("TOWERCO_INGESTOR_BATCH", "many"),
                                             ("TOWERCO_TELEMETRY_RETENTION_DAYS", "0"),
                                             ("TOWERCO_INGESTOR_CONCURRENCY", "99")])
def test_bad_config_is_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="TOWERCO_|out of range"):
        domain.IngestorConfig.from_env()
