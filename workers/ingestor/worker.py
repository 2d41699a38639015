"""Process wiring of the ingestor: `python -m workers.ingestor.worker` (or `towerco serve ingestor`).

Connects to PostgreSQL and NATS (DATABASE_URL / NATS_URL), waits for the telemetry schema
(`towerco migrate` creates it), makes sure the streams exist, then consumes TELEMETRY until
SIGTERM/SIGINT, finishing the batch in hand before it exits. Run as many replicas as you like.
"""

from __future__ import annotations

import contextlib
import logging

from mesh import db, events, lifecycle
from mesh.config import get_settings
from mesh.observability import configure_logging, start_metrics_server
from workers.ingestor.consumer import Ingestor
from workers.ingestor.domain import IngestorConfig

log = logging.getLogger("towerco.ingestor")


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
        await lifecycle.wait_for_table(pool, "telemetry.ingested_messages")
        await events.ensure_streams(js)
        ingestor = Ingestor(pool, js, config=config)
        log.info("ingestor consuming %s as %s", events.TELEMETRY_STREAM, "ingestor")
        await lifecycle.run_until_signalled(ingestor)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()
        if stop_metrics:
            stop_metrics()


def main() -> None:
    lifecycle.run(serve())


if __name__ == "__main__":
    main()
