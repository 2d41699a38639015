"""A platform of processes for the end-to-end feed tests: a fresh database on the session's
PostgreSQL, a nats-server of its own, and the Sites, KPI and NOC services and the gateway each
started as `python -m <module>` from the launcher's registry (cli/processes.py), on free ports, so
a test can kill -9 the NOC or restart the gateway. Helpers register sites, publish anomaly events
as the aiops_engine's outbox relay does, call REST, and read the feed over WebSocket and SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import httpx
from google.protobuf import timestamp_pb2
from towerco.aiops.v1 import aiops_pb2
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from cli.processes import BY_NAME
from mesh import events, subjects
from mesh.auth import mint_token
from mesh.embedded import EmbeddedNats, free_port
from mesh.migrate import migrate

ROOT = Path(__file__).resolve().parents[3]
NOC_ENV = {"TOWERCO_NOC_AUTO_RESOLVE_HOLD_S": "3600", "TOWERCO_NOC_TICK_S": "0.5",
           "TOWERCO_NOC_REGIONAL_MIN_SITES": "1000", "TOWERCO_NOC_SLA_TTL_S": "5"}


def ts(epoch: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(epoch * 1e9))
    return t


@dataclass
class Proc:
    name: str
    module: str
    env: dict
    log: Path
    p: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.p = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(10)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


@dataclass
class FeedStack:
    database_url: str
    nats: EmbeddedNats
    js: object
    procs: dict[str, Proc]
    ports: dict[str, int]
    gateway_url: str
    sites: sites_pb2_grpc.SitesServiceStub
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.gateway_url.replace("http://", "ws://") + "/api/v1/incidents:watch"

    def token(self, role: str = "viewer", tenant: str = "*") -> str:
        return mint_token(subject=f"{role}-{tenant}", tenant=tenant, roles=[role])

    def md(self, role: str = "admin", tenant: str = "*") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(role, tenant)}"),)

    async def add_site(self, site_id: str, *, region: str = "feed", tenants: tuple[str, ...] = ()) -> None:
        for t in tenants:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.sites.CreateTenant(sites_pb2.CreateTenantRequest(
                    tenant=sites_pb2.Tenant(id=t, name=t.title())), metadata=self.md())
        site = sites_pb2.Site(id=site_id, name=site_id, region=region)
        site.location.latitude, site.location.longitude = -1.0, 36.0
        site.power.dg_capacity_kva, site.power.battery_bank_ah, site.power.fuel_tank_l = 20.0, 400.0, 500.0
        await self.sites.CreateSite(sites_pb2.CreateSiteRequest(site=site), metadata=self.md())
        for t in tenants:
            await self.sites.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                site_id=site_id, tenant_id=t, sla_availability_target=0.999, monthly_fee_minor=1000,
                currency_code="KES")), metadata=self.md())

    async def anomaly(self, site_id: str, detector: str = "rule.mains_lost", *, at: float | None = None,
                      tenant_ids: tuple[str, ...] = (), region: str = "feed",
                      severity: int = aiops_pb2.SEVERITY_MAJOR) -> str:
        """Publish an AnomalyDetected as the aiops_engine's outbox relay does; its id."""
        at = time.time() if at is None else at
        aid = str(uuid.uuid4())
        a = aiops_pb2.Anomaly(id=aid, site_id=site_id, region=region, tenant_ids=list(tenant_ids),
                              detector=detector, detector_version="1", layer=1, score=1.0, severity=severity,
                              state=aiops_pb2.ANOMALY_STATE_OPEN,
                              explanation=aiops_pb2.Explanation(summary=f"{detector} fired"))
        for f in (a.start_time, a.detect_time, a.update_time):
            f.CopyFrom(ts(at))
        subject = subjects.AIOPS_ANOMALY_DETECTED
        env = events.make_envelope(event_type=subject, source="aiops_engine", subject=subject,
                                   payload=aiops_pb2.AnomalyDetected(anomaly=a), tenant_ids=list(tenant_ids))
        await events.publish_envelope(self.js, env)
        return aid

    async def rest(self, method: str, path: str, *, role: str = "noc_operator", tenant: str = "*",
                   body: dict | None = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=30) as c:
            return await c.request(method, path, json=body, headers={
                "Authorization": f"Bearer {self.token(role, tenant)}"})

    async def incident_of(self, site_id: str, *, wait_s: float = 60.0) -> dict:
        """The (first) incident of a site, over REST, once correlation has opened it."""
        end = time.monotonic() + wait_s
        while True:
            r = await self.rest("GET", f"/api/v1/incidents?siteId={site_id}", role="viewer")
            items = r.json().get("incidents", []) if r.status_code == 200 else []
            if items:
                return items[0]
            if time.monotonic() > end:
                raise AssertionError(f"no incident for {site_id}: {r.status_code} {r.text[:300]}")
            await asyncio.sleep(0.2)

    async def wait_noc(self) -> None:
        await wait_grpc(f"127.0.0.1:{self.ports['noc']}", timeout_s=120)

    async def wait_gateway(self) -> None:
        end = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(f"{self.gateway_url}/health")).status_code == 200:
                        return
                if time.monotonic() > end:
                    raise TimeoutError("gateway not healthy")
                await asyncio.sleep(0.2)

    async def restart(self, name: str, *, kill: bool = True) -> None:
        proc = self.procs[name]
        await asyncio.to_thread(proc.kill if kill else proc.stop)
        proc.start()
        if name == "gateway":
            await self.wait_gateway()
        else:
            await wait_grpc(f"127.0.0.1:{self.ports[name]}", timeout_s=120)


@contextlib.asynccontextmanager
async def feed_stack(session_stack, tmp: Path, *, heartbeat_s: float = 1.0) -> AsyncIterator[FeedStack]:
    name = f"feed_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(session_stack.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    database_url = session_stack.database_url.rsplit("/", 1)[0] + "/" + name
    nats = EmbeddedNats(tmp / "nats").start()
    procs: dict[str, Proc] = {}
    channels: list[grpc.aio.Channel] = []
    nc = None
    try:
        await migrate(database_url, components=["sites", "kpi", "noc"])
        nc = await events.connect(nats.url, name="noc-feed-e2e")
        js = nc.jetstream()
        await events.ensure_streams(js)
        ports = {n: free_port() for n in ("sites", "kpi", "noc", "telemetry", "aiops", "bi", "files",
                                          "notifications")}
        gw_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
        env.update(NOC_ENV, DATABASE_URL=database_url, NATS_URL=nats.url, TOWERCO_HOME=str(tmp / "home"),
                   TOWERCO_LOG_LEVEL="warning", TOWERCO_GATEWAY_PORT=str(gw_port),
                   TOWERCO_GATEWAY_RATE_LIMIT="0", TOWERCO_GATEWAY_HEARTBEAT_S=str(heartbeat_s),
                   TOWERCO_GATEWAY_STREAM_RESUME_S="90")
        for n, p in ports.items():
            env[f"TOWERCO_{n.upper()}_PORT"] = str(p)
            env[f"TOWERCO_{n.upper()}_TARGET"] = f"127.0.0.1:{p}"
        for n in ("sites", "kpi", "noc", "gateway"):
            procs[n] = Proc(n, BY_NAME[n].module, env, tmp / f"{n}.log")
            procs[n].start()
        for n in ("sites", "kpi", "noc"):
            await wait_grpc(f"127.0.0.1:{ports[n]}", timeout_s=120)
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{ports['sites']}")
        channels.append(ch)
        fs = FeedStack(database_url, nats, js, procs, ports, f"http://127.0.0.1:{gw_port}",
                       sites_pb2_grpc.SitesServiceStub(ch), channels)
        await fs.wait_gateway()
        yield fs
    finally:
        for ch in channels:
            await ch.close()
        for p in reversed(list(procs.values())):
            await asyncio.to_thread(p.stop)
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        nats.stop()
        admin = await asyncpg.connect(session_stack.database_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def wait_grpc(target: str, timeout_s: float = 60.0) -> None:
    """Until the gRPC server at `target` answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > end:
                raise TimeoutError(f"{target} did not become healthy")
            await asyncio.sleep(0.2)


# ------------------------------------------------------------------ clients


@dataclass
class WsClient:
    """A WebSocket feed client that resumes by itself: it reconnects after any close except
    4400/4401/4403, with `afterSequence` = the last sequence it received."""

    url: str
    token: str
    query: str = ""
    received: list[dict] = field(default_factory=list)
    heartbeats: int = 0
    closes: list[int] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    connects: int = 0
    cursor: int = 0
    final: int | None = None

    async def run(self) -> None:
        import websockets

        delay = 0.2
        while True:
            q = f"afterSequence={self.cursor}" + (f"&{self.query}" if self.query else "")
            try:
                async with websockets.connect(f"{self.url}?{q}", open_timeout=10, additional_headers={
                        "Authorization": f"Bearer {self.token}"}) as ws:
                    self.connects += 1
                    delay = 0.2
                    async for raw in ws:
                        frame = json.loads(raw)
                        if "result" in frame:
                            self.received.append(frame["result"])
                            self.cursor = int(frame["result"]["sequence"])
                        elif "heartbeat" in frame:
                            self.heartbeats += 1
                        elif "error" in frame:
                            self.errors.append(frame["error"])
                    self.closes.append(ws.close_code or 1000)
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                self.closes.append(code)
                if code in (4400, 4401, 4403):
                    self.final = code
                    return
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                self.closes.append(-1)  # gateway unreachable: retry
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def sequences(self) -> list[int]:
        return [int(m["sequence"]) for m in self.received]


async def ws_frames(url: str, *, token: str | None = None, timeout_s: float = 30.0
                    ) -> tuple[list[dict], int | None, str]:
    """Connect once and read every frame until the server closes: (frames, close code, reason)."""
    import websockets

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    frames: list[dict] = []
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout_s):
                while True:
                    frames.append(json.loads(await ws.recv()))
        return frames, ws.close_code, ws.close_reason or ""
