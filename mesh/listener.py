"""One PostgreSQL LISTEN connection that survives the database going away.

    listener = PgListener(outbox.channel("sites"), on_notify=wake, database_url=url,
                          application_name="towerco:sites-watch")
    rt.spawn(listener.run())                 # keeps it connected until cancelled

or, driven by a loop of one's own (the outbox relay): `await listener.ensure()` before waiting,
`await listener.close()` after a failure. `on_notify` runs on every NOTIFY and also each time the
connection is (re)opened, since notifications sent while it was away are lost: the caller then
catches up by reading what it would have been told about. `on_lost` runs when the server ends
the connection.

The connection is a dedicated one (`database_url`), or one held from `pool` for the listener's
lifetime; a pooled connection is never handed back while it LISTENs (it is terminated first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from mesh import db

log = logging.getLogger("towerco.listener")


class PgListener:
    def __init__(self, channel: str, *, on_notify: Callable[[], None], on_lost: Callable[[], None] | None = None,
                 database_url: str | None = None, pool: asyncpg.Pool | None = None,
                 application_name: str = "towerco:listen", ping_s: float = 5.0,
                 max_backoff_s: float = 5.0) -> None:
        if not database_url and pool is None:
            raise ValueError("PgListener needs a database_url or a pool")
        self.channel = channel
        self.on_notify = on_notify
        self.on_lost = on_lost
        self.database_url = database_url
        self.pool = pool
        self.application_name = application_name
        self.ping_s = ping_s
        self.max_backoff_s = max_backoff_s
        self._conn: Any = None
        self._pooled = False
        self._lost = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> None:
        """Connect and LISTEN unless already listening; on a new connection call `on_notify`."""
        if self.connected:
            return
        await self.close()
        if self.database_url:
            conn = await db.connect(self.database_url, application_name=self.application_name)
            self._pooled = False
        else:
            assert self.pool is not None
            conn = await self.pool.acquire()
            self._pooled = True
        self._conn = conn
        self._lost = asyncio.Event()
        await conn.add_listener(self.channel, self._notified)
        conn.add_termination_listener(self._terminated)
        self.on_notify()  # catch up with anything committed while nobody listened

    async def run(self) -> None:
        """Stay connected until cancelled: ping every `ping_s` to notice a dead server, reconnect
        with backoff (0.5 s doubling to `max_backoff_s`) while the database is away."""
        delay = 0.5
        try:
            while True:
                try:
                    await self.ensure()
                    delay = 0.5
                    while self.connected and not self._lost.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._lost.wait(), timeout=self.ping_s)
                        if not self._lost.is_set():
                            await self._conn.execute("SELECT 1")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the database is away; callers poll meanwhile
                    log.debug("listener %s: %s: %s; reconnecting in %.1fs", self.channel, type(exc).__name__,
                              exc, delay)
                    await self.close()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
                else:
                    await self.close()
        finally:
            await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pooled:
            # Terminate (synchronous, so a second cancellation cannot skip it) and release shielded,
            # so pool.close() is never left waiting for a connection a cancelled task still holds.
            conn.terminate()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.pool.release(conn))  # type: ignore[union-attr]
            return
        with contextlib.suppress(Exception):
            await conn.remove_listener(self.channel, self._notified)
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)
            if not conn.is_closed():
                conn.terminate()

    def _notified(self, *_: Any) -> None:
        self.on_notify()

    def _terminated(self, *_: Any) -> None:
        self._lost.set()
        if self.on_lost is not None:
            self.on_lost()
