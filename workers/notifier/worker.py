"""Process wiring of the notifier: `python -m workers.notifier.worker` (or `towerco serve
notifier`). Waits for the notifications schema (the Notifications service applies
services/notifications/migrations; it waits for their newest table, the outbox that carries its
dead letters), then consumes the NOC incident events and delivers notifications until
SIGTERM/SIGINT (settings: mesh.config.NotifierSettings). Prometheus metrics on
TOWERCO_NOTIFIER_METRICS_PORT (off when unset)."""

from __future__ import annotations

import logging

from mesh import lifecycle
from workers.notifier.consumer import Notifier, NotifierConfig

log = logging.getLogger("towerco.notifier")


async def serve() -> None:
    async with lifecycle.worker_runtime("notifier", table="notifications.outbox", min_size=2,
                                        max_size=16) as rt:
        cfg = NotifierConfig.from_env()
        log.info("notifier consuming incident events as %s; SMTP %s:%d", cfg.durable, cfg.smtp_host, cfg.smtp_port)
        await lifecycle.run_until_signalled(Notifier(rt.pool, rt.js, config=cfg,
                                                     database_url=rt.settings.database_url))


def main() -> None:
    lifecycle.run(serve())


if __name__ == "__main__":
    main()
