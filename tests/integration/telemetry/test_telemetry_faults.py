"""Fault injection on the telemetry path: every acknowledged sample ends up in PostgreSQL exactly
once when the ingestor is killed with SIGKILL, when NATS restarts and when PostgreSQL restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
import pytest
from telemetry_support import IngestorProcess, batch, pg_ctl, platform

pytestmark = pytest.mark.slow

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
async def p(stack, telemetry_db):
    stack.require_embedded()
    async with platform(stack, ingestor=False) as plat:
        yield plat


@pytest.fixture
def ingestor(stack, tmp_path):
    proc = IngestorProcess(stack, tmp_path / "ingestor.log")
    proc.start()
    yield proc
    proc.stop()


class Sender:
    """Sends batches until stopped; a batch that fails with a retryable code is re-sent with the
    same batch id until acknowledged. Keeps the count and sum of acknowledged samples."""

    def __init__(self, p, sites: list[str]) -> None:
        self.p = p
        self.sites = sites
        self.acked = 0
        self.total = 0.0
        self.batches = 0
        self.retries = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        k = 0
        t0 = time.time() - 3000
        while not self.stop.is_set():
            req = batch(self.sites, t0 + k, value=lambda i, k=k: float((k * 7 + i) % 50) + 0.25,
                        batch_id=f"fault-{uuid.uuid4().hex}")
            while True:
                try:
                    reply = await self.p.telemetry.Ingest(req, metadata=self.p.service, timeout=10)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRYABLE:
                        raise
                    self.retries += 1
                    await asyncio.sleep(0.2)
            assert reply.rejected == 0
            self.acked += reply.accepted
            self.total += sum(s.value for s in req.samples)
            self.batches += 1
            k += 1
            await asyncio.sleep(0.01)


async def settle(p, sender: Sender, sites: list[str], wait_s: float = 60.0) -> None:
    count, total = await p.wait_count(sites, sender.acked, wait_s=wait_s)
    await asyncio.sleep(1.0)  # anything still in flight (a duplicate) would land now
    count, total = await p.count(sites)
    assert count == sender.acked, f"{count} rows for {sender.acked} acknowledged samples"
    assert total == pytest.approx(sender.total, rel=0, abs=1e-6)


async def run_sender(sender: Sender):
    task = asyncio.create_task(sender.run())
    return task


async def finish(sender: Sender, task: asyncio.Task) -> None:
    sender.stop.set()
    await asyncio.wait_for(task, 60)


async def test_kill9_ingestor_mid_stream_loses_and_duplicates_nothing(p, ingestor):
    sites = await p.create_sites(40)
    sender = Sender(p, sites)
    task = await run_sender(sender)
    await p.wait_count(sites, 2000)
    ingestor.kill9()
    await asyncio.sleep(1.0)
    ingestor.start()
    await asyncio.sleep(2.0)
    ingestor.kill9()  # and once more, while catching up
    ingestor.start()
    await asyncio.sleep(1.0)
    await finish(sender, task)
    assert sender.batches > 20
    await settle(p, sender, sites)


async def test_nats_restart_loses_nothing_acknowledged(p, ingestor, stack):
    sites = await p.create_sites(40)
    sender = Sender(p, sites)
    task = await run_sender(sender)
    await p.wait_count(sites, 1000)
    stack.nats.stop()
    await asyncio.sleep(1.5)
    stack.nats.start()
    await asyncio.sleep(3.0)
    before = sender.batches
    await asyncio.sleep(1.0)
    await finish(sender, task)
    assert sender.batches > before, "ingest did not resume after the NATS restart"
    await settle(p, sender, sites)


async def test_postgres_restart_ingestor_resumes_without_loss_or_duplicates(p, ingestor, stack):
    sites = await p.create_sites(40)
    sender = Sender(p, sites)
    task = await run_sender(sender)
    await p.wait_count(sites, 1000)
    await asyncio.to_thread(stack.pg.stop, mode="immediate")  # a crash: only flushed commits survive
    await asyncio.sleep(2.0)
    await asyncio.to_thread(pg_ctl, stack, "start()")
    await asyncio.sleep(1.0)
    await finish(sender, task)
    with contextlib.suppress(Exception):
        await p.count(sites)  # the test pool notices its dead connections here
    await settle(p, sender, sites)
