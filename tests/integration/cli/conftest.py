"""Run the real `towerco` command in a temporary home with every port free and private, so the
tests never collide with a developer's `towerco up`, the system services or each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mesh.config import DEFAULT_PORTS, METRICS_PORT_OFFSET, WORKER_METRICS_PORTS
from mesh.embedded import free_port


def _free_pair() -> int:
    """A free port whose metrics twin (port + METRICS_PORT_OFFSET) is free too."""
    return free_port(twin_offset=METRICS_PORT_OFFSET)


@dataclass
class Towerco:
    home: Path
    env: dict[str, str]
    cwd: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 120, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        env = {k: v for k, v in self.env.items() if k not in without}
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started.append(proc)
        return proc

    def port(self, name: str) -> int:
        return int(self.env[f"TOWERCO_{name.upper()}_PORT"])

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


def _make(tmp_path: Path, *, database_url: str = "", nats_url: str = "") -> Iterator[Towerco]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
    env.pop("DATABASE_URL", None)
    env.pop("NATS_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    if nats_url:
        env["NATS_URL"] = nats_url
    env["TOWERCO_HOME"] = str(tmp_path / "home")
    for name in DEFAULT_PORTS:
        env[f"TOWERCO_{name.upper()}_PORT"] = str(_free_pair())
    env["TOWERCO_GATEWAY_PORT"] = str(_free_pair())
    for name in WORKER_METRICS_PORTS:
        env[f"TOWERCO_{name.upper()}_METRICS_PORT"] = str(_free_pair())
    # the local notification sink, and the notifier sending to it
    env["TOWERCO_SINK_SMTP_PORT"] = env["TOWERCO_NOTIFIER_SMTP_PORT"] = str(_free_pair())
    env["TOWERCO_SINK_HTTP_PORT"] = str(_free_pair())
    towerco = Towerco(home=tmp_path / "home", env=env, cwd=tmp_path)
    try:
        yield towerco
    finally:
        # Never leave a stack behind, whatever the test did.
        towerco.run("down", "--timeout", "30", timeout=90)
        for proc in towerco.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def towerco_embedded() -> Iterator[Towerco]:
    """`towerco` with DATABASE_URL/NATS_URL unset: it starts its own embedded PostgreSQL and NATS.

    The home is NOT under pytest's tmp_path: as root, PostgreSQL runs as an unprivileged user that
    must traverse the path, and every new pytest session (other test runs on this machine) resets
    /tmp/pytest-of-<user> to mode 0700.
    """
    tmp = Path(tempfile.mkdtemp(prefix="towerco-cli-test-"))
    try:
        yield from _make(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def towerco_external(tmp_path: Path, stack) -> Iterator[Towerco]:
    """`towerco` pointed at the test session's PostgreSQL and NATS (DATABASE_URL/NATS_URL set)."""
    yield from _make(tmp_path, database_url=stack.database_url, nats_url=stack.nats_url)
