"""Towerco client SDK: usable alone with grpcio, protobuf and the generated code.

    import sdk
    async with sdk.Client("127.0.0.1:7001", token=my_jwt) as client:
        reply = await client.sites.GetSite(sites_pb2.GetSiteRequest(site_id="..."), timeout=2)
"""

from sdk import context
from sdk.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError, State, breaker_for
from sdk.channel import create_channel
from sdk.client import Client
from sdk.retry import RetryPolicy, service_config

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "Client",
    "RetryPolicy",
    "State",
    "breaker_for",
    "context",
    "create_channel",
    "service_config",
]
