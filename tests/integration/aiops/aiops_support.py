"""Helpers of the AIOps integration tests: register changes and telemetry published the way the
Sites service and the ingest API publish them, a running engine, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from google.protobuf import timestamp_pb2
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

from mesh import events, subjects
from workers.aiops_engine.consumer import AiopsEngine, EngineConfig

T = TypeVar("T")
PARTITIONS = 16
NORMAL = {"mains_present": 1.0, "dg_running": 0.0, "dc_bus_v": 53.5, "load_a": 40.0, "fuel_level_l": 500.0,
          "battery_soc_pct": 100.0, "cabinet_temp_c": 30.0, "door_open": 0.0, "rectifier_fault": 0.0}


def ts(epoch_s: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(epoch_s * 1e9))
    return t


async def publish_change(js, change: sites_pb2.SitesChange, entity: str, kind: str = "created") -> None:
    subject = f"towerco.sites.{entity}.{kind}"
    env = events.make_envelope(event_type=subject, source="sites", subject=subject, payload=change)
    await events.publish_envelope(js, env)


async def register_site(js, site_id: str, *, tenant: str | None = None, region: str = "north",
                        dg_kva: float = 20.0, dg_delay_s: float = 60.0, bank_ah: float = 400.0,
                        tank_l: float = 1000.0) -> None:
    site = sites_pb2.Site(id=site_id, name=site_id, region=region, power=sites_pb2.PowerConfig(
        grid=sites_pb2.GRID_CONNECTION_THREE_PHASE, dg_capacity_kva=dg_kva, dg_start_delay_s=dg_delay_s,
        battery_bank_ah=bank_ah, fuel_tank_l=tank_l))
    await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_CREATED, site=site), "site")
    if tenant:
        t = sites_pb2.Tenancy(id=str(uuid.uuid4()), site_id=site_id, tenant_id=tenant, dc_voltage_min_v=43.0,
                              dc_voltage_max_v=60.0)
        await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_CREATED, tenancy=t), "tenancy")


def snapshots(site_id: str, start: float, n: int, *, every: float = 15.0,
              change: Callable[[int, float], dict] | None = None) -> list[telemetry_pb2.Sample]:
    """n snapshots of every metric, `every` seconds apart; change(i, t) overrides values."""
    out = []
    for i in range(n):
        t = start + i * every
        values = dict(NORMAL)
        if change is not None:
            values.update(change(i, t))
        for metric, v in values.items():
            out.append(telemetry_pb2.Sample(site_id=site_id, metric=metric, time=ts(t), value=v))
    return out


async def publish_samples(js, samples: list[telemetry_pb2.Sample], *, batch_id: str | None = None,
                          chunk: int = 2000) -> list[str]:
    """As the ingest API does: one TelemetryBatch per partition, Nats-Msg-Id batch:partition."""
    by_part: dict[int, list] = {}
    for s in samples:
        by_part.setdefault(subjects.partition_of(s.site_id, PARTITIONS), []).append(s)
    ids = []
    for part, items in sorted(by_part.items()):
        for i in range(0, len(items), chunk):
            bid = f"{batch_id or uuid.uuid4()}-{i}"
            batch = telemetry_pb2.TelemetryBatch(batch_id=bid, partition=part, samples=items[i:i + chunk])
            batch.accepted_time.GetCurrentTime()
            await events.publish(js, f"telemetry.samples.{part}", batch.SerializeToString(), msg_id=f"{bid}:{part}")
            ids.append(f"{bid}:{part}")
    return ids


async def eventually(fn: Callable[[], Awaitable[T]], check: Callable[[T], bool], *, within: float = 30.0,
                     interval: float = 0.2) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await fn()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(interval)


def partitions_of(site_ids: Iterable[str]) -> tuple[int, ...]:
    return tuple(sorted({subjects.partition_of(s, PARTITIONS) for s in site_ids}))


@contextlib.asynccontextmanager
async def running_engine(pool, js, site_ids, *, database_url=None, **kw):
    """An engine owning the partitions of `site_ids`, with its own durable consumers."""
    name = uuid.uuid4().hex[:8]
    cfg = EngineConfig(partitions=partitions_of(site_ids), replica=name, durable_prefix=f"aiops-test-{name}",
                       tick_s=0.5, adjust_s=0.3, **kw)
    engine = AiopsEngine(pool, js, config=cfg, partition_count=PARTITIONS,
                         database_url=database_url or os.environ.get("DATABASE_URL"))
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        await engine.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        for c in engine.consumers:
            with contextlib.suppress(Exception):
                await js.delete_consumer(c.stream, c.durable)


@contextlib.asynccontextmanager
async def serve_asgi(app):
    """Run an ASGI app (the gateway) under uvicorn in this event loop; yields its base URL."""
    import uvicorn

    from mesh.embedded import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    server.install_signal_handlers = lambda: None
    task = asyncio.ensure_future(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
