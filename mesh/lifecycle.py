"""What every worker process shares: its runtime (logs, metrics, pool, NATS, schema), and running
until SIGTERM/SIGINT with an event-loop heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from nats.js import JetStreamContext

from mesh import db, events
from mesh.config import Settings, get_settings
from mesh.observability import WORKER_HEARTBEAT, configure_logging, start_metrics_server

log = logging.getLogger("towerco.lifecycle")


class Worker(Protocol):
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class WorkerRuntime:
    settings: Settings
    pool: asyncpg.Pool
    js: JetStreamContext


@contextlib.asynccontextmanager
async def worker_runtime(name: str, *, table: str, **pool_kwargs: Any) -> AsyncIterator[WorkerRuntime]:
    """What a worker process sets up and tears down around its consumer: JSON logs, Prometheus on
    TOWERCO_<NAME>_METRICS_PORT (off when unset or negative; 0 takes a free port), the asyncpg pool
    (`pool_kwargs` for db.create_pool), NATS with the streams ensured, and `table` (its schema,
    from `towerco migrate`) waited for."""
    settings = get_settings()
    configure_logging(settings, name)
    stop_metrics = None
    wanted = settings.worker_metrics_ports.get(name, -1)
    if settings.is_set(f"TOWERCO_{name.upper()}_METRICS_PORT") and wanted >= 0:
        port, stop_metrics = start_metrics_server(wanted, settings.host)
        log.info("metrics on %s:%d", settings.host, port)
    pool = await db.create_pool(settings.database_url, **pool_kwargs)
    try:
        nc = await events.connect(settings.nats_url, name=name)
        try:
            js = nc.jetstream()
            await wait_for_table(pool, table)
            await events.ensure_streams(js)
            yield WorkerRuntime(settings, pool, js)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
    finally:
        await pool.close()
        if stop_metrics:
            stop_metrics()


async def wait_for_table(pool: asyncpg.Pool, table: str, *, timeout_s: float = 120.0) -> None:
    """Wait until `table` (schema-qualified) exists, riding out a database that is still starting;
    `towerco migrate` (or the owning service) creates it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            async with pool.acquire() as conn:
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                    return
        except Exception as exc:  # noqa: BLE001 - only an unreachable database is waited out
            if not db.is_unavailable(exc):
                raise
        if loop.time() > deadline:
            schema = table.split(".")[0]
            raise RuntimeError(f"the {schema} schema does not exist: run `towerco migrate`")
        await asyncio.sleep(1.0)


async def run_until_signalled(worker: Worker) -> None:
    """Run `worker.run()` until SIGTERM/SIGINT (then `worker.stop()` lets it finish the batch in
    hand) or until it crashes (the exception propagates, so the supervisor restarts the process)."""
    task = asyncio.create_task(worker.run())
    beat = asyncio.create_task(_heartbeat())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    beat.cancel()
    if task in done:
        task.result()  # surface a crash
    await worker.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _heartbeat(every_s: float = 1.0) -> None:
    """Proves the event loop turns: the metrics thread would answer even if it were stuck."""
    while True:
        WORKER_HEARTBEAT.set(time.time())
        await asyncio.sleep(every_s)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop when it can be imported (a dependency; less CPU
    per message than the default loop), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
