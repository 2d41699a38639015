"""Fixtures of the live-feed tests: each test gets a NATS server of its own (embedded, JetStream
file storage, the platform's streams), so its EVENTS stream holds only what it published and it
may restart the server, purge the stream or count consumers without disturbing other tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from mesh import events
from mesh.embedded import EmbeddedNats, wait_port
from services.noc.feed import IncidentFeed


@pytest.fixture
def feed_nats(tmp_path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(feed_nats):
    client = await events.connect(feed_nats.url, name="noc-feed-tests")
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
def feed(nc) -> IncidentFeed:
    # short heartbeats so a lost consumer is noticed within a few seconds
    return IncidentFeed(nc, heartbeat_s=0.5, stale_after=4, outage_s=60, inactive_threshold_s=5)


@pytest.fixture
def restart_nats(feed_nats):
    """`await restart_nats()`: stop the server (SIGKILL), start it again on the same port and data."""

    async def restart() -> None:
        await asyncio.to_thread(feed_nats.stop, True)
        await asyncio.to_thread(feed_nats.start)
        await asyncio.to_thread(wait_port, feed_nats.host, feed_nats.port, 30)

    return restart


@pytest.fixture
async def closing() -> AsyncIterator[list]:
    """Feeds registered here are closed at the end of the test (their consumers removed)."""
    feeds: list = []
    yield feeds
    for f in feeds:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(f.aclose(), 10)
