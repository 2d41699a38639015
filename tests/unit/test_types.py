"""mypy --strict over the files [tool.mypy] names (sdk/, mesh/, the domain modules), with the
mypy-protobuf stubs of gen/: `make lint` runs it too; this keeps it in `make test` (and CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_covers_the_ground_floor_and_the_domains() -> None:
    import tomllib

    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert {"sdk", "mesh"} <= set(files)
    domains = {str(p.relative_to(ROOT)) for kind in ("services", "workers") for p in (ROOT / kind).glob("*/domain.py")}
    assert domains <= set(files), sorted(domains - set(files))
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["strict"] is True
