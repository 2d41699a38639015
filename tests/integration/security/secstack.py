"""A whole platform of its own for the security tests (the OpenAPI fuzzer and the tenant
isolation matrix): a fresh database on the session's PostgreSQL and its own nats-server, the
Sites, telemetry and KPI services, an ingestor and a KPI calculator in this event loop, and the
gateway under uvicorn. The fuzzer creates and deletes what it likes here without touching the
data of any other test, and the seeded fleet is known row by row:

    tenant acme   leases SEC-A and SEC-AB         tenant beta   leases SEC-B and SEC-AB
    tenant gamma  leases nothing                   SEC-N is leased by nobody

Each site has telemetry (dc_bus_v, and tenant_link_up per tenant) and a calendar window
naming its tenants; acme and beta have an availability policy.

The Notifications service runs too: acme, beta and the towerco each have a channel with a
delivered notification of their NOC incidents, and a route, escalation policy, on-call schedule and silence named after
acme and after beta (the towerco's own configuration: staff read it, a tenant sees none).

The AIOps, BI and Files services run as well (the gateway exposes them): every site has an
anomaly and a prediction (written as the aiops engine writes them: rows and their outbox events;
SEC-AB also has one for beta's link alone), acme and beta have a penalty rule set and an exported
SLA statement of the seeded month, and each tenant has a site document per leased site.

The NOC service runs too: the seeded anomalies reach it as events (one power incident per site),
and beta has an incident of its own on SEC-AB (an alarm it posted with tenant_id beta).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from towerco.aiops.v1 import aiops_pb2
from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
from towerco.files.v1 import files_pb2, files_pb2_grpc
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2 as tpb
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh import bootstrap, db, events, outbox
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.embedded import EmbeddedNats
from mesh.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gwfake import serve_gateway  # noqa: E402

TENANTS = ("acme", "beta", "gamma")
LEASES = {"SEC-A": ("acme",), "SEC-B": ("beta",), "SEC-AB": ("acme", "beta"), "SEC-N": ()}
PARTITIONS = 16
SERVICES = ("sites", "telemetry", "kpi", "files", "aiops", "noc", "bi", "notifications")  # started in this order (BI asks the NOC), all behind the gateway


@dataclass
class SecStack:
    settings: Settings
    base: str  # the gateway's base URL
    targets: dict[str, str]  # service short name -> host:port
    hour0: int  # first seeded hour (epoch seconds)
    tenancies: dict[tuple[str, str], str] = field(default_factory=dict)  # (site, tenant) -> id
    windows: dict[str, str] = field(default_factory=dict)  # site -> window id
    pool: asyncpg.Pool | None = None  # the stack's database (for rows only an engine writes)
    anomalies: dict[str, str] = field(default_factory=dict)  # site -> id ("SEC-AB/beta": beta's link)
    predictions: dict[str, str] = field(default_factory=dict)  # site -> id
    files: dict[tuple[str, str], str] = field(default_factory=dict)  # (site or "export", tenant) -> file id
    incidents: dict[str, str] = field(default_factory=dict)  # site -> NOC incident id ("SEC-AB/beta": beta's own)
    alarms: dict[str, str] = field(default_factory=dict)  # site -> NOC alarm id ("SEC-AB/beta": beta's own)
    # notifications: (kind, tenant) -> id; kind one of channel, notification, route, policy,
    # schedule, silence; tenant "acme", "beta" or "" (the towerco's own channel and its notification)
    notify: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def month(self) -> str:
        """The month of the seeded hours (statements, energy reports)."""
        return time.strftime("%Y-%m", time.gmtime(self.hour0))

    def region_of(self, site: str) -> str:
        return f"sec-region-{list(LEASES).index(site) % 2}"

    def token(self, role: str, tenant: str = "*") -> str:
        return mint_token(subject=f"sec-{role}-{tenant}", tenant=tenant, roles=[role], settings=self.settings)

    def md(self, role: str, tenant: str = "*") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(role, tenant)}"),)

    def visible_sites(self, tenant: str) -> set[str]:
        """The sites a caller of `tenant` may see ("*": all)."""
        return set(LEASES) if tenant == "*" else {s for s, ts in LEASES.items() if tenant in ts}


async def inject_aiops(stack: SecStack, summary: str, at: float, *, predictions: bool = False
                       ) -> dict[str, str]:
    """As the aiops engine writes them (workers/aiops_engine/consumer.py): one open anomaly per site
    (tenant_ids = the site's tenants) plus, on SEC-AB, one of beta's link alone (tenant_id beta), and
    optionally a prediction per site, with their outbox events (WatchAnomalies replays and follows
    the outbox). `summary` is the explanation's text. Returns key -> id (keys: site, "SEC-AB/beta",
    "prediction:<site>")."""
    from workers.aiops_engine import consumer as engine
    from workers.aiops_engine import store as engine_store

    assert stack.pool is not None
    rows, prows, keys = [], [], []
    specs = [(s, "rule.dc_bus_low", "", ["dc_bus_v"]) for s in LEASES]
    specs.append(("SEC-AB", "rule.tenant_link_down", "beta", ["tenant_link_up"]))
    for site, detector, tenant, metrics in specs:
        aid = str(uuid.uuid4())
        keys.append((f"{site}/{tenant}" if tenant else site, aid))
        rows.append({"id": aid, "site_id": site, "region": stack.region_of(site), "tenant_ids": list(LEASES[site]),
                     "key": f"{detector}|{tenant}|{aid}", "detector": detector, "version": "1", "layer": 1,
                     "metrics": metrics, "tenant_id": tenant, "score": 0.9, "severity": aiops_pb2.SEVERITY_MAJOR,
                     "start": at, "time": at, "explanation": aiops_pb2.Explanation(
                         summary=summary, features=[aiops_pb2.Feature(name=metrics[0], observed=40.0, expected=53.0,
                                                                      threshold=43.0)]).SerializeToString()})
        if predictions and not tenant:
            pid = str(uuid.uuid4())
            keys.append((f"prediction:{site}", pid))
            prows.append({"id": pid, "site_id": site, "region": stack.region_of(site),
                          "tenant_ids": list(LEASES[site]), "kind": aiops_pb2.PREDICTION_KIND_BATTERY_DEPLETION,
                          "detector": "forecast.battery", "predict_time": at, "expected_time": at + 3 * 3600,
                          "confidence": 0.8, "inputs": aiops_pb2.Explanation(features=[aiops_pb2.Feature(
                              name="battery_soc_pct", observed=40.0)]).SerializeToString()})
    async with stack.pool.acquire() as conn, conn.transaction():
        items = [outbox.Event(engine.DETECTED, engine.DETECTED, engine.SOURCE,
                              aiops_pb2.AnomalyDetected(anomaly=engine.anomaly_pb(r)), list(r["tenant_ids"]))
                 for r in await engine_store.insert_anomalies(conn, rows=rows)]
        items += [outbox.Event(engine.PREDICTED, engine.PREDICTED, engine.SOURCE,
                               aiops_pb2.AnomalyPredicted(prediction=engine.prediction_pb(r)), list(r["tenant_ids"]))
                  for r in await engine_store.insert_predictions(conn, rows=prows)]
        await outbox.enqueue_many(conn, schema="aiops", items=items)
    return dict(keys)


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))


async def _seed(stack: SecStack) -> None:
    admin = stack.md("admin")
    async with grpc.aio.insecure_channel(stack.targets["sites"]) as ch:
        sites = sites_pb2_grpc.SitesServiceStub(ch)
        for t in TENANTS:
            await sites.CreateTenant(sites_pb2.CreateTenantRequest(tenant=sites_pb2.Tenant(id=t, name=t.title())),
                                     metadata=admin)
        for i, (site_id, tenants) in enumerate(LEASES.items()):
            site = sites_pb2.Site(id=site_id, name=f"Security {site_id}", region=f"sec-region-{i % 2}")
            site.location.latitude, site.location.longitude = -1.0 - i, 36.0 + i
            site.power.dg_capacity_kva, site.power.battery_bank_ah, site.power.fuel_tank_l = 20.0, 400.0, 500.0
            await sites.CreateSite(sites_pb2.CreateSiteRequest(site=site), metadata=admin)
            for t in tenants:
                resp = await sites.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                    site_id=site_id, tenant_id=t, sla_availability_target=0.99, monthly_fee_minor=100_000,
                    currency_code="KES")), metadata=admin)
                stack.tenancies[(site_id, t)] = resp.tenancy.id
            win = sites_pb2.CalendarWindow(site_id=site_id, start_time=_ts(stack.hour0),
                                           end_time=_ts(stack.hour0 + 600),
                                           category=sites_pb2.WINDOW_CATEGORY_PLANNED_MAINTENANCE,
                                           tenant_ids=list(tenants), description="seeded")
            resp = await sites.CreateWindow(sites_pb2.CreateWindowRequest(window=win), metadata=admin)
            stack.windows[site_id] = resp.window.id
    async with grpc.aio.insecure_channel(stack.targets["kpi"]) as ch:
        kpi = kpi_pb2_grpc.KpiServiceStub(ch)
        for t in ("acme", "beta"):
            await kpi.UpdateAvailabilityPolicy(kpi_pb2.UpdateAvailabilityPolicyRequest(
                policy=kpi_pb2.AvailabilityPolicy(tenant_id=t, min_outage_minutes=3)), metadata=admin)
    async with grpc.aio.insecure_channel(stack.targets["telemetry"]) as ch:
        tel = telemetry_pb2_grpc.TelemetryServiceStub(ch)
        req = tpb.IngestRequest(batch_id=f"sec-{uuid.uuid4().hex}")
        for site_id, tenants in LEASES.items():
            for m in range(0, 120):
                t = _ts(stack.hour0 + m * 60)
                req.samples.add(site_id=site_id, metric="dc_bus_v", value=53.0).time.CopyFrom(t)
                req.samples.add(site_id=site_id, metric="mains_present", value=1.0).time.CopyFrom(t)
                for tenant in tenants:
                    req.samples.add(site_id=site_id, metric="tenant_link_up", value=1.0,
                                    tenant_id=tenant).time.CopyFrom(t)
        resp = await tel.Ingest(req, metadata=stack.md("service"))
        assert resp.rejected == 0, resp
    ids = await inject_aiops(stack, "seeded", stack.hour0 + 1800, predictions=True)
    for key, value in ids.items():
        if key.startswith("prediction:"):
            stack.predictions[key.split(":", 1)[1]] = value
        else:
            stack.anomalies[key] = value
    # the bi_engine's recommendations (towerco staff's work; a tenant sees none), one per site
    from workers.bi_engine import store as bi_engine_store
    from workers.bi_engine.domain import Rec

    async with stack.pool.acquire() as conn:
        await bi_engine_store.replace_recommendations(conn, compute_time=datetime.now(UTC), recs=[
            Rec(kind=bi_pb2.RECOMMENDATION_KIND_REFUEL, site_id=s, region=stack.region_of(s), title=f"refuel {s}",
                evidence=(("fuel_level_l", "50"),), saving_minor=1000, currency="KES") for s in LEASES])
    async with grpc.aio.insecure_channel(stack.targets["files"]) as ch:
        files = files_pb2_grpc.FilesServiceStub(ch)
        for site_id, tenants in LEASES.items():
            for t in tenants:
                resp = await files.UploadFile(files_pb2.UploadFileRequest(
                    tenant_id=t, site_id=site_id, kind=files_pb2.FILE_KIND_SITE_DOCUMENT,
                    name=f"lease {t} {site_id}.csv", content_type="text/csv",
                    content=f"tenant,site\n{t},{site_id}\n".encode()), metadata=admin)
                stack.files[(site_id, t)] = resp.file.id
    async with grpc.aio.insecure_channel(stack.targets["bi"]) as ch:
        bi = bi_pb2_grpc.BiServiceStub(ch)
        for t in ("acme", "beta"):
            await bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
                tenant_id=t, effective_month=stack.month, cap_percent=20.0, description=f"{t} penalties",
                bands=[bi_pb2.PenaltyBand(from_points=0.0, to_points=1.0, penalty_percent=5.0)])), metadata=admin)
        # energy prices: an override for every site and both regions (ListEnergyTariffs names them)
        for i, site_id in enumerate(LEASES):
            await bi.SetEnergyTariff(bi_pb2.SetEnergyTariffRequest(tariff=bi_pb2.EnergyTariffOverride(
                site_id=site_id, grid_price_minor_per_kwh=10.0 + i, description=f"prices of {site_id}")),
                metadata=admin)
        for region in ("sec-region-0", "sec-region-1"):
            await bi.SetEnergyTariff(bi_pb2.SetEnergyTariffRequest(tariff=bi_pb2.EnergyTariffOverride(
                region=region, fuel_price_minor_per_l=200.0, description=f"prices of {region}")), metadata=admin)
        for t in ("acme", "beta"):
            resp = await bi.ExportSlaStatement(bi_pb2.ExportSlaStatementRequest(
                tenant_id=t, month=stack.month, format=bi_pb2.EXPORT_FORMAT_CSV), metadata=admin, timeout=30)
            stack.files[("export", t)] = resp.file.id


async def _seed_notifications(stack: SecStack) -> None:
    """Channels per tenant (and an internal one) with one delivered notification each, written as
    the notifier writes them (workers/notifier/store.py); configuration named after acme and beta."""
    from towerco.notifications.v1 import notifications_pb2 as npb
    from towerco.notifications.v1 import notifications_pb2_grpc

    from workers.notifier import store as notifier_store

    admin = stack.md("admin")
    async with grpc.aio.insecure_channel(stack.targets["notifications"]) as ch:
        api = notifications_pb2_grpc.NotificationsServiceStub(ch)
        told = {"acme": [stack.incidents["SEC-A"], stack.incidents["SEC-AB"]],
                "beta": [stack.incidents["SEC-B"], stack.incidents["SEC-AB/beta"], stack.incidents["SEC-AB"]],
                "": [stack.incidents["SEC-N"]] if "SEC-N" in stack.incidents else []}
        for tenant in ("acme", "beta", ""):
            label = tenant or "towerco"
            c = (await api.CreateChannel(npb.CreateChannelRequest(channel=npb.Channel(
                name=f"{label} noc mailbox", kind=npb.CHANNEL_KIND_EMAIL, email_address=f"noc@{label}.test",
                tenant_id=tenant)), metadata=admin)).channel
            stack.notify[("channel", tenant)] = c.id
            nid = uuid.uuid4()
            async with stack.pool.acquire() as conn:
                await notifier_store.insert_notification(
                    conn, id=nid, channel_id=uuid.UUID(c.id), tenant_id=tenant, kind=1, route_id=None,
                    group_key=f"tenant={label}", incident_ids=told[tenant], summary=f"{label} incident",
                    payload='{"kind": "firing"}', state=3)
            stack.notify[("notification", tenant)] = str(nid)
        for tenant in ("acme", "beta"):
            mine = stack.notify[("channel", tenant)]
            sched = npb.Schedule(name=f"{tenant} on-call", rotations=[npb.Rotation(
                name=f"{tenant} rotation", shift_seconds=86400, members=[npb.OnCallMember(
                    name=f"{tenant} engineer", channel_id=mine)])])
            sched.rotations[0].start_time.FromSeconds(stack.hour0 - 86400)
            sid = (await api.CreateSchedule(npb.CreateScheduleRequest(schedule=sched), metadata=admin)).schedule.id
            pol = (await api.CreateEscalationPolicy(npb.CreateEscalationPolicyRequest(policy=npb.EscalationPolicy(
                name=f"{tenant} paging", steps=[npb.EscalationStep(channel_ids=[mine], schedule_id=sid,
                                                                   escalate_after_seconds=600)])),
                metadata=admin)).policy.id
            rid = (await api.CreateRoute(npb.CreateRouteRequest(route=npb.Route(
                name=f"{tenant} incidents", channel_ids=[mine], escalation_policy_id=pol,
                match=npb.IncidentMatcher(tenant_ids=[tenant]))), metadata=admin)).route.id
            sil = npb.Silence(comment=f"{tenant} maintenance", matchers=[npb.Matcher(name="tenant", value=tenant)])
            sil.end_time.FromSeconds(int(time.time()) + 86400)
            lid = (await api.CreateSilence(npb.CreateSilenceRequest(silence=sil), metadata=admin)).silence.id
            stack.notify.update({("schedule", tenant): sid, ("policy", tenant): pol, ("route", tenant): rid,
                                 ("silence", tenant): lid})


async def _seed_noc(stack: SecStack) -> None:
    """The NOC's incidents: the seeded anomalies reach it as events (one power incident per site,
    beta's link joining the SEC-AB one), and beta posts an alarm of its own on SEC-AB (tenant_id
    beta: an incident only beta may see)."""
    from towerco.noc.v1 import noc_pb2, noc_pb2_grpc

    assert stack.pool is not None
    await _wait_for(stack.pool, "SELECT count(DISTINCT site_id) FROM noc.incident", len(LEASES))
    await _wait_for(stack.pool, "SELECT count(*) FROM noc.alarm", len(LEASES) + 1)
    async with stack.pool.acquire() as conn:
        for r in await conn.fetch("SELECT DISTINCT ON (site_id) site_id, id, incident_id FROM noc.alarm "
                                  "WHERE tenant_id = '' ORDER BY site_id, first_seen"):
            stack.incidents[r["site_id"]] = str(r["incident_id"])
            stack.alarms[r["site_id"]] = str(r["id"])
    async with grpc.aio.insecure_channel(stack.targets["noc"]) as ch:
        noc = noc_pb2_grpc.NocServiceStub(ch)
        resp = await noc.PostAlarm(noc_pb2.PostAlarmRequest(
            source="sec-nms", source_alarm_id="beta-own-1", site_id="SEC-AB", tenant_id="beta",
            alarm_type=noc_pb2.ALARM_TYPE_EQUIPMENT, probable_cause="tenant_cabinet_alarm",
            perceived_severity=noc_pb2.PERCEIVED_SEVERITY_MINOR, text="tenant cabinet alarm"),
            metadata=stack.md("service"))
        stack.incidents["SEC-AB/beta"] = resp.incident_id
        stack.alarms["SEC-AB/beta"] = resp.alarm.id


async def _wait_for(pool: asyncpg.Pool, sql: str, want: int, wait_s: float = 60.0) -> None:
    deadline = time.monotonic() + wait_s
    got = -1
    while time.monotonic() < deadline:
        async with pool.acquire() as conn:
            got = await conn.fetchval(sql)
        if got >= want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"seeding did not settle: {sql} -> {got}, want {want}")


@contextlib.asynccontextmanager
async def security_stack(session_stack, *, gateway_overrides: dict | None = None) -> AsyncIterator[SecStack]:
    from gateway.app import create_app
    from gateway.config import GatewayConfig
    from services.aiops.server import setup as aiops_setup
    from services.bi.server import setup as bi_setup
    from services.files.server import setup as files_setup
    from services.kpi.server import setup as kpi_setup
    from services.noc.server import setup as noc_setup
    from services.notifications.server import setup as notifications_setup
    from services.sites.server import setup as sites_setup
    from services.telemetry.server import setup as telemetry_setup
    from workers.ingestor.consumer import Ingestor
    from workers.ingestor.domain import IngestorConfig
    from workers.kpi_calculator.consumer import Calculator, CalculatorConfig

    name = f"sec_{uuid.uuid4().hex[:10]}"
    admin_conn = await asyncpg.connect(session_stack.database_url)
    try:
        await admin_conn.execute(f"CREATE DATABASE {name}")
    finally:
        await admin_conn.close()
    database_url = session_stack.database_url.rsplit("/", 1)[0] + "/" + name
    nats = EmbeddedNats(session_stack.tmp / name).start()
    reset_settings()
    home = session_stack.tmp / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(Settings.from_env(), database_url=database_url, nats_url=nats.url, home=home)
    await migrate(database_url, components=list(SERVICES))
    running: list[bootstrap.RunningServer] = []
    tasks: list[asyncio.Task] = []
    pool = await db.create_pool(database_url, min_size=1, max_size=6)
    nc = await events.connect(nats.url, name="security-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    ingestor = calc = None
    try:
        targets = dict(base.targets)
        settings = dataclasses.replace(base, targets=targets)
        for svc, setup in (("sites", sites_setup), ("telemetry", telemetry_setup), ("kpi", kpi_setup),
                           ("files", files_setup), ("aiops", aiops_setup), ("noc", noc_setup), ("bi", bi_setup),
                           ("notifications", notifications_setup)):
            srv = await bootstrap.start(svc, setup, port=0, metrics_port=-1, settings=settings)
            running.append(srv)
            targets[svc] = f"127.0.0.1:{srv.port}"  # the next services find the earlier ones
        ingestor = Ingestor(pool, js, config=IngestorConfig(batch=500))
        tasks.append(asyncio.create_task(ingestor.run()))
        calc = Calculator(pool, js, config=CalculatorConfig(
            partitions=tuple(range(PARTITIONS)), publish_interval_s=0.2, publish_grace_s=0.0, replica="sec",
            recompute_interval_s=0.1, settle_s=0.2, durable_prefix="kpi-sec"), partition_count=PARTITIONS,
            database_url=database_url)
        tasks.append(asyncio.create_task(calc.run()))
        hour0 = (int(time.time()) // 3600 - 3) * 3600
        cfg = GatewayConfig(services=SERVICES, targets=dict(targets), rate_per_s=0,
                            **(gateway_overrides or {}))
        app = create_app(cfg, settings)
        async with serve_gateway(app) as url:
            stack = SecStack(settings=settings, base=url, targets=targets, hour0=hour0, pool=pool)
            await _seed(stack)
            n_samples = sum(120 * (2 + len(ts)) for ts in LEASES.values())
            await _wait_for(pool, "SELECT count(*) FROM telemetry.samples", n_samples)
            await _wait_for(pool, "SELECT count(*) FROM kpi.tenancy", sum(len(ts) for ts in LEASES.values()))
            await _wait_for(pool, "SELECT count(DISTINCT site_id) FROM kpi.tenancy_hour", 3)
            # the aiops_engine's relay (not running here) publishes the seeded anomalies for the NOC
            await outbox.OutboxRelay(pool, js, schema="aiops").publish_pending()
            await _seed_noc(stack)
            await _seed_notifications(stack)  # its notifications tell of the NOC's incidents
            yield stack
    finally:
        for obj in (ingestor, calc):
            if obj is not None:
                with contextlib.suppress(Exception):
                    await obj.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for srv in reversed(running):
            await srv.stop(grace=1.0, drain_s=0)
        await nc.close()
        await pool.close()
        nats.stop()
        reset_settings()
