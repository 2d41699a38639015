"""The kpi_calculator through real NATS JetStream and PostgreSQL: register events and telemetry in,
minute maps, hour rows and towerco.kpi.hour.computed events out; late samples, redelivery."""

from __future__ import annotations

import json
import time
import uuid

from kpi_support import (
    eventually,
    hours_ago,
    minute_samples,
    publish_change,
    publish_samples,
    register_site,
    register_tenancy,
    register_window,
    running_calculator,
)
from nats.aio.msg import Msg
from prometheus_client import REGISTRY
from towerco.events.v1 import events_pb2
from towerco.kpi.v1 import kpi_pb2
from towerco.telemetry.v1 import telemetry_pb2

from mesh import events, subjects
from services.kpi import store as service_store
from workers.kpi_calculator import store


async def tenancy_map(pool, site_id, tenant_id, hour):
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT minutes FROM kpi.tenancy_hour WHERE site_id = $1 AND tenant_id = $2 AND hour = $3",
            site_id, tenant_id, store.ts(hour))


async def site_row(pool, site_id, hour):
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM kpi.site_hour WHERE site_id = $1 AND hour = $2",
                                   site_id, store.ts(hour))


async def test_register_and_telemetry_become_minute_maps_and_hour_events(pool, js):
    site = f"KPI-{uuid.uuid4().hex[:6].upper()}"
    h = hours_ago(3)
    announced: list[kpi_pb2.HourComputed] = []

    async def on_event(msg):
        env = events_pb2.Envelope()
        env.ParseFromString(msg.data)
        payload = events.unpack(env, kpi_pb2.HourComputed)
        if payload.kpis.site_id == site:
            announced.append(payload)

    sub = await js._nc.subscribe("towerco.kpi.hour.computed", cb=on_event)
    async with running_calculator(pool, js, [site]) as calc:
        await register_site(js, site)
        await register_tenancy(js, site, "acme")
        await register_window(js, site, h + 5, h + 30, category=1)
        await eventually(lambda: _count(pool, "calendar_window", site), lambda n: n == 1)

        low = {m: {"dc_bus_v": 41.0} for m in [*range(h + 10, h + 20), *range(h + 40, h + 45)]}
        gap = set(range(h + 50, h + 55))
        minutes = [m for m in range(h, h + 60) if m not in gap]
        await publish_samples(js, minute_samples(site, minutes, overrides=low, tenants=["acme"]))
        expected = "U" * 10 + "P" * 10 + "U" * 20 + "L" * 5 + "U" * 5 + "?" * 5 + "U" * 5
        assert await eventually(lambda: tenancy_map(pool, site, "acme", h), lambda v: v == expected) == expected

        first = await eventually(lambda: _announced(announced), lambda a: len(a) >= 1)
        assert first[0].revision == 1
        [ten] = first[0].kpis.tenancies
        assert ten.tenant_id == "acme"
        assert ten.availability.outage.dc_low == 5
        assert ten.availability.excluded.planned_maintenance == 10
        assert ten.availability.availability == (60 - 5 - 15) / (60 - 15)

        # late samples for the gap, after the hour closed and was announced: recomputed, re-announced
        await publish_samples(js, minute_samples(site, sorted(gap), overrides={m: {"dc_bus_v": 41.0} for m in gap},
                                                 tenants=["acme"]))
        expected_late = "U" * 10 + "P" * 10 + "U" * 20 + "L" * 5 + "U" * 5 + "L" * 5 + "U" * 5
        await eventually(lambda: tenancy_map(pool, site, "acme", h), lambda v: v == expected_late)
        again = await eventually(lambda: _announced(announced), lambda a: any(x.revision == 2 for x in a))
        latest = max(again, key=lambda x: x.revision)
        assert latest.kpis.tenancies[0].availability.outage.dc_low == 10

        # a redelivered batch (same message id) is folded in only once
        row = await site_row(pool, site, h)
        batch = telemetry_pb2.TelemetryBatch(batch_id="dup", partition=subjects.partition_of(site, 16),
                                             samples=minute_samples(site, [h + 1], overrides={h + 1: {"dc_bus_v": 30.0}}))

        def metric(what: str) -> float:
            return REGISTRY.get_sample_value("towerco_kpi_calculator_total", {"what": what}) or 0.0

        before = {w: metric(w) for w in ("samples", "duplicate_batches")}
        batch.accepted_time.FromSeconds(int(time.time()) - 3)
        msg = Msg(js._nc, subject="telemetry.samples.x", data=batch.SerializeToString(),
                  headers={events.MSG_ID_HEADER: f"dup-{site}"})
        await calc.handle_telemetry([msg])
        await calc.handle_telemetry([msg])
        await calc.recompute_dirty()
        assert calc.stats["duplicate_batches"] >= 1
        # the same counts on /metrics, and the lag from the ingest API's acceptance to the fold
        assert metric("duplicate_batches") - before["duplicate_batches"] >= 1
        assert metric("samples") - before["samples"] == len(batch.samples)
        assert 2 <= REGISTRY.get_sample_value("towerco_kpi_calculator_fold_lag_seconds") < 60
        async with pool.acquire() as conn:
            aggs = await conn.fetchval("SELECT aggs FROM kpi.site_minute WHERE site_id = $1 AND minute = $2",
                                       site, store.ts(h + 1))
        assert json.loads(aggs)["dc_bus_v"][0] == 2  # the original sample plus the new one, not three
        row2 = await site_row(pool, site, h)
        assert row2["power_map"][1] == "L" and row["power_map"][1] == "1"
    await sub.unsubscribe()


async def test_window_deleted_and_tenancy_band_changed_recompute(pool, js):
    site = f"KPJ-{uuid.uuid4().hex[:6].upper()}"
    h = hours_ago(2)
    async with running_calculator(pool, js, [site]):
        await register_site(js, site)
        tid = await register_tenancy(js, site, "acme", lo=43.0)
        await eventually(lambda: _count(pool, "tenancy", site), lambda n: n == 1)
        low = {m: {"dc_bus_v": 44.0} for m in range(h + 10, h + 20)}
        await publish_samples(js, minute_samples(site, range(h, h + 60), overrides=low))
        await eventually(lambda: tenancy_map(pool, site, "acme", h), lambda v: v == "U" * 60)
        # the contract band tightens to 45 V: the 44 V minutes become outages
        from towerco.sites.v1 import sites_pb2

        t = sites_pb2.Tenancy(id=tid, site_id=site, tenant_id="acme", dc_voltage_min_v=45.0,
                              dc_voltage_max_v=60.0)
        await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_UPDATED, tenancy=t),
                             "tenancy", "updated")
        await eventually(lambda: tenancy_map(pool, site, "acme", h), lambda v: v is not None and v.count("L") == 10)
        # a tenant-caused window over the outage, then deleted again
        wid = await register_window(js, site, h + 15, h + 25, category=3, tenants=["acme"])
        await eventually(lambda: tenancy_map(pool, site, "acme", h),
                         lambda v: v is not None and v.count("T") == 5 and v.count("L") == 5)
        w = sites_pb2.CalendarWindow(id=wid, site_id=site, category=3)
        w.start_time.FromSeconds((h + 15) * 60)
        w.end_time.FromSeconds((h + 25) * 60)
        await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_DELETED, window=w),
                             "window", "deleted")
        await eventually(lambda: tenancy_map(pool, site, "acme", h), lambda v: v is not None and v.count("L") == 10)
        # the tenancy ends: its figures so far stay (a month's report still covers them)
        await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_DELETED, tenancy=t),
                             "tenancy", "deleted")
        await eventually(lambda: _count(pool, "tenancy", site), lambda n: n == 0)
        await publish_samples(js, minute_samples(site, [h + 59], overrides={h + 59: {"dc_bus_v": 30.0}}))
        await eventually(lambda: _power_map(pool, site, h), lambda v: v is not None and v[59] == "L")
        assert (await tenancy_map(pool, site, "acme", h)).count("L") == 10
        async with pool.acquire() as conn:
            listed = await service_store.tenancies(conn, lo=h, hi=h + 60, site_id=site)
        assert [(r["site_id"], r["tenant_id"]) for r in listed] == [(site, "acme")]


async def _power_map(pool, site, hour):
    row = await site_row(pool, site, hour)
    return None if row is None else row["power_map"]


async def test_samples_older_than_the_allowed_lateness_are_not_folded(pool, js):
    site = f"KPL-{uuid.uuid4().hex[:6].upper()}"
    h = hours_ago(5)
    async with running_calculator(pool, js, [site], allowed_lateness_s=3600.0) as calc:
        await publish_samples(js, minute_samples(site, range(h, h + 5)))
        await eventually(lambda: _stat(calc, "too_late_samples"), lambda n: n >= 5 * 6)
        assert await site_row(pool, site, h) is None


async def _announced(items):
    return list(items)


async def _stat(calc, name):
    return calc.stats[name]


async def _count(pool, table, site):
    async with pool.acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM kpi.{table} WHERE site_id = $1", site)
