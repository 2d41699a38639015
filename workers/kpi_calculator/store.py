"""SQL of the kpi_calculator worker (schema kpi). Times cross this boundary as minute indexes
(minutes since the Unix epoch); the columns are timestamptz."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from workers.kpi_calculator import domain

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SITE_LOCK_CLASS = 0x6B7069  # "kpi"

# tenancy_hour count columns, by minute code
CODE_COLUMNS = {
    "U": "up", "u": "ignored", "L": "dc_low", "H": "dc_high", "N": "link_down", "?": "unknown",
    "P": "ex_pm", "F": "ex_fm", "T": "ex_tc", "A": "ex_ad", "p": "un_pm", "f": "un_fm", "t": "un_tc",
    "a": "un_ad",
}


def ts(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def minute_index(t: datetime) -> int:
    return int(t.timestamp()) // 60


# --------------------------------------------------------------------------- telemetry folding


async def lock_sites(conn: asyncpg.Connection, *, site_ids: Iterable[str]) -> None:
    """Serialise work on these sites until the transaction ends (telemetry and register paths,
    any replica); taken in one statement, in sorted order, so two transactions never deadlock."""
    ids = sorted(set(site_ids))
    if len(ids) == 1:
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", SITE_LOCK_CLASS, ids[0])
    elif ids:
        # WITH ORDINALITY + ORDER BY: the locks are taken in the order of the sorted array
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(s)) FROM "
            "(SELECT s FROM unnest($2::text[]) WITH ORDINALITY AS u(s, i) ORDER BY i) AS o", SITE_LOCK_CLASS, ids)


async def mark_dirty(conn: asyncpg.Connection, *, hours: Mapping[str, Iterable[int]]) -> int:
    """Mark site-hours for re-evaluation."""
    sites: list[str] = []
    stamps: list[int] = []
    for site_id, hs in sorted(hours.items()):
        for h in sorted(set(hs)):
            sites.append(site_id)
            stamps.append(h * 60)
    if sites:
        await conn.execute(
            "INSERT INTO kpi.dirty_hour (site_id, hour) "
            "SELECT s, to_timestamp(e) FROM unnest($1::text[], $2::int8[]) AS k(s, e) "
            "ON CONFLICT DO NOTHING", sites, stamps)
    return len(sites)


async def dirty_sites(conn: asyncpg.Connection, *, limit: int | None) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT site_id FROM kpi.dirty_hour ORDER BY site_id LIMIT $1", limit)
    return [r["site_id"] for r in rows]


async def take_dirty(conn: asyncpg.Connection, *, site_id: str) -> list[int]:
    """Remove and return the site's marked hours (call holding the site lock)."""
    rows = await conn.fetch("DELETE FROM kpi.dirty_hour WHERE site_id = $1 RETURNING hour", site_id)
    return sorted(minute_index(r["hour"]) for r in rows)


async def take_dirty_many(conn: asyncpg.Connection, *, site_ids: Sequence[str]) -> dict[str, list[int]]:
    """`take_dirty` for several sites (call holding their locks): site -> sorted hours."""
    rows = await conn.fetch("DELETE FROM kpi.dirty_hour WHERE site_id = ANY($1::text[]) "
                            "RETURNING site_id, (extract(epoch FROM hour) / 60)::int8", list(site_ids))
    out: dict[str, list[int]] = {}
    for site_id, hour in rows:
        out.setdefault(site_id, []).append(hour)
    for hours in out.values():
        hours.sort()
    return out


async def claim_batches(conn: asyncpg.Connection, *, keys: Sequence[str]) -> set[str]:
    """Record batch keys as consumed; returns the ones that were new (inside the transaction)."""
    rows = await conn.fetch(
        "INSERT INTO kpi.consumed (batch_key) SELECT unnest($1::text[]) "
        "ON CONFLICT DO NOTHING RETURNING batch_key", list(keys))
    return {r["batch_key"] for r in rows}


async def purge_consumed(conn: asyncpg.Connection, *, older_than_s: float) -> int:
    status = await conn.execute(
        "DELETE FROM kpi.consumed WHERE consumed_at < now() - make_interval(secs => $1)", older_than_s)
    return int(status.split()[-1])


async def load_minutes(conn: asyncpg.Connection, *, keys: Iterable[tuple[str, int]]
                       ) -> dict[tuple[str, int], domain.MinuteAggs]:
    return {k: domain.aggs_from_json(v) for k, v in (await load_minutes_raw(conn, keys=keys)).items()}


async def load_minutes_raw(conn: asyncpg.Connection, *, keys: Iterable[tuple[str, int]]
                           ) -> dict[tuple[str, int], domain.RawAggs]:
    """The stored aggregates of these site-minutes (locked until the transaction ends), raw."""
    keys = list(keys)
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT m.site_id, k.e, m.aggs FROM kpi.site_minute m "
        "JOIN unnest($1::text[], $2::int8[]) AS k(site_id, e) "
        "ON m.site_id = k.site_id AND m.minute = to_timestamp(k.e * 60) FOR UPDATE OF m",
        [k[0] for k in keys], [k[1] for k in keys])
    loads = orjson.loads
    return {(r[0], r[1]): loads(r[2]) for r in rows}


async def save_minutes(conn: asyncpg.Connection, *, minutes: Mapping[tuple[str, int], domain.MinuteAggs]
                       ) -> None:
    await save_minutes_raw(conn, minutes={k: domain.aggs_to_json(v) for k, v in minutes.items()})


async def save_minutes_raw(conn: asyncpg.Connection, *, minutes: Mapping[tuple[str, int], domain.RawAggs]
                           ) -> None:
    if not minutes:
        return
    # no sorting: callers hold the sites' advisory locks (taken in order), so no two transactions
    # ever wait on each other's minute rows
    items = list(minutes.items())
    dumps = orjson.dumps
    await conn.execute(
        "INSERT INTO kpi.site_minute (site_id, minute, aggs) "
        "SELECT s, to_timestamp(e * 60), a FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS k(s, e, a) "
        "ON CONFLICT (site_id, minute) DO UPDATE SET aggs = EXCLUDED.aggs",
        [k[0] for k, _ in items], [k[1] for k, _ in items], [dumps(v) for _, v in items])


async def minute_states(conn: asyncpg.Connection, *, site_id: str, lo: int, hi: int
                        ) -> dict[int, domain.MinuteState]:
    rows = await conn.fetch(
        "SELECT (extract(epoch FROM minute) / 60)::int8, aggs FROM kpi.site_minute "
        "WHERE site_id = $1 AND minute >= $2 AND minute < $3", site_id, ts(lo), ts(hi))
    loads = orjson.loads
    state = domain.minute_state_raw
    return {r[0]: state(loads(r[1])) for r in rows}


async def minute_states_many(conn: asyncpg.Connection, *, ranges: Mapping[str, tuple[int, int]]
                             ) -> dict[str, dict[int, domain.MinuteState]]:
    """`minute_states` of several sites at once (site -> [lo, hi) minute indexes)."""
    out: dict[str, dict[int, domain.MinuteState]] = {s: {} for s in ranges}
    if not ranges:
        return out
    items = sorted(ranges.items())
    rows = await conn.fetch(
        "SELECT m.site_id, (extract(epoch FROM m.minute) / 60)::int8, m.aggs "
        "FROM unnest($1::text[], $2::int8[], $3::int8[]) AS k(s, lo, hi) JOIN kpi.site_minute m "
        "ON m.site_id = k.s AND m.minute >= to_timestamp(k.lo * 60) AND m.minute < to_timestamp(k.hi * 60)",
        [k for k, _ in items], [r[0] for _, r in items], [r[1] for _, r in items])
    loads = orjson.loads
    state = domain.minute_state_raw
    for site_id, minute, aggs in rows:
        out[site_id][minute] = state(loads(aggs))
    return out


async def purge_minutes(conn: asyncpg.Connection, *, older_than_s: float) -> int:
    status = await conn.execute(
        "DELETE FROM kpi.site_minute WHERE minute < now() - make_interval(secs => $1)", older_than_s)
    return int(status.split()[-1])


# --------------------------------------------------------------------------- hour rows


async def save_hours(conn: asyncpg.Connection, *, site_rows: Sequence[domain.SiteHour],
                     tenancy_rows: Sequence[domain.TenancyHour], site_id: str, hours: Sequence[int],
                     tenants: Sequence[str] | None = None) -> None:
    """Replace the rows of these site-hours: the site's, and those of `tenants` (the site's current
    tenancies; None: every tenant). Rows of a tenancy that has ended are kept as history. A
    site-hour row's revision increases only when its content changes, so an unchanged recompute
    publishes nothing new."""
    await upsert_site_hours(conn, rows=site_rows)
    # tenancy rows: replace the site's rows of these hours (tenancies may have come or gone)
    await conn.execute("DELETE FROM kpi.tenancy_hour WHERE site_id = $1 AND hour = ANY($2::timestamptz[]) "
                       "AND ($3::text[] IS NULL OR tenant_id = ANY($3::text[]))",
                       site_id, [ts(h) for h in hours], None if tenants is None else list(tenants))
    await insert_tenancy_hours(conn, rows=tenancy_rows)


async def upsert_site_hours(conn: asyncpg.Connection, *, rows: Sequence[domain.SiteHour]) -> None:
    """Write site-hour rows (any sites); a row's revision increases only when its content changes."""
    if not rows:
        return
    cols = _site_columns(rows)
    await conn.execute(
        """
        INSERT INTO kpi.site_hour (site_id, hour, grid_map, power_map, dg_map, source_map,
            power_known, power_ok, grid_known, grid_present, dg_run_minutes, dg_starts,
            dg_fail_to_start, fuel_consumed_l, fuel_expected_l, fuel_drop_dg_off_l, refuel_l,
            refuels, energy_grid_kwh, energy_dg_kwh, energy_battery_kwh, soc_pct, load_a, soc_time)
        SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::int2[], $8::int2[], $9::int2[], $10::int2[], $11::int2[], $12::int[],
            $13::int[], $14::float8[], $15::float8[], $16::float8[], $17::float8[], $18::int[],
            $19::float8[], $20::float8[], $21::float8[], $22::float8[], $23::float8[],
            $24::timestamptz[])
        ON CONFLICT (site_id, hour) DO UPDATE SET
            grid_map = EXCLUDED.grid_map, power_map = EXCLUDED.power_map, dg_map = EXCLUDED.dg_map,
            source_map = EXCLUDED.source_map, power_known = EXCLUDED.power_known,
            power_ok = EXCLUDED.power_ok, grid_known = EXCLUDED.grid_known,
            grid_present = EXCLUDED.grid_present, dg_run_minutes = EXCLUDED.dg_run_minutes,
            dg_starts = EXCLUDED.dg_starts, dg_fail_to_start = EXCLUDED.dg_fail_to_start,
            fuel_consumed_l = EXCLUDED.fuel_consumed_l, fuel_expected_l = EXCLUDED.fuel_expected_l,
            fuel_drop_dg_off_l = EXCLUDED.fuel_drop_dg_off_l, refuel_l = EXCLUDED.refuel_l,
            refuels = EXCLUDED.refuels, energy_grid_kwh = EXCLUDED.energy_grid_kwh,
            energy_dg_kwh = EXCLUDED.energy_dg_kwh, energy_battery_kwh = EXCLUDED.energy_battery_kwh,
            soc_pct = EXCLUDED.soc_pct, load_a = EXCLUDED.load_a, soc_time = EXCLUDED.soc_time,
            revision = kpi.site_hour.revision + 1, computed_at = now()
        WHERE (kpi.site_hour.grid_map, kpi.site_hour.power_map, kpi.site_hour.dg_map,
               kpi.site_hour.source_map, kpi.site_hour.dg_starts, kpi.site_hour.dg_fail_to_start,
               kpi.site_hour.fuel_consumed_l, kpi.site_hour.refuel_l, kpi.site_hour.energy_grid_kwh,
               kpi.site_hour.energy_dg_kwh, kpi.site_hour.energy_battery_kwh, kpi.site_hour.soc_time)
            IS DISTINCT FROM
              (EXCLUDED.grid_map, EXCLUDED.power_map, EXCLUDED.dg_map, EXCLUDED.source_map,
               EXCLUDED.dg_starts, EXCLUDED.dg_fail_to_start, EXCLUDED.fuel_consumed_l,
               EXCLUDED.refuel_l, EXCLUDED.energy_grid_kwh, EXCLUDED.energy_dg_kwh,
               EXCLUDED.energy_battery_kwh, EXCLUDED.soc_time)
        """, *cols)


async def insert_tenancy_hours(conn: asyncpg.Connection, *, rows: Sequence[domain.TenancyHour]) -> None:
    if not rows:
        return
    names = list(CODE_COLUMNS.values())
    counts = [[r.minutes.count(code) for r in rows] for code in CODE_COLUMNS]
    await conn.execute(
        f"INSERT INTO kpi.tenancy_hour (tenant_id, site_id, hour, minutes, {', '.join(names)}) "
        f"SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], "
        + ", ".join(f"${i + 5}::int2[]" for i in range(len(names))) + ")",
        [r.tenant_id for r in rows], [r.site_id for r in rows],
        [ts(r.hour) for r in rows], [r.minutes for r in rows], *counts)


async def replace_hours(conn: asyncpg.Connection, *, site_rows: Sequence[domain.SiteHour],
                        tenancy_rows: Sequence[domain.TenancyHour], tenants: Mapping[str, Sequence[str]]) -> None:
    """`save_hours` for several sites at once: for each site-hour of `site_rows`, the site's row
    and the rows of the site's current tenants (`tenants`: site -> tenant ids) are replaced."""
    await upsert_site_hours(conn, rows=site_rows)
    keys = [(r.site_id, r.hour * 60, t) for r in site_rows for t in tenants.get(r.site_id, ())]
    if keys:
        await conn.execute(
            "DELETE FROM kpi.tenancy_hour h USING unnest($1::text[], $2::int8[], $3::text[]) AS k(s, e, t) "
            "WHERE h.site_id = k.s AND h.hour = to_timestamp(k.e) AND h.tenant_id = k.t",
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    await insert_tenancy_hours(conn, rows=tenancy_rows)


SITE_DAY_SUMS = ("power_known", "power_ok", "grid_known", "grid_present", "dg_run_minutes", "dg_starts",
                 "dg_fail_to_start", "fuel_consumed_l", "fuel_expected_l", "fuel_drop_dg_off_l", "refuel_l",
                 "refuels", "energy_grid_kwh", "energy_dg_kwh", "energy_battery_kwh")
_SITE_DAY_INSERT = f"INSERT INTO kpi.site_day (site_id, day, hours, {', '.join(SITE_DAY_SUMS)}) "


async def refresh_site_days(conn: asyncpg.Connection, *, pairs: Sequence[tuple[str, int]]) -> None:
    """Rewrite the kpi.site_day rows of these (site, day start minute) pairs from kpi.site_hour."""
    if not pairs:
        return
    sites, days = [p[0] for p in pairs], [p[1] * 60 for p in pairs]
    await conn.execute(
        "DELETE FROM kpi.site_day d USING unnest($1::text[], $2::int8[]) AS k(s, e) "
        "WHERE d.site_id = k.s AND d.day = to_timestamp(k.e)", sites, days)
    await conn.execute(
        _SITE_DAY_INSERT + "SELECT h.site_id, to_timestamp(k.e), count(*), "
        + ", ".join(f"sum(h.{c})" for c in SITE_DAY_SUMS)
        + " FROM unnest($1::text[], $2::int8[]) AS k(s, e) JOIN kpi.site_hour h ON h.site_id = k.s "
        "AND h.hour >= to_timestamp(k.e) AND h.hour < to_timestamp(k.e + 86400) GROUP BY h.site_id, k.e",
        sites, days)


async def rebuild_site_days(conn: asyncpg.Connection) -> int:
    """Rebuild every kpi.site_day row from kpi.site_hour (what migration 0005 did once; for a
    repair, and for loaders that write site hours in bulk). Returns the rows written."""
    await conn.execute("DELETE FROM kpi.site_day")
    status = await conn.execute(
        _SITE_DAY_INSERT + "SELECT site_id, date_trunc('day', hour, 'UTC'), count(*), "
        + ", ".join(f"sum({c})" for c in SITE_DAY_SUMS) + " FROM kpi.site_hour GROUP BY 1, 2")
    return int(status.split()[-1])


async def refresh_days(conn: asyncpg.Connection, *, site_id: str, hours: Sequence[int]) -> None:
    """Rewrite the kpi.tenancy_day and kpi.site_day rows of the site's days that contain these hours."""
    days = sorted({h - h % 1440 for h in hours})
    if not days:
        return
    await refresh_site_days(conn, pairs=[(site_id, d) for d in days])
    names = list(CODE_COLUMNS.values())
    await conn.execute("DELETE FROM kpi.tenancy_day WHERE site_id = $1 AND day = ANY($2::timestamptz[])",
                       site_id, [ts(d) for d in days])
    await conn.execute(
        f"INSERT INTO kpi.tenancy_day (tenant_id, site_id, day, {', '.join(names)}) "
        f"SELECT tenant_id, site_id, date_trunc('day', hour, 'UTC') AS d, "
        + ", ".join(f"sum({c})" for c in names)
        + " FROM kpi.tenancy_hour WHERE site_id = $1 AND hour >= $2 AND hour < $3 "
        "AND date_trunc('day', hour, 'UTC') = ANY($4::timestamptz[]) GROUP BY tenant_id, site_id, d",
        site_id, ts(days[0]), ts(days[-1] + 1440), [ts(d) for d in days])


async def refresh_days_many(conn: asyncpg.Connection, *, hours: Mapping[str, Iterable[int]]) -> None:
    """`refresh_days` for several sites at once (site -> hours)."""
    pairs = sorted({(site_id, h - h % 1440) for site_id, hs in hours.items() for h in hs})
    if not pairs:
        return
    await refresh_site_days(conn, pairs=pairs)
    names = list(CODE_COLUMNS.values())
    sites, days = [p[0] for p in pairs], [p[1] * 60 for p in pairs]
    await conn.execute(
        "DELETE FROM kpi.tenancy_day d USING unnest($1::text[], $2::int8[]) AS k(s, e) "
        "WHERE d.site_id = k.s AND d.day = to_timestamp(k.e)", sites, days)
    await conn.execute(
        f"INSERT INTO kpi.tenancy_day (tenant_id, site_id, day, {', '.join(names)}) "
        f"SELECT h.tenant_id, h.site_id, to_timestamp(k.e), " + ", ".join(f"sum(h.{c})" for c in names)
        + " FROM unnest($1::text[], $2::int8[]) AS k(s, e) JOIN kpi.tenancy_hour h ON h.site_id = k.s "
        "AND h.hour >= to_timestamp(k.e) AND h.hour < to_timestamp(k.e + 86400) "
        "GROUP BY h.tenant_id, h.site_id, k.e", sites, days)


def _site_columns(rows: Sequence[domain.SiteHour]) -> list[list[Any]]:
    return [
        [r.site_id for r in rows], [ts(r.hour) for r in rows], [r.grid_map for r in rows],
        [r.power_map for r in rows], [r.dg_map for r in rows], [r.source_map for r in rows],
        [sum(1 for c in r.power_map if c != "?") for r in rows], [r.power_map.count("1") for r in rows],
        [sum(1 for c in r.grid_map if c != "?") for r in rows], [r.grid_map.count("1") for r in rows],
        [r.dg_map.count("1") for r in rows], [r.dg_starts for r in rows], [r.dg_fail_to_start for r in rows],
        [r.fuel_consumed_l for r in rows], [r.fuel_expected_l for r in rows],
        [r.fuel_drop_dg_off_l for r in rows], [r.refuel_l for r in rows], [r.refuels for r in rows],
        [r.energy_grid_kwh for r in rows], [r.energy_dg_kwh for r in rows],
        [r.energy_battery_kwh for r in rows], [r.soc_pct for r in rows], [r.load_a for r in rows],
        [None if r.soc_time is None else datetime.fromtimestamp(r.soc_time, tz=UTC) for r in rows],
    ]


async def site_hours_with_data(conn: asyncpg.Connection, *, site_id: str, since: int) -> list[int]:
    """Hours of the site that have minute data since `since` (minute index)."""
    rows = await conn.fetch(
        "SELECT DISTINCT date_trunc('hour', minute) AS h FROM kpi.site_minute "
        "WHERE site_id = $1 AND minute >= $2 ORDER BY h", site_id, ts(since))
    return [minute_index(r["h"]) for r in rows]


async def unpublished_hours(conn: asyncpg.Connection, *, closed_before: int, site_ids: Sequence[str] | None,
                            limit: int) -> list[asyncpg.Record]:
    """Closed site-hours whose latest revision has not been announced yet, oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM kpi.site_hour WHERE revision > published_revision AND hour < $1 "
        "AND ($2::text[] IS NULL OR site_id = ANY($2::text[])) ORDER BY hour, site_id LIMIT $3 "
        "FOR UPDATE SKIP LOCKED", ts(closed_before), None if site_ids is None else list(site_ids), limit)
    return rows


async def tenancy_rows_many(conn: asyncpg.Connection, *, keys: Sequence[tuple[str, int]]
                            ) -> dict[tuple[str, int], list[asyncpg.Record]]:
    """The tenancy rows of these site-hours ((site, hour minute index) -> rows by tenant), with
    each tenancy's SLA target."""
    rows = await conn.fetch(
        "SELECT h.*, (extract(epoch FROM h.hour) / 60)::int8 AS hour_index, COALESCE(t.sla_target, 0) AS sla_target "
        "FROM unnest($1::text[], $2::int8[]) AS k(s, e) JOIN kpi.tenancy_hour h "
        "ON h.site_id = k.s AND h.hour = to_timestamp(k.e * 60) "
        "LEFT JOIN LATERAL (SELECT sla_target FROM kpi.tenancy WHERE site_id = h.site_id "
        "AND tenant_id = h.tenant_id LIMIT 1) t ON true ORDER BY h.site_id, h.hour, h.tenant_id",
        [k[0] for k in keys], [k[1] for k in keys])
    out: dict[tuple[str, int], list[asyncpg.Record]] = {}
    for r in rows:
        out.setdefault((r["site_id"], r["hour_index"]), []).append(r)
    return out


async def mark_published_many(conn: asyncpg.Connection, *, rows: Sequence[tuple[str, datetime, int]]) -> None:
    """Record (site, hour, revision) as announced."""
    await conn.execute(
        "UPDATE kpi.site_hour h SET published_revision = k.r FROM unnest($1::text[], $2::timestamptz[], $3::int8[]) "
        "AS k(s, t, r) WHERE h.site_id = k.s AND h.hour = k.t",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


# --------------------------------------------------------------------------- reference data


async def upsert_site(conn: asyncpg.Connection, *, site_id: str, region: str, dg_capacity_kva: float,
                      dg_start_delay_s: float, battery_bank_ah: float) -> None:
    await conn.execute(
        "INSERT INTO kpi.site (site_id, region, dg_capacity_kva, dg_start_delay_s, battery_bank_ah) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (site_id) DO UPDATE SET region = EXCLUDED.region, "
        "dg_capacity_kva = EXCLUDED.dg_capacity_kva, dg_start_delay_s = EXCLUDED.dg_start_delay_s, "
        "battery_bank_ah = EXCLUDED.battery_bank_ah, update_time = now()",
        site_id, region, dg_capacity_kva, dg_start_delay_s, battery_bank_ah)


async def delete_site(conn: asyncpg.Connection, *, site_id: str) -> None:
    await conn.execute("DELETE FROM kpi.tenancy WHERE site_id = $1", site_id)
    await conn.execute("DELETE FROM kpi.calendar_window WHERE site_id = $1", site_id)
    await conn.execute("DELETE FROM kpi.site WHERE site_id = $1", site_id)


async def upsert_tenancy(conn: asyncpg.Connection, *, tenancy_id: str, site_id: str, tenant_id: str,
                         sla_target: float, dc_min_v: float, dc_max_v: float) -> None:
    await conn.execute(
        "INSERT INTO kpi.tenancy (tenancy_id, site_id, tenant_id, sla_target, dc_min_v, dc_max_v) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenancy_id) DO UPDATE SET site_id = EXCLUDED.site_id, "
        "tenant_id = EXCLUDED.tenant_id, sla_target = EXCLUDED.sla_target, dc_min_v = EXCLUDED.dc_min_v, "
        "dc_max_v = EXCLUDED.dc_max_v, update_time = now()",
        tenancy_id, site_id, tenant_id, sla_target, dc_min_v, dc_max_v)


async def delete_tenancy(conn: asyncpg.Connection, *, tenancy_id: str) -> None:
    await conn.execute("DELETE FROM kpi.tenancy WHERE tenancy_id = $1", tenancy_id)


async def upsert_window(conn: asyncpg.Connection, *, window_id: str, site_id: str, start: datetime,
                        end: datetime, category: int, tenant_ids: Sequence[str]) -> None:
    await conn.execute(
        "INSERT INTO kpi.calendar_window (window_id, site_id, start_time, end_time, category, tenant_ids) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (window_id) DO UPDATE SET site_id = EXCLUDED.site_id, "
        "start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time, category = EXCLUDED.category, "
        "tenant_ids = EXCLUDED.tenant_ids",
        window_id, site_id, start, end, category, list(tenant_ids))


async def delete_window(conn: asyncpg.Connection, *, window_id: str) -> None:
    await conn.execute("DELETE FROM kpi.calendar_window WHERE window_id = $1", window_id)


async def load_reference(conn: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    return {
        "sites": await conn.fetch("SELECT * FROM kpi.site"),
        "tenancies": await conn.fetch("SELECT * FROM kpi.tenancy ORDER BY site_id, tenant_id"),
        "windows": await conn.fetch("SELECT * FROM kpi.calendar_window"),
        "policies": await conn.fetch("SELECT * FROM kpi.policy"),
    }


async def clear_reference(conn: asyncpg.Connection) -> None:
    """Empty the copy of the register (to replace it wholesale, in the caller's transaction)."""
    await conn.execute("DELETE FROM kpi.tenancy")
    await conn.execute("DELETE FROM kpi.calendar_window")
    await conn.execute("DELETE FROM kpi.site")


async def get_window(conn: asyncpg.Connection, *, window_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM kpi.calendar_window WHERE window_id = $1", window_id)
