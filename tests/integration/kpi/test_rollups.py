"""Whole days, whole hours and minute edges add up to the minute-exact figure (real PostgreSQL):
the daily rollup the worker maintains and the query path the service uses."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections import Counter

import pytest

from services.kpi import domain as q
from services.kpi.servicer import site_totals, tenancy_counts
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


def _site_rows(site: str, hours: list[int], rng: random.Random) -> list[d.SiteHour]:
    out = []
    for h in hours:
        grid = "".join(rng.choice("110?") for _ in range(60))
        dg = "".join(rng.choice("0001") for _ in range(60))
        out.append(d.SiteHour(site, h, grid, "".join(rng.choice("11?0") for _ in range(60)), dg, "G" * 60,
                              dg_starts=rng.randint(0, 2), dg_fail_to_start=rng.randint(0, 1),
                              fuel_consumed_l=rng.random() * 3, fuel_expected_l=rng.random() * 3,
                              fuel_drop_dg_off_l=rng.random(), refuel_l=rng.choice((0.0, 50.0)), refuels=rng.randint(0, 1),
                              energy_grid_kwh=rng.random() * 2, energy_dg_kwh=rng.random(),
                              energy_battery_kwh=rng.random() * 0.5))
    return out


def _expected_totals(rows: list[d.SiteHour], lo: int, hi: int) -> q.SiteTotals:
    t = q.SiteTotals()
    for r in rows:
        t.add_maps(q.slice_map(r.hour, r.grid_map, lo, hi), q.slice_map(r.hour, r.power_map, lo, hi),
                   q.slice_map(r.hour, r.dg_map, lo, hi))
        if lo <= r.hour < hi:
            t.add_numbers(dataclasses.asdict(r))
    return t


async def test_site_totals_over_the_daily_rollup_match_the_hours(pool):
    """kpi.site_day is kept by the worker's refresh_days (also when an hour is rewritten), and the
    service's site_totals over whole days, whole hours and minute edges equals the hour rows."""
    site = f"KS-{uuid.uuid4().hex[:6].upper()}"
    rng = random.Random(11)
    day0 = (29_100_000 // 1440) * 1440
    hours = list(range(day0 - 1440, day0 + 2 * 1440, 60))
    rows = _site_rows(site, hours, rng)
    async with pool.acquire() as conn, conn.transaction():
        await wstore.save_hours(conn, site_rows=rows, tenancy_rows=[], site_id=site, hours=hours)
        await wstore.refresh_days(conn, site_id=site, hours=hours)
    # one hour recomputed later (late data): its day's rollup follows, through the batched path
    late = _site_rows(site, [day0 + 300], random.Random(99))[0]
    rows = [late if r.hour == late.hour else r for r in rows]
    async with pool.acquire() as conn, conn.transaction():
        await wstore.replace_hours(conn, site_rows=[late], tenancy_rows=[], tenants={})
        await wstore.refresh_days_many(conn, hours={site: [late.hour]})
    async with pool.acquire() as conn:
        days = await conn.fetch("SELECT day, hours, energy_grid_kwh FROM kpi.site_day WHERE site_id = $1 ORDER BY day",
                                site)
    assert [r["hours"] for r in days] == [24, 24, 24]
    want_day0 = sum(r.energy_grid_kwh for r in rows if day0 <= r.hour < day0 + 1440)
    assert days[1]["energy_grid_kwh"] == pytest.approx(want_day0)
    for lo, hi in [(day0 - 1440 + 7, day0 + 1440 + 60 * 5 + 13), (day0 + 17, day0 + 59), (day0 - 1440, day0 + 2 * 1440),
                   (day0 - 30, day0 + 30), (day0 - 1440 + 60, day0 + 1440), (day0, day0 + 1440)]:
        async with pool.acquire() as conn:
            got = (await site_totals(conn, lo=lo, hi=hi, site_ids=[site]))[site]
        want = _expected_totals(rows, lo, hi)
        for f in dataclasses.fields(q.SiteTotals):
            assert getattr(got, f.name) == pytest.approx(getattr(want, f.name)), (f.name, lo - day0, hi - day0)
