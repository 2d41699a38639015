"""Shared fixtures: the real infrastructure every integration test talks to.

By default the session starts its own PostgreSQL and NATS JetStream (embedded wheels, free
loopback ports, data in a temporary folder), so the suite never touches the system services on
5432/4222 nor a running `towerco up`. DATABASE_URL and NATS_URL point it at other servers instead;
fault-injection tests that restart a server are skipped then, because they need to own it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.embedded import EmbeddedNats, EmbeddedPostgres

# Tests must not inherit a developer's stack settings, except the two documented overrides.
for _name in [k for k in os.environ if k.startswith("TOWERCO_")]:
    del os.environ[_name]


@dataclass
class Stack:
    database_url: str
    nats_url: str
    pg: EmbeddedPostgres | None
    nats: EmbeddedNats | None
    tmp: Path

    def env(self) -> dict[str, str]:
        """Environment for a child process that must use this stack."""
        env = dict(os.environ)
        env["DATABASE_URL"] = self.database_url
        env["NATS_URL"] = self.nats_url
        return env

    def require_embedded(self) -> None:
        if self.pg is None or self.nats is None:
            pytest.skip("needs the embedded stack (DATABASE_URL/NATS_URL are set)")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="towerco-test-"))
    pg = nats = None
    database_url = os.environ.get("DATABASE_URL", "")
    nats_url = os.environ.get("NATS_URL", "")
    if not database_url:
        pg = EmbeddedPostgres(tmp / "pg", fast=True).start()
        database_url = pg.url
    if not nats_url:
        nats = EmbeddedNats(tmp / "nats").start()
        nats_url = nats.url
    os.environ["DATABASE_URL"] = database_url
    os.environ["NATS_URL"] = nats_url
    try:
        yield Stack(database_url, nats_url, pg, nats, tmp)
    finally:
        if nats:
            nats.stop()
        if pg:
            pg.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)  # server data and logs of this session
