"""Fixtures of the AIOps integration tests: the aiops schema on the session PostgreSQL, a pool and
a JetStream context on the session NATS."""

from __future__ import annotations

import pytest

from mesh import db, events
from mesh.migrate import migrate


@pytest.fixture(scope="session")
async def aiops_db(stack) -> str:
    await migrate(stack.database_url, components=["aiops"])
    return stack.database_url


@pytest.fixture
async def pool(aiops_db):
    p = await db.create_pool(aiops_db, min_size=1, max_size=6)
    yield p
    await p.close()


@pytest.fixture
async def js(stack):
    nc = await events.connect(stack.nats_url, name="aiops-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    yield js
    await nc.close()
