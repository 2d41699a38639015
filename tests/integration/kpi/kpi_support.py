"""Helpers of the KPI integration tests: register changes and telemetry published the way the
Sites service and the telemetry ingest API publish them, and polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

from mesh import events, subjects
from workers.kpi_calculator.consumer import Calculator, CalculatorConfig

T = TypeVar("T")
PARTITIONS = 16
NORMAL = {"mains_present": 1.0, "dg_running": 0.0, "dc_bus_v": 53.5, "load_a": 40.0,
          "fuel_level_l": 500.0, "battery_soc_pct": 100.0}


def ts(epoch_s: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromSeconds(int(epoch_s))
    return t


def hours_ago(n: int) -> int:
    """The minute index of the start of the hour n hours before the current one."""
    now_min = int(datetime.now(UTC).timestamp()) // 60
    return now_min - now_min % 60 - 60 * n


async def publish_change(js, change: sites_pb2.SitesChange, entity: str, kind: str = "created") -> None:
    subject = f"towerco.sites.{entity}.{kind}"
    env = events.make_envelope(event_type=subject, source="sites", subject=subject, payload=change)
    await events.publish_envelope(js, env)


async def register_site(js, site_id: str, *, region: str = "north", dg_kva: float = 20.0,
                        dg_delay_s: float = 120.0, bank_ah: float = 200.0) -> None:
    site = sites_pb2.Site(id=site_id, name=site_id, region=region, power=sites_pb2.PowerConfig(
        dg_capacity_kva=dg_kva, dg_start_delay_s=dg_delay_s, battery_bank_ah=bank_ah))
    await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_CREATED, site=site), "site")


async def register_tenancy(js, site_id: str, tenant_id: str, *, lo: float = 43.0, hi: float = 60.0,
                           sla: float = 0.999) -> str:
    t = sites_pb2.Tenancy(id=str(uuid.uuid4()), site_id=site_id, tenant_id=tenant_id, dc_voltage_min_v=lo,
                          dc_voltage_max_v=hi, sla_availability_target=sla)
    await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_CREATED, tenancy=t), "tenancy")
    return t.id


async def register_window(js, site_id: str, start_min: int, end_min: int, category: int,
                          tenants: Iterable[str] = ()) -> str:
    w = sites_pb2.CalendarWindow(id=str(uuid.uuid4()), site_id=site_id, start_time=ts(start_min * 60),
                                 end_time=ts(end_min * 60), category=category, tenant_ids=list(tenants))
    await publish_change(js, sites_pb2.SitesChange(kind=sites_pb2.CHANGE_KIND_CREATED, window=w), "window")
    return w.id


def minute_samples(site_id: str, minutes: Iterable[int], *, overrides=None, tenants: Iterable[str] = (),
                   link_down: dict[str, set[int]] | None = None) -> list[telemetry_pb2.Sample]:
    """One sample of every metric at second 30 of each minute; overrides: minute -> {metric: v}."""
    out = []
    for m in minutes:
        values = dict(NORMAL)
        values.update((overrides or {}).get(m, {}))
        t = ts(m * 60 + 30)
        for metric, v in values.items():
            out.append(telemetry_pb2.Sample(site_id=site_id, metric=metric, time=t, value=v))
        for tenant in tenants:
            up = 0.0 if m in (link_down or {}).get(tenant, set()) else 1.0
            out.append(telemetry_pb2.Sample(site_id=site_id, metric="tenant_link_up", time=t, value=up,
                                            tenant_id=tenant))
    return out


async def publish_samples(js, samples: list[telemetry_pb2.Sample], *, batch_id: str | None = None,
                          chunk: int = 2000) -> list[str]:
    """Publish as the ingest API does: one TelemetryBatch per partition, Nats-Msg-Id batch:partition."""
    by_part: dict[int, list] = {}
    for s in samples:
        by_part.setdefault(subjects.partition_of(s.site_id, PARTITIONS), []).append(s)
    ids = []
    for part, items in sorted(by_part.items()):
        for i in range(0, len(items), chunk):
            bid = f"{batch_id or uuid.uuid4()}-{i}"
            batch = telemetry_pb2.TelemetryBatch(batch_id=bid, partition=part, samples=items[i:i + chunk])
            batch.accepted_time.GetCurrentTime()
            await events.publish(js, f"telemetry.samples.{part}", batch.SerializeToString(),
                                 msg_id=f"{bid}:{part}")
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


@contextlib.asynccontextmanager
async def running_calculator(pool, js, site_ids, *, database_url=None, **kw):
    """A calculator owning the partitions of `site_ids`, with its own durable consumers."""
    parts = tuple(sorted({subjects.partition_of(s, PARTITIONS) for s in site_ids}))
    name = uuid.uuid4().hex[:8]
    cfg = CalculatorConfig(partitions=parts, publish_interval_s=0.2, publish_grace_s=0.0, replica=name,
                           recompute_interval_s=0.1, settle_s=0.2,
                           durable_prefix=f"kpi-test-{name}", **kw)
    calc = Calculator(pool, js, config=cfg, partition_count=PARTITIONS,
                      database_url=database_url or os.environ.get("DATABASE_URL"))
    task = asyncio.create_task(calc.run())
    try:
        yield calc
    finally:
        await calc.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        for c in calc.consumers:
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
