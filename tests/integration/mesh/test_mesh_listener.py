"""mesh.listener.PgListener against the real PostgreSQL: notifications, a catch-up call on every
(re)connection, and reconnecting after the server ends its connection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg

from mesh.listener import PgListener


async def _eventually(check, within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_notifies_catches_up_and_reconnects(stack):
    channel = f"t_{uuid.uuid4().hex[:10]}"
    calls: list[str] = []
    lost: list[int] = []
    listener = PgListener(channel, on_notify=lambda: calls.append("n"), on_lost=lambda: lost.append(1),
                          database_url=stack.database_url, application_name=f"towerco:test-{channel}",
                          ping_s=0.2)
    task = asyncio.create_task(listener.run())
    conn = await asyncpg.connect(stack.database_url)
    try:
        await _eventually(lambda: listener.connected and calls == ["n"])  # the catch-up call
        await conn.execute(f"NOTIFY {channel}")
        await _eventually(lambda: len(calls) == 2)

        killed = await conn.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE application_name = $1", f"towerco:test-{channel}")
        assert killed == 1
        await _eventually(lambda: lost and listener.connected and len(calls) >= 3)  # reconnected, caught up
        before = len(calls)
        await conn.execute(f"NOTIFY {channel}")
        await _eventually(lambda: len(calls) == before + 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await conn.close()
    assert not listener.connected


async def test_a_pooled_listener_gives_its_connection_back(stack):
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    listener = PgListener("t_pooled", on_notify=lambda: None, pool=pool)
    await listener.ensure()
    assert listener.connected
    await listener.close()
    await asyncio.wait_for(pool.close(), timeout=5)
