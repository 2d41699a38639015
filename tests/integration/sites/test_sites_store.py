"""store.py against the real PostgreSQL of the session stack: SQL, constraints, tenant scoping,
keyset pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.sites import store


def site_row(site_id: str, **over) -> dict:
    row = {"id": site_id, "name": f"Site {site_id}", "region": "r", "latitude": -1.0, "longitude": 36.0,
           "type": "greenfield", "status": "active", "grid": "three_phase", "dg_capacity_kva": 20.0,
           "fuel_tank_l": 500.0, "battery_bank_ah": 400.0, "battery_voltage_v": 48.0, "solar_kwp": 0.0,
           "rectifier_capacity_kw": 12.0, "dg_start_delay_s": 30.0}
    row.update(over)
    return row


def tenancy_row(site_id: str, tenant_id: str) -> dict:
    return {"site_id": site_id, "tenant_id": tenant_id, "sla_availability_target": 0.999,
            "dc_voltage_min_v": 43.0, "dc_voltage_max_v": 60.0, "monthly_fee_minor": 100_000,
            "currency_code": "KES"}


async def seed(conn, u: str):
    """Three sites in region r-<u>, two tenants, A on S1+S2, B on S2."""
    region = f"r-{u.lower()}"
    ta, tb = f"a{u.lower()}", f"b{u.lower()}"
    for t in (ta, tb):
        await store.create_tenant(conn, row={"id": t, "name": t.upper()})
    s1, s2, s3 = (f"S1-{u}", f"S2-{u}", f"S3-{u}")
    await store.create_site(conn, row=site_row(s1, region=region, name="Kilimani Rooftop"))
    await store.create_site(conn, row=site_row(s2, region=region, latitude=10.0, longitude=179.5))
    await store.create_site(conn, row=site_row(s3, region=region, status="planned", longitude=-179.5))
    await store.create_tenancy(conn, row=tenancy_row(s1, ta))
    await store.create_tenancy(conn, row=tenancy_row(s2, ta))
    await store.create_tenancy(conn, row=tenancy_row(s2, tb))
    return region, ta, tb, s1, s2, s3


async def test_site_crud_and_constraints(conn, uniq):
    sid = f"ST-{uniq}"
    created = await store.create_site(conn, row=site_row(sid))
    assert created["id"] == sid and created["tenant_ids"] == [] and created["create_time"].tzinfo
    with pytest.raises(store.Duplicate):
        await store.create_site(conn, row=site_row(sid))
    with pytest.raises(asyncpg.CheckViolationError):
        await store.create_site(conn, row=site_row(f"BAD-{uniq}", latitude=91.0))
    got = await store.get_site(conn, site_id=sid)
    assert got["name"] == f"Site {sid}" and got["grid"] == "three_phase"
    updated = await store.update_site(conn, site_id=sid, values={"name": "New", "solar_kwp": 3.5})
    assert updated["name"] == "New" and updated["solar_kwp"] == 3.5 and updated["region"] == "r"
    assert updated["update_time"] >= created["update_time"]
    with pytest.raises(ValueError):
        await store.update_site(conn, site_id=sid, values={"id": "X"})
    assert await store.update_site(conn, site_id=f"NOPE-{uniq}", values={"name": "x"}) is None
    assert await store.delete_site(conn, site_id=sid)
    assert not await store.delete_site(conn, site_id=sid)
    assert await store.get_site(conn, site_id=sid) is None


async def test_tenancies_cascade_and_restrict(conn, uniq):
    region, ta, tb, s1, s2, s3 = await seed(conn, uniq)
    assert (await store.get_site(conn, site_id=s2))["tenant_ids"] == sorted([ta, tb])
    with pytest.raises(store.Duplicate):
        await store.create_tenancy(conn, row=tenancy_row(s1, ta))
    with pytest.raises(store.MissingReference) as missing:
        await store.create_tenancy(conn, row=tenancy_row(f"NOPE-{uniq}", ta))
    assert missing.value.entity == "site"
    with pytest.raises(store.MissingReference) as missing:
        await store.create_tenancy(conn, row=tenancy_row(s3, f"nope-{uniq.lower()}"))
    assert missing.value.entity == "tenant"
    with pytest.raises(store.StillReferenced):
        await store.delete_tenant(conn, tenant_id=tb)
    t = (await store.list_tenancies(conn, site_id=s2, tenant_id=tb))[0]
    assert (await store.get_tenancy(conn, tenancy_id=t["id"]))["tenant_id"] == tb
    assert await store.get_tenancy(conn, tenancy_id="not-a-uuid") is None
    assert await store.get_tenancy(conn, tenancy_id=t["id"], tenant=ta) is None  # not A's
    changed = await store.update_tenancy(conn, tenancy_id=t["id"], values={"monthly_fee_minor": 5})
    assert changed["monthly_fee_minor"] == 5
    # deleting the site takes its tenancies and windows with it; then B can be deleted
    await store.create_window(conn, row={"site_id": s2, "start_time": datetime.now(UTC),
                                         "end_time": datetime.now(UTC) + timedelta(hours=1),
                                         "category": "force_majeure", "tenant_ids": [], "description": "",
                                         "created_by": "t"})
    assert await store.delete_site(conn, site_id=s2)
    assert await store.list_tenancies(conn, site_id=s2) == []
    assert await store.list_windows(conn, site_id=s2) == []
    assert await store.delete_tenant(conn, tenant_id=tb)


async def test_list_sites_filters_and_scope(conn, uniq):
    region, ta, tb, s1, s2, s3 = await seed(conn, uniq)

    async def ids(**kw):
        return [r["id"] for r in await store.list_sites(conn, region=region, **kw)]

    assert await ids() == [s1, s2, s3]
    assert await ids(status="planned") == [s3]
    assert await ids(tenant_id=tb) == [s2]
    assert await ids(query="kilimani") == [s1]
    assert await ids(query=s3.lower()) == [s3]
    assert await ids(query="%") == []  # LIKE wildcards are literal
    assert await ids(bbox=(-5.0, 30.0, 5.0, 40.0)) == [s1]
    assert await ids(bbox=(-5.0, 179.0, 15.0, -179.0)) == [s2, s3]  # across the antimeridian
    # tenant scope in SQL
    assert await ids(tenant=ta) == [s1, s2]
    assert await ids(tenant=tb) == [s2]
    assert await ids(tenant="nobody") == []
    assert await store.get_site(conn, site_id=s1, tenant=tb) is None
    assert (await store.get_site(conn, site_id=s2, tenant=tb))["id"] == s2
    # keyset pages
    first = await store.list_sites(conn, region=region, limit=2)
    assert [r["id"] for r in first] == [s1, s2, s3]  # limit + 1 tells "there is more"
    rest = await store.list_sites(conn, region=region, limit=2, after=s2)
    assert [r["id"] for r in rest] == [s3]


async def test_windows_scope_and_overlap(conn, uniq):
    region, ta, tb, s1, s2, s3 = await seed(conn, uniq)
    t0 = datetime(2026, 5, 1, tzinfo=UTC)

    async def win(site, hours, tenants, category="planned_maintenance"):
        return await store.create_window(conn, row={
            "site_id": site, "start_time": t0 + timedelta(hours=hours[0]),
            "end_time": t0 + timedelta(hours=hours[1]), "category": category, "tenant_ids": tenants,
            "description": "d", "created_by": "noc"})

    w_all = await win(s2, (0, 2), [])
    w_b = await win(s2, (1, 3), [tb], "tenant_caused")
    w_a1 = await win(s1, (5, 6), [ta])
    with pytest.raises(asyncpg.CheckViolationError):
        await win(s1, (2, 1), [])

    async def ids(**kw):
        return [r["id"] for r in await store.list_windows(conn, **kw)]

    assert await ids(site_id=s2) == [w_all["id"], w_b["id"]]
    assert await ids(site_id=s2, category="tenant_caused") == [w_b["id"]]
    assert await ids(tenant=ta, start=t0 - timedelta(days=1), end=t0 + timedelta(days=1)) == [
        w_all["id"], w_a1["id"]]
    assert await ids(tenant=tb, start=t0 - timedelta(days=1), end=t0 + timedelta(days=1)) == [
        w_all["id"], w_b["id"]]
    # half-open overlap: [2h, 5h) touches w_b (1-3h) only; w_all ends at 2h exactly
    assert await ids(start=t0 + timedelta(hours=2), end=t0 + timedelta(hours=5)) == [w_b["id"]]
    assert await store.get_window(conn, window_id=w_b["id"], tenant=ta) is None
    assert (await store.get_window(conn, window_id=w_b["id"], tenant=tb))["id"] == w_b["id"]
    assert await store.get_window(conn, window_id="zzz") is None
    page = await store.list_windows(conn, site_id=s2, limit=1)
    assert len(page) == 2
    after = (page[0]["start_time"], page[0]["id"])
    assert [r["id"] for r in await store.list_windows(conn, site_id=s2, limit=1, after=after)] == [w_b["id"]]
    upd = await store.update_window(conn, window_id=w_b["id"], values={"description": "x", "tenant_ids": []})
    assert upd["description"] == "x" and upd["tenant_ids"] == []
    assert await store.delete_window(conn, window_id=w_b["id"])
    assert not await store.delete_window(conn, window_id=w_b["id"])


async def test_tenants_scope_and_pages(conn, uniq):
    region, ta, tb, *_ = await seed(conn, uniq)
    assert [t["id"] for t in await store.list_tenants(conn, tenant=ta)] == [ta]
    assert await store.get_tenant(conn, tenant_id=tb, tenant=ta) is None
    assert (await store.update_tenant(conn, tenant_id=ta, values={"name": "Renamed"}))["name"] == "Renamed"
    page = await store.list_tenants(conn, after=ta, limit=1000)
    assert ta not in [t["id"] for t in page] and tb in [t["id"] for t in page]
    mine = await store.list_tenancies(conn, tenant=tb)
    assert {t["tenant_id"] for t in mine} == {tb}
