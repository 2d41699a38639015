"""Wiring of the telemetry service (port 7002): `python -m services.telemetry.server`.

Environment beyond mesh.config: TOWERCO_TELEMETRY_RETENTION_DAYS (90) - samples older than this
are refused at ingest (and their partitions dropped by the ingestor).
"""

from __future__ import annotations

import grpc
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh import auth, config, subjects
from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.migrate import migrate
from sdk import Client
from services.telemetry.servicer import TelemetryServicer, site_info
from services.telemetry.sites import SiteDirectory

SERVICE = "telemetry"
FULL_NAME = "towerco.telemetry.v1.TelemetryService"


def retention_days() -> int:
    """TOWERCO_TELEMETRY_RETENTION_DAYS (mesh.config.TelemetrySettings, shared with the ingestor)."""
    return config.load(config.TelemetrySettings).retention_days


def site_directory(rt: Runtime) -> tuple[SiteDirectory, Client]:
    client = Client(rt.settings.target("sites"), token=lambda: auth.service_token(SERVICE))

    async def fetch_all() -> list[tuple[str, frozenset[str]]]:
        return [site_info(s) async for s in client.sites.list_all(sites_pb2.ListSitesRequest(), page_size=1000,
                                                                  timeout=30)]

    async def fetch_one(site_id: str) -> tuple[str, frozenset[str]] | None:
        try:
            reply = await client.sites.GetSite(sites_pb2.GetSiteRequest(site_id=site_id), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise
        return site_info(reply.site)

    return SiteDirectory(partitions=rt.settings.partitions, fetch_all=fetch_all, fetch_one=fetch_one), client


async def setup(rt: Runtime) -> list[ServiceSpec]:
    await migrate(rt.settings.database_url, components=[SERVICE])
    sites, client = site_directory(rt)
    servicer = TelemetryServicer(pool=rt.pool, nc=rt.nc, js=rt.js, sites=sites,
                                 partitions=rt.settings.partitions, retention_days=retention_days())

    async def on_event(msg) -> None:
        servicer.apply_event(msg.data)

    sub = await rt.nc.subscribe(subjects.SITES_EVENTS, cb=on_event)
    rt.spawn(sites.keep_fresh(), name="telemetry-site-directory")

    async def close() -> None:
        await sub.unsubscribe()
        await client.close()

    rt.on_shutdown(close)
    return [ServiceSpec(FULL_NAME, servicer, telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup)
