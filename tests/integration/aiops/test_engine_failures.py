"""The engine under failure: a detector that raises (retried, then dead-lettered, counted, the
worker keeps going), a model that survives a restart and is swapped live, and kill -9 of the
worker process mid-stream (no anomaly lost, none duplicated)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from aiops_support import eventually, partitions_of, publish_samples, register_site, running_engine, snapshots

from mesh import subjects
from workers.aiops_engine import domain, models

ROOT = Path(__file__).resolve().parents[3]


class Exploding(domain.Engine):
    """A detector bug on one site (fault injection into our own code)."""

    def __init__(self, bad_site: str) -> None:
        super().__init__()
        self.bad_site = bad_site

    def process(self, st, cfg, samples, adjust=None):
        if cfg.site_id == self.bad_site:
            raise ZeroDivisionError("detector bug")
        return super().process(st, cfg, samples, adjust)


async def test_a_raising_detector_is_retried_then_dead_lettered_and_the_rest_goes_on(pool, js):
    u = uuid.uuid4().hex[:6].upper()
    bad, good = f"BAD-{u}", f"GOOD-{u}"
    async with running_engine(pool, js, [bad, good], max_deliver=3, backoff=(0.1,), batch=1) as engine:
        engine.engine = Exploding(bad)
        await register_site(js, bad)
        await register_site(js, good)
        await eventually(lambda: asyncio.sleep(0, engine.cfgs), lambda c: bad in c and good in c)
        start = time.time() - 1800
        await publish_samples(js, snapshots(bad, start, 20, change=lambda i, t: {"door_open": 1.0}))
        await publish_samples(js, snapshots(good, start, 20, change=lambda i, t: {"door_open": 1.0}))

        async def doors():
            async with pool.acquire() as conn:
                return await conn.fetch("SELECT site_id FROM aiops.anomaly WHERE site_id = ANY($1::text[])",
                                        [bad, good])
        rows = await eventually(doors, lambda r: len(r) >= 1)
        assert {r["site_id"] for r in rows} == {good}
        dlq = f"dlq.TELEMETRY.{engine.consumers[0].durable}" if len(partitions_of([bad])) else ""
        durable = next(c.durable for c in engine.consumers
                       if c.filter_subject == subjects.telemetry_subject(subjects.partition_of(bad, 16)))
        dlq = f"dlq.TELEMETRY.{durable}"
        sub = await js.subscribe(dlq, stream="DLQ")
        try:
            msg = await sub.next_msg(timeout=20)
            assert "ZeroDivisionError" in msg.headers.get("Towerco-Dlq-Reason", "")
        finally:
            await sub.unsubscribe()
        assert engine.stats["detector_errors"] >= 3


async def test_a_model_survives_a_restart_and_is_swapped_live(pool):
    cls = f"test-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(3)
    normal = rng.normal([40, 53.5, 30, 0, 0, 1, 100], [3, 0.1, 1, 0.05, 0.01, 0.01, 0.5], size=(3000, 7))
    first = models.ModelLayer(min_train=1000)
    first.examples[cls] = normal.tolist()
    [m1] = await first.train(pool, classes=[cls])
    probe = np.array([[40, 53.5, 30, 0, 0, 1, 100], [40, 44.0, 55, -3, 0, 0, 20]], dtype=float)
    t1, _ = m1.score(probe)
    assert t1[0] > 0.05 and t1[1] < 0.001  # a normal minute vs a site in trouble

    restarted = models.ModelLayer()  # a new process: nothing in memory
    assert await restarted.load(pool) >= 1
    m = restarted.active[cls]
    assert m.version == m1.version
    np.testing.assert_allclose(m.score(probe)[0], t1)

    other = models.ModelLayer(min_train=1000)  # another replica retrains
    other.examples[cls] = rng.normal([40, 53.5, 30, 0, 0, 1, 100], [3, 0.1, 1, 0.05, 0.01, 0.01, 0.5],
                                     size=(2000, 7)).tolist()
    [m2] = await other.train(pool, classes=[cls])
    assert m2.version == m1.version + 1
    assert await restarted.load(pool) == 1 and restarted.active[cls].version == m2.version


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_and_duplicates_no_anomaly(stack, pool, js):
    """Door openings on 12 sites over 6 simulated hours; the worker is killed with SIGKILL while
    it works through them and restarted. The stored anomalies must be exactly those the pure
    detectors give for the same samples."""
    stack.require_embedded()
    u = uuid.uuid4().hex[:5].upper()
    sites = [f"K9{u}-{i}" for i in range(12)]
    for s in sites:
        await register_site(js, s)
    start = time.time() - 7 * 3600
    start -= start % 60
    n = 6 * 240

    def door(k):
        return lambda i, t: {"door_open": 1.0} if (i + 37 * k) % 160 < 12 else {}
    per_site = {s: snapshots(s, start, n, change=door(k)) for k, s in enumerate(sites)}
    expected = set()
    starts = {}
    for s, samples in per_site.items():
        tr, _ = domain.Engine().process(
            domain.SiteState(), domain.SiteCfg(s, region="north", dg_capacity_kva=20.0, dg_start_delay_s=60.0,
                                               battery_bank_ah=400.0, fuel_tank_l=1000.0),
            [(x.time.seconds + x.time.nanos * 1e-9, x.metric, x.tenant_id, x.value) for x in samples])
        expected |= {(x.id, x.kind) for x in tr if x.detector == "rule.door_open"}
        starts.update({x.id: (s, round(x.start - start)) for x in tr if x.detector == "rule.door_open"})
    assert len(expected) > 50
    # publish in time order, interleaved by site, in many small batches
    for i in range(0, n, 20):
        chunk = [x for s in sites for x in per_site[s][i * 9:(i + 20) * 9]]
        await publish_samples(js, chunk, chunk=200)

    prefix = f"aiops-k9-{u.lower()}"
    env = stack.env()
    env.update(TOWERCO_AIOPS_PARTITIONS=",".join(map(str, partitions_of(sites))), TOWERCO_AIOPS_DURABLE_PREFIX=prefix,
               TOWERCO_AIOPS_BATCH="5", TOWERCO_AIOPS_ACK_WAIT_S="2", TOWERCO_AIOPS_RETRAIN_S="0", TOWERCO_LOG_LEVEL="warning",
               TOWERCO_SITES_TARGET="127.0.0.1:1")

    async def spawn():
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.aiops_engine.worker", env=env,
                                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def stored():
        async with pool.acquire() as conn:
            return await conn.fetch("SELECT id, state FROM aiops.anomaly WHERE site_id = ANY($1::text[]) "
                                    "AND detector = 'rule.door_open'", sites)
    proc = await spawn()
    try:
        for _ in range(3):  # kill it three times while it works
            await eventually(stored, lambda r: len(r) > 0, within=120)
            await asyncio.sleep(0.7)
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            proc = await spawn()

        async def pending():
            total = 0
            for p in partitions_of(sites):
                info = await js.consumer_info("TELEMETRY", f"{prefix}-{p}")
                total += info.num_pending + info.num_ack_pending
            return total
        await eventually(pending, lambda v: v == 0, within=180, interval=0.5)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    rows = await stored()
    opened = {str(r["id"]) for r in rows}
    cleared = {str(r["id"]) for r in rows if r["state"] == 2}
    missing = sorted(starts[i] for i, k in expected if k == "open" and i not in opened)
    assert opened == {i for i, k in expected if k == "open"}, (len(opened), len(expected), missing)
    assert cleared == {i for i, k in expected if k == "clear"}
    async with pool.acquire() as conn:  # and each detected/cleared event once in the outbox
        n_events = await conn.fetchval(
            "SELECT count(*) FROM aiops.outbox WHERE event_type LIKE 'towerco.aiops.anomaly.%ed' AND "
            "event_type <> 'towerco.aiops.anomaly.predicted' AND envelope IS NOT NULL AND "
            "position(convert_to($1, 'UTF8') in envelope) > 0", f"K9{u}-")
    assert n_events == len(expected)
    for p in partitions_of(sites):
        await js.delete_consumer("TELEMETRY", f"{prefix}-{p}")
