"""A platform of its own for the NOC integration tests: a fresh database on the session's
PostgreSQL and its own nats-server; the Sites, KPI and NOC services started by the real
bootstrap (the NOC with its anomaly consumer, periodic task and outbox relay) with short
correlation windows; helpers to register sites, publish anomaly events the way the aiops_engine
publishes them (AnomalyDetected / AnomalyCleared envelopes on towerco.aiops.anomaly.*), and poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from towerco.aiops.v1 import aiops_pb2
from towerco.kpi.v1 import kpi_pb2_grpc
from towerco.noc.v1 import noc_pb2, noc_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh import bootstrap, db, events, subjects
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.embedded import EmbeddedNats
from mesh.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gwfake import serve_gateway  # noqa: E402

T = TypeVar("T")
# short windows so timers fire within a test (the defaults are minutes)
NOC_ENV = {"TOWERCO_NOC_AUTO_RESOLVE_HOLD_S": "2", "TOWERCO_NOC_TICK_S": "0.5", "TOWERCO_NOC_FLAP_WINDOW_S": "600",
           "TOWERCO_NOC_FLAP_THRESHOLD": "4", "TOWERCO_NOC_REOPEN_WINDOW_S": "3600",
           "TOWERCO_NOC_REGIONAL_WINDOW_S": "300", "TOWERCO_NOC_REGIONAL_MIN_SITES": "3",
           "TOWERCO_NOC_SLA_TTL_S": "5"}


def ts(epoch: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(epoch * 1e9))
    return t


@dataclass
class NocStack:
    settings: Settings
    targets: dict[str, str]
    pool: asyncpg.Pool
    js: object
    sites: sites_pb2_grpc.SitesServiceStub
    noc: noc_pb2_grpc.NocServiceStub
    channels: list[grpc.aio.Channel]
    base: str = ""  # the gateway's base URL (REST)
    servers: dict[str, bootstrap.RunningServer] = dataclasses.field(default_factory=dict)

    async def restart_noc(self) -> None:
        """Stop the NOC process's server (its consumer, timers and relay with it) and start a
        fresh one on the same database and NATS: what survives is what is in PostgreSQL."""
        from services.noc.server import setup as noc_setup

        port = self.servers["noc"].port
        await self.servers["noc"].stop(grace=1.0, drain_s=0)
        # the same port, so the gateway and the existing channel find the new process
        self.servers["noc"] = await bootstrap.start("noc", noc_setup, port=port, metrics_port=-1,
                                                    settings=self.settings)

    def token(self, role: str, tenant: str = "*", subject: str = "") -> str:
        return mint_token(subject=subject or f"{role}-{tenant}", tenant=tenant, roles=[role], settings=self.settings)

    def md(self, role: str = "noc_operator", tenant: str = "*", subject: str = "") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(role, tenant, subject)}"),)

    async def add_tenant(self, tenant: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.sites.CreateTenant(sites_pb2.CreateTenantRequest(
                tenant=sites_pb2.Tenant(id=tenant, name=tenant.title())), metadata=self.md("admin"))

    async def add_site(self, site_id: str, *, region: str = "north", tenants: tuple[str, ...] = (),
                       sla: float = 0.999) -> dict[str, str]:
        """A site leased by `tenants`; returns tenant -> tenancy id."""
        site = sites_pb2.Site(id=site_id, name=site_id, region=region)
        site.location.latitude, site.location.longitude = -1.0, 36.0
        site.power.dg_capacity_kva, site.power.battery_bank_ah, site.power.fuel_tank_l = 20.0, 400.0, 500.0
        await self.sites.CreateSite(sites_pb2.CreateSiteRequest(site=site), metadata=self.md("admin"))
        out = {}
        for t in tenants:
            await self.add_tenant(t)
            resp = await self.sites.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                site_id=site_id, tenant_id=t, sla_availability_target=sla, monthly_fee_minor=1000,
                currency_code="KES")), metadata=self.md("admin"))
            out[t] = resp.tenancy.id
        return out

    async def add_window(self, site_id: str, start: float, end: float) -> str:
        win = sites_pb2.CalendarWindow(site_id=site_id, start_time=ts(start), end_time=ts(end),
                                       category=sites_pb2.WINDOW_CATEGORY_PLANNED_MAINTENANCE, description="works")
        resp = await self.sites.CreateWindow(sites_pb2.CreateWindowRequest(window=win), metadata=self.md("admin"))
        return resp.window.id

    async def anomaly(self, site_id: str, detector: str, at: float, *, tenant_ids: tuple[str, ...] = (),
                      tenant_id: str = "", region: str = "north", severity: int = aiops_pb2.SEVERITY_MAJOR,
                      anomaly_id: str = "", metrics: tuple[str, ...] = ()) -> str:
        """Publish an AnomalyDetected as the aiops_engine's outbox relay does; returns its id."""
        aid = anomaly_id or str(uuid.uuid4())
        a = aiops_pb2.Anomaly(id=aid, site_id=site_id, region=region, tenant_ids=list(tenant_ids),
                              metrics=list(metrics), detector=detector, detector_version="1", layer=1, score=1.0,
                              severity=severity, state=aiops_pb2.ANOMALY_STATE_OPEN, tenant_id=tenant_id,
                              explanation=aiops_pb2.Explanation(summary=f"{detector} fired"))
        a.start_time.CopyFrom(ts(at))
        a.detect_time.CopyFrom(ts(at))
        a.update_time.CopyFrom(ts(at))
        await self._publish(subjects.AIOPS_ANOMALY_DETECTED, aiops_pb2.AnomalyDetected(anomaly=a), tenant_ids)
        return aid

    async def cleared(self, anomaly_id: str, site_id: str, detector: str, at: float, *,
                      tenant_ids: tuple[str, ...] = (), tenant_id: str = "", region: str = "north",
                      metrics: tuple[str, ...] = ()) -> None:
        a = aiops_pb2.Anomaly(id=anomaly_id, site_id=site_id, region=region, tenant_ids=list(tenant_ids),
                              metrics=list(metrics), detector=detector, detector_version="1", layer=1, score=1.0,
                              severity=aiops_pb2.SEVERITY_MAJOR, state=aiops_pb2.ANOMALY_STATE_CLEARED,
                              tenant_id=tenant_id)
        a.start_time.CopyFrom(ts(at - 1))
        a.end_time.CopyFrom(ts(at))
        a.update_time.CopyFrom(ts(at))
        await self._publish(subjects.AIOPS_ANOMALY_CLEARED, aiops_pb2.AnomalyCleared(anomaly=a), tenant_ids)

    async def _publish(self, subject: str, payload, tenant_ids) -> None:  # noqa: ANN001
        env = events.make_envelope(event_type=subject, source="aiops_engine", subject=subject, payload=payload,
                                   tenant_ids=list(tenant_ids))
        await events.publish_envelope(self.js, env)

    async def events_of(self, incident_id: str) -> list[tuple[str, noc_pb2.IncidentEvent]]:
        """(subject, IncidentEvent) of every change of this incident in the noc outbox, in order."""
        from mesh import outbox

        async with self.pool.acquire() as conn:
            rows = await outbox.read_since(conn, schema="noc", after_id=0, limit=100_000)
        out = []
        for _, env in rows:
            ev = noc_pb2.IncidentEvent()
            if env.payload.Unpack(ev) and ev.incident.id == incident_id:
                out.append((env.subject, ev))
        return out

    async def incidents(self, **filters) -> list[noc_pb2.Incident]:  # noqa: ANN003
        resp = await self.noc.ListIncidents(noc_pb2.ListIncidentsRequest(**filters), metadata=self.md("viewer"))
        return list(resp.incidents)


async def wait_for(check: Callable[[], Awaitable[T]], *, wait_s: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + wait_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@contextlib.asynccontextmanager
async def noc_stack(session_stack, env: dict[str, str] | None = None) -> AsyncIterator[NocStack]:
    from services.kpi.server import setup as kpi_setup
    from services.noc.server import setup as noc_setup
    from services.sites.server import setup as sites_setup

    name = f"noc_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(session_stack.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    database_url = session_stack.database_url.rsplit("/", 1)[0] + "/" + name
    nats = EmbeddedNats(session_stack.tmp / name).start()
    saved = {k: os.environ.get(k) for k in {**NOC_ENV, **(env or {})}}
    os.environ.update({**NOC_ENV, **(env or {})})
    reset_settings()
    home = session_stack.tmp / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(Settings.from_env(), database_url=database_url, nats_url=nats.url, home=home)
    await migrate(database_url, components=["sites", "kpi", "noc"])
    running: list[bootstrap.RunningServer] = []
    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    nc = await events.connect(nats.url, name="noc-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    channels: list[grpc.aio.Channel] = []
    try:
        targets = dict(base.targets)
        settings = dataclasses.replace(base, targets=targets)
        for svc, setup in (("sites", sites_setup), ("kpi", kpi_setup), ("noc", noc_setup)):
            srv = await bootstrap.start(svc, setup, port=0, metrics_port=-1, settings=settings)
            running.append(srv)
            targets[svc] = f"127.0.0.1:{srv.port}"
        sch = grpc.aio.insecure_channel(targets["sites"])
        nch = grpc.aio.insecure_channel(targets["noc"])
        channels += [sch, nch]
        from gateway.app import create_app
        from gateway.config import GatewayConfig

        app = create_app(GatewayConfig(services=("sites", "kpi", "noc"), targets=dict(targets), rate_per_s=0),
                         settings)
        async with serve_gateway(app) as url:
            ns = NocStack(settings, targets, pool, js, sites_pb2_grpc.SitesServiceStub(sch),
                          noc_pb2_grpc.NocServiceStub(nch), channels, url,
                          servers={s.service: s for s in running})
            try:
                yield ns
            finally:
                running[:] = list(ns.servers.values())
    finally:
        for ch in channels:
            await ch.close()
        for srv in reversed(running):
            await srv.stop(grace=1.0, drain_s=0)
        await nc.close()
        await pool.close()
        nats.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()


__all__ = ["NocStack", "noc_stack", "wait_for", "ts", "kpi_pb2_grpc"]
