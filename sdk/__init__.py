"""Towerco client SDK: usable alone with grpcio, protobuf, googleapis-common-protos and the
generated code (its own distribution, towerco-sdk: sdk/pyproject.toml; docs/sdk.md).

    import sdk
    async with sdk.Client("127.0.0.1:7001", token=my_jwt) as client:
        reply = await client.sites.GetSite(sites_pb2.GetSiteRequest(site_id="..."), timeout=2)
        async for site in client.sites.list_all(sites_pb2.ListSitesRequest()):
            ...
"""

from sdk import context, errors
from sdk.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError, State, breaker_for
from sdk.channel import create_channel
from sdk.client import BlockingClient, Client
from sdk.retry import RetryPolicy, service_config

__all__ = [
    "BlockingClient",
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "Client",
    "RetryPolicy",
    "State",
    "breaker_for",
    "context",
    "create_channel",
    "errors",
    "service_config",
]
