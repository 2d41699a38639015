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
