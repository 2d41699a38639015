"""Helpers of the telemetry tests: a small platform of real processes
(the Sites service and the telemetry service through mesh.bootstrap on free ports, and an
ingestor either in-process or as a child process)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2 as tpb
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Platform:
    settings: Settings
    sites_server: bootstrap.RunningServer
    telemetry_server: bootstrap.RunningServer
    channel: grpc.aio.Channel
    sites: sites_pb2_grpc.SitesServiceStub
    telemetry: telemetry_pb2_grpc.TelemetryServiceStub
    pool: object

    def md(self, *roles: str, tenant: str = "*") -> tuple[tuple[str, str], ...]:
        token = mint_token(subject="tester", tenant=tenant, roles=list(roles), settings=self.settings)
        return (("authorization", f"Bearer {token}"),)

    @property
    def admin(self):
        return self.md("admin")

    @property
    def service(self):
        return self.md("service")

    async def create_sites(self, n: int, *, prefix: str | None = None, tenants: tuple[str, ...] = ()) -> list[str]:
        prefix = prefix or f"T{uuid.uuid4().hex[:6].upper()}"
        ids = [f"{prefix}-{i:03d}" for i in range(n)]
        for sid in ids:
            await self.sites.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                id=sid, name=f"Site {sid}", region="test", location={"latitude": -1.0, "longitude": 36.0},
                type=sites_pb2.SITE_TYPE_GREENFIELD)), metadata=self.admin)
        for tenant in tenants:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.sites.CreateTenant(sites_pb2.CreateTenantRequest(
                    tenant=sites_pb2.Tenant(id=tenant, name=tenant)), metadata=self.admin)
            for sid in ids:
                await self.sites.CreateTenancy(sites_pb2.CreateTenancyRequest(
                    tenancy=sites_pb2.Tenancy(site_id=sid, tenant_id=tenant)), metadata=self.admin)
        return ids

    async def count(self, site_ids: list[str]) -> tuple[int, float]:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT count(*), coalesce(sum(value), 0) FROM telemetry.samples WHERE site_id = ANY($1)", site_ids)
        return row[0], row[1]

    async def wait_count(self, site_ids: list[str], want: int, wait_s: float = 30.0) -> tuple[int, float]:
        deadline = time.monotonic() + wait_s
        while True:
            got = await self.count(site_ids)
            if got[0] >= want or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.1)


def batch(site_ids: list[str], t: float, *, metric: str = "dc_bus_v", value=lambda i: 50.0 + (i % 5),
          batch_id: str | None = None) -> tpb.IngestRequest:
    req = tpb.IngestRequest(batch_id=batch_id or uuid.uuid4().hex)
    for i, sid in enumerate(site_ids):
        s = req.samples.add(site_id=sid, metric=metric, value=value(i))
        s.time.FromNanoseconds(int(t * 1e9))
    return req


@contextlib.asynccontextmanager
async def platform(stack, *, ingestor: bool) -> AsyncIterator[Platform]:
    reset_settings()
    base = Settings.from_env()
    sites_running = await bootstrap.start("sites", _sites_setup(), port=0, metrics_port=-1, settings=base)
    targets = dict(base.targets)
    targets["sites"] = f"127.0.0.1:{sites_running.port}"
    settings = dataclasses.replace(base, targets=targets)
    from services.telemetry.server import setup as telemetry_setup

    tel_running = await bootstrap.start("telemetry", telemetry_setup, port=0, metrics_port=-1, settings=settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{tel_running.port}",
                                        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    sites_channel = grpc.aio.insecure_channel(f"127.0.0.1:{sites_running.port}")
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    task = None
    nc = None
    ing = None
    if ingestor:
        from workers.ingestor.consumer import Ingestor
        from workers.ingestor.domain import IngestorConfig

        nc = await events.connect(settings.nats_url, name="test-ingestor")
        ing = Ingestor(pool, nc.jetstream(), config=IngestorConfig(batch=100))
        task = asyncio.create_task(ing.run())
    try:
        yield Platform(settings, sites_running, tel_running, channel, sites_pb2_grpc.SitesServiceStub(sites_channel),
                       telemetry_pb2_grpc.TelemetryServiceStub(channel), pool)
    finally:
        if ing is not None:
            await ing.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await nc.close()
        await channel.close()
        await sites_channel.close()
        await tel_running.stop(grace=1.0, drain_s=0)
        await sites_running.stop(grace=1.0, drain_s=0)
        await pool.close()


def _sites_setup():
    from services.sites.server import setup

    return setup


class IngestorProcess:
    """`python -m workers.ingestor.worker` as a child process on the test stack."""

    def __init__(self, stack, log_path: Path) -> None:
        self.env = stack.env()
        self.env["TOWERCO_INGESTOR_BATCH"] = "50"
        self.env["TOWERCO_INGESTOR_ACK_WAIT_S"] = "2"  # a killed replica's messages come back fast
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.ingestor.worker"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def pg_ctl(stack, action: str) -> None:
    """Run `EmbeddedPostgres(...).<action>` for the session's PostgreSQL in a fresh single-threaded
    Python process (use it for "start()"): pg_ctl forked straight from this busy multi-threaded
    test process (gRPC, NATS threads) has been seen to die with SIGSEGV before it ran."""
    pg = stack.pg
    code = ("from pathlib import Path; from mesh.embedded import EmbeddedPostgres; "
            f"EmbeddedPostgres(Path({str(pg.data_dir)!r}), port={pg.port}, fast={pg.fast!r}).{action}")
    for attempt in range(3):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and (action != "start()" or pg.running()):
            return
        if attempt == 2:
            raise RuntimeError(f"pg {action} failed: {done.stdout}{done.stderr}")
        time.sleep(0.5)
