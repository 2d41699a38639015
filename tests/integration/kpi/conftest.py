"""Fixtures of the KPI integration tests: the kpi schema on the session PostgreSQL, a pool, a
JetStream context on the session NATS, and a running calculator."""

from __future__ import annotations

import pytest

from mesh import db, events
from mesh.migrate import migrate


@pytest.fixture(scope="session")
async def kpi_db(stack) -> str:
    await migrate(stack.database_url, components=["kpi"])
    return stack.database_url


@pytest.fixture
async def pool(kpi_db):
    p = await db.create_pool(kpi_db, min_size=1, max_size=6)
    yield p
    await p.close()


@pytest.fixture
async def js(stack):
    nc = await events.connect(stack.nats_url, name="kpi-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    yield js
    await nc.close()
