"""Run buf (from the buf-bin wheel) offline: `python scripts/buf.py lint|breaking [AGAINST_REF]`.

google/api imports come from the installed googleapis-common-protos wheel, copied into
.build/protodeps (git-ignored), because the Buf Schema Registry is unreachable here.
`breaking` compares proto/ against AGAINST_REF (default: main) via a git archive of that ref.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPS = ("google/api/annotations.proto", "google/api/http.proto", "google/api/field_behavior.proto",
        "google/api/httpbody.proto")


def buf_exe() -> str:
    exe = Path(sys.executable).parent / "buf"
    return str(exe) if exe.exists() else "buf"


def fill_deps(root: Path) -> None:
    import google.api

    src = Path(google.api.__path__[0]).parent.parent
    for rel in DEPS:
        dst = root / ".build" / "protodeps" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "lint"
    fill_deps(ROOT)
    if cmd == "lint":
        return subprocess.call([buf_exe(), "lint"], cwd=ROOT)
    if cmd == "breaking":
        ref = argv[1] if len(argv) > 1 else "main"
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", ref, "proto", "buf.yaml"], cwd=ROOT,
                                     capture_output=True, check=False)
            if archive.returncode != 0:
                print(f"no proto/ at {ref}; nothing to compare", file=sys.stderr)
                return 0
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            fill_deps(Path(tmp))
            return subprocess.call([buf_exe(), "breaking", "--against", tmp], cwd=ROOT)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("BUF_CACHE_DIR", str(ROOT / ".build" / "buf-cache"))
    sys.exit(main(sys.argv[1:]))
