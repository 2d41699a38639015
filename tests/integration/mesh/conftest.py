"""Fixtures for the mesh data-layer tests: a fresh database per test, a pool, a NATS connection
with the streams in place, an outbox schema of our own, and private servers for fault injection
(stopped and restarted inside a block, always brought back)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mesh import db, events, outbox
from mesh.embedded import EmbeddedNats, EmbeddedPostgres, wait_port


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture
async def fresh_db(stack) -> AsyncIterator[str]:
    """The URL of a brand-new, empty database (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    try:
        yield with_database(stack.database_url, name)
    finally:
        admin = await db.connect(stack.database_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def pool(stack) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(stack.database_url, min_size=1, max_size=5, application_name="mesh-tests")
    try:
        yield p
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.close(), timeout=5)


@pytest.fixture
async def schema(pool) -> AsyncIterator[str]:
    """An outbox schema private to this test."""
    name = f"outbox_test_{uuid.uuid4().hex[:12]}"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA {name}; CREATE TABLE {name}.things (id int PRIMARY KEY);"
                           + outbox.outbox_ddl(name))
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            async with pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
async def nc(stack):
    client = await events.connect(stack.nats_url, name="mesh-tests")
    await events.ensure_streams(client.jetstream())
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout=5)


@pytest.fixture
def js(nc):
    return nc.jetstream()


@pytest.fixture
def topic() -> str:
    """A subject prefix on the EVENTS stream that no other test uses."""
    return f"towerco.test.t{uuid.uuid4().hex[:12]}"


async def _stream_messages(js, stream: str, subject: str, *, expect: int, wait_s: float = 10.0) -> list:
    """Every message stored in `stream` on `subject` (an ephemeral ordered read), waiting until at
    least `expect` are there or `wait_s` passes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wait_s
    while True:
        info = await js.stream_info(stream, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0) if "*" not in subject and ">" not in subject \
            else sum((info.state.subjects or {}).values())
        if count >= expect or loop.time() > end:
            break
        await asyncio.sleep(0.1)
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    out = []
    try:
        while len(out) < count:
            out.append(await sub.next_msg(timeout=5))
    finally:
        await sub.unsubscribe()
    return out


@contextlib.asynccontextmanager
async def _nats_down(server: EmbeddedNats):
    """Stop `server` for the block; it always comes back on the same port and data directory
    (JetStream file storage persists)."""
    await asyncio.to_thread(server.stop)
    try:
        yield
    finally:
        if not server.running():
            await asyncio.to_thread(server.start)
        await asyncio.to_thread(wait_port, server.host, server.port, 30)


@contextlib.asynccontextmanager
async def _postgres_down(server: EmbeddedPostgres):
    """Stop `server` for the block; it always comes back and accepts sessions again."""
    await asyncio.to_thread(server.stop, "fast")
    try:
        yield
    finally:
        if not server.running():
            await asyncio.to_thread(server.start)
        conn = await db.connect(server.url, connect_timeout_s=30)
        await conn.close()


@pytest.fixture
def stream_messages():
    """`await stream_messages(js, stream, subject, expect=n)` -> stored messages on a subject."""
    return _stream_messages


# Fault injection runs against private servers, so restarting one never disturbs the pools and
# connections other tests hold on the session's servers.


@pytest.fixture
def private_nats(tmp_path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_pg(tmp_path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg", fast=True).start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture
def nats_down(private_nats):
    """`async with nats_down(): ...` - the private NATS is stopped inside the block, then restarted."""
    return lambda: _nats_down(private_nats)


@pytest.fixture
def postgres_down(private_pg):
    """`async with postgres_down(): ...` - the private PostgreSQL is stopped inside the block, then
    restarted."""
    return lambda: _postgres_down(private_pg)


@pytest.fixture
async def private_js(private_nats):
    """A JetStream context on the private NATS, streams in place."""
    client = await events.connect(private_nats.url, name="mesh-tests-private")
    await events.ensure_streams(client.jetstream())
    try:
        yield client.jetstream()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout=5)


@pytest.fixture
async def private_pool(private_pg) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(private_pg.url, min_size=1, max_size=5, application_name="mesh-tests-private")
    try:
        yield p
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.close(), timeout=5)
