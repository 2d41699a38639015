"""The channel factory every gRPC client in Towerco uses (services, gateway, external SDK users)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor

from sdk.breaker import BreakerConfig, CircuitBreaker, breaker_for
from sdk.interceptors import DEFAULT_MARGIN_S, BreakerInterceptor, PropagationInterceptor, TokenSource
from sdk.retry import RetryPolicy, retry_options

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "create_channel"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def create_channel(
    target: str,
    *,
    token: TokenSource = None,
    breaker: bool | BreakerConfig | CircuitBreaker = True,
    retry: bool | RetryPolicy = True,
    services: Sequence[_descriptor.ServiceDescriptor] | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive_time_ms: int = 300_000,
    keepalive_timeout_ms: int = 20_000,
    deadline_margin_s: float = DEFAULT_MARGIN_S,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` ("host:port") with Towerco's client behaviour.

    token        str, or a sync/async callable returning one; otherwise the context's token.
    breaker      True: the process-wide breaker of `target` (default config); a BreakerConfig:
                 the process-wide breaker of `target` created with it (first use wins); a
                 CircuitBreaker: that one; False: none.
    retry        True / a RetryPolicy: service-config retries for idempotent methods of
                 `services` (default: every towerco service in the generated code); False: off.
    options      extra channel options; they override the defaults below.
    credentials  grpc.ssl_channel_credentials(...) for TLS; insecure when None.
    Keepalive pings default to every 5 min, the interval a default gRPC server accepts.
    """
    chain: list[grpc.aio.ClientInterceptor] = PropagationInterceptor(
        token, margin_s=deadline_margin_s
    ).grpc_interceptors()
    if breaker is not False:
        if isinstance(breaker, CircuitBreaker):
            cb = breaker
        else:
            cb = breaker_for(target, breaker if isinstance(breaker, BreakerConfig) else None)
        chain.extend(BreakerInterceptor(cb).grpc_interceptors())
    chain.extend(interceptors)

    merged: dict[str, Any] = {
        "grpc.max_send_message_length": max_message_bytes,
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.keepalive_time_ms": keepalive_time_ms,
        "grpc.keepalive_timeout_ms": keepalive_timeout_ms,
    }
    if retry is not False:
        policy = retry if isinstance(retry, RetryPolicy) else None
        merged.update(retry_options(services, policy))
    else:
        merged["grpc.enable_retries"] = 0
    merged.update(dict(options or ()))
    opts = list(merged.items())
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=chain)
    return grpc.aio.secure_channel(target, credentials, options=opts, interceptors=chain)
