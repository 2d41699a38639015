"""Process wiring of the ingestor: `python -m workers.ingestor.worker` (or `towerco serve ingestor`).

Connects to PostgreSQL and NATS (DATABASE_URL / NATS_URL), waits for the telemetry schema
(`towerco migrate` creates it), makes sure the streams exist, then consumes TELEMETRY until
SIGTERM/SIGINT, finishing the batch in hand before it exits. Run as many replicas as you like.
"""

from __future__ import annotations

import logging

from mesh import events, lifecycle
from workers.ingestor.consumer import Ingestor
from workers.ingestor.domain import IngestorConfig

log = logging.getLogger("towerco.ingestor")


async def serve() -> None:
    config = IngestorConfig.from_env()
    # synchronous_commit on whatever the server default: a message is acked only after its rows
    # are durable, so an acked message must never be lost by a database crash.
    async with lifecycle.worker_runtime("ingestor", table="telemetry.ingested_messages", min_size=1, max_size=4,
                                        application_name="towerco:ingestor",
                                        server_settings={"synchronous_commit": "on"}) as rt:
        ingestor = Ingestor(rt.pool, rt.js, config=config)
        log.info("ingestor consuming %s as %s", events.TELEMETRY_STREAM, "ingestor")
        await lifecycle.run_until_signalled(ingestor)


def main() -> None:
    lifecycle.run(serve())


if __name__ == "__main__":
    main()
