"""Helpers of the console's browser tests (the fixtures are in conftest.py): the Chromium
binary, polling, sign-in and screenshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SHOTS = REPO / "test-artifacts" / "console"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for path in (*CHROMIUM_CANDIDATES, shutil.which("chromium") or ""):
        if path and os.access(path, os.X_OK):
            return path
    return None


def skip_reason() -> str | None:
    if chromium_path() is None:
        return ("browser tests skipped: no Chromium at /usr/bin/chromium "
                "(install Debian's chromium and chromium-driver; .ci/run does)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "browser tests skipped: Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


async def await_until(predicate, within: float = 30.0, what: str = "condition", interval: float = 0.25):
    """Poll an async predicate until it returns something true; its last value otherwise."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what} (last: {last!r})")


async def sign_in(page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#signin-button")
    await page.wait_for_selector("#board", timeout=30_000)


async def shot(page, name: str) -> Path:
    """A full-page screenshot in test-artifacts/console/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def record_timing(name: str, seconds: float) -> None:
    """Keep a measured duration in test-artifacts/console/timings.json (for the report; the
    tests' limits are generous deadlines, not speed targets)."""
    import json

    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = round(seconds, 3)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


async def wait_js(page, expression: str, within: float = 30.0, what: str = "") -> object:
    """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function compiles
    its predicate with eval inside the page, which the console's CSP rightly refuses; evaluate
    goes through the DevTools protocol instead.)"""

    async def check():
        return await page.evaluate(expression)
    return await await_until(check, within=within, what=what or expression, interval=0.2)
