"""The SDK is usable alone: only grpcio, protobuf and the generated code.

A child interpreter makes every server dependency (and our server-side packages) unimportable,
then imports the SDK and runs calls through its interceptor chain. A static check makes sure no
module in sdk/ even mentions them in an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = {"asyncpg", "nats", "fastapi", "uvicorn", "starlette", "structlog", "mesh", "services", "workers", "gateway", "cli"}

CHILD = textwrap.dedent(
    """
    import asyncio, importlib.abc, sys

    BLOCKED = set(sys.argv[1].split(","))
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not already, already

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:  # prove the blocker works
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"blocker failed for {name}")

    import grpc
    import sdk
    from sdk import breaker, channel, client, context, interceptors, retry
    from towerco.sites.v1 import sites_pb2

    async def main():
        target = "127.0.0.1:9"  # nothing listens there
        ch = sdk.create_channel(target, token="t")
        assert retry.default_services()
        sdk.breaker_for(target).force_open()
        async with sdk.Client(target, token="t") as c:
            try:
                await c.sites.GetSite(sites_pb2.GetSiteRequest(site_id="x"), timeout=1)
            except sdk.CircuitOpenError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
            else:
                raise SystemExit("expected CircuitOpenError")
        await ch.close()

    asyncio.run(main())
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("STANDALONE-OK")
    """
)


@pytest.mark.parametrize("also_block", [(), ("prometheus_client",)], ids=["default", "without-prometheus"])
def test_sdk_imports_and_works_without_server_dependencies(also_block):
    blocked = ",".join(sorted(FORBIDDEN | set(also_block)))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, blocked],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STANDALONE-OK" in proc.stdout


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
            "import_module",
            "__import__",
        }:
            names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return names


def test_no_sdk_module_imports_a_server_dependency():
    modules = sorted((ROOT / "sdk").rglob("*.py"))
    assert len(modules) >= 6
    bad = [
        (str(p.relative_to(ROOT)), name)
        for p in modules
        for name in _imported_names(p)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, bad
