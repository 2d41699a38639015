"""SQL of the bi_engine: it rewrites bi.recommendation (table of the bi schema, created by
services/bi/migrations) in one transaction per run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from workers.bi_engine.domain import Rec

KINDS = (1, 2, 3, 4)


async def replace_recommendations(conn: asyncpg.Connection, *, recs: Sequence[Rec], compute_time: datetime
                                  ) -> dict[int, int]:
    """Replace every recommendation with `recs` (one row per kind and site: the last one wins)."""
    rows = {(r.kind, r.site_id): r for r in recs}
    async with conn.transaction():
        await conn.execute("DELETE FROM bi.recommendation")
        await conn.executemany(
            "INSERT INTO bi.recommendation (kind, site_id, region, title, evidence, saving_minor, currency, "
            "due_date, run, compute_time) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10)",
            [(r.kind, r.site_id, r.region, r.title, json.dumps([list(e) for e in r.evidence]), r.saving_minor,
              r.currency, r.due_date, r.run, compute_time) for r in rows.values()])
    counts = Counter(k for k, _ in rows)
    return {k: counts.get(k, 0) for k in KINDS}


async def exported(conn: asyncpg.Connection, *, month: str) -> set[tuple[str, str, str]]:
    """(report, tenant, format) of the month's scheduled exports already filed."""
    rows = await conn.fetch("SELECT report, tenant_id, format FROM bi.monthly_export WHERE month = $1", month)
    return {(r["report"], r["tenant_id"], r["format"]) for r in rows}


async def record_export(conn: asyncpg.Connection, *, report: str, tenant_id: str, month: str, fmt: str,
                        file_id: str, sha256: str, size_bytes: int) -> bool:
    """Note a filed export; False when it was noted already (the first one stays)."""
    return await conn.fetchval(
        "INSERT INTO bi.monthly_export (report, tenant_id, month, format, file_id, sha256, size_bytes) "
        "VALUES ($1, $2, $3, $4, $5::uuid, $6, $7) ON CONFLICT DO NOTHING RETURNING true",
        report, tenant_id, month, fmt, file_id, sha256, size_bytes) is True


async def list_exports(conn: asyncpg.Connection, *, month: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM bi.monthly_export WHERE month = $1 ORDER BY report, tenant_id, format",
                            month)
