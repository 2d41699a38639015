"""SQL of the KPI service: reads of the kpi schema the kpi_calculator writes, and the policy table.

Times cross this boundary as minute indexes (minutes since the Unix epoch). Tenant scoping: every
tenancy query takes `tenant_id` (None only for towerco staff asking about every tenant).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

# tenancy_hour count column -> minute code
COLUMN_CODES = {
    "up": "U", "ignored": "u", "dc_low": "L", "dc_high": "H", "link_down": "N", "unknown": "?",
    "ex_pm": "P", "ex_fm": "F", "ex_tc": "T", "ex_ad": "A", "un_pm": "p", "un_fm": "f", "un_tc": "t",
    "un_ad": "a",
}
_SUMS = ", ".join(f"sum({c})::int8 AS {c}" for c in COLUMN_CODES)
SITE_NUMBERS = ("dg_starts", "dg_fail_to_start", "fuel_consumed_l", "fuel_expected_l", "fuel_drop_dg_off_l",
                "refuel_l", "refuels", "energy_grid_kwh", "energy_dg_kwh", "energy_battery_kwh")
SITE_MAP_SUMS = ("power_known", "power_ok", "grid_known", "grid_present", "dg_run_minutes")


def ts(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def minute_index(t: datetime) -> int:
    return int(t.timestamp()) // 60


CODES = tuple(COLUMN_CODES.values())


def counts_row(row: asyncpg.Record) -> tuple[tuple[str, str], list[int]]:
    """((tenant, site), the counts in CODES order) of a `tenancy_sums` / `tenancy_day_sums` row."""
    values = tuple(row)
    return (values[0], values[1]), list(values[2:])  # sum()::int8 of a group: never NULL


# --------------------------------------------------------------------------- reference


async def tenancies(conn: asyncpg.Connection, *, lo: int, hi: int, tenant_id: str | None = None,
                    site_id: str | None = None, region: str | None = None) -> list[asyncpg.Record]:
    """Tenancies (site_id, tenant_id, sla_target, region) filtered, ordered by site then tenant: the
    register's current ones plus any with figures in [lo, hi) (a tenancy ended since keeps its
    history; its SLA target is then unknown, 0)."""
    return await conn.fetch(
        "SELECT u.site_id, u.tenant_id, max(u.sla_target) AS sla_target, COALESCE(max(s.region), '') AS region "
        "FROM (SELECT site_id, tenant_id, sla_target FROM kpi.tenancy "
        "      WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR site_id = $2) "
        "      UNION ALL SELECT DISTINCT site_id, tenant_id, 0 FROM kpi.tenancy_day "
        "      WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR site_id = $2) "
        "      AND day >= $4 AND day < $5) u "
        "LEFT JOIN kpi.site s USING (site_id) WHERE ($3::text IS NULL OR s.region = $3) "
        "GROUP BY u.site_id, u.tenant_id ORDER BY u.site_id, u.tenant_id",
        tenant_id, site_id, region, ts(lo - lo % 1440), ts(hi))


async def register_tenancies(conn: asyncpg.Connection, *, tenant_id: str | None) -> list[asyncpg.Record]:
    """The register's current tenancies (site_id, tenant_id, sla_target, region), ordered by site
    then tenant: `tenancies` without the ones known only from their figures."""
    return await conn.fetch(
        "SELECT t.site_id, t.tenant_id, max(t.sla_target) AS sla_target, COALESCE(max(s.region), '') AS region "
        "FROM kpi.tenancy t LEFT JOIN kpi.site s USING (site_id) WHERE ($1::text IS NULL OR t.tenant_id = $1) "
        "GROUP BY t.site_id, t.tenant_id ORDER BY t.site_id, t.tenant_id", tenant_id)


async def site_regions(conn: asyncpg.Connection, *, site_ids: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch("SELECT site_id, region FROM kpi.site WHERE site_id = ANY($1::text[])", list(site_ids))
    return {r["site_id"]: r["region"] for r in rows}


async def site(conn: asyncpg.Connection, *, site_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM kpi.site WHERE site_id = $1", site_id)


async def site_has_data(conn: asyncpg.Connection, *, site_id: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM kpi.site_hour WHERE site_id = $1)", site_id))


async def regions(conn: asyncpg.Connection) -> dict[str, str]:
    return {r["site_id"]: r["region"] for r in await conn.fetch("SELECT site_id, region FROM kpi.site")}


# --------------------------------------------------------------------------- tenancy hours


async def tenancy_sums(conn: asyncpg.Connection, *, first_hour: int, last_hour: int, tenant_id: str | None,
                       site_ids: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """Code counts per (tenant, site) summed over the whole hours [first_hour, last_hour)."""
    if last_hour <= first_hour:
        return []
    return await conn.fetch(
        f"SELECT tenant_id, site_id, {_SUMS} FROM kpi.tenancy_hour "
        "WHERE ($1::text IS NULL OR tenant_id = $1) AND hour >= $2 AND hour < $3 "
        "AND ($4::text[] IS NULL OR site_id = ANY($4::text[])) GROUP BY tenant_id, site_id",
        tenant_id, ts(first_hour), ts(last_hour), None if site_ids is None else list(site_ids))


async def tenancy_day_sums(conn: asyncpg.Connection, *, first_day: int, last_day: int, tenant_id: str | None,
                           site_ids: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """Code counts per (tenant, site) summed over the whole days [first_day, last_day)."""
    if last_day <= first_day:
        return []
    return await conn.fetch(
        f"SELECT tenant_id, site_id, {_SUMS} FROM kpi.tenancy_day "
        "WHERE ($1::text IS NULL OR tenant_id = $1) AND day >= $2 AND day < $3 "
        "AND ($4::text[] IS NULL OR site_id = ANY($4::text[])) GROUP BY tenant_id, site_id",
        tenant_id, ts(first_day), ts(last_day), None if site_ids is None else list(site_ids))


async def tenancy_maps(conn: asyncpg.Connection, *, hours: Sequence[int], tenant_id: str | None,
                       site_ids: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """Minute maps of the given hours (the partial hours at a range's edges)."""
    if not hours:
        return []
    return await conn.fetch(
        "SELECT tenant_id, site_id, hour, minutes FROM kpi.tenancy_hour "
        "WHERE ($1::text IS NULL OR tenant_id = $1) AND hour = ANY($2::timestamptz[]) "
        "AND ($3::text[] IS NULL OR site_id = ANY($3::text[]))",
        tenant_id, [ts(h) for h in hours], None if site_ids is None else list(site_ids))


async def outage_maps(conn: asyncpg.Connection, *, lo: int, hi: int, tenant_id: str | None,
                      site_ids: Sequence[str]) -> list[asyncpg.Record]:
    """Minute maps of the hours overlapping [lo, hi) that hold outage minutes, oldest first."""
    return await conn.fetch(
        "SELECT tenant_id, site_id, hour, minutes FROM kpi.tenancy_hour "
        "WHERE ($1::text IS NULL OR tenant_id = $1) AND site_id = ANY($2::text[]) "
        "AND hour > $3 AND hour < $4 AND dc_low + dc_high + link_down > 0 ORDER BY site_id, tenant_id, hour",
        tenant_id, list(site_ids), ts(lo - 60), ts(hi))


async def tenancy_hour_rows(conn: asyncpg.Connection, *, site_id: str, tenant_id: str | None, lo: int, hi: int
                            ) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT tenant_id, hour, minutes FROM kpi.tenancy_hour WHERE site_id = $1 "
        "AND ($2::text IS NULL OR tenant_id = $2) AND hour > $3 AND hour < $4 ORDER BY tenant_id, hour",
        site_id, tenant_id, ts(lo - 60), ts(hi))


# --------------------------------------------------------------------------- site hours


async def site_hours(conn: asyncpg.Connection, *, site_id: str, lo: int, hi: int) -> list[asyncpg.Record]:
    """Every site-hour row overlapping [lo, hi), oldest first."""
    return await conn.fetch("SELECT * FROM kpi.site_hour WHERE site_id = $1 AND hour > $2 AND hour < $3 ORDER BY hour",
                            site_id, ts(lo - 60), ts(hi))


_BUCKET = "$2::int8 + ((extract(epoch FROM hour)::int8 / 60 - $2::int8) / $3::int8) * $3::int8"


async def site_hour_buckets(conn: asyncpg.Connection, *, site_id: str, lo: int, hi: int, step: int
                            ) -> dict[int, asyncpg.Record]:
    """The site's hours in [lo, hi) (whole hours: lo and hi on the hour) summed per step of `step`
    minutes from lo: bucket start (minute index) -> the sums of SITE_MAP_SUMS and SITE_NUMBERS."""
    cols = ", ".join(f"sum({c}) AS {c}" for c in (*SITE_MAP_SUMS, *SITE_NUMBERS))
    rows = await conn.fetch(
        f"SELECT {_BUCKET} AS b, {cols} FROM kpi.site_hour WHERE site_id = $1 AND hour >= $4 AND hour < $5 "
        "GROUP BY b", site_id, lo, step, ts(lo), ts(hi))
    return {r["b"]: r for r in rows}


async def tenancy_hour_buckets(conn: asyncpg.Connection, *, site_id: str, tenant_id: str | None, lo: int, hi: int,
                               step: int) -> dict[tuple[str, int], tuple[int, int, int, int, int]]:
    """`site_hour_buckets` of the site's tenancy hours: (tenant, bucket start) -> the minute counts
    domain.availability_value_of_groups takes (stored, unknown, outage, excused, unknown in a window)."""
    every = " + ".join(COLUMN_CODES)
    rows = await conn.fetch(
        f"SELECT tenant_id, {_BUCKET} AS b, sum({every})::int8, sum(unknown)::int8, "
        "sum(dc_low + dc_high + link_down)::int8, sum(ex_pm + ex_fm + ex_tc + ex_ad)::int8, "
        "sum(un_pm + un_fm + un_tc + un_ad)::int8 FROM kpi.tenancy_hour WHERE site_id = $1 "
        "AND ($6::text IS NULL OR tenant_id = $6) AND hour >= $4 AND hour < $5 GROUP BY tenant_id, b",
        site_id, lo, step, ts(lo), ts(hi), tenant_id)
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5], r[6]) for r in rows}


async def site_sums(conn: asyncpg.Connection, *, first_hour: int, last_hour: int,
                    site_ids: Sequence[str] | None) -> list[asyncpg.Record]:
    """Additive site figures per site over the whole hours [first_hour, last_hour)."""
    if last_hour <= first_hour:
        return []
    cols = ", ".join(f"sum({c}) AS {c}" for c in (*SITE_MAP_SUMS, *SITE_NUMBERS))
    return await conn.fetch(
        f"SELECT site_id, {cols} FROM kpi.site_hour WHERE hour >= $1 AND hour < $2 "
        "AND ($3::text[] IS NULL OR site_id = ANY($3::text[])) GROUP BY site_id",
        ts(first_hour), ts(last_hour), None if site_ids is None else list(site_ids))


async def site_day_sums(conn: asyncpg.Connection, *, first_day: int, last_day: int,
                        site_ids: Sequence[str] | None) -> list[asyncpg.Record]:
    """`site_sums` over the whole days [first_day, last_day), from the daily rollup kpi.site_day
    (the kpi_calculator keeps it in step with kpi.site_hour)."""
    if last_day <= first_day:
        return []
    cols = ", ".join(f"sum({c}) AS {c}" for c in (*SITE_MAP_SUMS, *SITE_NUMBERS))
    return await conn.fetch(
        f"SELECT site_id, {cols} FROM kpi.site_day WHERE day >= $1 AND day < $2 "
        "AND ($3::text[] IS NULL OR site_id = ANY($3::text[])) GROUP BY site_id",
        ts(first_day), ts(last_day), None if site_ids is None else list(site_ids))


async def site_edge_rows(conn: asyncpg.Connection, *, hours: Sequence[int], site_ids: Sequence[str] | None
                         ) -> list[asyncpg.Record]:
    if not hours:
        return []
    return await conn.fetch(
        "SELECT * FROM kpi.site_hour WHERE hour = ANY($1::timestamptz[]) "
        "AND ($2::text[] IS NULL OR site_id = ANY($2::text[]))",
        [ts(h) for h in hours], None if site_ids is None else list(site_ids))


# --------------------------------------------------------------------------- policies


async def policies(conn: asyncpg.Connection, *, tenant_ids: Sequence[str] | None = None) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT * FROM kpi.policy WHERE ($1::text[] IS NULL OR tenant_id = ANY($1::text[]))",
        None if tenant_ids is None else list(tenant_ids))
    return {r["tenant_id"]: r for r in rows}


async def upsert_policy(conn: asyncpg.Connection, *, tenant_id: str, unknown_policy: int,
                        min_outage_minutes: int) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO kpi.policy (tenant_id, unknown_policy, min_outage_minutes) VALUES ($1, $2, $3) "
        "ON CONFLICT (tenant_id) DO UPDATE SET unknown_policy = EXCLUDED.unknown_policy, "
        "min_outage_minutes = EXCLUDED.min_outage_minutes, update_time = now() RETURNING *",
        tenant_id, unknown_policy, min_outage_minutes)


async def delete_policy(conn: asyncpg.Connection, *, tenant_id: str) -> bool:
    """Remove a tenant's stored policy; False when it had none."""
    return await conn.fetchval("DELETE FROM kpi.policy WHERE tenant_id = $1 RETURNING true", tenant_id) is True
