"""Fixtures of the Sites service's integration tests: the schema migrated on the session stack,
and the real service (mesh.bootstrap.start, full interceptor chain, outbox relay) on a free port."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from towerco.sites.v1 import sites_pb2_grpc

from mesh import bootstrap
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.migrate import migrate
from services.sites.server import setup


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


@dataclass
class SitesServer:
    running: bootstrap.RunningServer
    settings: Settings
    channel: grpc.aio.Channel
    stub: sites_pb2_grpc.SitesServiceStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def token(self, *roles: str, tenant: str = "*", subject: str = "tester") -> str:
        return mint_token(subject=subject, tenant=tenant, roles=list(roles), settings=self.settings)

    def md(self, *roles: str, tenant: str = "*", subject: str = "tester") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(*roles, tenant=tenant, subject=subject)}"),)


@contextlib.asynccontextmanager
async def start_sites(stack, **kw) -> AsyncIterator[SitesServer]:
    """The real Sites service on a free port, no metrics endpoint."""
    reset_settings()
    settings = Settings.from_env()
    assert settings.database_url == stack.database_url
    running = await bootstrap.start("sites", setup, port=0, metrics_port=-1, settings=settings, **kw)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield SitesServer(running, settings, channel, sites_pb2_grpc.SitesServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(grace=1.0, drain_s=0)


@pytest.fixture(scope="module")
async def sites(stack, sites_db) -> AsyncIterator[SitesServer]:
    async with start_sites(stack) as server:
        yield server
