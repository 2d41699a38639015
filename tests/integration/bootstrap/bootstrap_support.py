"""A real mesh server (mesh.bootstrap.start) with small canned servicers, no database or NATS.

The servicers exercise every RPC kind and every error path of the interceptor chain:
SitesService (unary and server streaming), TelemetryService.IngestStream (client streaming) and a
bidirectional echo registered as a generic handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_interceptor import AsyncServerInterceptor
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from mesh import auth
from mesh.bootstrap import RunningServer, Runtime, ServiceSpec, start
from mesh.config import Settings
from mesh.errors import NotFound
from sdk import context as sdk_context

ECHO_SERVICE = "towerco.test.v1.EchoService"


@dataclass
class Calls:
    """What the handlers saw, so tests can tell whether a handler ran at all."""

    names: list[str] = field(default_factory=list)


class CannedSites(sites_pb2_grpc.SitesServiceServicer):
    def __init__(self, calls: Calls):
        self.calls = calls

    async def GetSite(self, request, context):
        self.calls.names.append("GetSite")
        identity = auth.require_role("viewer", "tenant_viewer")
        if request.site_id == "BOOM-1":
            raise RuntimeError("secret internals: password=hunter2 at /srv/db.py")
        if request.site_id == "MISSING-1":
            raise NotFound(f"site {request.site_id} not found", resource_type="site", resource_name=request.site_id)
        if request.site_id == "DB-DOWN":
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
        if request.site_id == "SELF-ABORT":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted by the handler")
        left = sdk_context.remaining()
        site = sites_pb2.Site(
            id=request.site_id,
            name=sdk_context.current_correlation_id() or "",
            region=identity.tenant,
        )
        site.power.dg_start_delay_s = -1.0 if left is None else left
        # The outgoing token bound for internal calls is the caller's own token.
        site.tenant_ids.append("token-forwarded" if sdk_context.current_token() == identity.token else "no")
        return sites_pb2.GetSiteResponse(site=site)

    async def CreateSite(self, request, context):
        self.calls.names.append("CreateSite")
        auth.require_role("admin")
        return sites_pb2.CreateSiteResponse(site=request.site)

    async def ListSites(self, request, context):
        self.calls.names.append("ListSites")
        auth.require_role("viewer", "tenant_viewer")
        if request.query == "slow":
            await asyncio.sleep(1.0)
        return sites_pb2.ListSitesResponse(sites=[sites_pb2.Site(id="NBO-0001"), sites_pb2.Site(id="NBO-0002")])

    async def WatchChanges(self, request, context):
        self.calls.names.append("WatchChanges")
        auth.require_role("viewer")
        if request.after_sequence == 300:  # a live feed that never ends
            seq = 300
            while True:
                seq += 1
                yield sites_pb2.WatchChangesResponse(sequence=seq)
                await asyncio.sleep(0.02)
        for seq in range(request.after_sequence + 1, request.after_sequence + 4):
            yield sites_pb2.WatchChangesResponse(sequence=seq)
            if request.after_sequence == 100:
                raise NotFound("the change log was truncated", resource_type="change", resource_name=str(seq))
            if request.after_sequence == 200:
                raise KeyError("internal detail that must not leak")


class CannedTelemetry(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, calls: Calls):
        self.calls = calls

    async def IngestStream(self, request_iterator, context):
        self.calls.names.append("IngestStream")
        auth.require_role("service", "noc_operator")
        batches = accepted = 0
        async for batch in request_iterator:
            batches += 1
            accepted += len(batch.samples)
        return telemetry_pb2.IngestStreamResponse(batches=batches, accepted=accepted)


def add_echo(servicer: object, server: grpc.aio.Server) -> None:
    calls: Calls = servicer  # type: ignore[assignment]

    async def echo(request_iterator, context) -> AsyncIterator[telemetry_pb2.IngestStreamResponse]:
        calls.names.append("Echo")
        auth.require_role("viewer")
        n = 0
        async for batch in request_iterator:
            n += 1
            yield telemetry_pb2.IngestStreamResponse(batches=n, accepted=len(batch.samples))

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Echo": grpc.stream_stream_rpc_method_handler(
                echo,
                request_deserializer=telemetry_pb2.IngestStreamRequest.FromString,
                response_serializer=telemetry_pb2.IngestStreamResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


def echo_stub(channel: grpc.aio.Channel):
    return channel.stream_stream(
        f"/{ECHO_SERVICE}/Echo",
        request_serializer=telemetry_pb2.IngestStreamRequest.SerializeToString,
        response_deserializer=telemetry_pb2.IngestStreamResponse.FromString,
    )


@dataclass
class MeshServer:
    running: RunningServer
    settings: Settings
    calls: Calls
    channel: grpc.aio.Channel

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def token(self, *roles: str, tenant: str = "*", subject: str = "alice") -> str:
        return auth.mint_token(subject=subject, tenant=tenant, roles=list(roles), settings=self.settings)

    def md(self, *roles: str, tenant: str = "*", **extra: str) -> tuple[tuple[str, str], ...]:
        pairs = [("authorization", f"Bearer {self.token(*roles, tenant=tenant)}")]
        pairs.extend(extra.items())
        return tuple(pairs)

    @property
    def sites(self) -> sites_pb2_grpc.SitesServiceStub:
        return sites_pb2_grpc.SitesServiceStub(self.channel)

    @property
    def telemetry(self) -> telemetry_pb2_grpc.TelemetryServiceStub:
        return telemetry_pb2_grpc.TelemetryServiceStub(self.channel)


async def start_mesh_server(settings: Settings, calls: Calls, *, metrics_port: int = 0,
                            extra_interceptors: tuple = ()) -> RunningServer:
    async def setup(rt: Runtime) -> list[ServiceSpec]:
        assert rt.pool is None and rt.js is None
        return [
            ServiceSpec("towerco.sites.v1.SitesService", CannedSites(calls),
                        sites_pb2_grpc.add_SitesServiceServicer_to_server),
            ServiceSpec("towerco.telemetry.v1.TelemetryService", CannedTelemetry(calls),
                        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server),
            ServiceSpec(ECHO_SERVICE, calls, add_echo),
        ]

    return await start("sites", setup, port=0, metrics_port=metrics_port, database=False, nats=False,
                       settings=settings, extra_interceptors=extra_interceptors)


class SlowDoor(AsyncServerInterceptor):
    """Holds every call at the door until its deadline has passed (to exercise the deadline guard).

    It blocks the loop on purpose: an await would let gRPC cancel the call at its deadline before the
    guard sees it, while a busy loop (the real-world case) lets the call reach the chain late."""

    async def intercept(self, method, request_or_iterator, context, method_name):
        left = context.time_remaining()
        if left is not None:
            time.sleep(left + 0.05)  # noqa: ASYNC251 - blocking is the point (see docstring)
        return await method(request_or_iterator, context)
