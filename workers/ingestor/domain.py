"""Ingestor decisions without I/O: which day partitions a write needs, what to drop, what a
TELEMETRY message may contain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from mesh import config

DAY_S = 86_400
FUTURE_SLACK_S = DAY_S  # the API refuses > 5 min ahead; anything a day ahead is not ours


def day_of(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def days_needed(min_s: float, max_s: float, known: set[date]) -> tuple[date, date] | None:
    """The (first, last) day range to create before writing rows spanning min_s..max_s, or None
    when every day in it is already known to exist."""
    first, last = day_of(min_s), day_of(max_s)
    d = first
    while d <= last:
        if d not in known:
            return first, last
        d += timedelta(days=1)
    return None


def upkeep_window(now_s: float, *, retention_days: int, ahead_days: int) -> tuple[date, date, date]:
    """(today, last day to pre-create, cutoff): partitions today..today+ahead_days are created
    ahead of time; those of days before the cutoff (today minus the retention) are dropped. Older
    days inside the retention are created on demand when a backfill writes to them."""
    today = day_of(now_s)
    return today, today + timedelta(days=ahead_days), today - timedelta(days=retention_days)


def plausible_span(min_s: float, max_s: float, *, now_s: float, retention_days: int) -> bool:
    """Whether sample times fit the window the API accepts (with a day of slack): a message
    outside it did not come through the ingest API and is refused as poison."""
    return min_s >= now_s - (retention_days + 1) * DAY_S and max_s <= now_s + FUTURE_SLACK_S


@dataclass(frozen=True)
class IngestorConfig:
    """The ingestor's tuning: TOWERCO_INGESTOR_* (mesh.config.IngestorSettings) and the telemetry
    retention shared with the telemetry service (TOWERCO_TELEMETRY_RETENTION_DAYS,
    mesh.config.TelemetrySettings); listed in docs/operations.md."""

    retention_days: int = 90
    ahead_days: int = 3
    batch: int = 200
    upkeep_s: float = 3600.0
    ack_wait_s: float = 30.0
    concurrency: int = 2

    @classmethod
    def from_env(cls) -> IngestorConfig:
        """From mesh.config's IngestorSettings and TelemetrySettings (the retention the telemetry
        service also reads)."""
        env = config.load(config.IngestorSettings)
        cfg = cls(
            retention_days=config.load(config.TelemetrySettings).retention_days,
            ahead_days=env.partitions_ahead_days,
            batch=env.batch,
            upkeep_s=env.upkeep_s,
            ack_wait_s=env.ack_wait_s,
            concurrency=env.concurrency,
        )
        if cfg.retention_days < 1 or cfg.ahead_days < 0 or cfg.batch < 1 or cfg.upkeep_s <= 0 \
                or cfg.ack_wait_s < 1 or not 1 <= cfg.concurrency <= 16:
            raise ValueError("ingestor settings out of range (retention >= 1 day, batch >= 1, upkeep > 0)")
        return cfg
