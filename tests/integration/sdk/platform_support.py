"""The three real services (Sites, Telemetry, KPI) on free ports of the session stack, for the
SDK's typed-client and wheel tests, with a few sites created through the Sites API."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from towerco.sites.v1 import sites_pb2 as pb

from mesh import bootstrap
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.migrate import migrate


@dataclass
class Platform:
    settings: Settings
    targets: dict[str, str]   # service -> host:port
    region: str               # the region of `site_ids`, unique to this run
    site_ids: list[str]

    def token(self, *roles: str, tenant: str = "*") -> str:
        return mint_token(subject="sdk-tester", tenant=tenant, roles=list(roles or ("admin",)),
                          settings=self.settings)


def new_site(site_id: str, region: str) -> pb.Site:
    return pb.Site(id=site_id, name=f"Site {site_id}", region=region,
                   location={"latitude": -1.28, "longitude": 36.82}, type=pb.SITE_TYPE_GREENFIELD,
                   power=pb.PowerConfig(grid=pb.GRID_CONNECTION_THREE_PHASE, dg_capacity_kva=20,
                                        fuel_tank_l=500, battery_bank_ah=400, battery_voltage_v=48,
                                        rectifier_capacity_kw=12))


TENANTS = ("sdkco", "wheelco")


@contextlib.asynccontextmanager
async def platform(stack, *, sites: int = 5) -> AsyncIterator[Platform]:
    import sdk
    from services.aiops.server import setup as aiops_setup
    from services.bi.server import setup as bi_setup
    from services.files.server import setup as files_setup
    from services.kpi.server import setup as kpi_setup
    from services.sites.server import setup as sites_setup
    from services.telemetry.server import setup as telemetry_setup

    await migrate(stack.database_url, components=["sites", "telemetry", "kpi", "aiops", "files", "bi"])
    reset_settings()
    home = stack.tmp / f"sdk-home-{uuid.uuid4().hex[:6]}"  # the Files service's blobs
    home.mkdir(parents=True)
    base = dataclasses.replace(Settings.from_env(), home=home)
    running = []
    try:
        running.append(await bootstrap.start("sites", sites_setup, port=0, metrics_port=-1, settings=base))
        targets = {"sites": f"127.0.0.1:{running[0].port}"}
        settings = dataclasses.replace(base, targets={**base.targets, **targets})
        for name, setup in (("telemetry", telemetry_setup), ("kpi", kpi_setup), ("aiops", aiops_setup),
                            ("files", files_setup), ("bi", bi_setup)):
            srv = await bootstrap.start(name, setup, port=0, metrics_port=-1, settings=settings)
            running.append(srv)
            targets[name] = settings.targets[name] = f"127.0.0.1:{srv.port}"  # the next ones find it
        u = uuid.uuid4().hex[:6].upper()
        p = Platform(settings, targets, region=f"sdk-{u.lower()}", site_ids=[f"SDK{u}-{i:03d}" for i in range(sites)])
        async with sdk.Client(targets["sites"], token=p.token("admin"), breaker=False) as client:
            for sid in p.site_ids:
                await client.sites.CreateSite(pb.CreateSiteRequest(site=new_site(sid, p.region)), timeout=10)
            # the tenants whose availability policy the SDK tests read (the KPI service asks Sites)
            for tid in TENANTS:
                with contextlib.suppress(grpc.aio.AioRpcError):  # already there from an earlier module
                    await client.sites.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(id=tid, name=tid)),
                                                    timeout=10)
        yield p
    finally:
        for srv in reversed(running):
            await srv.stop(grace=1.0, drain_s=0)
