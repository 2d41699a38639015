"""SQL of the aiops_engine worker (schema aiops, migrations in services/aiops/migrations: the
service and its worker are one domain). Times cross this boundary as epoch seconds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson


def dt(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, tz=UTC)


# --------------------------------------------------------------------------- reference data


async def load_reference(conn: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    return {
        "sites": await conn.fetch("SELECT * FROM aiops.site"),
        "tenancies": await conn.fetch("SELECT * FROM aiops.tenancy"),
        "windows": await conn.fetch("SELECT * FROM aiops.calendar_window"),
    }


async def clear_reference(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE aiops.site, aiops.tenancy, aiops.calendar_window")


async def upsert_site(conn: asyncpg.Connection, *, site_id: str, region: str, has_grid: bool, dg_capacity_kva: float,
                      dg_start_delay_s: float, battery_bank_ah: float, fuel_tank_l: float) -> None:
    await conn.execute(
        "INSERT INTO aiops.site (site_id, region, has_grid, dg_capacity_kva, dg_start_delay_s, battery_bank_ah, "
        "fuel_tank_l) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (site_id) DO UPDATE SET region = $2, "
        "has_grid = $3, dg_capacity_kva = $4, dg_start_delay_s = $5, battery_bank_ah = $6, fuel_tank_l = $7, "
        "update_time = now()",
        site_id, region, has_grid, dg_capacity_kva, dg_start_delay_s, battery_bank_ah, fuel_tank_l)


async def delete_site(conn: asyncpg.Connection, *, site_id: str) -> None:
    await conn.execute("DELETE FROM aiops.site WHERE site_id = $1", site_id)


async def upsert_tenancy(conn: asyncpg.Connection, *, tenancy_id: str, site_id: str, tenant_id: str, dc_min_v: float,
                         dc_max_v: float) -> None:
    await conn.execute(
        "INSERT INTO aiops.tenancy (tenancy_id, site_id, tenant_id, dc_min_v, dc_max_v) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (tenancy_id) DO UPDATE SET site_id = $2, tenant_id = $3, dc_min_v = $4, dc_max_v = $5",
        tenancy_id, site_id, tenant_id, dc_min_v, dc_max_v)


async def delete_tenancy(conn: asyncpg.Connection, *, tenancy_id: str) -> None:
    await conn.execute("DELETE FROM aiops.tenancy WHERE tenancy_id = $1", tenancy_id)


async def upsert_window(conn: asyncpg.Connection, *, window_id: str, site_id: str, start: datetime, end: datetime,
                        category: int) -> None:
    await conn.execute(
        "INSERT INTO aiops.calendar_window (window_id, site_id, start_time, end_time, category) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (window_id) DO UPDATE SET site_id = $2, start_time = $3, "
        "end_time = $4, category = $5", window_id, site_id, start, end, category)


async def delete_window(conn: asyncpg.Connection, *, window_id: str) -> None:
    await conn.execute("DELETE FROM aiops.calendar_window WHERE window_id = $1", window_id)


async def adjustments(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT site_id, key, factor, suppressed FROM aiops.adjustment")


# --------------------------------------------------------------------------- the telemetry path


async def claim(conn: asyncpg.Connection, *, keys: Sequence[str]) -> set[str]:
    """Record message ids as consumed; returns the ones that were new (the others are redeliveries)."""
    if not keys:
        return set()
    rows = await conn.fetch(
        "INSERT INTO aiops.consumed (batch_key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING "
        "RETURNING batch_key", list(keys))
    return {r[0] for r in rows}


async def load_states(conn: asyncpg.Connection, *, site_ids: Iterable[str] | None = None) -> dict[str, dict]:
    if site_ids is None:
        rows = await conn.fetch("SELECT site_id, state FROM aiops.site_state")
    else:
        rows = await conn.fetch("SELECT site_id, state FROM aiops.site_state WHERE site_id = ANY($1::text[])",
                                sorted(set(site_ids)))
    return {r["site_id"]: orjson.loads(r["state"]) for r in rows}


async def save_states(conn: asyncpg.Connection, *, states: dict[str, tuple[dict, float | None]]) -> None:
    if not states:
        return
    ids = sorted(states)
    await conn.execute(
        "INSERT INTO aiops.site_state (site_id, state, last_sample) "
        "SELECT s, b, to_timestamp(l) FROM unnest($1::text[], $2::bytea[], $3::float8[]) AS u(s, b, l) "
        "ON CONFLICT (site_id) DO UPDATE SET state = EXCLUDED.state, last_sample = EXCLUDED.last_sample, "
        "update_time = now()",
        ids, [orjson.dumps(states[s][0]) for s in ids], [states[s][1] for s in ids])


async def insert_anomalies(conn: asyncpg.Connection, *, rows: Sequence[dict[str, Any]]) -> list[asyncpg.Record]:
    """Insert opened anomalies; an id already stored (a replay) is left alone. Returns the new rows."""
    out = []
    for r in rows:
        rec = await conn.fetchrow(
            "INSERT INTO aiops.anomaly (id, site_id, region, tenant_ids, key, detector, detector_version, layer, "
            "metrics, tenant_id, score, severity, state, start_time, detect_time, explanation) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15) "
            "ON CONFLICT DO NOTHING RETURNING *",
            r["id"], r["site_id"], r["region"], r["tenant_ids"], r["key"], r["detector"], r["version"], r["layer"],
            r["metrics"], r["tenant_id"], r["score"], r["severity"], dt(r["start"]), dt(r["time"]),
            r["explanation"])
        if rec is not None:
            out.append(rec)
    return out


async def clear_anomalies(conn: asyncpg.Connection, *, items: Sequence[tuple[str, float]]) -> list[asyncpg.Record]:
    """Mark anomalies cleared at the given times; returns the rows that were open."""
    if not items:
        return []
    return await conn.fetch(
        "UPDATE aiops.anomaly a SET state = 2, end_time = to_timestamp(u.t), update_time = now() "
        "FROM unnest($1::uuid[], $2::float8[]) AS u(i, t) WHERE a.id = u.i AND a.state = 1 RETURNING a.*",
        [i for i, _ in items], [t for _, t in items])


async def insert_predictions(conn: asyncpg.Connection, *, rows: Sequence[dict[str, Any]]) -> list[asyncpg.Record]:
    out = []
    for r in rows:
        rec = await conn.fetchrow(
            "INSERT INTO aiops.prediction (id, site_id, region, tenant_ids, kind, detector, predict_time, "
            "expected_time, confidence, inputs) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "ON CONFLICT DO NOTHING RETURNING *",
            r["id"], r["site_id"], r["region"], r["tenant_ids"], r["kind"], r["detector"], dt(r["predict_time"]),
            dt(r["expected_time"]), r["confidence"], r["inputs"])
        if rec is not None:
            out.append(rec)
    return out


async def resolve_predictions(conn: asyncpg.Connection, *, items: Sequence[tuple[str, int, float, float | None]]
                              ) -> None:
    for pid, outcome, t, actual in items:
        await conn.execute(
            "UPDATE aiops.prediction SET outcome = $2, outcome_time = $3, actual_time = $4 "
            "WHERE id = $1 AND outcome = 1", pid, outcome, dt(t), dt(actual))


async def purge_consumed(conn: asyncpg.Connection, *, older_than_s: float) -> None:
    await conn.execute("DELETE FROM aiops.consumed WHERE consumed_at < now() - make_interval(secs => $1)",
                       older_than_s)


# --------------------------------------------------------------------------- models


async def latest_models(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT DISTINCT ON (site_class) site_class, version, algorithm, features, samples, trained_at, blob "
        "FROM aiops.model ORDER BY site_class, version DESC")


async def save_model(conn: asyncpg.Connection, *, site_class: str, algorithm: str, features: Sequence[str],
                     samples: int, blob: bytes) -> int:
    """Store a new version of a class's model (the newest is the active one); returns its version."""
    return await conn.fetchval(
        "INSERT INTO aiops.model (site_class, version, algorithm, features, samples, blob) "
        "SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5 FROM aiops.model WHERE site_class = $1 "
        "RETURNING version", site_class, algorithm, list(features), samples, blob)
