"""The contracts: gen/ is exactly what proto/ generates, and proto/ passes buf lint."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _diff(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [f"only in gen/: {n}" for n in cmp.left_only] + [f"missing from gen/: {n}" for n in cmp.right_only]
    out += [f"differs: {n}" for n in cmp.diff_files]
    for name, sub in cmp.subdirs.items():
        out += [f"{name}/{line}" for line in _diff(a / name, b / name)] if sub else []
    return out


def test_gen_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen.py"), str(tmp_path)], check=True,
                   capture_output=True)
    drift = _diff(ROOT / "gen" / "towerco", tmp_path / "towerco")
    assert not drift, "gen/ drifted from proto/; run `make gen`:\n" + "\n".join(drift)
    fresh = (tmp_path / "sdk" / "generated.py").read_text()
    assert (ROOT / "sdk" / "generated.py").read_text() == fresh, "sdk/generated.py drifted; run `make gen`"


def test_buf_lint_passes() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "buf.py"), "lint"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
