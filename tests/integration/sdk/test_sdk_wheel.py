"""The SDK is its own distribution: sdk/pyproject.toml builds a wheel (sdk + the generated
contracts) that installs, offline, into a clean venv holding only grpcio, protobuf and
googleapis-common-protos, and calls every service from there."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from platform_support import Platform

ROOT = Path(__file__).resolve().parents[3]
ALLOWED = ("grpcio", "protobuf", "googleapis-common-protos", "typing-extensions")  # the last one: grpcio's

CHILD = textwrap.dedent('''
    import asyncio, json, sys
    import sdk
    from towerco.aiops.v1 import aiops_pb2
    from towerco.bi.v1 import bi_pb2
    from towerco.files.v1 import files_pb2
    from towerco.kpi.v1 import kpi_pb2
    from towerco.sites.v1 import sites_pb2
    from towerco.telemetry.v1 import telemetry_pb2

    targets, token, region, missing = json.loads(sys.argv[1])
    blocked = []
    for name in ("mesh", "services", "asyncpg", "nats", "fastapi", "structlog"):
        try:
            __import__(name)
        except ImportError:
            blocked.append(name)

    async def main():
        out = {"sdk": sdk.__file__, "blocked": blocked}
        async with sdk.Client(targets["sites"], token=token) as c:
            out["sites"] = [s.id async for s in c.sites.list_all(sites_pb2.ListSitesRequest(region=region), page_size=2)]
            try:
                await c.sites.GetSite(sites_pb2.GetSiteRequest(site_id=missing), timeout=5)
            except sdk.errors.NotFound as exc:
                out["not_found"] = exc.resource.resource_name
        async with sdk.Client(targets["telemetry"], token=token) as c:
            snap = await c.telemetry.LatestSnapshot(telemetry_pb2.LatestSnapshotRequest(site_id=out["sites"][0]))
            out["telemetry"] = type(snap).__name__
        async with sdk.Client(targets["aiops"], token=token) as c:
            out["aiops"] = type(await c.aiops.ListAnomalies(aiops_pb2.ListAnomaliesRequest(site_id=out["sites"][0]))).__name__
        async with sdk.Client(targets["files"], token=token) as c:
            out["files"] = type(await c.files.ListFiles(files_pb2.ListFilesRequest(site_id=out["sites"][0]))).__name__
        async with sdk.Client(targets["bi"], token=token) as c:
            out["bi"] = type(await c.bi.ListPenaltyRuleSets(bi_pb2.ListPenaltyRuleSetsRequest(tenant_id="wheelco"))).__name__
        return out

    out = asyncio.run(main())
    with sdk.BlockingClient(targets["kpi"], token=token) as c:
        out["kpi"] = c.kpi.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id="wheelco")).policy.tenant_id
    print(json.dumps(out))
''')


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"  # a copy, so the build leaves nothing in the checkout
    for folder in ("sdk", "gen"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "dist"), "./sdk"], cwd=src, check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("towerco_sdk-*.whl")
    return wheel


def _clean_venv(tmp: Path) -> Path:
    """A venv without pip whose site-packages holds only the allowed distributions (linked from
    this interpreter's, with their metadata, so pip sees them as installed)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for name in ALLOWED:
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            target = site / top
            if top == "google":  # a namespace shared by protobuf and googleapis-common-protos
                target.mkdir(exist_ok=True)
                for sub in {Path(str(f)).parts[1] for f in dist.files if Path(str(f)).parts[0] == "google"
                            and len(Path(str(f)).parts) > 2}:
                    if not (target / sub).exists():
                        (target / sub).symlink_to(ours / "google" / sub)
            elif not target.exists() and (ours / top).exists():
                target.symlink_to(ours / top)
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sdk-wheel")
    wheel = _build_wheel(tmp)
    names = zipfile.ZipFile(wheel).namelist()
    assert "sdk/generated.py" in names and "towerco/kpi/v1/kpi_pb2.py" in names and "sdk/py.typed" in names
    assert not [n for n in names if n.startswith(("mesh/", "services/", "towerco/testing/"))]
    python = _clean_venv(tmp)
    # pip resolves the wheel's dependencies against that venv alone, offline: any other
    # requirement fails the install
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                             "--no-cache-dir", "-q", str(wheel)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return python


def test_the_wheel_declares_only_client_dependencies(installed: Path):
    out = subprocess.run([str(installed), "-I", "-c", "import importlib.metadata as m; "
                          "print('\\n'.join(m.requires('towerco-sdk')))"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    base = sorted(r.split(">")[0].split("=")[0].strip() for r in out if r and "extra ==" not in r)
    assert base == ["googleapis-common-protos", "grpcio", "protobuf"]


async def test_the_installed_sdk_calls_every_service(installed: Path, plat: Platform):
    arg = json.dumps([plat.targets, plat.token("admin"), plat.region, "SDK-WHEEL-NOPE"])
    proc = await asyncio.create_subprocess_exec(str(installed), "-I", "-c", CHILD, arg, cwd="/",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["sdk"].startswith(str(installed.parent.parent)), out["sdk"]  # the venv's copy, not the checkout
    assert out["blocked"] == ["mesh", "services", "asyncpg", "nats", "fastapi", "structlog"]
    assert out["sites"] == sorted(plat.site_ids)
    assert out["not_found"] == "SDK-WHEEL-NOPE"
    assert out["telemetry"] == "LatestSnapshotResponse"
    assert out["kpi"] == "wheelco"
    # and the three services added since: every service is one typed client away
    assert (out["aiops"], out["files"], out["bi"]) == (
        "ListAnomaliesResponse", "ListFilesResponse", "ListPenaltyRuleSetsResponse")
