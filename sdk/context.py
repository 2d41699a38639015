"""Per-request values that outgoing calls forward: caller token, correlation id, deadline.

The server side (mesh) binds these for every incoming request, so a service that calls another
service forwards its caller's token, correlation id and remaining deadline without passing them
around by hand. Outside a server, bind them yourself:

    with sdk.context.bind(token=tok, correlation_id="abc", deadline=sdk.context.deadline_in(2.0)):
        await client.sites.GetSite(req)   # carries the token, "abc" and at most ~1.95 s

`deadline` is an absolute `time.monotonic()` value (or None for "no deadline").
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any, Final

__all__ = [
    "outgoing_token",
    "correlation_id",
    "deadline",
    "bind",
    "bind_from_server_context",
    "deadline_in",
    "remaining",
    "current_token",
    "current_correlation_id",
    "current_deadline",
    "new_correlation_id",
]

outgoing_token: ContextVar[str | None] = ContextVar("towerco_outgoing_token", default=None)
correlation_id: ContextVar[str | None] = ContextVar("towerco_correlation_id", default=None)
deadline: ContextVar[float | None] = ContextVar("towerco_deadline", default=None)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final[Any] = _Unset()


def deadline_in(seconds: float | None) -> float | None:
    """The absolute monotonic deadline `seconds` from now (None stays None)."""
    return None if seconds is None else time.monotonic() + seconds


def remaining(now: float | None = None) -> float | None:
    """Seconds left until the bound deadline (may be <= 0), or None when there is none."""
    dl = deadline.get()
    if dl is None:
        return None
    return dl - (time.monotonic() if now is None else now)


def current_token() -> str | None:
    return outgoing_token.get()


def current_correlation_id() -> str | None:
    return correlation_id.get()


def current_deadline() -> float | None:
    return deadline.get()


@contextlib.contextmanager
def bind(
    *,
    token: str | None = UNSET,
    correlation_id: str | None = UNSET,  # noqa: A002 - the public keyword name is the point
    deadline: float | None = UNSET,
) -> Iterator[None]:
    """Set any of the three values for the enclosed block and restore them afterwards.

    Only the keywords you pass change; pass None to clear one explicitly. A deadline is never
    extended: binding a later deadline than the one already bound keeps the earlier one.
    """
    resets: list[tuple[ContextVar[Any], Token[Any]]] = []
    if token is not UNSET:
        resets.append((outgoing_token, outgoing_token.set(_strip_bearer(token))))
    if correlation_id is not UNSET:
        resets.append((_CORRELATION, _CORRELATION.set(correlation_id or None)))
    if deadline is not UNSET:
        outer = _DEADLINE.get()
        value = deadline if deadline is None or outer is None else min(outer, deadline)
        resets.append((_DEADLINE, _DEADLINE.set(value)))
    try:
        yield
    finally:
        for var, tok in reversed(resets):
            var.reset(tok)


def bind_from_server_context(context: Any) -> contextlib.AbstractContextManager[None]:
    """Bind token, correlation id and deadline from a gRPC server-side `ServicerContext`.

    Reads `authorization` and `x-correlation-id` from the invocation metadata and the time the
    caller left us (`context.time_remaining()`). A request without a correlation id gets a new
    one, so every call it makes downstream shares it; a missing token or deadline binds None.
    """
    md: dict[str, Any] = {}
    for key, value in context.invocation_metadata() or ():
        md.setdefault(key.lower(), value)
    auth = md.get("authorization")
    cid = md.get("x-correlation-id")
    left = context.time_remaining()
    return bind(
        token=auth if isinstance(auth, str) and auth else None,
        correlation_id=cid if isinstance(cid, str) and cid else new_correlation_id(),
        deadline=None if left is None else time.monotonic() + left,
    )


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def _strip_bearer(token: str | None) -> str | None:
    if not token:
        return None
    if token[:7].lower() == "bearer ":
        return token[7:].strip() or None
    return token


# Aliases so `bind`'s keyword names can shadow the module-level variables inside it.
_CORRELATION = correlation_id
_DEADLINE = deadline
