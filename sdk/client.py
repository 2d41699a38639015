"""The typed clients: one channel, a typed client for every service (sdk/generated.py).

    async with sdk.Client("127.0.0.1:7001", token=tok) as c:
        reply = await c.sites.GetSite(sites_pb2.GetSiteRequest(site_id="TWR-1"), timeout=2)
        async for site in c.sites.list_all(sites_pb2.ListSitesRequest(region="Nairobi")):
            ...

    with sdk.BlockingClient("127.0.0.1:7003", token=tok) as c:
        summary = c.kpi.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(...))

Every service in proto/ has an attribute (`.sites`, `.telemetry`, `.kpi`, ...; a new service
appears after `make gen`). Failures raise typed `sdk.errors.RpcError` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc

from sdk.channel import create_channel
from sdk.generated import SERVICES, AsyncServices, BlockingServices
from sdk.interceptors import TokenSource
from sdk.typed import LoopThread

__all__ = ["BlockingClient", "Client"]

S = TypeVar("S")


class Client(AsyncServices):
    """`async with Client("127.0.0.1:7001", token=tok) as c: await c.sites.GetSite(...)`.

    The typed service clients share one channel built by `create_channel` (keyword arguments are
    passed through). `.stub(SomeServiceStub)` gives a raw generated stub on the same channel.
    """

    def __init__(self, target: str, *, token: TokenSource = None, **channel_kwargs: Any) -> None:
        self.target = target
        self.channel: grpc.aio.Channel = create_channel(target, token=token, **channel_kwargs)
        for attr, (async_cls, _blocking) in SERVICES.items():
            setattr(self, attr, async_cls(self.channel))
        self._stubs: dict[object, Any] = {}

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S]) -> S:
        """A generated stub class (e.g. `sites_pb2_grpc.SitesServiceStub`) on this client's channel."""
        stub = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(self.channel)
        return cast(S, stub)

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class BlockingClient(BlockingServices):
    """The same clients for code without an event loop: each call blocks until it is answered.

    The calls run on a private event loop thread through an async `Client` (same channel
    behaviour: token, correlation id and deadline propagation, retries, breaker); the caller's
    `sdk.context` bindings go with each call. Streams come back as ordinary iterators.
    """

    def __init__(self, target: str, *, token: TokenSource = None, **channel_kwargs: Any) -> None:
        self.target = target
        self._runner = LoopThread()

        async def build() -> Client:
            return Client(target, token=token, **channel_kwargs)

        self.aio: Client = self._runner.run(build())
        for attr, (_async_cls, blocking_cls) in SERVICES.items():
            setattr(self, attr, blocking_cls(getattr(self.aio, attr), self._runner))

    def close(self, grace: float | None = None) -> None:
        if self._runner.loop.is_closed():
            return
        self._runner.run(self.aio.close(grace))
        self._runner.stop()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
