"""The console's browser tests: a real `towerco up` (embedded PostgreSQL and NATS, every process,
the demo fleet, the simulator) in a private home on free ports, and Debian's Chromium driven by
Playwright for Python with a fresh profile per browser.

Without Chromium (or Playwright) every test here is skipped with the reason, which pytest's
summary (-ra) prints. `.ci/run` installs Debian's chromium and chromium-driver first, so CI runs
them. Screenshots of each page go to test-artifacts/console/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from console_support import CHROMIUM_FLAGS, chromium_path, sign_in, skip_reason

from mesh.config import DEFAULT_PORTS, METRICS_PORT_OFFSET, WORKER_METRICS_PORTS
from mesh.embedded import free_port

SITES = 20
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items) -> None:
    reason = skip_reason()
    if reason is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def _free_pair() -> int:
    """A free port whose metrics twin (port + METRICS_PORT_OFFSET) is free too."""
    return free_port(twin_offset=METRICS_PORT_OFFSET)


@dataclass
class Up:
    """A running `towerco up -d`."""

    home: Path
    env: dict[str, str]
    base: str  # the gateway, e.g. http://127.0.0.1:41234
    tokens: dict[str, str]  # admin, tenant_viewer (safaricom), noc_operator, viewer

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=self.env, cwd=self.home.parent,
                              capture_output=True, text=True, timeout=timeout)

    def stack(self) -> dict:
        return json.loads((self.home / "stack.json").read_text())

    def port(self, name: str) -> int:
        return int(self.env[f"TOWERCO_{name.upper()}_PORT"])

    def has(self, process: str) -> bool:
        return process in self.stack().get("processes", {})

    def mint(self, *, role: str, tenant: str = "*", sub: str) -> str:
        out = self.run("token", "--role", role, "--tenant", tenant, "--sub", sub)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def up() -> Iterator[Up]:
    """One stack for every browser test of the session (it takes a minute or two to start)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="towerco-console-"))  # not under pytest's 0700 tmp: see the cli tests
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
    env.pop("DATABASE_URL", None)
    env.pop("NATS_URL", None)
    env["TOWERCO_HOME"] = str(tmp / "home")
    for name in DEFAULT_PORTS:
        env[f"TOWERCO_{name.upper()}_PORT"] = str(_free_pair())
    env["TOWERCO_GATEWAY_PORT"] = str(_free_pair())
    for name in WORKER_METRICS_PORTS:
        env[f"TOWERCO_{name.upper()}_METRICS_PORT"] = str(_free_pair())
    stack = Up(home=tmp / "home", env=env, base=f"http://127.0.0.1:{env['TOWERCO_GATEWAY_PORT']}", tokens={})
    try:
        out = stack.run("up", "-d", "--sites", str(SITES), "--timeout", "240", timeout=420)
        assert out.returncode == 0, out.stdout + out.stderr
        stack.tokens = dict(stack.stack()["tokens"])
        stack.tokens["noc_operator"] = stack.mint(role="noc_operator", sub="op-alice")
        stack.tokens["viewer"] = stack.mint(role="viewer", sub="viewer-bob")
        yield stack
    finally:
        stack.run("down", "--timeout", "30", timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def browser_factory(up) -> AsyncIterator:
    """new_page(token=None) -> a page in its own fresh Chromium profile (user-data-dir), signed
    in when a token is given; CSP refusals and page errors are collected on page.problems."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        contexts = []
        profiles = []

        async def new_page(token: str | None = None):
            profile = Path(tempfile.mkdtemp(prefix="console-profile-"))
            profiles.append(profile)
            ctx = await pw.chromium.launch_persistent_context(
                str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1440, "height": 1000}, accept_downloads=True)
            contexts.append(ctx)
            page = ctx.pages[0] if ctx.pages else await ctx.new_page()
            page.problems = []

            def on_console(msg) -> None:
                if "Content Security Policy" in msg.text or "Refused to" in msg.text:
                    page.problems.append(f"console: {msg.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: page.problems.append(f"pageerror: {exc}"))
            await page.goto(up.base + "/")
            if token:
                await sign_in(page, token)
            return page

        try:
            yield new_page
        finally:
            for ctx in contexts:
                with contextlib.suppress(Exception):
                    await ctx.close()
            for p in profiles:
                shutil.rmtree(p, ignore_errors=True)


@pytest.fixture
async def api(up) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's REST API as the admin."""
    async with httpx.AsyncClient(base_url=up.base, timeout=60,
                                 headers={"authorization": f"Bearer {up.tokens['admin']}"}) as client:
        yield client
