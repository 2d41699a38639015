"""Wiring of the Sites service (port 7001): `python -m services.sites.server`."""

from __future__ import annotations

from towerco.sites.v1 import sites_pb2_grpc

from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.migrate import migrate
from mesh.outbox import OutboxRelay
from services.sites.servicer import SCHEMA, SitesServicer

SERVICE = "sites"
FULL_NAME = "towerco.sites.v1.SitesService"


async def setup(rt: Runtime) -> list[ServiceSpec]:
    # Idempotent and advisory-locked: a fresh database works without a separate `towerco migrate`.
    await migrate(rt.settings.database_url, components=[SERVICE])
    servicer = SitesServicer(rt.pool, page_secret=rt.settings.jwt_secret)
    rt.spawn(servicer.listen(rt.settings.database_url), name="sites-watch-listener")
    if rt.js is not None:
        relay = OutboxRelay(rt.pool, rt.js, schema=SCHEMA, database_url=rt.settings.database_url)
        rt.spawn(relay.run(), name="sites-outbox-relay")
    return [ServiceSpec(FULL_NAME, servicer, sites_pb2_grpc.add_SitesServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup)
