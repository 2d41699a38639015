"""The transactional outbox: a service writes its domain rows and the event that announces them
in ONE PostgreSQL transaction; a relay publishes committed events to JetStream afterwards.

So a rollback publishes nothing, and a NATS outage loses nothing (rows wait in the table).
Rows are events for the EVENTS stream (`towerco.>`) or dead letters for the DLQ stream
(`dlq.<stream>.<durable>`, with the headers of `events.dead_letter_headers`).

    -- in services/<name>/migrations/0001_init.sql, include the text of outbox_ddl("<schema>")

    async with pool.acquire() as conn, conn.transaction():
        await store.insert_site(conn, ...)
        created = subjects.sites_event("site", "created")     # towerco.sites.site.created
        await outbox.enqueue(conn, schema="sites", subject=created, event_type=created, source="sites",
                             payload=site_created, tenant_ids=[tenant])

    relay = OutboxRelay(pool, js, schema="sites")   # in server.py: rt.spawn(relay.run())

Ordering: `enqueue` takes a transaction-scoped advisory lock on the schema's outbox, so outbox
writers of one schema commit one after another and row ids (= Envelope.sequence) increase in
commit order. A reader that remembers the last id it saw (`read_since`, the Sites WatchChanges
feed) therefore never skips a row that commits late. Call `enqueue` as the last step of the
transaction so the lock is held briefly.

The relay publishes unpublished rows in id order with Nats-Msg-Id = event id and waits for each
ack before marking the row published; it is woken by NOTIFY <schema>_outbox (sent at commit) and
also polls every second. Only one relay per schema publishes at a time (advisory lock + FOR UPDATE
SKIP LOCKED), and JetStream's duplicate window drops a row published twice after a crash between
ack and mark. Published rows are kept for TOWERCO_OUTBOX_RETENTION_S (7 days) and then purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.js.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from prometheus_client import Counter

from mesh import config, db, events, subjects
from mesh.events import Envelope
from mesh.listener import PgListener

log = logging.getLogger("towerco.outbox")

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
DEFAULT_RETENTION_S = config.OutboxSettings.retention_s  # the declared default
MAX_ENVELOPE_BYTES = 900 * 1024  # under NATS' default 1 MiB max_payload, leaving room for headers

PUBLISHED = Counter("towerco_outbox_published_total", "Outbox rows published to JetStream", ["schema"])
PUBLISH_FAILURES = Counter("towerco_outbox_publish_failures_total",
                           "Outbox publish attempts that failed (rows kept for a retry)", ["schema"])


def _check_schema(schema: str) -> str:
    if not _SCHEMA_RE.match(schema or ""):
        raise ValueError(f"invalid schema name {schema!r} (lower-case identifier, at most 48 characters)")
    return schema


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that announces new rows in `schema`.outbox."""
    return f"{_check_schema(schema)}_outbox"


def lock_key(schema: str) -> int:
    """The advisory lock key that orders outbox writers of one schema."""
    return 0x0B0C_0000_0000 + zlib.crc32(f"outbox:{_check_schema(schema)}".encode())


def relay_lock_key(schema: str) -> int:
    """The advisory lock key that lets one relay at a time publish a schema's outbox."""
    return 0x0B0D_0000_0000 + zlib.crc32(f"outbox-relay:{_check_schema(schema)}".encode())


def outbox_ddl(schema: str) -> str:
    """The SQL creating `<schema>.outbox` (the schema itself must exist or be created first)."""
    s = _check_schema(schema)
    return f"""
CREATE TABLE IF NOT EXISTS {s}.outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    envelope     bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON {s}.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON {s}.outbox (published_at) WHERE published_at IS NOT NULL;
"""


def retention_s() -> float:
    """How long published rows are kept (TOWERCO_OUTBOX_RETENTION_S, mesh.config)."""
    return config.load(config.OutboxSettings).retention_s


@dataclass(frozen=True)
class Event:
    """One event for `enqueue_many`: the arguments of `enqueue` but the schema."""

    subject: str
    event_type: str
    source: str
    payload: Message
    tenant_ids: Sequence[str] = ()
    headers: Mapping[str, str] | None = None


async def enqueue(conn: asyncpg.Connection, *, schema: str, subject: str, event_type: str, source: str,
                  payload: Message, tenant_ids: Sequence[str] = (),
                  headers: Mapping[str, str] | None = None) -> Envelope:
    """Add an event to the outbox inside the caller's open transaction and return its Envelope
    (sequence = the outbox row id). It is published only if the transaction commits."""
    [env] = await enqueue_many(conn, schema=schema, items=[
        Event(subject, event_type, source, payload, tenant_ids, headers)])
    return env


async def enqueue_many(conn: asyncpg.Connection, *, schema: str, items: Sequence[Event]) -> list[Envelope]:
    """`enqueue` for several events at once (two statements however many), in the given order."""
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.enqueue must run inside the caller's transaction")
    s = _check_schema(schema)
    for e in items:
        if not e.subject.startswith((f"{subjects.EVENTS_PREFIX}.", f"{subjects.DLQ_PREFIX}.")):
            raise ValueError(f"event subject {e.subject!r} is not on the EVENTS stream (towerco.>) "
                             "nor a dead letter (dlq.>)")
    if not items:
        return []
    # The lock (held to commit) orders outbox writers; the CTE makes it precede nextval.
    ids = sorted(r[0] for r in await conn.fetch(
        f"WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock($1)) "
        f"SELECT nextval(pg_get_serial_sequence('{s}.outbox', 'id')) FROM l, generate_series(1, $2)",
        lock_key(s), len(items)))
    envs, blobs = [], []
    now = datetime.now(UTC)
    for row_id, e in zip(ids, items, strict=True):
        env = events.make_envelope(event_type=e.event_type, source=e.source, subject=e.subject,
                                   payload=e.payload, tenant_ids=e.tenant_ids, sequence=row_id, time=now)
        data = env.SerializeToString()
        if len(data) > MAX_ENVELOPE_BYTES:
            # refuse now, in the writer's transaction, rather than wedge the relay on an unpublishable row
            raise ValueError(f"event {e.event_type} is {len(data)} bytes; the limit is {MAX_ENVELOPE_BYTES}")
        envs.append(env)
        blobs.append(data)
    common = json.dumps(events.headers_out())  # correlation id and trace context: the same for all
    await conn.execute(
        f"WITH row AS (INSERT INTO {s}.outbox (id, event_id, subject, event_type, envelope, headers) "
        f"SELECT i, u, sj, t, b, h::jsonb FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], "
        f"$5::bytea[], $6::text[]) AS k(i, u, sj, t, b, h) RETURNING id) "
        f"SELECT pg_notify($7, '') FROM (SELECT 1 FROM row LIMIT 1) AS one",
        ids, [env.id for env in envs], [e.subject for e in items], [e.event_type for e in items], blobs,
        [common if not e.headers else json.dumps(events.headers_out(e.headers)) for e in items], channel(s),
    )
    return envs


async def read_since(conn: asyncpg.Connection, *, schema: str, after_id: int, limit: int
                     ) -> list[tuple[int, Envelope]]:
    """Committed outbox rows with id > after_id, oldest first (published or not, until purged)."""
    s = _check_schema(schema)
    if limit <= 0:
        return []
    rows = await conn.fetch(f"SELECT id, envelope FROM {s}.outbox WHERE id > $1 ORDER BY id LIMIT $2",
                            after_id, limit)
    out = []
    for r in rows:
        env = Envelope()
        env.ParseFromString(r["envelope"])
        out.append((r["id"], env))
    return out


async def oldest_id(conn: asyncpg.Connection, *, schema: str) -> int | None:
    """The smallest id still in the outbox (None when empty): a reader whose position is below
    it - 1 has missed purged rows and must resynchronise."""
    value = await conn.fetchval(f"SELECT min(id) FROM {_check_schema(schema)}.outbox")
    return None if value is None else int(value)


class OutboxRelay:
    """Publishes `<schema>.outbox` to JetStream. Run it with `await relay.run()` (until cancelled)."""

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, *, schema: str, batch: int = 200,
                 poll_s: float = 1.0, publish_timeout_s: float = 5.0,
                 retention: float | None = None, purge_every_s: float = 600.0,
                 database_url: str | None = None) -> None:
        self.pool = pool
        self.js = js
        self.schema = _check_schema(schema)
        self.batch = batch
        self.poll_s = poll_s
        self.publish_timeout_s = publish_timeout_s
        self.retention_s = retention if retention is not None else retention_s()
        self.purge_every_s = purge_every_s
        self.database_url = database_url
        self._wake = asyncio.Event()
        # held from the pool for the relay's lifetime without a database_url (the pool needs >= 2)
        self._listener = PgListener(channel(self.schema), on_notify=self._wake.set, on_lost=self._wake.set,
                                    database_url=database_url, pool=None if database_url else pool,
                                    application_name=f"towerco:outbox-relay:{self.schema}")
        self.published = 0

    # -- public

    async def run(self) -> None:
        delay = 0.2
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        try:
            while True:
                try:
                    await self._listener.ensure()
                    self._wake.clear()
                    while await self.publish_pending() >= self.batch:
                        pass
                    if loop.time() >= next_purge:
                        await self.purge()
                        next_purge = loop.time() + self.purge_every_s
                    delay = 0.2
                    await self._wait()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - PG or NATS trouble: keep rows, retry
                    if isinstance(exc, nats.js.errors.NoStreamResponseError):
                        # nothing stores towerco.> yet (a fresh NATS): create the streams
                        with contextlib.suppress(Exception):
                            await events.ensure_streams(self.js)
                    if db.is_unavailable(exc) or events.is_transient(exc):
                        log.warning("outbox %s relay: %s: %s; retrying in %.1fs", self.schema,
                                    type(exc).__name__, exc, delay)
                    else:
                        log.exception("outbox %s relay failed; retrying in %.1fs", self.schema, delay)
                    if not events.is_transient(exc) or db.is_unavailable(exc):
                        await self._listener.close()  # PG trouble: start from a fresh connection
                    await asyncio.sleep(delay + random.uniform(0, delay / 2))
                    delay = min(delay * 2, 5.0)
        finally:
            await self._listener.close()

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows in id order; return how many were published.
        Stops at the first publish failure, keeps the marks of the ones before it, re-raises."""
        async with self.pool.acquire() as conn, conn.transaction():
            got = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", relay_lock_key(self.schema))
            if not got:
                return 0  # another relay is publishing this schema right now
            rows = await conn.fetch(
                f"SELECT id, event_id, subject, envelope, headers FROM {self.schema}.outbox "
                f"WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", self.batch)
            done: list[int] = []
            failure: BaseException | None = None
            for r in rows:
                headers = _headers(r["headers"])
                try:
                    await events.publish(self.js, r["subject"], r["envelope"], msg_id=str(r["event_id"]),
                                         headers=headers, timeout=self.publish_timeout_s)
                except Exception as exc:  # noqa: BLE001 - re-raised after saving progress
                    PUBLISH_FAILURES.labels(self.schema).inc()
                    failure = exc
                    break
                done.append(r["id"])
            if done:
                await conn.execute(
                    f"UPDATE {self.schema}.outbox SET published_at = now() WHERE id = ANY($1::bigint[])", done)
        self.published += len(done)
        if done:
            PUBLISHED.labels(self.schema).inc(len(done))
        if failure is not None:
            raise failure
        return len(done)

    async def purge(self) -> int:
        """Delete rows published more than the retention ago; return how many."""
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                f"DELETE FROM {self.schema}.outbox WHERE published_at IS NOT NULL "
                f"AND published_at < now() - make_interval(secs => $1)", self.retention_s)
        count = int(status.split()[-1]) if status.startswith("DELETE") else 0
        if count:
            log.info("outbox %s: purged %d published rows", self.schema, count)
        return count

    # -- internals

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = json.loads(raw)
    return {str(k): str(v) for k, v in dict(raw).items()}
