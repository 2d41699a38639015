"""Telemetry decisions, free of I/O: the metric catalogue, per-sample screening and the split of a
batch into one message per partition (the partition function itself: mesh.subjects).

Everything here works on plain Python values so it can be unit-tested exhaustively; the servicer
reads the protobuf fields and hands them over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.config import TelemetrySettings

# How far ahead of the server clock a sample may be stamped (clock skew of field units).
MAX_FUTURE_S = 300.0
DEFAULT_RETENTION_DAYS = TelemetrySettings.retention_days  # TOWERCO_TELEMETRY_RETENTION_DAYS
# Largest samples per batch (also declared in the .proto as max_items).
MAX_SAMPLES_PER_BATCH = 10_000
# Samples in the TelemetryBatch messages we publish: large batches are cut so a message stays
# well under the NATS default max payload (1 MiB).
MAX_SAMPLES_PER_MESSAGE = 10_000


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    low: float
    high: float
    boolean: bool = False
    per_tenant: bool = False
    description: str = ""


CATALOGUE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("mains_present", "bool", 0, 1, boolean=True,
               description="Grid mains voltage present at the site's AC input (1) or not (0)."),
        Metric("dg_running", "bool", 0, 1, boolean=True,
               description="Diesel generator running (1) or stopped (0)."),
        Metric("fuel_level_l", "L", 0, 50_000,
               description="Diesel in the DG tank, litres."),
        Metric("dc_bus_v", "V", 0, 80,
               description="Rectifier DC bus voltage, magnitude of the -48 V system (nominal 53.5 V float)."),
        Metric("load_a", "A", 0, 2_000,
               description="DC load current drawn by the tenants' equipment."),
        Metric("battery_soc_pct", "%", 0, 100,
               description="Battery bank state of charge."),
        Metric("battery_v", "V", 0, 80,
               description="Battery bank terminal voltage (magnitude)."),
        Metric("cabinet_temp_c", "°C", -40, 90,
               description="Temperature inside the equipment cabinet or shelter."),
        Metric("door_open", "bool", 0, 1, boolean=True,
               description="Cabinet or shelter door contact open (1) or closed (0)."),
        Metric("rectifier_fault", "bool", 0, 1, boolean=True,
               description="Rectifier module alarm active (1) or clear (0)."),
        Metric("tenant_link_up", "bool", 0, 1, boolean=True, per_tenant=True,
               description="A tenant's transmission link up (1) or down (0); one series per tenancy."),
    )
}


# Rejection reasons (machine readable), documented in docs/telemetry.md.
UNKNOWN_SITE = "UNKNOWN_SITE"
UNKNOWN_METRIC = "UNKNOWN_METRIC"
MISSING_TIME = "MISSING_TIME"
IN_FUTURE = "IN_FUTURE"
TOO_OLD = "TOO_OLD"
NOT_FINITE = "NOT_FINITE"
OUT_OF_RANGE = "OUT_OF_RANGE"
NOT_BOOLEAN = "NOT_BOOLEAN"
TENANT_REQUIRED = "TENANT_REQUIRED"
TENANT_NOT_ALLOWED = "TENANT_NOT_ALLOWED"
TENANT_TOO_LONG = "TENANT_TOO_LONG"
MAX_TENANT_LEN = 32


@dataclass(frozen=True)
class Refusal:
    index: int
    field: str
    reason: str
    message: str


# Pre-computed (low, high, boolean, per_tenant) per metric name, for the hot loop.
_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    m.name: (m.low, m.high, m.boolean, m.per_tenant) for m in CATALOGUE.values()
}


def check_sample(
    site_id: str, metric: str, tenant_id: str, ts: float, value: float, *,
    known_site: bool, now: float, oldest: float,
) -> tuple[str, str, str] | None:
    """Why one sample must be refused, as (field, reason, message), or None when it is fine.

    ts, now and oldest are Unix seconds; oldest is now minus the retention.
    """
    if not known_site:
        return ("site_id", UNKNOWN_SITE, f"site {site_id!r} is not in the register")
    bounds = _BOUNDS.get(metric)
    if bounds is None:
        return ("metric", UNKNOWN_METRIC, f"metric {metric!r} is not in the catalogue")
    low, high, boolean, per_tenant = bounds
    if ts == 0.0:
        return ("time", MISSING_TIME, "the sample has no time")
    if ts > now + MAX_FUTURE_S:
        return ("time", IN_FUTURE, f"time is {ts - now:.0f} s ahead of the server clock (at most {MAX_FUTURE_S:.0f} s)")
    if ts < oldest:
        return ("time", TOO_OLD, "time is older than the retention period")
    if not math.isfinite(value):
        return ("value", NOT_FINITE, "value must be a finite number")
    if boolean:
        if value != 0.0 and value != 1.0:
            return ("value", NOT_BOOLEAN, f"{metric} is a boolean metric: value must be 0 or 1")
    elif value < low or value > high:
        return ("value", OUT_OF_RANGE, f"{metric} must be between {low:g} and {high:g}, got {value:g}")
    if per_tenant:
        if not tenant_id:
            return ("tenant_id", TENANT_REQUIRED, f"{metric} is per tenancy: tenant_id is required")
        if len(tenant_id) > MAX_TENANT_LEN:
            return ("tenant_id", TENANT_TOO_LONG, f"tenant_id is longer than {MAX_TENANT_LEN} characters")
    elif tenant_id:
        return ("tenant_id", TENANT_NOT_ALLOWED, f"{metric} is per site: tenant_id must be empty")
    return None


@dataclass
class Screened:
    """The outcome of screening one batch."""

    # partition -> indexes (into the batch) of its accepted samples, in batch order
    by_partition: dict[int, list[int]] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    accepted: int = 0


def screen(
    rows: list[tuple[str, str, str, float, float]], *, sites: Mapping[str, int], now: float,
    retention_s: float,
) -> Screened:
    """Screen a batch given as (site_id, metric, tenant_id, ts, value) tuples.

    sites maps every known site id to its partition. Accepted samples are grouped by the
    partition of their site, keeping batch order within a partition (so each site stays in order).
    """
    out = Screened()
    oldest = now - retention_s
    groups = out.by_partition
    refusals = out.refusals
    for i, (site_id, metric, tenant_id, ts, value) in enumerate(rows):
        part = sites.get(site_id)
        why = check_sample(site_id, metric, tenant_id, ts, value, known_site=part is not None,
                           now=now, oldest=oldest)
        if why is not None:
            refusals.append(Refusal(i, *why))
            continue
        group = groups.get(part)  # type: ignore[arg-type]
        if group is None:
            groups[part] = [i]  # type: ignore[index]
        else:
            group.append(i)
    out.accepted = len(rows) - len(refusals)
    return out


def screen_samples(samples: Sequence[Any], *, sites: Mapping[str, int], now: float, retention_s: float) -> Screened:
    """screen() for objects with site_id, metric, tenant_id, time.seconds, time.nanos and value
    attributes (the IngestRequest samples), without building tuples: the ingest hot path.

    A sample passing the inlined test is accepted; any other goes through check_sample() for its
    reason, so both paths give identical outcomes (a property test holds them together)."""
    out = Screened()
    groups = out.by_partition
    refusals = out.refusals
    bounds = _BOUNDS
    oldest = now - retention_s
    newest = now + MAX_FUTURE_S
    i = -1
    for s in samples:
        i += 1
        site_id = s.site_id
        part = sites.get(site_id)
        metric = s.metric
        b = bounds.get(metric)
        t = s.time
        ts = t.seconds + t.nanos * 1e-9
        value = s.value
        tenant_id = s.tenant_id
        if (part is None or b is None or not oldest <= ts <= newest or not b[0] <= value <= b[1]
                or (b[2] and value != 0.0 and value != 1.0)
                or (b[3] != (tenant_id != "")) or (b[3] and len(tenant_id) > MAX_TENANT_LEN)):
            why = check_sample(site_id, metric, tenant_id, ts, value, known_site=part is not None,
                               now=now, oldest=oldest)
            if why is not None:
                refusals.append(Refusal(i, *why))
                continue
        group = groups.get(part)  # type: ignore[arg-type]
        if group is None:
            groups[part] = [i]  # type: ignore[index]
        else:
            group.append(i)
    out.accepted = i + 1 - len(refusals)
    return out


def message_id(batch_id: str, partition: int, chunk: int = 0) -> str:
    """Nats-Msg-Id of one partition's share of a batch: "<batch_id>:<partition>" (plus ":<chunk>"
    when a very large share is cut in several messages)."""
    return f"{batch_id}:{partition}" if chunk == 0 else f"{batch_id}:{partition}:{chunk}"


def chunks(indexes: list[int], size: int = MAX_SAMPLES_PER_MESSAGE) -> list[list[int]]:
    return [indexes[i:i + size] for i in range(0, len(indexes), size)] or [[]]


def step_ok(step_s: float, range_s: float, limit: int) -> bool:
    """Whether an aggregated query stays within the per-series point limit."""
    return step_s > 0 and range_s / step_s <= limit
