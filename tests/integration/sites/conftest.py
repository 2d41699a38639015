"""Fixtures of the Sites service's integration tests: the schema migrated on the session stack,
and the real service (mesh.bootstrap.start, full interceptor chain, outbox relay) on a free port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sites_support import SitesServer, start_sites

from mesh.migrate import migrate


@pytest.fixture(scope="session")
async def sites_db(stack) -> str:
    """The session database with the sites schema applied (the migration runs once)."""
    await migrate(stack.database_url, components=["sites"])
    return stack.database_url


@pytest.fixture
async def conn(sites_db):
    c = await asyncpg.connect(sites_db)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def uniq() -> str:
    """A short unique token so every test's rows are its own (upper-case, usable in site ids)."""
    return uuid.uuid4().hex[:8].upper()


@pytest.fixture(scope="module")
async def sites(stack, sites_db) -> AsyncIterator[SitesServer]:
    async with start_sites(stack) as server:
        yield server
