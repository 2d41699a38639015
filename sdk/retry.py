"""Retries through gRPC's own service config: retryPolicy + retryThrottling.

gRPC core retries, not Python code: it re-sends a call only while no response has been
committed, honours the deadline, and throttles retries per channel when the server keeps
failing. We only decide *which* methods may be retried.

The idempotency rule, per method of every service passed in:

1. If the .proto method sets `option idempotency_level`, it decides: NO_SIDE_EFFECTS and
   IDEMPOTENT are retried, IDEMPOTENCY_UNKNOWN is not.
2. Otherwise the name decides: a method whose name starts with one of
   Get, List, Query, Latest, Watch, Tail (followed by an upper-case letter or nothing) is a read
   and is retried; everything else (Create, Update, Delete, Ingest, ...) is not.

Only UNAVAILABLE is retried (the server never saw the call or is going away); at most 4
attempts, backoff 0.1 s doubling to 2 s (with gRPC's own jitter); throttling with 10 tokens and
a token ratio of 0.1 stops retrying when more than about half of recent calls fail.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2

__all__ = [
    "READ_PREFIXES",
    "RetryPolicy",
    "default_services",
    "idempotent_methods",
    "is_idempotent",
    "retry_options",
    "service_config",
]

READ_PREFIXES: tuple[str, ...] = ("Get", "List", "Query", "Latest", "Watch", "Tail")

_IDEMPOTENT_LEVELS = frozenset(
    {
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)
    throttle_max_tokens: int = 10
    throttle_token_ratio: float = 0.1

    def as_json(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff_s),
            "maxBackoff": _duration(self.max_backoff_s),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable_codes),
        }


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _name_is_read(name: str) -> bool:
    for prefix in READ_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if not rest or rest[0].isupper():
                return True
    return False


def is_idempotent(method: _descriptor.MethodDescriptor) -> bool:
    """Whether `method` may be retried (see the module docstring for the rule)."""
    options = method.GetOptions()
    if options.HasField("idempotency_level"):
        return options.idempotency_level in _IDEMPOTENT_LEVELS
    return _name_is_read(method.name)


def idempotent_methods(services: Iterable[_descriptor.ServiceDescriptor]) -> list[tuple[str, str]]:
    """(service full name, method name) of every retryable method, in declaration order."""
    out = []
    for service in services:
        for method in service.methods:
            if is_idempotent(method):
                out.append((service.full_name, method.name))
    return out


@functools.cache
def default_services() -> tuple[_descriptor.ServiceDescriptor, ...]:
    """Every service defined by the generated `towerco.*` modules (imports *_pb2 modules only)."""
    import towerco  # the generated package (gen/)

    found: dict[str, _descriptor.ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(towerco.__path__, prefix="towerco."):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            found[service.full_name] = service
    return tuple(found[name] for name in sorted(found))


def service_config(
    services: Sequence[_descriptor.ServiceDescriptor] | None = None,
    policy: RetryPolicy | None = None,
) -> dict[str, Any]:
    """The service config dict: retryPolicy for idempotent methods plus retryThrottling."""
    policy = policy or RetryPolicy()
    services = default_services() if services is None else tuple(services)
    names = [{"service": svc, "method": m} for svc, m in idempotent_methods(services)]
    config: dict[str, Any] = {
        "retryThrottling": {
            "maxTokens": policy.throttle_max_tokens,
            "tokenRatio": policy.throttle_token_ratio,
        }
    }
    if names:
        config["methodConfig"] = [{"name": names, "retryPolicy": policy.as_json()}]
    return config


def retry_options(
    services: Sequence[_descriptor.ServiceDescriptor] | None = None,
    policy: RetryPolicy | None = None,
) -> list[tuple[str, Any]]:
    """Channel options that switch retries on with `service_config(...)`."""
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(services, policy), separators=(",", ":"))),
    ]
