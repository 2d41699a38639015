"""A whole platform of its own for the security tests (the OpenAPI fuzzer and the tenant
isolation matrix): a fresh database on the session's PostgreSQL and its own nats-server, the
Sites, telemetry and KPI services, an ingestor and a KPI calculator in this event loop, and the
gateway under uvicorn. The fuzzer creates and deletes what it likes here without touching the
data of any other test, and the seeded fleet is known row by row:

    tenant acme   leases SEC-A and SEC-AB         tenant beta   leases SEC-B and SEC-AB
    tenant gamma  leases nothing                   SEC-N is leased by nobody

Each site has telemetry (dc_bus_v, and tenant_link_up per tenant) and a calendar window
naming its tenants; acme and beta have an availability policy.
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
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2 as tpb
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.embedded import EmbeddedNats
from mesh.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gwfake import serve_gateway  # noqa: E402

TENANTS = ("acme", "beta", "gamma")
LEASES = {"SEC-A": ("acme",), "SEC-B": ("beta",), "SEC-AB": ("acme", "beta"), "SEC-N": ()}
PARTITIONS = 16


@dataclass
class SecStack:
    settings: Settings
    base: str  # the gateway's base URL
    targets: dict[str, str]  # service short name -> host:port
    hour0: int  # first seeded hour (epoch seconds)
    tenancies: dict[tuple[str, str], str] = field(default_factory=dict)  # (site, tenant) -> id
    windows: dict[str, str] = field(default_factory=dict)  # site -> window id

    def token(self, role: str, tenant: str = "*") -> str:
        return mint_token(subject=f"sec-{role}-{tenant}", tenant=tenant, roles=[role], settings=self.settings)

    def md(self, role: str, tenant: str = "*") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(role, tenant)}"),)

    def visible_sites(self, tenant: str) -> set[str]:
        """The sites a caller of `tenant` may see ("*": all)."""
        return set(LEASES) if tenant == "*" else {s for s, ts in LEASES.items() if tenant in ts}


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
    from services.kpi.server import setup as kpi_setup
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
    base = dataclasses.replace(Settings.from_env(), database_url=database_url, nats_url=nats.url)
    await migrate(database_url, components=["sites", "telemetry", "kpi"])
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
        for svc, setup in (("sites", sites_setup), ("telemetry", telemetry_setup), ("kpi", kpi_setup)):
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
        cfg = GatewayConfig(services=("sites", "telemetry", "kpi"), targets=dict(targets), rate_per_s=0,
                            **(gateway_overrides or {}))
        app = create_app(cfg, settings)
        async with serve_gateway(app) as url:
            stack = SecStack(settings=settings, base=url, targets=targets, hour0=hour0)
            await _seed(stack)
            n_samples = sum(120 * (2 + len(ts)) for ts in LEASES.values())
            await _wait_for(pool, "SELECT count(*) FROM telemetry.samples", n_samples)
            await _wait_for(pool, "SELECT count(*) FROM kpi.tenancy", sum(len(ts) for ts in LEASES.values()))
            await _wait_for(pool, "SELECT count(DISTINCT site_id) FROM kpi.tenancy_hour", 3)
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
