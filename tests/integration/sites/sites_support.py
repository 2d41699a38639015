"""Helpers shared by the Sites integration tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status
from towerco.sites.v1 import sites_pb2 as pb
from towerco.sites.v1 import sites_pb2_grpc

from mesh import bootstrap
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import unpack_details, violations_of
from services.sites.server import setup


async def fails(call, code: grpc.StatusCode):
    """Await a call that must fail with `code`; return its google.rpc.Status (from the trailer)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, (err.value.code(), err.value.details())
    status = rpc_status.from_call(err.value)
    assert status is not None, "no grpc-status-details-bin trailer"
    return status


def fields(status) -> list[str]:
    return [v.field for v in violations_of(status)]


def detail(status, kind):
    found = [m for m in unpack_details(status) if isinstance(m, kind)]
    assert found, f"no {kind.__name__} in {status}"
    return found[0]


def ts(dt: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(dt)
    return t


def new_site(site_id: str, region: str = "nairobi", **kw) -> pb.Site:
    site = pb.Site(id=site_id, name=f"Site {site_id}", region=region,
                   location={"latitude": kw.pop("lat", -1.28), "longitude": kw.pop("lon", 36.82)},
                   type=pb.SITE_TYPE_GREENFIELD,
                   power=pb.PowerConfig(grid=pb.GRID_CONNECTION_THREE_PHASE, dg_capacity_kva=20, fuel_tank_l=500,
                                        battery_bank_ah=400, battery_voltage_v=48, rectifier_capacity_kw=12))
    for k, v in kw.items():
        setattr(site, k, v)
    return site


@dataclass
class SitesServer:
    running: bootstrap.RunningServer
    settings: Settings
    channel: grpc.aio.Channel
    stub: sites_pb2_grpc.SitesServiceStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def token(self, *roles: str, tenant: str = "*", subject: str = "tester") -> str:
        return mint_token(subject=subject, tenant=tenant, roles=list(roles), settings=self.settings)

    def md(self, *roles: str, tenant: str = "*", subject: str = "tester") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(*roles, tenant=tenant, subject=subject)}"),)


@contextlib.asynccontextmanager
async def start_sites(stack, **kw) -> AsyncIterator[SitesServer]:
    """The real Sites service on a free port, no metrics endpoint."""
    reset_settings()
    settings = Settings.from_env()
    assert settings.database_url == stack.database_url
    running = await bootstrap.start("sites", setup, port=0, metrics_port=-1, settings=settings, **kw)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield SitesServer(running, settings, channel, sites_pb2_grpc.SitesServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(grace=1.0, drain_s=0)
