"""The BI service over gRPC and through the gateway, on figures computed for real: the Sites
service holds the register (tenancies with targets, fees and start dates; a maintenance window),
telemetry goes through JetStream to the KPI calculator, the KPI service answers availability, and
BI turns it into statements with penalties. Last month is used so it can be closed; late data
after closing must show as an adjustment, never rewrite the frozen figures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from kpi_support import eventually, minute_samples, publish_samples, running_calculator, serve_asgi, ts
from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import status_of, violations_of
from mesh.migrate import migrate

U = uuid.uuid4().hex[:6]
TENANT, OTHER = f"bi-{U}", f"bo-{U}"
SITE_A, SITE_B = f"BIA-{U.upper()}", f"BIB-{U.upper()}"
REGION = f"bi-region-{U}"
FEE_A, FEE_B = 1_000_000, 600_000
_now = datetime.now(UTC)
_first = _now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
MONTH_START = (_first - timedelta(days=1)).replace(day=1)  # last month
MONTH = MONTH_START.strftime("%Y-%m")
THIS_MONTH = _first.strftime("%Y-%m")
LO, HI = int(MONTH_START.timestamp()) // 60, int(_first.timestamp()) // 60
H0 = int(MONTH_START.replace(day=20, hour=10).timestamp()) // 60  # the data: from the 20th, 10:00
B_START = MONTH_START.replace(day=16, hour=10, minute=30)  # B started mid-month
DAYS = 70  # the calculator must accept and re-evaluate last month's data


class World:
    def __init__(self, settings, ports, pool, js):
        self.settings, self.ports, self.pool, self.js = settings, ports, pool, js
        self.channels = {}

    def md(self, *roles, tenant="*"):
        tok = mint_token(subject="bi-tester", tenant=tenant, roles=list(roles), settings=self.settings)
        return (("authorization", f"Bearer {tok}"),)

    def stub(self, name, cls):
        if name not in self.channels:
            self.channels[name] = grpc.aio.insecure_channel(f"127.0.0.1:{self.ports[name]}")
        return cls(self.channels[name])

    @property
    def bi(self) -> bi_pb2_grpc.BiServiceStub:
        return self.stub("bi", bi_pb2_grpc.BiServiceStub)

    async def statement(self, month=MONTH, tenant=TENANT, **md):
        r = await self.bi.GetSlaStatement(bi_pb2.GetSlaStatementRequest(tenant_id=tenant, month=month),
                                          metadata=md.get("metadata") or self.md("viewer"))
        return r.statement


def a_samples(minutes, bad):
    """Site A: the DC bus below the band in `bad`; fuel falling 0.1 l a minute all along."""
    over = {m: {"fuel_level_l": 500.0 - 0.1 * (m - H0)} for m in minutes}
    for m in bad:
        over[m]["dc_bus_v"] = 41.0
    return minute_samples(SITE_A, minutes, overrides=over, tenants=[TENANT])


@pytest.fixture(scope="module")
async def world(stack, tmp_path_factory):
    from services.aiops.server import setup as aiops_setup
    from services.bi.server import setup as bi_setup
    from services.files.server import setup as files_setup
    from services.kpi.server import setup as kpi_setup
    from services.noc.server import setup as noc_setup
    from services.sites.server import setup as sites_setup
    from services.telemetry.server import setup as telemetry_setup
    from workers.ingestor.consumer import Ingestor
    from workers.ingestor.domain import IngestorConfig

    await migrate(stack.database_url)
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=4)
    nc = await events.connect(stack.nats_url, name="bi-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    reset_settings()
    base = Settings.from_env()
    running = []
    sites_srv = await bootstrap.start("sites", sites_setup, port=0, metrics_port=-1, settings=base)
    running.append(sites_srv)
    kpi_srv = await bootstrap.start("kpi", kpi_setup, port=0, metrics_port=-1, settings=base)
    running.append(kpi_srv)
    files_srv = await bootstrap.start("files", files_setup, port=0, metrics_port=-1, nats=False,
                                      settings=dataclasses.replace(base, home=tmp_path_factory.mktemp("bi-files")))
    running.append(files_srv)
    aiops_srv = await bootstrap.start("aiops", aiops_setup, port=0, metrics_port=-1, settings=base)
    running.append(aiops_srv)
    # the NOC (its incidents' tenants come from the register): the statements carry its figures
    noc_srv = await bootstrap.start("noc", noc_setup, port=0, metrics_port=-1, settings=dataclasses.replace(
        base, targets=dict(base.targets, sites=f"127.0.0.1:{sites_srv.port}", kpi=f"127.0.0.1:{kpi_srv.port}")))
    running.append(noc_srv)
    settings = dataclasses.replace(base, targets=dict(base.targets, sites=f"127.0.0.1:{sites_srv.port}",
                                                      kpi=f"127.0.0.1:{kpi_srv.port}",
                                                      files=f"127.0.0.1:{files_srv.port}",
                                                      aiops=f"127.0.0.1:{aiops_srv.port}",
                                                      noc=f"127.0.0.1:{noc_srv.port}"))
    bi_srv = await bootstrap.start("bi", bi_setup, port=0, metrics_port=-1, settings=settings)
    running.append(bi_srv)
    tel_srv = await bootstrap.start("telemetry", telemetry_setup, port=0, metrics_port=-1, settings=settings)
    running.append(tel_srv)
    w = World(settings, {"sites": sites_srv.port, "kpi": kpi_srv.port, "bi": bi_srv.port, "files": files_srv.port,
                         "telemetry": tel_srv.port, "aiops": aiops_srv.port, "noc": noc_srv.port}, pool, js)
    ingestor = Ingestor(pool, js, config=IngestorConfig(batch=100))
    ingest_task = asyncio.create_task(ingestor.run())
    admin = w.md("admin")
    try:
        async with running_calculator(pool, js, [SITE_A, SITE_B], allowed_lateness_s=DAYS * 86400.0,
                                      recompute_days=float(DAYS), minute_retention_days=float(DAYS)):
            st = w.stub("sites", sites_pb2_grpc.SitesServiceStub)
            for t in (TENANT, OTHER):
                await st.CreateTenant(sites_pb2.CreateTenantRequest(tenant=sites_pb2.Tenant(id=t, name=t)),
                                      metadata=admin)
            for sid in (SITE_A, SITE_B):
                await st.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                    id=sid, name=sid, region=REGION, location={"latitude": -1.0, "longitude": 36.0},
                    power=sites_pb2.PowerConfig(dg_capacity_kva=15.0, battery_bank_ah=200.0, solar_kwp=2.5,
                                                fuel_tank_l=1000.0, grid=sites_pb2.GRID_CONNECTION_THREE_PHASE))),
                    metadata=admin)
            for sid, fee in ((SITE_A, FEE_A), (SITE_B, FEE_B)):
                await st.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                    site_id=sid, tenant_id=TENANT, dc_voltage_min_v=43.0, dc_voltage_max_v=60.0,
                    sla_availability_target=0.999, monthly_fee_minor=fee, currency_code="KES")), metadata=admin)
            await st.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                site_id=SITE_A, tenant_id=OTHER, sla_availability_target=0.99, monthly_fee_minor=5,
                currency_code="KES")), metadata=admin)
            # planned maintenance on B, minutes 60..79 of the data
            await st.CreateWindow(sites_pb2.CreateWindowRequest(window=sites_pb2.CalendarWindow(
                site_id=SITE_B, start_time=ts((H0 + 60) * 60), end_time=ts((H0 + 80) * 60),
                category=sites_pb2.WINDOW_CATEGORY_PLANNED_MAINTENANCE)), metadata=admin)
            # contract start dates: A long before the month, B on the 16th (arranged in the register's
            # own table, since create_time is output-only on the API)
            async with pool.acquire() as conn:
                await conn.execute("UPDATE sites.tenancies SET create_time = '2020-01-01' WHERE site_id = $1",
                                   SITE_A)
                await conn.execute("UPDATE sites.tenancies SET create_time = $2 WHERE site_id = $1", SITE_B, B_START)

            async def register():
                async with pool.acquire() as conn:
                    return (await conn.fetchval("SELECT count(*) FROM kpi.tenancy WHERE site_id = ANY($1::text[])",
                                                [SITE_A, SITE_B]),
                            await conn.fetchval("SELECT count(*) FROM kpi.calendar_window WHERE site_id = $1", SITE_B))
            await eventually(register, lambda n: n == (3, 1))

            minutes = [H0 + m for m in range(120)]
            await publish_samples(js, a_samples(minutes, [H0 + m for m in range(10, 40)]))
            # B: the DC bus below the band at 50..54 and 60..79; the DG running with mains present 40..119
            b_bad = {H0 + m: {"dg_running": 1.0} for m in range(40, 120)}
            for m in [*range(50, 55), *range(60, 80)]:
                b_bad[H0 + m]["dc_bus_v"] = 41.0
            await publish_samples(js, minute_samples(SITE_B, minutes, overrides=b_bad, tenants=[TENANT]))
            kpi = w.stub("kpi", kpi_pb2_grpc.KpiServiceStub)

            async def avail():
                r = await kpi.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
                    tenant_id=TENANT, range=common_pb2.TimeRange(start_time=ts(H0 * 60), end_time=ts((H0 + 120) * 60))),
                    metadata=w.md("viewer"))
                return {t.site_id: (t.availability.outage.total, t.availability.excluded.planned_maintenance,
                                    t.availability.unknown_minutes) for t in r.tenancies}
            await eventually(avail, lambda v: v == {SITE_A: (30, 0, 0), SITE_B: (5, 20, 0)}, within=60)

            await w.bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
                tenant_id=TENANT, effective_month="2020-01", cap_percent=25, incident_min_minutes=20,
                incident_penalty_percent=3, description="MSA schedule 4",
                bands=[bi_pb2.PenaltyBand(from_points=0, to_points=0.5, penalty_percent=5),
                       bi_pb2.PenaltyBand(from_points=0.5, to_points=10, penalty_percent=10),
                       bi_pb2.PenaltyBand(from_points=10, to_points=0, penalty_percent=20)])), metadata=admin)
            yield w
    finally:
        await ingestor.stop()
        ingest_task.cancel()
        with contextlib.suppress(BaseException):
            await ingest_task
        for ch in w.channels.values():
            await ch.close()
        for srv in reversed(running):
            await srv.stop(grace=1, drain_s=0)
        await nc.close()
        await pool.close()


def line(st, site):
    return next(x for x in st.tenancies if x.site_id == site)


async def test_statement_applies_the_contract_to_the_kpi_figures(world):
    st = await world.statement()
    assert st.tenant_id == TENANT and st.month == MONTH
    assert st.status == bi_pb2.STATEMENT_STATUS_OPEN and st.rule_set_version == 1
    assert st.range.start_time.seconds == LO * 60 and st.range.end_time.seconds == HI * 60
    assert [x.site_id for x in st.tenancies] == [SITE_A, SITE_B]  # OTHER's tenancy on A is not ours

    a = line(st, SITE_A)
    # 120 known minutes, 30 below the band; every other minute of the month unknown → excluded
    assert a.breakdown.period_minutes == HI - LO
    assert a.breakdown.outage.total == 30 and a.breakdown.excluded.total == HI - LO - 120
    assert a.availability == pytest.approx(90 / 120)
    assert a.shortfall_points == pytest.approx(24.9)  # (0.999 − 0.75) × 100 → the open band (20 %)
    assert (a.band, a.band_percent, a.band_penalty_minor) == (3, 20, 200_000)
    assert [(o.minutes, o.start_time.seconds // 60) for o in a.outages] == [(30, H0 + 10)]
    assert (a.incidents, a.incident_penalty_minor) == (1, 30_000)  # one outage ≥ 20 min: 3 %
    assert a.prorated_fee_minor == FEE_A and a.penalty_minor == 230_000 and not a.capped
    assert a.measured_range.start_time.seconds == LO * 60

    b = line(st, SITE_B)
    b_lo = int(B_START.replace(hour=0, minute=0).timestamp()) // 60
    assert b.measured_range.start_time.seconds == b_lo * 60
    assert b.breakdown.period_minutes == HI - b_lo
    assert b.prorated_fee_minor == round(FEE_B * (HI - b_lo) / (HI - LO))
    # 5 outage minutes; 20 bad minutes inside the maintenance window are excluded: A = 95/100
    assert b.breakdown.excluded.planned_maintenance == 20
    assert b.availability == pytest.approx(0.95)
    assert b.band == 2 and b.incidents == 0
    assert b.penalty_minor == round(b.prorated_fee_minor * 0.10)

    assert st.tenancies_below_sla == 2
    assert [(t.currency_code, t.fee_minor, t.penalty_minor) for t in st.totals] == [
        ("KES", FEE_A + b.prorated_fee_minor, 230_000 + b.penalty_minor)]


async def test_tenants_see_only_their_own(world):
    own = world.md("tenant_viewer", tenant=TENANT)
    st = await world.statement(metadata=own)
    assert [x.site_id for x in st.tenancies] == [SITE_A, SITE_B]
    other = world.md("tenant_viewer", tenant=OTHER)
    for call in (world.bi.GetSlaStatement(bi_pb2.GetSlaStatementRequest(tenant_id=TENANT, month=MONTH),
                                          metadata=other),
                 world.bi.GetPenaltyRuleSet(bi_pb2.GetPenaltyRuleSetRequest(tenant_id=TENANT), metadata=other)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # tenants/{another tenant}/penalty-rule-sets addresses that tenant: NOT_FOUND (docs/security.md)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.ListPenaltyRuleSets(bi_pb2.ListPenaltyRuleSetsRequest(tenant_id=TENANT), metadata=other)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    mine = await world.bi.ListPenaltyRuleSets(bi_pb2.ListPenaltyRuleSetsRequest(tenant_id=TENANT), metadata=own)
    assert [r.version for r in mine.rule_sets] == [1]
    # OTHER's own statement: its one tenancy, with no rules → no penalty
    ost = await world.statement(tenant=OTHER, metadata=other)
    assert [(x.site_id, x.penalty_minor) for x in ost.tenancies] == [(SITE_A, 0)]
    assert ost.rule_set_version == 0


async def test_statement_carries_the_tenants_noc_figures(world):
    """An alarm on a site the tenant leases, seen last month, acknowledged and resolved now: the
    month's statement shows the incident with its MTTA and MTTR, as the NOC computes them."""
    from towerco.noc.v1 import noc_pb2, noc_pb2_grpc

    noc = world.stub("noc", noc_pb2_grpc.NocServiceStub)
    posted = await noc.PostAlarm(noc_pb2.PostAlarmRequest(
        source="bi-nms", source_alarm_id=f"bi-{U}", site_id=SITE_A, alarm_type=noc_pb2.ALARM_TYPE_EQUIPMENT,
        probable_cause="rectifier_failure", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_MAJOR,
        event_time=ts((H0 + 30) * 60), text="rectifier failure"), metadata=world.md("service"))
    assert posted.incident_id
    op = world.md("noc_operator")
    await noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(incident_id=posted.incident_id), metadata=op)
    await noc.ResolveIncident(noc_pb2.ResolveIncidentRequest(incident_id=posted.incident_id), metadata=op)
    for md in (world.md("viewer"), world.md("tenant_viewer", tenant=TENANT)):
        async def figures(md=md):
            return (await world.statement(metadata=md)).noc

        n = await eventually(figures, lambda n: n.known and n.incidents >= 1 and n.resolved >= 1, within=60)
        assert n.acknowledged >= 1 and n.mtta_seconds > 0 and n.mttr_seconds >= n.mtta_seconds
    # this month has no incident of the tenant: known, and zero
    now = await world.statement(month=THIS_MONTH)
    assert now.noc.known and now.noc.incidents == 0


async def test_statement_without_the_noc_says_its_figures_are_unknown(world):
    """A BI service whose NOC does not answer still serves the statement, with known = false."""
    from services.bi.server import setup as bi_setup

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    srv = await bootstrap.start("bi", bi_setup, port=0, metrics_port=-1, settings=dataclasses.replace(
        world.settings, targets=dict(world.settings.targets, noc=f"127.0.0.1:{dead}")))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            r = await bi_pb2_grpc.BiServiceStub(ch).GetSlaStatement(
                bi_pb2.GetSlaStatementRequest(tenant_id=TENANT, month=MONTH), metadata=world.md("viewer"))
    finally:
        await srv.stop(grace=1, drain_s=0)
    st = r.statement
    assert [x.site_id for x in st.tenancies] == [SITE_A, SITE_B]
    assert not st.noc.known and st.noc.incidents == 0


async def test_bad_rules_and_months_are_invalid_arguments(world):
    admin = world.md("admin")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
            tenant_id=TENANT, effective_month="2026-01",
            bands=[bi_pb2.PenaltyBand(from_points=0, to_points=1, penalty_percent=5),
                   bi_pb2.PenaltyBand(from_points=0.5, to_points=2, penalty_percent=10)])), metadata=admin)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(status_of(e.value))] == ["rule_set.bands[1]"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
            tenant_id=TENANT, effective_month="2026-01", cap_percent=150)), metadata=admin)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rule_set.cap_percent" in [v.field for v in violations_of(status_of(e.value))]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.GetSlaStatement(bi_pb2.GetSlaStatementRequest(tenant_id=TENANT, month="2026-13"),
                                       metadata=world.md("viewer"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(status_of(e.value))] == ["month"]
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a tenant the register does not know
        await world.bi.GetSlaStatement(bi_pb2.GetSlaStatementRequest(tenant_id=f"nobody-{U}", month=MONTH),
                                       metadata=world.md("viewer"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:  # writing rules needs admin
        await world.bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
            tenant_id=TENANT, effective_month="2026-01")), metadata=world.md("viewer"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_closing_a_month_freezes_it_and_late_data_is_an_adjustment(world):
    admin = world.md("admin")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.CloseMonth(bi_pb2.CloseMonthRequest(tenant_id=TENANT, month=THIS_MONTH), metadata=admin)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    before = await world.statement()
    closed = (await world.bi.CloseMonth(bi_pb2.CloseMonthRequest(tenant_id=TENANT, month=MONTH),
                                        metadata=admin)).statement
    assert closed.status == bi_pb2.STATEMENT_STATUS_CLOSED and closed.closed_by == "bi-tester"
    assert [(x.site_id, x.penalty_minor) for x in closed.tenancies] == [
        (x.site_id, x.penalty_minor) for x in before.tenancies]
    assert closed.noc.known and closed.noc == before.noc  # the month's NOC figures, frozen with it
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.CloseMonth(bi_pb2.CloseMonthRequest(tenant_id=TENANT, month=MONTH), metadata=admin)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # late data for A: another hour, with a 25-minute outage (a second incident: 20 % + 6 % → cap 25 %)
    late = [H0 + m for m in range(180, 240)]
    await publish_samples(world.js, a_samples(late, [H0 + m for m in range(180, 205)]))

    async def adjusted():
        return await world.statement()
    want_delta = (180 - 55) / 180 - 90 / 120

    def settled(s):  # the calculator may show the late hour in steps; wait for all of it
        return len(s.adjustments) == 1 and abs(s.adjustments[0].availability_delta - want_delta) < 1e-9
    st = await eventually(adjusted, settled, within=60)
    assert st.status == bi_pb2.STATEMENT_STATUS_CLOSED
    # the frozen lines are unchanged ...
    assert line(st, SITE_A).availability == pytest.approx(90 / 120)
    assert line(st, SITE_A).penalty_minor == 230_000
    # ... and the difference is reported beside them
    adj = st.adjustments[0]
    assert adj.site_id == SITE_A and adj.reason == "late data" and adj.currency_code == "KES"
    assert adj.availability_delta == pytest.approx((180 - 55) / 180 - 90 / 120)
    assert adj.penalty_delta_minor == 250_000 - 230_000
    # another incident of the month after closing: the NOC counts it, the frozen statement does not
    from towerco.noc.v1 import noc_pb2, noc_pb2_grpc

    noc = world.stub("noc", noc_pb2_grpc.NocServiceStub)
    await noc.PostAlarm(noc_pb2.PostAlarmRequest(
        source="bi-nms", source_alarm_id=f"bi-late-{U}", site_id=SITE_B, alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL,
        probable_cause="high_temperature", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_MINOR,
        event_time=ts((H0 + 90) * 60)), metadata=world.md("service"))

    async def live_noc():
        return (await noc.GetNocStats(noc_pb2.GetNocStatsRequest(range=closed.range, tenant_id=TENANT),
                                      metadata=world.md("viewer"))).overall.incidents
    await eventually(live_noc, lambda n: n > closed.noc.incidents, within=60)
    assert (await world.statement()).noc == closed.noc  # the frozen statement keeps what it was closed with


async def test_rest_through_the_gateway(world):
    from gateway.app import create_app
    from gateway.config import GatewayConfig

    app = create_app(GatewayConfig(services=("bi",), targets={"bi": f"127.0.0.1:{world.ports['bi']}"},
                                   rate_per_s=0), world.settings)
    headers = {"authorization": world.md("viewer")[0][1]}
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.get(f"/api/v1/tenants/{TENANT}/statements/{MONTH}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tenantId"] == TENANT and body["status"] == "STATEMENT_STATUS_CLOSED"
        a = next(x for x in body["tenancies"] if x["siteId"] == SITE_A)
        assert int(a["penaltyMinor"]) == 230_000 and a["band"] == 3
        assert a["outages"][0]["minutes"] in (30, "30")

        r = await http.get(f"/api/v1/tenants/{TENANT}/statements/2026-13", headers=headers)
        assert r.status_code == 400, r.text
        err = r.json()
        assert err["code"] == 3
        fvs = [fv for d in err["details"] for fv in d.get("fieldViolations", [])]
        assert fvs and fvs[0]["field"] == "month"

        admin = {"authorization": world.md("admin")[0][1]}
        r = await http.post(f"/api/v1/tenants/{TENANT}/penalty-rule-sets", headers=admin, json={
            "effectiveMonth": "2027-01", "bands": [{"fromPoints": 0, "toPoints": 2, "penaltyPercent": 5},
                                                   {"fromPoints": 1, "toPoints": 3, "penaltyPercent": 8}]})
        assert r.status_code == 400, r.text
        r = await http.post(f"/api/v1/tenants/{TENANT}/penalty-rule-sets", headers=admin, json={
            "effectiveMonth": "2027-01", "bands": [{"fromPoints": 0, "toPoints": 0, "penaltyPercent": 7}]})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2

        other = {"authorization": world.md("tenant_viewer", tenant=OTHER)[0][1]}
        r = await http.get(f"/api/v1/tenants/{TENANT}/statements/{MONTH}", headers=other)
        assert r.status_code == 404, r.text


async def test_energy_report_per_site_and_per_region(world):
    kpi = world.stub("kpi", kpi_pb2_grpc.KpiServiceStub)
    rep = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH, region=REGION),
                                          metadata=world.md("viewer"))).report
    assert [s.key for s in rep.sites] == [SITE_A, SITE_B]
    rng = common_pb2.TimeRange(start_time=ts(LO * 60), end_time=ts(HI * 60))
    t = rep.tariff
    for s in rep.sites:
        k = (await kpi.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=s.key, range=rng),
                                   metadata=world.md("viewer"))).kpis
        assert s.energy_grid_kwh == pytest.approx(k.energy_grid_kwh) and k.energy_grid_kwh > 0
        assert s.fuel_consumed_l == pytest.approx(k.fuel_consumed_l)
        assert s.grid_cost_minor == round(k.energy_grid_kwh * t.grid_price_minor_per_kwh)
        assert s.carbon_kg_co2e == pytest.approx(k.energy_grid_kwh * t.grid_kg_co2e_per_kwh
                                                 + k.fuel_consumed_l * t.diesel_kg_co2e_per_l)
        assert s.solar_kwp == 2.5
    assert [r.key for r in rep.regions] == [REGION]
    assert rep.regions[0].sites == 2
    assert rep.total.energy_grid_kwh == pytest.approx(sum(s.energy_grid_kwh for s in rep.sites))
    fleet = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH),
                                            metadata=world.md("viewer"))).report
    mine = next(r for r in fleet.regions if r.key == REGION)
    assert mine.energy_grid_kwh == pytest.approx(rep.regions[0].energy_grid_kwh)
    other = world.md("tenant_viewer", tenant=OTHER)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH, site_id=SITE_B), metadata=other)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # OTHER leases A only: its region report has A's line, not B's, and its fleet report only A's figures
    theirs = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH, region=REGION),
                                             metadata=other)).report
    assert [x.key for x in theirs.sites] == [SITE_A]
    fleet = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH), metadata=other)).report
    assert [r.key for r in fleet.regions] == [REGION] and fleet.regions[0].sites == 1
    assert fleet.regions[0].energy_grid_kwh == pytest.approx(rep.sites[0].energy_grid_kwh)


async def _theft_anomaly(world, site, start_s, observed_l, expected_l, *, region=REGION, detector="stat.fuel_theft"):
    """An anomaly as the aiops_engine stores it (its own store function, the row the AIOps service serves)."""
    from towerco.aiops.v1 import aiops_pb2

    from workers.aiops_engine import store as aiops_store

    expl = aiops_pb2.Explanation(summary="fuel falling with the DG off", features=[
        aiops_pb2.Feature(name="fuel_drop_l_per_min", observed=1.0, expected=0.0, threshold=0.25, contribution=0.7),
        aiops_pb2.Feature(name="fuel_drop_l", observed=observed_l, expected=expected_l, threshold=4.0,
                          contribution=0.3)])
    aid = uuid.uuid4()
    async with world.pool.acquire() as conn:
        await aiops_store.insert_anomalies(conn, rows=[{
            "id": aid, "site_id": site, "region": region, "tenant_ids": [TENANT] + ([OTHER] if site == SITE_A else []),
            "key": f"{detector}|{aid}", "detector": detector, "version": "1", "layer": 2,
            "metrics": ["fuel_level_l", "dg_running"], "tenant_id": "", "score": 0.9, "severity": 4,
            "start": start_s, "time": start_s + 600, "explanation": expl.SerializeToString()}])
    return str(aid)


async def test_energy_report_tariffs_per_region_and_site_and_suspected_theft(world):
    """Prices: a region override and a site override (field by field over the default), through
    SetEnergyTariff with its validation; suspected theft litres from the AIOps service's
    stat.fuel_theft anomalies (operator-dismissed ones not counted); the fleet report prices the
    region the same way as the region report."""
    from towerco.aiops.v1 import aiops_pb2, aiops_pb2_grpc

    admin, viewer = world.md("admin"), world.md("viewer")
    mid = (LO + 5 * 1440) * 60
    await _theft_anomaly(world, SITE_A, mid, 40.0, 0.0)  # DG off: all 40 l
    await _theft_anomaly(world, SITE_A, mid + 86400, 25.0, 5.0)  # DG on: 20 l beyond the burn
    dismissed = await _theft_anomaly(world, SITE_B, mid, 99.0, 0.0)
    await _theft_anomaly(world, SITE_B, (HI + 60) * 60, 77.0, 0.0)  # next month: not this report's
    await _theft_anomaly(world, SITE_B, mid, 55.0, 0.0, detector="stat.baseline")  # not a theft detector
    aiops = world.stub("aiops", aiops_pb2_grpc.AiopsServiceStub)
    await aiops.RecordFeedback(aiops_pb2.RecordFeedbackRequest(
        anomaly_id=dismissed, kind=aiops_pb2.FEEDBACK_KIND_FALSE_POSITIVE, note="tank calibration"),
        metadata=world.md("noc_operator"))

    bad = [
        (bi_pb2.EnergyTariffOverride(fuel_price_minor_per_l=1.0), "tariff.region"),
        (bi_pb2.EnergyTariffOverride(region=REGION, site_id=SITE_A, fuel_price_minor_per_l=1.0), "tariff.site_id"),
        (bi_pb2.EnergyTariffOverride(region=REGION), "tariff.grid_price_minor_per_kwh"),
        (bi_pb2.EnergyTariffOverride(region=REGION, fuel_price_minor_per_l=-1.0), "tariff.fuel_price_minor_per_l"),
        (bi_pb2.EnergyTariffOverride(region=REGION, grid_kg_co2e_per_kwh=float("nan")), "tariff.grid_kg_co2e_per_kwh"),
        (bi_pb2.EnergyTariffOverride(site_id="NO-SUCH-SITE", fuel_price_minor_per_l=1.0), "tariff.site_id"),
    ]
    for tariff, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await world.bi.SetEnergyTariff(bi_pb2.SetEnergyTariffRequest(tariff=tariff), metadata=admin)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (tariff, e.value)
        assert field in [v.field for v in violations_of(status_of(e.value))], (tariff, e.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.SetEnergyTariff(bi_pb2.SetEnergyTariffRequest(tariff=bi_pb2.EnergyTariffOverride(
            region=REGION, fuel_price_minor_per_l=1.0)), metadata=world.md("tenant_viewer", tenant=TENANT))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    default = (await world.bi.ListEnergyTariffs(bi_pb2.ListEnergyTariffsRequest(), metadata=viewer)).default_tariff
    region_fuel, site_grid = 250.0, 7.5
    set_region = await world.bi.SetEnergyTariff(bi_pb2.SetEnergyTariffRequest(tariff=bi_pb2.EnergyTariffOverride(
        region=REGION, fuel_price_minor_per_l=region_fuel, description="fuel contract 2026")), metadata=admin)
    assert set_region.tariff.HasField("fuel_price_minor_per_l") and not set_region.tariff.HasField("grid_price_minor_per_kwh")
    await world.bi.SetEnergyTariff(bi_pb2.SetEnergyTariffRequest(tariff=bi_pb2.EnergyTariffOverride(
        site_id=SITE_B, grid_price_minor_per_kwh=site_grid, grid_kg_co2e_per_kwh=0.1)), metadata=admin)
    try:
        listed = await world.bi.ListEnergyTariffs(bi_pb2.ListEnergyTariffsRequest(site_id=SITE_B), metadata=viewer)
        assert [(t.region, t.site_id) for t in listed.tariffs] == [(REGION, ""), ("", SITE_B)]
        r = listed.resolved  # field by field: grid from the site, fuel from the region, diesel factor default
        assert (r.grid_price_minor_per_kwh, r.fuel_price_minor_per_l, r.grid_kg_co2e_per_kwh, r.diesel_kg_co2e_per_l) \
            == (site_grid, region_fuel, 0.1, default.diesel_kg_co2e_per_l)
        mine = await world.bi.ListEnergyTariffs(bi_pb2.ListEnergyTariffsRequest(site_id=SITE_B),
                                                metadata=world.md("tenant_viewer", tenant=TENANT))
        assert mine.tariffs == listed.tariffs and mine.resolved == r  # a tenant: the prices of a site it leases
        book = await world.bi.ListEnergyTariffs(bi_pb2.ListEnergyTariffsRequest(),
                                                metadata=world.md("tenant_viewer", tenant=OTHER))
        assert [(t.region, t.site_id) for t in book.tariffs] == [(REGION, "")]  # not B's: OTHER leases A only
        with pytest.raises(grpc.aio.AioRpcError) as e:  # OTHER does not lease B
            await world.bi.ListEnergyTariffs(bi_pb2.ListEnergyTariffsRequest(site_id=SITE_B),
                                             metadata=world.md("tenant_viewer", tenant=OTHER))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

        rep = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH, region=REGION),
                                              metadata=viewer)).report
        assert rep.theft_known
        a, b = (next(x for x in rep.sites if x.key == sid) for sid in (SITE_A, SITE_B))
        assert a.suspected_theft_l == pytest.approx(60.0) and a.theft_anomalies == 2
        assert a.theft_cost_minor == round(60.0 * region_fuel)
        assert b.suspected_theft_l == 0 and b.theft_anomalies == 0  # dismissed, next month, another detector
        assert a.grid_cost_minor == round(a.energy_grid_kwh * default.grid_price_minor_per_kwh)
        assert a.fuel_cost_minor == round(a.fuel_consumed_l * region_fuel)
        assert b.grid_cost_minor == round(b.energy_grid_kwh * site_grid)
        assert b.carbon_kg_co2e == pytest.approx(b.energy_grid_kwh * 0.1 + b.fuel_consumed_l * default.diesel_kg_co2e_per_l)
        reg = rep.regions[0]
        assert reg.cost_minor == a.cost_minor + b.cost_minor and reg.suspected_theft_l == pytest.approx(60.0)
        assert {(t.region, t.site_id) for t in rep.tariff_overrides} == {(REGION, ""), ("", SITE_B)}
        fleet = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH), metadata=viewer)).report
        freg = next(x for x in fleet.regions if x.key == REGION)
        assert (freg.cost_minor, freg.grid_cost_minor, freg.fuel_cost_minor, freg.theft_cost_minor) == \
            (reg.cost_minor, reg.grid_cost_minor, reg.fuel_cost_minor, reg.theft_cost_minor)
        assert freg.carbon_kg_co2e == pytest.approx(reg.carbon_kg_co2e) and freg.theft_anomalies == 2
        theirs = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH, region=REGION),
                                                 metadata=world.md("tenant_viewer", tenant=OTHER))).report
        assert [x.key for x in theirs.sites] == [SITE_A] and theirs.sites[0].suspected_theft_l == pytest.approx(60.0)
    finally:
        await world.bi.DeleteEnergyTariff(bi_pb2.DeleteEnergyTariffRequest(site_id=SITE_B), metadata=admin)
        await world.bi.DeleteEnergyTariff(bi_pb2.DeleteEnergyTariffRequest(region=REGION), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.bi.DeleteEnergyTariff(bi_pb2.DeleteEnergyTariffRequest(region=REGION), metadata=admin)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    back = (await world.bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=MONTH, site_id=SITE_B),
                                           metadata=viewer)).report.sites[0]
    assert back.grid_cost_minor == round(back.energy_grid_kwh * default.grid_price_minor_per_kwh)


async def test_exports_opened_back_match_the_api(world):
    import csv
    import io

    from openpyxl import load_workbook
    from pypdf import PdfReader

    from gateway.app import create_app
    from gateway.config import GatewayConfig

    own = world.md("tenant_viewer", tenant=TENANT)
    st = await world.statement(metadata=own)
    app = create_app(GatewayConfig(services=("bi", "files"), targets={
        "bi": f"127.0.0.1:{world.ports['bi']}", "files": f"127.0.0.1:{world.ports['files']}"}, rate_per_s=0),
        world.settings)
    headers = {"authorization": own[0][1]}
    got = {}
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=60) as http:
        for fmt in ("CSV", "XLSX", "PDF"):
            r = await http.post(f"/api/v1/tenants/{TENANT}/statements/{MONTH}:export", headers=headers,
                                json={"format": f"EXPORT_FORMAT_{fmt}"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["file"]["tenantId"] == TENANT and body["file"]["kind"] == "FILE_KIND_EXPORT"
            assert body["file"]["name"] == f"statement-{TENANT}-{MONTH}.{fmt.lower()}"
            d = await http.get(body["downloadUrl"])  # the link alone, no other credential
            assert d.status_code == 200, d.text
            assert int(body["file"]["sizeBytes"]) == len(d.content)
            got[fmt] = d.content
        r = await http.post(f"/api/v1/tenants/{TENANT}/statements/{MONTH}:export", headers=headers,
                            json={"format": "EXPORT_FORMAT_UNSPECIFIED"})
        assert r.status_code == 400, r.text
        # the exported files are the tenant's: another tenant sees none of them
        r = await http.get("/api/v1/files", params={"tenantId": TENANT},
                           headers={"authorization": world.md("tenant_viewer", tenant=OTHER)[0][1]})
        assert r.status_code == 200 and r.json().get("files", []) == []
        r = await http.post(f"/api/v1/energy-reports/{MONTH}:export", headers={"authorization": world.md("viewer")[0][1]},
                            json={"format": "EXPORT_FORMAT_XLSX", "region": REGION})
        assert r.status_code == 200, r.text
        energy = load_workbook(io.BytesIO((await http.get(r.json()["downloadUrl"])).content))

    want = {x.site_id: x for x in st.tenancies}
    rows = list(csv.DictReader(io.StringIO(got["CSV"].decode())))
    assert [r["site_id"] for r in rows] == [SITE_A, SITE_B]
    for r in rows:
        x = want[r["site_id"]]
        assert int(r["penalty_minor"]) == x.penalty_minor and int(r["prorated_fee_minor"]) == x.prorated_fee_minor
        assert float(r["availability"]) == x.availability and int(r["band"]) == x.band
        assert int(r["outage_minutes"]) == x.breakdown.outage.total

    wb = load_workbook(io.BytesIO(got["XLSX"]))
    sheet = wb["Tenancies"]
    header = [c.value for c in sheet[1]]
    for values in sheet.iter_rows(min_row=2, values_only=True):
        r = dict(zip(header, values, strict=True))
        x = want[r["site_id"]]
        assert r["penalty_minor"] == x.penalty_minor and r["availability"] == x.availability
        assert r["excluded_minutes"] == x.breakdown.excluded.total
    ev = list(wb["Outage evidence"].iter_rows(min_row=2, values_only=True))
    assert sum(1 for e in ev if e[0] == SITE_A) == len(want[SITE_A].outages) and ev
    assert [c.value for c in wb["Totals"][2]] == [st.totals[0].currency_code, st.totals[0].fee_minor,
                                                  st.totals[0].penalty_minor]
    n = st.noc
    assert n.known and n.incidents >= 1  # the NOC figures: a sheet of their own, and in the PDF's header
    assert [c.value for c in wb["NOC"][2]] == [True, n.incidents, n.acknowledged, n.resolved, n.mtta_seconds,
                                               n.mttr_seconds]

    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(got["PDF"])).pages)
    assert TENANT in text and MONTH in text and SITE_A in text
    assert f"KES {st.totals[0].penalty_minor / 100:,.2f}" in text  # the total penalty, typeset
    assert "Total penalty" in text
    words = " ".join(text.split())
    assert f"NOC incidents {n.incidents}" in words and "NOC MTTA / MTTR" in words

    esheet = energy["Sites"]
    eh = [c.value for c in esheet[1]]
    erows = [dict(zip(eh, v, strict=True)) for v in esheet.iter_rows(min_row=2, values_only=True)]
    assert [r["key"] for r in erows] == [SITE_A, SITE_B] and all(r["energy_grid_kwh"] > 0 for r in erows)


async def test_bi_engine_recommendations(world):
    """One engine run at 14:00 on the 20th of last month (a week's window ending there), against the
    real services; then the BI service lists what it stored."""
    from towerco.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

    from mesh.auth import service_token
    from sdk import Client
    from workers.bi_engine.consumer import Engine, EngineConfig, Stubs

    tel = world.stub("telemetry", telemetry_pb2_grpc.TelemetryServiceStub)

    async def level():  # the ingestor has stored A's latest fuel level
        snap = await tel.LatestSnapshot(telemetry_pb2.LatestSnapshotRequest(site_id=SITE_A), metadata=world.md("viewer"))
        return next((x.value for x in snap.samples if x.metric == "fuel_level_l"), None)
    latest = await eventually(level, lambda v: v is not None and abs(v - (500 - 0.1 * 239)) < 1e-9, within=60)

    clients = {n: Client(f"127.0.0.1:{world.ports[n]}", token=lambda: service_token("bi"))
               for n in ("sites", "kpi", "telemetry", "bi")}
    try:
        stubs = Stubs(sites=clients["sites"].stub(sites_pb2_grpc.SitesServiceStub), kpi=clients["kpi"].stub(kpi_pb2_grpc.KpiServiceStub),
                      telemetry=clients["telemetry"].stub(telemetry_pb2_grpc.TelemetryServiceStub),
                      bi=clients["bi"].stub(bi_pb2_grpc.BiServiceStub))
        now = (H0 + 240) * 60
        engine = Engine(world.pool, stubs, EngineConfig(currency="KES"), clock=lambda: now)
        counts = await engine.run_once()
    finally:
        for c in clients.values():
            await c.close()
    assert counts[1] >= 1 and counts[3] >= 1 and counts[4] >= 2

    async def listed(kind):
        r = await world.bi.ListRecommendations(bi_pb2.ListRecommendationsRequest(kind=kind, region=REGION),
                                               metadata=world.md("viewer"))
        return {x.site_id: x for x in r.recommendations}

    dg = await listed(bi_pb2.RECOMMENDATION_KIND_DG_ON_GRID)
    assert list(dg) == [SITE_B]  # 80 minutes of DG with mains present, on B only
    ev = {e.name: e.value for e in dg[SITE_B].evidence}
    assert ev["dg_on_grid_hours"] == f"{80 / 60:.2f}"
    assert dg[SITE_B].estimated_monthly_saving_minor > 0

    refuel = await listed(bi_pb2.RECOMMENDATION_KIND_REFUEL)
    assert SITE_A in refuel and SITE_B not in refuel  # B's level never falls
    r = refuel[SITE_A]
    assert r.run == f"{REGION}/{r.due_date}"
    assert float({e.name: e.value for e in r.evidence}["level_l"]) == pytest.approx(latest, abs=0.05)

    hot = await listed(bi_pb2.RECOMMENDATION_KIND_PENALTY_HOTSPOT)
    st = await world.statement()  # the month is closed: hotspots rank what was billed (the frozen lines)
    assert hot[SITE_A].estimated_monthly_saving_minor == line(st, SITE_A).penalty_minor == 230_000
    assert hot[SITE_B].estimated_monthly_saving_minor == line(st, SITE_B).penalty_minor

    everything = await world.bi.ListRecommendations(bi_pb2.ListRecommendationsRequest(region=REGION),
                                                    metadata=world.md("viewer"))
    savings = [x.estimated_monthly_saving_minor for x in everything.recommendations]
    assert savings == sorted(savings, reverse=True)
    tenant_view = await world.bi.ListRecommendations(bi_pb2.ListRecommendationsRequest(),
                                                     metadata=world.md("tenant_viewer", tenant=TENANT))
    assert list(tenant_view.recommendations) == []


async def test_bi_engine_files_the_monthly_exports_once(world):
    """The engine's schedule files last month's exports (each tenant's statement and the fleet
    energy report, as CSV, XLSX and PDF) in the Files service; a second run, a restarted engine,
    and a crash between the upload and the engine's note of it file nothing twice."""
    import csv
    import io

    from pypdf import PdfReader
    from towerco.files.v1 import files_pb2, files_pb2_grpc

    from mesh.auth import service_token
    from sdk import Client
    from workers.bi_engine.consumer import Engine, EngineConfig, Stubs

    files = world.stub("files", files_pb2_grpc.FilesServiceStub)

    async def exports(tenant):
        r = await files.ListFiles(files_pb2.ListFilesRequest(tenant_id=tenant, kind=files_pb2.FILE_KIND_EXPORT,
                                                             limit=1000), metadata=world.md("viewer"))
        return sorted(f.id for f in r.files)

    async def noted():
        async with world.pool.acquire() as conn:
            return {(r["report"], r["tenant_id"], r["format"]): str(r["file_id"]) for r in await conn.fetch(
                "SELECT * FROM bi.monthly_export WHERE month = $1", MONTH)}

    before = {t: await exports(t) for t in (TENANT, OTHER, "towerco")}
    clients = {n: Client(f"127.0.0.1:{world.ports[n]}", token=lambda: service_token("bi")) for n in ("sites", "kpi", "bi")}

    def engine():
        stubs = Stubs(sites=clients["sites"].stub(sites_pb2_grpc.SitesServiceStub),
                      kpi=clients["kpi"].stub(kpi_pb2_grpc.KpiServiceStub), telemetry=None,
                      bi=clients["bi"].stub(bi_pb2_grpc.BiServiceStub))
        return Engine(world.pool, stubs, EngineConfig(currency="KES"))
    try:
        filed = await engine().run_exports()
        assert {(r, t, f) for r, t, f in filed if t in (TENANT, OTHER, "towerco")} == {
            *(("statement", t, f) for t in (TENANT, OTHER) for f in ("csv", "xlsx", "pdf")),
            *(("energy", "towerco", f) for f in ("csv", "xlsx", "pdf"))}
        after = {t: await exports(t) for t in before}
        assert {t: len(after[t]) - len(before[t]) for t in before} == {TENANT: 3, OTHER: 3, "towerco": 3}
        notes = await noted()
        assert {notes[("statement", TENANT, f)] for f in ("csv", "xlsx", "pdf")} == set(after[TENANT]) - set(before[TENANT])

        assert await engine().run_exports() == []  # a second run, by a new (restarted) engine: nothing
        # a crash after the upload, before the note: the next run asks again with the same key and
        # the Files service answers the file it already has
        async with world.pool.acquire() as conn:
            await conn.execute("DELETE FROM bi.monthly_export WHERE month = $1 AND tenant_id = $2 AND format = 'pdf'",
                               MONTH, TENANT)
        assert await engine().run_exports() == [("statement", TENANT, "pdf")]
        assert {t: await exports(t) for t in before} == after
        assert await noted() == notes
    finally:
        for c in clients.values():
            await c.close()

    st = await world.statement()
    csv_file = await files.DownloadFile(files_pb2.DownloadFileRequest(file_id=notes[("statement", TENANT, "csv")]),
                                        metadata=world.md("tenant_viewer", tenant=TENANT))
    assert csv_file.file.name == f"statement-{TENANT}-{MONTH}.csv"
    rows = {r["site_id"]: r for r in csv.DictReader(io.StringIO(csv_file.body.data.decode()))}
    assert {s: int(r["penalty_minor"]) for s, r in rows.items()} == {x.site_id: x.penalty_minor for x in st.tenancies}
    pdf = await files.DownloadFile(files_pb2.DownloadFileRequest(file_id=notes[("statement", TENANT, "pdf")]),
                                   metadata=world.md("viewer"))
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.body.data)).pages)
    assert TENANT in text and MONTH in text and "Total penalty" in text
    energy = await files.DownloadFile(files_pb2.DownloadFileRequest(file_id=notes[("energy", "towerco", "csv")]),
                                      metadata=world.md("viewer"))
    assert energy.file.name == f"energy-{MONTH}.csv" and REGION in energy.body.data.decode()
