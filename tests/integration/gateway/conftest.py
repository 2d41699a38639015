from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from gwfake import fake_server, serve_gateway

from gateway.app import create_app
from gateway.config import GatewayConfig
from mesh.auth import mint_token


@pytest.fixture
def token() -> str:
    return mint_token(subject="tester", tenant="*", roles=["admin"])


@pytest.fixture
def make_gateway():
    """Start a fake upstream and a gateway (config overrides as keywords) under uvicorn."""

    @contextlib.asynccontextmanager
    async def start(**overrides) -> AsyncIterator:
        async with fake_server() as (target, servicer, server):
            cfg = GatewayConfig(services=("testing",), targets={"testing": target}, **overrides)
            app = create_app(cfg)
            async with serve_gateway(app) as base:
                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    yield client, servicer, app, base, server

    return start


@pytest.fixture
async def gw(make_gateway, token):
    async with make_gateway() as (client, servicer, app, base, server):
        client.headers["authorization"] = f"Bearer {token}"
        yield client, servicer
