"""Process wiring of the ingestor: `python -m workers.ingestor.worker` (or `towerco serve ingestor`).

Connects to PostgreSQL and NATS (DATABASE_URL / NATS_URL), waits for the telemetry schema
(`towerco migrate` creates it), makes sure the streams exist, then consumes TELEMETRY until
SIGTERM/SIGINT, finishing the batch in hand before it exits. Run as many replicas as you like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from mesh import db, events
from mesh.config import get_settings
from mesh.observability import configure_logging, start_metrics_server
from workers.ingestor.consumer import Ingestor
from workers.ingestor.domain import IngestorConfig

log = logging.getLogger("towerco.ingestor")


async def wait_for_schema(pool, *, timeout_s: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            async with pool.acquire() as conn:
                if await conn.fetchval("SELECT to_regclass('telemetry.ingested_messages') IS NOT NULL"):
                    return
        except Exception as exc:  # noqa: BLE001
            if not db.is_unavailable(exc):
                raise
        if loop.time() > deadline:
            raise RuntimeError("the telemetry schema does not exist: run `towerco migrate`")
        await asyncio.sleep(1.0)


async def serve() -> None:
    settings = get_settings()
    config = IngestorConfig.from_env()
    configure_logging(settings, "ingestor")
    stop_metrics = None
    if config.metrics_port >= 0:
        port, stop_metrics = start_metrics_server(config.metrics_port, settings.host)
        log.info("metrics on %s:%d", settings.host, port)
    # synchronous_commit on whatever the server default: a message is acked only after its rows
    # are durable, so an acked message must never be lost by a database crash.
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4,
                                application_name="towerco:ingestor",
                                server_settings={"synchronous_commit": "on"})
    nc = await events.connect(settings.nats_url, name="ingestor")
    try:
        js = nc.jetstream()
        await wait_for_schema(pool)
        await events.ensure_streams(js)
        ingestor = Ingestor(pool, js, config=config)
        task = asyncio.create_task(ingestor.run())
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        log.info("ingestor consuming %s as %s", events.TELEMETRY_STREAM, "ingestor")
        done, _ = await asyncio.wait([task, asyncio.create_task(stopping.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # surface a crash
        await ingestor.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()
        if stop_metrics:
            stop_metrics()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
