"""Fault injection: kill -9 the kpi_calculator process in the middle of a stream and restart it;
every sample is folded in exactly once (minute aggregates count each sample once) and the hour
rows are complete."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kpi_support import eventually, hours_ago, minute_samples, publish_samples

from mesh import subjects

ROOT = Path(__file__).resolve().parents[3]


async def start_worker(env, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.kpi_calculator.worker", env=env,
                                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_and_doubles_nothing(stack, pool, js, tmp_path):
    stack.require_embedded()
    u = uuid.uuid4().hex[:5].upper()
    sites = [f"KC{u}-{i}" for i in range(12)]
    parts = sorted({subjects.partition_of(s, 16) for s in sites})
    env = stack.env()
    env.update(TOWERCO_KPI_PARTITIONS=",".join(map(str, parts)), TOWERCO_KPI_DURABLE_PREFIX=f"kpi-crash-{u.lower()}",
               TOWERCO_SITES_TARGET="127.0.0.1:1", TOWERCO_LOG_LEVEL="error",
               TOWERCO_KPI_ACK_WAIT_S="3", TOWERCO_KPI_RECOMPUTE_INTERVAL_S="0.2",
               TOWERCO_KPI_SETTLE_S="0.3")
    h = hours_ago(3)
    samples = []
    for s in sites:
        samples += minute_samples(s, range(h, h + 120), tenants=[])
    await publish_samples(js, samples, chunk=300)
    log = tmp_path / "calc.log"
    worker = await start_worker(env, log)
    try:
        async def minutes():
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM kpi.site_minute WHERE site_id = ANY($1::text[])", sites)
        await eventually(minutes, lambda n: n > 0, within=30, interval=0.02)
        os.kill(worker.pid, signal.SIGKILL)  # mid-stream: some batches folded, others in hand
        await worker.wait()
        worker = await start_worker(env, log)
        await eventually(minutes, lambda n: n == len(sites) * 120, within=60)

        async def pending():
            total = 0
            for p in parts:
                info = await js.consumer_info("TELEMETRY", f"kpi-crash-{u.lower()}-{p}")
                total += info.num_pending + info.num_ack_pending
            return total
        await eventually(pending, lambda n: n == 0, within=60)
        async with pool.acquire() as conn:
            counts = await conn.fetch(
                "SELECT (convert_from(aggs, 'UTF8')::jsonb->'dc_bus_v'->>0)::int AS n, count(*) FROM kpi.site_minute "
                "WHERE site_id = ANY($1::text[]) GROUP BY 1", sites)
        assert [(r["n"], r["count"]) for r in counts] == [(1, len(sites) * 120)]

        async def hours():
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM kpi.site_hour WHERE site_id = ANY($1::text[])", sites)
        await eventually(hours, lambda n: n == len(sites) * 2, within=30)
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
