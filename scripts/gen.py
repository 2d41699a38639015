"""Regenerate gen/ from proto/: Python messages, gRPC stubs and mypy stubs.

The generator is pinned through pyproject (grpcio-tools, mypy-protobuf), so the output is the
same on every machine; tests/unit/test_gen_fresh.py fails when gen/ drifts from proto/.
It also writes gen/towerco/descriptor_set.binpb: every file with its imports and source info
(comments), which the gateway reads for OpenAPI descriptions (the _pb2 modules carry no comments).
From that set it writes the SDK's typed clients (scripts/gen_clients.py): sdk/generated.py, or
OUT_DIR/sdk/generated.py when OUT_DIR is given.
Usage: python scripts/gen.py [OUT_DIR]   (default: gen/)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"


def include_dirs() -> list[Path]:
    import google.api  # googleapis-common-protos ships google/api/*.proto beside its modules

    googleapis = Path(google.api.__path__[0]).parent.parent
    return [PROTO, Path(grpc_tools.__file__).parent / "_proto", googleapis]


def generate(out: Path) -> None:
    # the mypy plugins live beside this interpreter (in the venv), which may not be on PATH
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "towerco").mkdir()
        args = ["protoc", *(f"-I{d}" for d in include_dirs())]
        args += [f"--python_out={tmp}", f"--grpc_python_out={tmp}", f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}"]
        args += [f"--descriptor_set_out={tmp}/towerco/descriptor_set.binpb", "--include_imports"]
        args += ["--include_source_info"]
        if protoc.main(args + files) != 0:
            raise SystemExit("protoc failed")
        tmp_path = Path(tmp)
        for d in [tmp_path / "towerco", *[p for p in (tmp_path / "towerco").rglob("*") if p.is_dir()]]:
            (d / "__init__.py").touch()
        (tmp_path / "towerco" / "py.typed").touch()  # PEP 561: the .pyi stubs are for type checkers
        target = out / "towerco"
        if target.exists():
            shutil.rmtree(target)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp_path / "towerco", target)


def generate_clients(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import gen_clients

    clients = ROOT / "sdk" / "generated.py" if out.resolve() == (ROOT / "gen").resolve() else out / "sdk" / "generated.py"
    gen_clients.write(out / "towerco" / "descriptor_set.binpb", clients)


if __name__ == "__main__":
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gen"
    generate(out_dir)
    generate_clients(out_dir)
