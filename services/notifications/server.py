"""Wiring of the Notifications service (port 7006): `python -m services.notifications.server`.

The notifications schema (services/notifications/migrations) is one domain's: this service and
its notifier worker. The service applies it at start (idempotent, advisory-locked), so either
process may start first; the worker waits for it.
"""

from __future__ import annotations

from towerco.notifications.v1 import notifications_pb2_grpc

from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.migrate import migrate
from services.notifications.servicer import NotificationsServicer

SERVICE = "notifications"
FULL_NAME = "towerco.notifications.v1.NotificationsService"


async def setup(rt: Runtime) -> list[ServiceSpec]:
    await migrate(rt.settings.database_url, components=["notifications"])
    servicer = NotificationsServicer(rt.pool)
    return [ServiceSpec(FULL_NAME, servicer, notifications_pb2_grpc.add_NotificationsServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup)
