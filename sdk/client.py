"""A small typed client: one channel, stubs for every service."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from sdk.channel import create_channel
from sdk.interceptors import TokenSource

__all__ = ["Client"]

S = TypeVar("S")


class Client:
    """`async with Client("127.0.0.1:7001", token=tok) as c: await c.sites.GetSite(...)`.

    `.sites` and `.telemetry` are the generated stubs on one shared channel built by
    `create_channel` (keyword arguments are passed through); `.stub(SomeServiceStub)` gives any
    other generated stub on the same channel.
    """

    def __init__(self, target: str, *, token: TokenSource = None, **channel_kwargs: Any) -> None:
        from towerco.sites.v1 import sites_pb2_grpc
        from towerco.telemetry.v1 import telemetry_pb2_grpc

        self.target = target
        self.channel: grpc.aio.Channel = create_channel(target, token=token, **channel_kwargs)
        self.sites = sites_pb2_grpc.SitesServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self._stubs: dict[type, Any] = {}

    def stub(self, stub_class: type[S]) -> S:
        stub = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(self.channel)
        return stub

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
