"""A tiny in-process grpc.aio peer for the SDK tests: the generated SitesService with a scripted
servicer (a test double of a peer service, not of gRPC). It records what every call carried."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from sdk import breaker as breaker_mod


@dataclass
class Seen:
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeSites(sites_pb2_grpc.SitesServiceServicer):
    """Answers GetSite/CreateSite/ListSites/WatchChanges. `script[method]` is a list of status
    codes to fail with, consumed one per call; `always[method]` fails every call; `delay_s`
    sleeps before answering; `downstream` (a stub) is called by GetSite with the propagated
    context, to prove a second hop forwards everything."""

    script: dict[str, list[grpc.StatusCode]] = field(default_factory=lambda: defaultdict(list))
    always: dict[str, grpc.StatusCode] = field(default_factory=dict)
    delay_s: float = 0.0
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: dict[str, list[Seen]] = field(default_factory=lambda: defaultdict(list))
    downstream: object | None = None

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen[method].append(Seen(md, context.time_remaining()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        code = self.always.get(method)
        if code is None and self.script[method]:
            code = self.script[method].pop(0)
        if code is not None:
            await context.abort(code, f"scripted {code.name}")

    async def GetSite(self, request, context):
        await self._enter("GetSite", context)
        if self.downstream is not None:
            from sdk.context import bind_from_server_context

            with bind_from_server_context(context):
                await self.downstream.GetSite(sites_pb2.GetSiteRequest(site_id="hop2"))
        return sites_pb2.GetSiteResponse(site=sites_pb2.Site(id=request.site_id, name="Site"))

    async def CreateSite(self, request, context):
        await self._enter("CreateSite", context)
        return sites_pb2.CreateSiteResponse(site=request.site)

    async def ListSites(self, request, context):
        await self._enter("ListSites", context)
        return sites_pb2.ListSitesResponse()

    async def WatchChanges(self, request, context) -> AsyncIterator[sites_pb2.WatchChangesResponse]:
        await self._enter("WatchChanges", context)
        for _ in range(3):
            yield sites_pb2.WatchChangesResponse()


@dataclass
class Peer:
    servicer: FakeSites
    server: grpc.aio.Server
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_peer(servicer: FakeSites | None = None) -> Peer:
    servicer = servicer or FakeSites()
    server = grpc.aio.server()
    sites_pb2_grpc.add_SitesServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Peer(servicer, server, port)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = await start_peer()
    try:
        yield p
    finally:
        await p.server.stop(0)


@pytest.fixture
async def make_peer() -> AsyncIterator:
    """Start extra peers (each with its own servicer); all are stopped after the test."""
    started: list[Peer] = []

    async def make(servicer: FakeSites | None = None) -> Peer:
        p = await start_peer(servicer)
        started.append(p)
        return p

    try:
        yield make
    finally:
        for p in started:
            await p.server.stop(0)


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker_mod.reset_registry()
    yield
    breaker_mod.reset_registry()


class FakeClock:
    """A monotonic clock the test moves by hand (injected into CircuitBreaker)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="package")
async def plat(stack):
    """The real Sites, Telemetry and KPI services with five sites (platform_support.py)."""
    from platform_support import platform

    async with platform(stack) as p:
        yield p
