"""Whole days, whole hours and minute edges add up to the minute-exact figure (real PostgreSQL):
the daily rollup the worker maintains and the query path the service uses."""

from __future__ import annotations

import random
import uuid
from collections import Counter

from services.kpi import domain as q
from services.kpi.servicer import tenancy_counts
from workers.kpi_calculator import domain as d
from workers.kpi_calculator import store as wstore


async def test_counts_over_days_hours_and_minutes_match_the_maps(pool):
    site = f"KR-{uuid.uuid4().hex[:6].upper()}"
    tenant = f"roll-{uuid.uuid4().hex[:6]}"
    rng = random.Random(5)
    day0 = (29_000_000 // 1440) * 1440
    hours = list(range(day0 - 1440, day0 + 2 * 1440, 60))  # three days
    maps = {h: "".join(rng.choice("UUUUUuLHN?PFTApfta") for _ in range(60)) for h in hours}
    rows = [d.TenancyHour(site, tenant, h, m) for h, m in maps.items()]
    site_rows = [d.SiteHour(site, h, "1" * 60, "1" * 60, "0" * 60, "G" * 60) for h in hours]
    async with pool.acquire() as conn, conn.transaction():
        await wstore.save_hours(conn, site_rows=site_rows, tenancy_rows=rows, site_id=site, hours=hours)
        await wstore.refresh_days(conn, site_id=site, hours=hours)
        days = await conn.fetchval("SELECT count(*) FROM kpi.tenancy_day WHERE site_id = $1", site)
    assert days == 3
    for lo, hi in [(day0 - 1440 + 7, day0 + 1440 + 60 * 5 + 13), (day0 + 17, day0 + 59), (day0 - 1440, day0 + 2 * 1440),
                   (day0 - 30, day0 + 30), (day0 - 1440 + 60, day0 + 1440)]:
        async with pool.acquire() as conn:
            got = await tenancy_counts(conn, lo=lo, hi=hi, tenant_id=tenant, site_ids=[site])
        expected = Counter("".join(q.slice_map(h, m, lo, hi) for h, m in maps.items()))
        assert got[(tenant, site)] == expected, (lo - day0, hi - day0)


def test_split_days():
    assert q.split_days(0, 3 * 1440) == (0, 3 * 1440)
    assert q.split_days(60, 2 * 1440 + 60) == (1440, 2 * 1440)
    assert q.split_days(60, 1440 + 60) == (60, 60)
