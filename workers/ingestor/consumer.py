"""The ingestor's consumer: TELEMETRY messages (towerco.telemetry.v1.TelemetryBatch) in, rows of
telemetry.samples out, with an exactly-once effect.

Each fetched batch of messages becomes ONE transaction: the message ids (Nats-Msg-Id, i.e.
"<batch_id>:<partition>") are inserted into telemetry.ingested_messages and only the messages
whose id was new have their rows COPYed; the acks go out after the commit. A redelivered message
(crash before the ack, lost ack, NATS restart) finds its id and writes nothing. Replicas share the
durable consumer "ingestor", so they split the messages between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Histogram
from towerco.telemetry.v1 import telemetry_pb2

from mesh import db, subjects
from mesh.events import MSG_ID_HEADER, TELEMETRY_STREAM, Poison, PullConsumer, telemetry_max_age_s
from workers.ingestor import domain, store

log = logging.getLogger("towerco.ingestor")

DURABLE = "ingestor"
FILTER = subjects.TELEMETRY_SUBJECTS

SAMPLES = Counter("towerco_ingestor_samples", "Samples written to telemetry.samples.")
MESSAGES = Counter("towerco_ingestor_messages", "TELEMETRY messages handled, by outcome.", ["outcome"])
WRITE_SECONDS = Histogram("towerco_ingestor_write_seconds", "Time of one write transaction (COPY + ids).",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
VISIBLE_SECONDS = Histogram("towerco_ingestor_ack_to_visible_seconds",
                            "From the ingest API's acceptance of a batch to its rows being committed.",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class Ingestor:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, *,
                 config: domain.IngestorConfig | None = None) -> None:
        self.pool = pool
        self.js = js
        self.config = config or domain.IngestorConfig()
        self.encoder = store.RowEncoder()
        self.known_days: set = set()
        # Several loops on the same durable consumer: while one writes, another fetches and decodes.
        self.consumers = [
            PullConsumer(
                js, stream=TELEMETRY_STREAM, durable=DURABLE, filter_subject=FILTER, handler=self.handle,
                batch=self.config.batch, ack_wait=self.config.ack_wait_s, max_deliver=5, backoff=(1, 5, 30),
                fetch_timeout=2.0, max_ack_pending=20_000,
            )
            for _ in range(self.config.concurrency)
        ]
        self.written = 0

    # -- the handler

    def _decode(self, msgs: list[Msg]) -> tuple[list[tuple[str, store.Encoded]], list[float]]:
        items: list[tuple[str, store.Encoded]] = []
        accepted: list[float] = []
        bad: list[Msg] = []
        reasons: list[str] = []
        now = time.time()
        for m in msgs:
            try:
                batch = telemetry_pb2.TelemetryBatch.FromString(m.data)
            except DecodeError:
                bad.append(m)
                reasons.append("not a TelemetryBatch")
                continue
            msg_id = (m.headers or {}).get(MSG_ID_HEADER) or (
                f"{batch.batch_id}:{batch.partition}" if batch.batch_id else "")
            if not msg_id:
                bad.append(m)
                reasons.append("no message id and no batch_id")
                continue
            enc = self.encoder.encode_samples(batch.samples)
            if enc.rows and not domain.plausible_span(enc.min_s, enc.max_s, now_s=now,
                                                      retention_days=self.config.retention_days):
                bad.append(m)
                reasons.append("sample times outside the retention window")
                continue
            items.append((msg_id, enc))
            if batch.HasField("accepted_time"):
                accepted.append(batch.accepted_time.seconds + batch.accepted_time.nanos * 1e-9)
        if bad:
            MESSAGES.labels("poison").inc(len(bad))
            raise Poison("; ".join(sorted(set(reasons))), msgs=bad)
        return items, accepted

    async def handle(self, msgs: list[Msg]) -> None:
        items, accepted = self._decode(msgs)
        if not items:
            return
        lo = min((e.min_s for _, e in items if e.rows), default=None)
        hi = max((e.max_s for _, e in items if e.rows), default=None)
        if lo is not None:
            await self._ensure_days(lo, hi)
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn:
                fresh = await store.write_messages(conn, messages=items)
        except asyncpg.CheckViolationError:
            # "no partition of relation ... found for row": someone dropped a day we cached
            self.known_days.clear()
            raise
        WRITE_SECONDS.observe(time.perf_counter() - started)
        now = time.time()
        for t in accepted:
            VISIBLE_SECONDS.observe(max(0.0, now - t))
        new = set(fresh)
        rows = sum(e.rows for m, e in items if m in new)
        self.written += rows
        SAMPLES.inc(rows)
        MESSAGES.labels("written").inc(len(new))
        if len(new) < len(items):
            MESSAGES.labels("duplicate").inc(len(items) - len(new))

    async def _ensure_days(self, lo: float, hi: float) -> None:
        need = domain.days_needed(lo, hi, self.known_days)
        if need is None:
            return
        async with self.pool.acquire() as conn:
            made = await store.ensure_partitions(conn, first=need[0], last=need[1])
            self.known_days = await store.existing_days(conn)
        if made:
            log.info("created %d day partition(s) %s..%s", made, need[0], need[1])

    # -- upkeep: partitions ahead, retention, forgetting old message ids

    async def upkeep(self) -> None:
        today, last, cutoff = domain.upkeep_window(time.time(), retention_days=self.config.retention_days,
                                                   ahead_days=self.config.ahead_days)
        async with self.pool.acquire() as conn:
            await store.ensure_partitions(conn, first=today, last=last)
            dropped = await store.drop_partitions_before(conn, cutoff=cutoff)
            forgotten = await store.forget_messages(conn, older_than_s=telemetry_max_age_s() + domain.DAY_S)
            self.known_days = await store.existing_days(conn)
        if dropped or forgotten:
            log.info("upkeep dropped partitions %s, forgot %d message ids", dropped, forgotten)

    async def _upkeep_loop(self) -> None:
        while True:
            try:
                await self.upkeep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                level = logging.WARNING if db.is_unavailable(exc) else logging.ERROR
                log.log(level, "partition upkeep failed: %s", exc)
                await asyncio.sleep(min(30.0, self.config.upkeep_s))
                continue
            await asyncio.sleep(self.config.upkeep_s)

    async def run(self) -> None:
        """Upkeep once, then consume until cancelled."""
        upkeep = asyncio.create_task(self._upkeep_loop())
        try:
            await asyncio.gather(*(c.run() for c in self.consumers))
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.consumers))
