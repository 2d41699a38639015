"""Who may import whom (DESIGN.md, "Floors"), checked on the source text of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UPPER = {"services", "workers", "gateway", "cli"}
SERVER_DEPS = {"asyncpg", "nats", "fastapi", "uvicorn", "structlog", "mesh"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("floor", ["sdk", "mesh"])
def test_ground_floor_never_imports_upper_floor(floor: str) -> None:
    bad = [(p.relative_to(ROOT), m) for p in _modules(floor) for m in _imports(p) if m.split(".")[0] in UPPER]
    assert not bad, bad


def test_sdk_has_no_server_dependencies() -> None:
    bad = [(p.relative_to(ROOT), m) for p in _modules("sdk") for m in _imports(p) if m.split(".")[0] in SERVER_DEPS]
    assert not bad, bad


def test_no_service_imports_another_service_or_a_worker_a_service() -> None:
    bad = []
    for kind in ("services", "workers"):
        for path in _modules(kind):
            own = path.relative_to(ROOT / kind).parts[0]
            for mod in _imports(path):
                parts = mod.split(".")
                if parts[0] == "services" and len(parts) > 1 and (kind == "workers" or parts[1] != own):
                    bad.append((path.relative_to(ROOT), mod))
    assert not bad, bad
