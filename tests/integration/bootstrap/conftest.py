"""Fixtures: a real mesh server started by mesh.bootstrap.start (see bootstrap_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from bootstrap_support import Calls, MeshServer, start_mesh_server

from mesh.config import Settings


@pytest.fixture
def mesh_settings() -> Settings:
    return Settings(max_message_bytes=256 * 1024)


@pytest.fixture
async def mesh_server(mesh_settings: Settings) -> AsyncIterator[MeshServer]:
    calls = Calls()
    running = await start_mesh_server(mesh_settings, calls)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield MeshServer(running, mesh_settings, calls, channel)
    finally:
        await channel.close()
        await running.stop(grace=1.0, drain_s=0)
