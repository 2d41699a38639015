"""The KPI service over gRPC (real server, full interceptor chain) on figures the real calculator
computed from telemetry published to JetStream: exact minutes, breakdowns, scoping, bad input."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import duration_pb2
from kpi_support import (
    eventually,
    hours_ago,
    minute_samples,
    publish_samples,
    register_site,
    register_tenancy,
    register_window,
    running_calculator,
    ts,
)
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import status_of, violations_of
from mesh.migrate import migrate
from services.kpi.server import setup
from services.sites.server import setup as sites_setup

U = uuid.uuid4().hex[:6]
SITE_A, SITE_B = f"KSA-{U.upper()}", f"KSB-{U.upper()}"
ACME, BETA = f"acme-{U}", f"beta-{U}"
H0 = hours_ago(4)
NORTH, SOUTH = f"north-{U}", f"south-{U}"


def rng(a: int, b: int) -> common_pb2.TimeRange:
    return common_pb2.TimeRange(start_time=ts((H0 + a) * 60), end_time=ts((H0 + b) * 60))


class World:
    def __init__(self, stub, settings, pool):
        self.stub = stub
        self.settings = settings
        self.pool = pool

    def md(self, *roles, tenant="*"):
        tok = mint_token(subject="tester", tenant=tenant, roles=list(roles), settings=self.settings)
        return (("authorization", f"Bearer {tok}"),)


@pytest.fixture(scope="module")
async def world(stack):
    await migrate(stack.database_url, components=["kpi"])
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=6)
    nc = await events.connect(stack.nats_url, name="kpi-service-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    await migrate(stack.database_url, components=["sites"])
    reset_settings()
    settings = Settings.from_env()
    # the KPI service asks the Sites service whether a tenant exists: run it, with the tenants
    sites = await bootstrap.start("sites", sites_setup, port=0, metrics_port=-1, settings=settings)
    settings.targets["sites"] = f"127.0.0.1:{sites.port}"
    admin = (("authorization", "Bearer " + mint_token(subject="t", tenant="*", roles=["admin"], settings=settings)),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sites.port}") as sch:
        register = sites_pb2_grpc.SitesServiceStub(sch)
        for tid in (ACME, BETA):
            await register.CreateTenant(sites_pb2.CreateTenantRequest(tenant=sites_pb2.Tenant(id=tid, name=tid)),
                                        metadata=admin)
    running = await bootstrap.start("kpi", setup, port=0, metrics_port=-1, settings=settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        async with running_calculator(pool, js, [SITE_A, SITE_B]):
            await register_site(js, SITE_A, region=NORTH)
            await register_site(js, SITE_B, region=SOUTH, dg_delay_s=120.0)
            await register_tenancy(js, SITE_A, ACME, sla=0.999)
            await register_tenancy(js, SITE_A, BETA, lo=45.0, hi=58.0, sla=0.99)
            await register_tenancy(js, SITE_B, ACME, sla=0.999)
            await register_window(js, SITE_A, H0, H0 + 15, category=1, tenants=[BETA])

            async def windows():
                async with pool.acquire() as conn:
                    return await conn.fetchval("SELECT count(*) FROM kpi.calendar_window WHERE site_id = $1",
                                               SITE_A)
            await eventually(windows, lambda n: n == 1)
            a_over = {H0 + m: {"dc_bus_v": 41.0} for m in range(10, 20)}
            a_over.update({H0 + m: {"dc_bus_v": 44.0} for m in range(70, 75)})
            a_minutes = [H0 + m for m in range(120) if not 100 <= m < 105]
            b_over = {H0 + m: {"mains_present": 0.0, "dg_running": 1.0 if m >= 33 else 0.0} for m in range(30, 60)}
            samples = minute_samples(SITE_A, a_minutes, overrides=a_over, tenants=[ACME, BETA])
            samples += minute_samples(SITE_B, range(H0, H0 + 120), overrides=b_over, tenants=[ACME])
            await publish_samples(js, samples)

            async def hours():
                async with pool.acquire() as conn:
                    return await conn.fetchval(
                        "SELECT count(*) FROM kpi.tenancy_hour WHERE site_id = ANY($1::text[])", [SITE_A, SITE_B])
            await eventually(hours, lambda n: n == 6)
            yield World(kpi_pb2_grpc.KpiServiceStub(channel), settings, pool)
    finally:
        await channel.close()
        await running.stop(grace=1.0, drain_s=0)
        await sites.stop(grace=1.0, drain_s=0)
        await nc.close()
        await pool.close()


async def test_tenant_availability_rolls_up_exact_minutes(world):
    resp = await world.stub.GetTenantAvailability(
        kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(0, 120)), metadata=world.md("viewer"))
    assert resp.sites == 2
    a = resp.availability
    assert (a.period_minutes, a.outage.total, a.unknown_minutes, a.excluded.total) == (240, 10, 5, 5)
    assert a.availability == pytest.approx(225 / 235)
    assert a.unknown_policy == kpi_pb2.UNKNOWN_POLICY_EXCLUDED
    by_site = {t.site_id: t for t in resp.tenancies}
    site_a = by_site[SITE_A]
    assert site_a.availability.availability == pytest.approx(105 / 115)
    assert site_a.availability.outage.dc_low == 10
    assert site_a.region == NORTH
    [iv] = site_a.outages
    assert (iv.start_time.seconds, iv.end_time.seconds, iv.cause, iv.minutes) == (
        (H0 + 10) * 60, (H0 + 20) * 60, kpi_pb2.OUTAGE_CAUSE_DC_LOW, 10)
    assert by_site[SITE_B].availability.availability == 1.0
    assert resp.sites_below_sla == 1


async def test_window_for_one_tenant_and_its_band(world):
    resp = await world.stub.GetTenantAvailability(
        kpi_pb2.GetTenantAvailabilityRequest(tenant_id=BETA, range=rng(0, 120)), metadata=world.md("viewer"))
    [t] = resp.tenancies
    a = t.availability
    assert (a.outage.dc_low, a.excluded.planned_maintenance, a.unknown_minutes) == (10, 5, 5)
    assert a.availability == pytest.approx(100 / 110)
    assert [(i.start_time.seconds // 60 - H0, i.minutes) for i in t.outages] == [(15, 5), (70, 5)]


async def test_minute_exact_partial_range_and_split_recombine(world):
    md = world.md("viewer")

    async def fig(a, b):
        r = await world.stub.GetTenantAvailability(
            kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(a, b), skip_outages=True), metadata=md)
        return r.availability

    part = await fig(15, 75)
    assert (part.period_minutes, part.outage.total) == (120, 5)
    left, right, whole = await fig(0, 37), await fig(37, 120), await fig(0, 120)
    assert left.outage.total + right.outage.total == whole.outage.total
    assert left.excluded.total + right.excluded.total == whole.excluded.total
    assert left.up_minutes + right.up_minutes == whole.up_minutes


async def test_unknown_policy_override(world):
    resp = await world.stub.GetTenantAvailability(
        kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(0, 120),
                                             unknown_policy=kpi_pb2.UNKNOWN_POLICY_DOWN),
        metadata=world.md("viewer"))
    site_a = {t.site_id: t for t in resp.tenancies}[SITE_A].availability
    assert site_a.availability == pytest.approx(105 / 120)
    assert site_a.outage.unknown_as_down == 5


async def test_site_kpis_generator_grid_energy_and_autonomy(world):
    resp = await world.stub.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=SITE_B, range=rng(0, 120)),
                                        metadata=world.md("viewer"))
    k = resp.kpis
    assert (k.grid_known_minutes, k.grid_present_minutes) == (120, 90)
    assert k.grid_availability == pytest.approx(0.75)
    assert k.dg_run_hours == pytest.approx(27 / 60)
    assert (k.dg_starts, k.dg_fail_to_start) == (1, 0)
    kw = 53.5 * 40 / 1000
    assert k.energy_grid_kwh == pytest.approx(kw * 90 / 60)
    assert k.energy_dg_kwh == pytest.approx(kw * 27 / 60)
    assert k.energy_battery_kwh == pytest.approx(kw * 3 / 60)
    assert k.observed_autonomy_h == pytest.approx(3 / 60) and k.observed_autonomy_lower_bound
    assert k.battery_autonomy_h == pytest.approx(200 / 40)
    assert [t.tenant_id for t in k.tenancies] == [ACME]


async def test_series_hourly(world):
    resp = await world.stub.GetKpiSeries(
        kpi_pb2.GetKpiSeriesRequest(site_id=SITE_B, range=rng(0, 120), step=duration_pb2.Duration(seconds=3600),
                                    kpis=[kpi_pb2.KPI_GRID_AVAILABILITY, kpi_pb2.KPI_DG_RUN_HOURS,
                                          kpi_pb2.KPI_TENANT_AVAILABILITY]),
        metadata=world.md("viewer"))
    by = {(s.kpi, s.tenant_id): [p.value for p in s.points] for s in resp.series}
    assert by[(kpi_pb2.KPI_GRID_AVAILABILITY, "")] == [0.5, 1.0]
    assert by[(kpi_pb2.KPI_DG_RUN_HOURS, "")] == pytest.approx([0.45, 0.0])
    assert by[(kpi_pb2.KPI_TENANT_AVAILABILITY, ACME)] == [1.0, 1.0]


@pytest.mark.parametrize("step_h", [1, 2])
async def test_every_series_point_is_the_site_kpis_of_its_step(world, step_h):
    """A series is the site's KPIs step by step: each point equals GetSiteKpis over that step."""
    md = world.md("viewer")
    for site in (SITE_A, SITE_B):
        resp = await world.stub.GetKpiSeries(
            kpi_pb2.GetKpiSeriesRequest(site_id=site, range=rng(0, 120),
                                        step=duration_pb2.Duration(seconds=3600 * step_h)), metadata=md)
        for i in range(120 // (60 * step_h)):
            lo, hi = i * 60 * step_h, (i + 1) * 60 * step_h
            k = (await world.stub.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=site, range=rng(lo, hi)),
                                               metadata=md)).kpis
            expected = {
                (kpi_pb2.KPI_POWER_AVAILABILITY, ""): (k.power_availability, k.power_known_minutes),
                (kpi_pb2.KPI_GRID_AVAILABILITY, ""): (k.grid_availability, k.grid_known_minutes),
                (kpi_pb2.KPI_DG_RUN_HOURS, ""): (k.dg_run_hours, hi - lo),
                (kpi_pb2.KPI_DG_STARTS, ""): (k.dg_starts, hi - lo),
                (kpi_pb2.KPI_FUEL_CONSUMED_L, ""): (k.fuel_consumed_l, hi - lo),
                (kpi_pb2.KPI_FUEL_EXPECTED_L, ""): (k.fuel_expected_l, hi - lo),
                (kpi_pb2.KPI_REFUEL_L, ""): (k.refuel_l, hi - lo),
                (kpi_pb2.KPI_ENERGY_GRID_KWH, ""): (k.energy_grid_kwh, hi - lo),
                (kpi_pb2.KPI_ENERGY_DG_KWH, ""): (k.energy_dg_kwh, hi - lo),
                (kpi_pb2.KPI_ENERGY_BATTERY_KWH, ""): (k.energy_battery_kwh, hi - lo),
                **{(kpi_pb2.KPI_TENANT_AVAILABILITY, t.tenant_id):
                   (t.availability.availability,
                    t.availability.period_minutes - t.availability.excluded.total) for t in k.tenancies},
            }
            got = {(s.kpi, s.tenant_id): (s.points[i].value, s.points[i].known_minutes) for s in resp.series}
            assert got.keys() == expected.keys()
            for key, (value, known) in expected.items():
                assert got[key][0] == pytest.approx(value, abs=1e-9), (site, i, key)
                assert got[key][1] == known, (site, i, key)
            assert all(s.points[i].time.seconds == (H0 + lo) * 60 for s in resp.series)


async def test_worst_sites_and_fleet_summary(world):
    md = world.md("viewer")
    worst = await world.stub.ListWorstSites(kpi_pb2.ListWorstSitesRequest(range=rng(0, 120), region=NORTH),
                                            metadata=md)
    assert [(s.site_id, s.tenant_id) for s in worst.sites] == [(SITE_A, BETA), (SITE_A, ACME)]
    grid = await world.stub.ListWorstSites(
        kpi_pb2.ListWorstSitesRequest(range=rng(0, 120), rank_by=kpi_pb2.RANK_BY_GRID_AVAILABILITY,
                                      tenant_id=ACME), metadata=md)
    assert grid.sites[0].site_id == SITE_B and grid.sites[0].value == pytest.approx(0.75)
    fleet = await world.stub.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(range=rng(0, 120)), metadata=md)
    tenants = {g.key: g for g in fleet.tenants}
    assert tenants[ACME].availability.availability == pytest.approx(225 / 235)
    assert tenants[ACME].sites == 2
    scoped = await world.stub.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(range=rng(0, 120)),
                                              metadata=world.md("tenant_viewer", tenant=ACME))
    regions = {g.key: g for g in scoped.regions}
    assert sorted(regions) == [NORTH, SOUTH]
    assert regions[SOUTH].grid_availability == pytest.approx(0.75)
    assert regions[SOUTH].dg_run_hours == pytest.approx(27 / 60)
    assert regions[NORTH].availability.availability == pytest.approx(105 / 115)
    assert [g.key for g in scoped.tenants] == [ACME]


async def test_tenant_scoping(world):
    beta = world.md("tenant_viewer", tenant=BETA)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.GetTenantAvailability(
            kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(0, 120)), metadata=beta)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # another tenant's data does not exist for it
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id=ACME), metadata=beta)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # a list filtered on another tenant matches nothing (as in every list), it does not fail
    worst = await world.stub.ListWorstSites(kpi_pb2.ListWorstSitesRequest(range=rng(0, 120), tenant_id=ACME),
                                            metadata=beta)
    assert list(worst.sites) == []
    own = await world.stub.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id=BETA), metadata=beta)
    assert own.policy.tenant_id == BETA
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=SITE_B, range=rng(0, 120)), metadata=beta)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    site_a = await world.stub.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=SITE_A, range=rng(0, 120)),
                                          metadata=beta)
    assert [t.tenant_id for t in site_a.kpis.tenancies] == [BETA]
    fleet = await world.stub.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(range=rng(0, 120)), metadata=beta)
    assert [g.key for g in fleet.tenants] == [BETA]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.GetTenantAvailability(
            kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(0, 120)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("request_", "field"), [
    (kpi_pb2.GetTenantAvailabilityRequest(tenant_id="xy", range=rng(10, 5)), "range.end_time"),
    (kpi_pb2.GetTenantAvailabilityRequest(tenant_id="xy"), "range"),
    (kpi_pb2.GetTenantAvailabilityRequest(range=rng(0, 60)), "tenant_id"),
    (kpi_pb2.GetTenantAvailabilityRequest(tenant_id="xy", range=rng(0, 60),
                                          page=common_pb2.PageRequest(token="!!")), "page.token"),
    (kpi_pb2.GetTenantAvailabilityRequest(tenant_id="xy", range=rng(0, 60), unknown_policy=9), "unknown_policy"),
])
async def test_bad_requests_are_invalid_argument_with_field(world, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.GetTenantAvailability(request_, metadata=world.md("viewer"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in violations_of(status_of(err.value))]


async def test_series_step_and_alignment_are_checked(world):
    md = world.md("viewer")
    for req, field in [
        (kpi_pb2.GetKpiSeriesRequest(site_id=SITE_B, range=rng(0, 120), step=duration_pb2.Duration(seconds=600)),
         "step"),
        (kpi_pb2.GetKpiSeriesRequest(site_id=SITE_B, range=rng(5, 120), step=duration_pb2.Duration(seconds=3600)),
         "range"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.GetKpiSeries(req, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in [v.field for v in violations_of(status_of(err.value))]


async def test_policy_of_a_missing_or_malformed_tenant_is_refused(world):
    admin = world.md("admin")
    missing = f"nobody-{U}"
    for call, req in [
        (world.stub.GetAvailabilityPolicy, kpi_pb2.GetAvailabilityPolicyRequest(tenant_id=missing)),
        (world.stub.UpdateAvailabilityPolicy, kpi_pb2.UpdateAvailabilityPolicyRequest(
            policy=kpi_pb2.AvailabilityPolicy(tenant_id=missing, min_outage_minutes=5))),
        (world.stub.DeleteAvailabilityPolicy, kpi_pb2.DeleteAvailabilityPolicyRequest(tenant_id=missing)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=admin)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, req
    async with world.pool.acquire() as conn:  # nothing was stored for it
        assert await conn.fetchval("SELECT count(*) FROM kpi.policy WHERE tenant_id = $1", missing) == 0
    for call, req, field in [
        (world.stub.GetAvailabilityPolicy, kpi_pb2.GetAvailabilityPolicyRequest(tenant_id="0"), "tenant_id"),
        (world.stub.DeleteAvailabilityPolicy, kpi_pb2.DeleteAvailabilityPolicyRequest(tenant_id="0"), "tenant_id"),
        (world.stub.UpdateAvailabilityPolicy, kpi_pb2.UpdateAvailabilityPolicyRequest(
            policy=kpi_pb2.AvailabilityPolicy(tenant_id="0")), "policy.tenant_id"),
        (world.stub.UpdateAvailabilityPolicy, kpi_pb2.UpdateAvailabilityPolicyRequest(
            policy=kpi_pb2.AvailabilityPolicy()), "policy.tenant_id"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert field in [v.field for v in violations_of(status_of(err.value))]


async def test_policy_change_is_recomputed_by_the_calculator(world):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.UpdateAvailabilityPolicy(
            kpi_pb2.UpdateAvailabilityPolicyRequest(policy=kpi_pb2.AvailabilityPolicy(tenant_id=ACME)),
            metadata=world.md("viewer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = world.md("admin")
    stored = await world.stub.UpdateAvailabilityPolicy(
        kpi_pb2.UpdateAvailabilityPolicyRequest(policy=kpi_pb2.AvailabilityPolicy(
            tenant_id=ACME, min_outage_minutes=15)), metadata=admin)
    assert stored.policy.min_outage_minutes == 15 and stored.policy.HasField("update_time")

    async def site_a():
        r = await world.stub.GetTenantAvailability(
            kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(0, 120)), metadata=admin)
        return {t.site_id: t for t in r.tenancies}[SITE_A].availability

    a = await eventually(site_a, lambda a: a.outage.ignored_short == 10)
    assert a.availability == 1.0 and a.min_outage_minutes == 15
    got = await world.stub.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id=ACME),
                                                 metadata=admin)
    assert got.policy.min_outage_minutes == 15
    # deleting it restores the default, and the calculator re-evaluates with it
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.stub.DeleteAvailabilityPolicy(kpi_pb2.DeleteAvailabilityPolicyRequest(tenant_id=ACME),
                                                  metadata=world.md("viewer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    gone = await world.stub.DeleteAvailabilityPolicy(kpi_pb2.DeleteAvailabilityPolicyRequest(tenant_id=ACME),
                                                     metadata=admin)
    assert gone.policy.min_outage_minutes == 0 and not gone.policy.HasField("update_time")
    a = await eventually(site_a, lambda a: a.outage.ignored_short == 0)
    assert a.availability == pytest.approx(105 / 115) and a.min_outage_minutes == 0
    got = await world.stub.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id=ACME),
                                                 metadata=admin)
    assert got.policy.min_outage_minutes == 0 and not got.policy.HasField("update_time")


async def test_tenant_availability_pages_are_one_snapshot(world):
    """Page by page, the tenancies come once each, in site order, and every page carries the
    same rollup as the unpaged answer (later pages reuse page 1's figures)."""
    md = world.md("viewer")
    whole = await world.stub.GetTenantAvailability(
        kpi_pb2.GetTenantAvailabilityRequest(tenant_id=ACME, range=rng(0, 120)), metadata=md)
    seen, token, pages = [], "", 0
    while True:
        resp = await world.stub.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
            tenant_id=ACME, range=rng(0, 120), page=common_pb2.PageRequest(size=1, token=token)), metadata=md)
        pages += 1
        assert resp.availability == whole.availability and resp.sites == whole.sites
        seen += [t.site_id for t in resp.tenancies]
        token = resp.page.next_token
        if not token:
            break
    assert pages == 2 and seen == [t.site_id for t in whole.tenancies] == sorted(seen)


async def test_a_tenancy_gone_from_the_register_keeps_its_history(world):
    """A tenancy that has left the register still answers for the hours it has figures in (its
    target then unknown, 0), and the same figures as while it was registered."""
    req = kpi_pb2.GetTenantAvailabilityRequest(tenant_id=BETA, range=rng(0, 120))
    [before] = (await world.stub.GetTenantAvailability(req, metadata=world.md("viewer"))).tenancies
    async with world.pool.acquire() as conn:
        row = await conn.fetchrow("DELETE FROM kpi.tenancy WHERE tenant_id = $1 RETURNING *", BETA)
    try:
        resp = await world.stub.GetTenantAvailability(req, metadata=world.md("viewer"))
    finally:
        async with world.pool.acquire() as conn:
            cols = list(row.keys())
            await conn.execute(f"INSERT INTO kpi.tenancy ({', '.join(cols)}) VALUES "
                               f"({', '.join(f'${i + 1}' for i in range(len(cols)))})", *row.values())
    [gone] = resp.tenancies
    assert (gone.site_id, gone.region) == (before.site_id, before.region) and resp.sites == 1
    assert gone.availability.sla_target == 0 and before.availability.sla_target == pytest.approx(0.99)
    assert gone.availability.outage == before.availability.outage and gone.outages == before.outages
    assert gone.availability.excluded == before.availability.excluded
