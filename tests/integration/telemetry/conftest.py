"""Fixtures of the telemetry tests: the migrated schema and a pool on the session's PostgreSQL
(the platform of real processes is in telemetry_support.py)."""

from __future__ import annotations

import pytest

from mesh import db
from mesh.migrate import migrate


@pytest.fixture(scope="session")
async def telemetry_db(stack):
    await migrate(stack.database_url, components=["telemetry"])
    return stack.database_url


@pytest.fixture
async def pool(telemetry_db):
    p = await db.create_pool(telemetry_db, min_size=1, max_size=4)
    yield p
    await p.close()


