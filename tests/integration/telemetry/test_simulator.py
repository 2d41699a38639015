"""`towerco simulate` end to end: a backfill of a past hour through the real ingest API, with the
ground truth written, everything accepted, and a re-run storing nothing twice."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
from telemetry_support import ROOT, platform


@pytest.fixture(scope="module")
async def p(stack, telemetry_db):
    async with platform(stack, ingestor=True) as plat:
        yield plat


async def simulate(stack, p, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli.simulate", "--target", f"127.0.0.1:{p.telemetry_server.port}",
           "--sites-target", f"127.0.0.1:{p.sites_server.port}", *args]
    return await asyncio.to_thread(subprocess.run, cmd, cwd=ROOT, env=stack.env(), capture_output=True,
                                   text=True, timeout=120)


async def test_backfill_an_hour_with_faults_and_ground_truth(stack, p, tmp_path):
    prefix = f"SM{uuid.uuid4().hex[:5].upper()}"
    sites = await p.create_sites(6, prefix=prefix, tenants=(f"t{uuid.uuid4().hex[:6]}",))
    truth = tmp_path / "faults.jsonl"
    start = datetime.fromtimestamp(time.time() // 60 * 60 - 3 * 3600, UTC).isoformat()
    args = ["--interval", "60", "--duration", "3600", "--seed", "11", "--speed", "0", f"--start={start}", "--site-prefix", prefix,
            "--faults", "x40", "--truth", str(truth)]
    done = await simulate(stack, p, "--sites", "0", *args)
    assert done.returncode == 0, done.stderr
    summary = done.stderr.splitlines()[-1]
    assert " 0 rejected" in summary, summary
    accepted = int(re.search(r"(\d+) accepted", summary).group(1))
    count, total = await p.wait_count(sites, accepted, wait_s=60)
    assert count == accepted
    # 60 steps x 6 sites x (10 metrics + 1 tenancy), minus the silent (link loss) steps
    assert 0.5 * 60 * 6 * 11 <= count <= 60 * 6 * 11
    async with p.pool.acquire() as conn:
        metrics = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT metric FROM telemetry.samples WHERE site_id = ANY($1)", sites)}
    assert metrics == {"mains_present", "dg_running", "fuel_level_l", "dc_bus_v", "load_a", "battery_soc_pct",
                       "battery_v", "cabinet_temp_c", "door_open", "rectifier_fault", "tenant_link_up"}
    records = [json.loads(line) for line in truth.read_text().splitlines()]
    ours = [r for r in records if r["site_id"].startswith(prefix)]
    assert ours, "x40 fault rates over 6 site-hours inject faults"
    assert {"type", "site_id", "start", "end"} <= set(ours[0])
    assert all(r["end"] is None or r["end"] >= r["start"] for r in ours)

    again = await simulate(stack, p, "--sites", "0", *args)  # same seed and start: same batch ids
    assert again.returncode == 0, again.stderr
    await asyncio.sleep(2.0)  # a duplicate, if any, would land now
    assert await p.count(sites) == (count, total)


async def test_bad_arguments_are_refused(stack, p):
    bad = await simulate(stack, p, "--faults", "meteor=1")
    assert bad.returncode == 2 and "bad fault" in bad.stderr
    bad = await simulate(stack, p, "--start", "tomorrow")
    assert bad.returncode == 2 and "--start" in bad.stderr
    bad = await simulate(stack, p, "--rate", "-5")
    assert bad.returncode == 2 and "--rate" in bad.stderr


async def test_rate_caps_the_samples_per_second(stack, p):
    """--rate holds a backfill (which would otherwise go as fast as it can) to the cap: the run
    cannot end before its samples, less the first step's, were due at that rate."""
    prefix = f"SR{uuid.uuid4().hex[:5].upper()}"
    sites = await p.create_sites(6, prefix=prefix, tenants=(f"t{uuid.uuid4().hex[:6]}",))
    start = datetime.fromtimestamp(time.time() // 60 * 60 - 2 * 3600, UTC).isoformat()
    rate = 1_000.0
    t0 = time.monotonic()
    done = await simulate(stack, p, "--sites", "0", "--site-prefix", prefix, "--interval", "60",
                          "--duration", "1800", "--seed", "9", "--speed", "0", f"--start={start}",
                          "--faults", "none", "--truth", "/dev/null", "--rate", f"{rate:g}")
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    sent = int(re.search(r"(\d+) samples sent", done.stderr.splitlines()[-1]).group(1))
    first_step = len(sites) * 11
    assert sent >= 20 * first_step
    assert elapsed >= (sent - first_step) / rate, (elapsed, sent)


async def test_two_fleets_with_the_same_seed_and_start_both_store_everything(stack, p):
    """Batch ids are deterministic per fleet, never shared across fleets: the ingestor skips a
    message id it has stored before, so a shared id would silently drop the second fleet's data."""
    from mesh.subjects import partition_of

    start = datetime.fromtimestamp(time.time() // 60 * 60 - 5 * 3600, UTC).isoformat()
    # one site per fleet, both in the same partition, so equal batch ids would mean equal message ids
    first = f"SF{uuid.uuid4().hex[:5].upper()}"
    partition = partition_of(f"{first}-000", p.settings.partitions)
    second = next(c for c in (f"SF{uuid.uuid4().hex[:5].upper()}" for _ in range(10_000))
                  if partition_of(f"{c}-000", p.settings.partitions) == partition)
    stored = []
    for prefix in (first, second):
        sites = await p.create_sites(1, prefix=prefix, tenants=(f"t{uuid.uuid4().hex[:6]}",))
        done = await simulate(stack, p, "--sites", "0", "--site-prefix", prefix, "--interval", "60",
                              "--duration", "600", "--seed", "5", "--speed", "0", f"--start={start}",
                              "--faults", "none", "--truth", "/dev/null")
        assert done.returncode == 0, done.stderr
        accepted = int(re.search(r"(\d+) accepted", done.stderr.splitlines()[-1]).group(1))
        assert accepted > 0
        count, _ = await p.wait_count(sites, accepted, wait_s=30)
        stored.append((count, accepted))
    assert all(count == accepted for count, accepted in stored), stored
