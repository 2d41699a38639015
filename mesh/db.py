"""PostgreSQL connection pools for server processes.

`create_pool` opens an asyncpg pool whose sessions run in UTC and carry an application name, and
waits (up to ~30 s) for a server that is still starting. The pool needs no babysitting after a
PostgreSQL restart: asyncpg notices a dead connection on its next use, that one query fails with a
connection error, and the pool opens a fresh connection for the next acquire. `is_unavailable`
tells such infrastructure failures (worth a retry or an UNAVAILABLE status) apart from real SQL
errors.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger("towerco.db")

CONNECT_TIMEOUT_S = 30.0

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.ConnectionFailureError,
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down
    asyncpg.CrashShutdownError,
    ConnectionError,  # refused, reset, aborted
    asyncio.TimeoutError,  # acquire or connect timed out
)

_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                   errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL}

_INTERFACE_HINTS = ("pool is closing", "pool is closed", "connection is closed", "connection was closed",
                    "cannot perform operation: another operation is in progress")


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means "the database cannot be reached right now" rather than "this SQL is
    wrong": a retry later may succeed, and a gRPC handler should answer UNAVAILABLE."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return any(h in text for h in _INTERFACE_HINTS)
    if isinstance(exc, OSError):
        if exc.errno in _NETWORK_ERRNOS:
            return True
        text = str(exc)  # asyncio: "Multiple exceptions: [Errno 111] Connect call failed ..."
        return "Connect call failed" in text or "Multiple exceptions" in text
    return False


def _default_application_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"towerco:{name}"[:63]


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Pool reset hook: pooled connections hold no session state (see create_pool)."""


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str | None = None,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    command_timeout: float | None = None,
    **kwargs: Any,
) -> asyncpg.Pool:
    """Open an asyncpg pool on `url`; retry while the server is starting, for up to
    `connect_timeout_s`, then raise the last connection error.

    Sessions use timezone UTC and the given application name; the statement cache stays on.
    `init` runs on every new connection (e.g. to register type codecs).

    Pooled connections carry no session state: nothing on a pooled connection may SET a
    session variable, LISTEN, take a session-level advisory lock or hold a cursor outside a
    transaction (use `connect()` for that, as migrations, outbox relays and watchers do). So a
    released connection needs no reset query: asyncpg still rolls back an open transaction and
    drops listeners itself, and the `RESET ALL; UNLISTEN *; ...` round trip it would otherwise
    send on every release is saved (one database round trip per request). Pass `reset=` to
    override.
    """
    if not url:
        raise ValueError("database url is empty (set DATABASE_URL or start the embedded stack)")
    settings = {"timezone": "UTC", "application_name": application_name or _default_application_name()}
    settings.update(kwargs.pop("server_settings", {}) or {})
    kwargs.setdefault("reset", _no_session_state)
    deadline = time.monotonic() + connect_timeout_s
    delay = 0.1
    while True:
        try:
            return await asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, server_settings=settings, init=init,
                command_timeout=command_timeout, **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database not ready, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def connect(url: str, *, application_name: str | None = None,
                  connect_timeout_s: float = CONNECT_TIMEOUT_S) -> asyncpg.Connection:
    """One dedicated connection (e.g. for LISTEN or an advisory lock), with the same retry and
    session settings as `create_pool`."""
    settings = {"timezone": "UTC", "application_name": application_name or _default_application_name()}
    deadline = time.monotonic() + connect_timeout_s
    delay = 0.1
    while True:
        try:
            return await asyncpg.connect(url, server_settings=settings)
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
