"""mesh.db against the session's real PostgreSQL: session settings, error classification,
start-up retry, recovery from killed connections."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from mesh import db
from mesh.embedded import free_port


async def test_pool_sessions_are_utc_and_named(stack):
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=2, application_name="mesh-db-test")
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW timezone") == "UTC"
            assert await conn.fetchval("SHOW application_name") == "mesh-db-test"
            stamp = await conn.fetchval("SELECT '2026-01-01 12:00:00+05'::timestamptz")
            assert stamp.utcoffset().total_seconds() == 0 and stamp.hour == 7
    finally:
        await pool.close()


async def test_errors_are_classified(stack):
    with pytest.raises(Exception) as refused:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout=2)
    assert db.is_unavailable(refused.value)

    pool = await db.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.PostgresSyntaxError) as bad_sql:
                await conn.execute("SELEC 1")
            assert not db.is_unavailable(bad_sql.value)
            with pytest.raises(asyncpg.UniqueViolationError) as dup:
                await conn.execute("CREATE TEMP TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1), (1)")
            assert not db.is_unavailable(dup.value)
            pid = conn.get_server_pid()
        # kill the pooled backend behind the pool's back: the next use fails as "unavailable" ...
        admin = await asyncpg.connect(stack.database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)
        try:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - asyncpg may or may not notice before the query
            assert db.is_unavailable(exc), repr(exc)
        # ... and the pool then serves a fresh connection by itself
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            assert conn.get_server_pid() != pid
        with pytest.raises(asyncio.TimeoutError) as timed_out:
            async with pool.acquire(), pool.acquire(timeout=0.2):
                pass
        assert db.is_unavailable(timed_out.value)
    finally:
        await pool.close()
    assert not db.is_unavailable(ValueError("x"))
    assert db.is_unavailable(asyncpg.InterfaceError("pool is closing"))
    assert not db.is_unavailable(asyncpg.InterfaceError("cannot call Connection.execute(): wrong args"))


async def test_gives_up_after_the_connect_timeout():
    started = time.monotonic()
    with pytest.raises(OSError):
        await db.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout_s=1.0)
    assert 0.5 <= time.monotonic() - started < 10
    with pytest.raises(ValueError):
        await db.create_pool("")


@pytest.mark.slow
async def test_create_pool_waits_for_a_starting_server(private_pg, postgres_down):
    async with postgres_down():
        pending = asyncio.ensure_future(db.create_pool(private_pg.url, connect_timeout_s=30))
        await asyncio.sleep(1.0)
        assert not pending.done()  # still retrying
    pool = await asyncio.wait_for(pending, timeout=30)
    try:
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


@pytest.mark.slow
async def test_pool_recovers_by_itself_after_postgres_restart(private_pg, postgres_down):
    pool = await db.create_pool(private_pg.url, min_size=3, max_size=3)
    try:
        async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c:
            before = {a.get_server_pid(), b.get_server_pid(), c.get_server_pid()}
        async with postgres_down():
            with pytest.raises(Exception) as down:
                await pool.fetchval("SELECT 1")
            assert db.is_unavailable(down.value), repr(down.value)
        failures = 0
        for _ in range(10):  # each dead pooled connection may fail once, never more
            try:
                assert await pool.fetchval("SELECT 1") == 1
                break
            except Exception as exc:  # noqa: BLE001
                assert db.is_unavailable(exc), repr(exc)
                failures += 1
        assert failures <= 3
        async with pool.acquire() as a, pool.acquire() as b:
            assert await a.fetchval("SELECT 2") == 2 and await b.fetchval("SELECT 3") == 3
            assert not ({a.get_server_pid(), b.get_server_pid()} & before)
    finally:
        await pool.close()


async def test_release_without_reset_query_still_ends_an_abandoned_transaction(stack):
    """The pool skips asyncpg's reset query (pooled connections hold no session state), but a
    connection released mid-transaction is still rolled back, so nothing half-done leaks."""
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS public.mesh_db_reset_probe (v int)")
            await conn.execute("TRUNCATE public.mesh_db_reset_probe")
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO public.mesh_db_reset_probe VALUES (1)")
            # released without commit or rollback
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # same connection reused
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM public.mesh_db_reset_probe") == 0
            await conn.execute("DROP TABLE public.mesh_db_reset_probe")
    finally:
        await pool.close()
