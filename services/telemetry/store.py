"""SQL of the telemetry service (reads; the ingestor worker writes telemetry.samples).

Tenant scoping: a caller bound to a tenant sees the per-site series and only its own
per-tenancy series (`tenant` argument); towerco staff pass tenant=None and see every series.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

Row = tuple[str, str, datetime, float]  # metric, tenant_id, time, value

_TENANT_FILTER = "AND ($5::text IS NULL OR tenant_id = '' OR tenant_id = $5)"

AGGREGATES = {
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "last": "(array_agg(value ORDER BY time DESC))[1]",
    "count": "count(*)::double precision",
}


async def query_raw(conn: asyncpg.Connection, *, site_id: str, metrics: list[str] | None,
                    start: datetime, end: datetime, tenant: str | None, limit: int) -> list[Row]:
    """Raw samples in [start, end), at most `limit` per series, ordered by series then time."""
    rows = await conn.fetch(
        f"""SELECT metric, tenant_id, time, value FROM (
                SELECT metric, tenant_id, time, value,
                       row_number() OVER (PARTITION BY metric, tenant_id ORDER BY time) AS rn
                FROM telemetry.samples
                WHERE site_id = $1 AND time >= $2 AND time < $3
                  AND ($4::text[] IS NULL OR metric = ANY($4)) {_TENANT_FILTER}
            ) s WHERE rn <= $6
            ORDER BY metric, tenant_id, time""",
        site_id, start, end, metrics, tenant, limit,
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def query_aggregated(conn: asyncpg.Connection, *, site_id: str, metrics: list[str] | None,
                           start: datetime, end: datetime, tenant: str | None, step: timedelta,
                           aggregation: str) -> list[Row]:
    """One point per series and step (buckets aligned on `start`), ordered by series then time."""
    agg = AGGREGATES[aggregation]
    rows = await conn.fetch(
        f"""SELECT metric, tenant_id, date_bin($6, time, $2) AS bucket, {agg} AS value
            FROM telemetry.samples
            WHERE site_id = $1 AND time >= $2 AND time < $3
              AND ($4::text[] IS NULL OR metric = ANY($4)) {_TENANT_FILTER}
            GROUP BY metric, tenant_id, bucket
            ORDER BY metric, tenant_id, bucket""",
        site_id, start, end, metrics, tenant, step,
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def latest(conn: asyncpg.Connection, *, site_id: str, site_metrics: list[str],
                 tenant_metrics: list[str], tenant: str | None) -> list[Row]:
    """The newest sample of each per-site metric, and of each tenant's series of the per-tenancy
    metrics (tenants seen within a day of that metric's newest sample).

    One index probe per metric (newest first) instead of a scan of the site's history."""
    rows = await conn.fetch(
        """SELECT m.metric, l.tenant_id, l.time, l.value
           FROM unnest($2::text[]) AS m(metric)
           CROSS JOIN LATERAL (
               SELECT tenant_id, time, value FROM telemetry.samples s
               WHERE s.site_id = $1 AND s.metric = m.metric
               ORDER BY s.time DESC LIMIT 1) l
           ORDER BY m.metric""",
        site_id, site_metrics + tenant_metrics,
    )
    out: list[Row] = []
    newest = {}
    for r in rows:
        if r[0] in tenant_metrics:
            newest[r[0]] = r[2]
        else:
            out.append((r[0], r[1], r[2], r[3]))
    for metric, t in newest.items():
        per_tenant = await conn.fetch(
            """SELECT DISTINCT ON (tenant_id) tenant_id, time, value FROM telemetry.samples
               WHERE site_id = $1 AND metric = $2 AND time >= $3
                 AND ($4::text IS NULL OR tenant_id = $4)
               ORDER BY tenant_id, time DESC""",
            site_id, metric, t - timedelta(days=1), tenant,
        )
        out.extend((metric, r[0], r[1], r[2]) for r in per_tenant)
    return out
