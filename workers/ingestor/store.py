"""SQL of the ingestor: day partitions, and the exactly-once write of TELEMETRY messages.

Rows go to PostgreSQL with COPY in the binary format, encoded here directly (one struct.pack per
row) rather than through asyncpg's per-value codecs, because this is the hot path of the platform.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import chain
from operator import itemgetter

import asyncpg

COLUMNS = ("site_id", "metric", "tenant_id", "time", "value")
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_PG_EPOCH_S = 946_684_800  # 2000-01-01T00:00:00Z, the origin of PostgreSQL timestamps
_TIME_VALUE = struct.Struct(">iqid")  # len 8, int64 µs, len 8, float8
_LEN = struct.Struct(">i")
_SITE_PREFIX = struct.Struct(">hi")  # field count, length of site_id


@dataclass
class Encoded:
    """The rows of one or more messages for binary COPY: parallel lists of the encoded row prefix
    (field count, site_id, metric, tenant_id: one shared bytes object per series) and the encoded
    time and value.

    payload() writes the rows ordered by series (a stable sort on the prefix, so rows of a series
    keep their arrival order): PostgreSQL then inserts neighbouring keys into the
    (site_id, metric, time) index one after another, which costs it much less CPU than the same
    rows in arrival order (measured: 3.1 -> 1.8 us per row)."""

    prefixes: list[bytes]
    values: list[bytes]
    rows: int
    min_s: int  # earliest sample second (for partition upkeep)
    max_s: int


class RowEncoder:
    """Encodes samples for binary COPY, caching the encoded prefix of each series."""

    MAX_CACHED = 500_000

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, str, str], bytes] = {}

    def _prefix(self, key: tuple[str, str, str]) -> bytes:
        site, metric, tenant = (k.encode("utf-8") for k in key)
        enc = (_SITE_PREFIX.pack(len(COLUMNS), len(site)) + site + _LEN.pack(len(metric)) + metric
               + _LEN.pack(len(tenant)) + tenant)
        if len(self._prefixes) >= self.MAX_CACHED:
            self._prefixes.clear()
        self._prefixes[key] = enc
        return enc

    def encode(self, rows: Iterable[tuple[str, str, str, int, int, float]]) -> Encoded:
        """Rows given as (site_id, metric, tenant_id, seconds, nanos, value) tuples."""
        prefixes: list[bytes] = []
        values: list[bytes] = []
        cache = self._prefixes
        pack = _TIME_VALUE.pack
        lo = hi = None
        for site_id, name, tenant_id, seconds, nanos, value in rows:
            key = (site_id, name, tenant_id)
            prefixes.append(cache.get(key) or self._prefix(key))
            values.append(pack(8, (seconds - _PG_EPOCH_S) * 1_000_000 + nanos // 1000, 8, value))
            if lo is None:
                lo = hi = seconds
            elif seconds < lo:
                lo = seconds
            elif seconds > hi:  # type: ignore[operator]
                hi = seconds
        return Encoded(prefixes, values, len(values), lo or 0, hi or 0)

    def encode_samples(self, samples: Iterable) -> Encoded:
        """The same as encode(), reading objects with site_id, metric, tenant_id, time.seconds,
        time.nanos and value attributes (the TelemetryBatch samples) without building row
        tuples: the hot path."""
        prefixes: list[bytes] = []
        values: list[bytes] = []
        add_prefix = prefixes.append
        add_value = values.append
        cache = self._prefixes
        pack = _TIME_VALUE.pack
        lo = hi = None
        for s in samples:
            key = (s.site_id, s.metric, s.tenant_id)
            add_prefix(cache.get(key) or self._prefix(key))
            t = s.time
            seconds = t.seconds
            add_value(pack(8, (seconds - _PG_EPOCH_S) * 1_000_000 + t.nanos // 1000, 8, s.value))
            if lo is None:
                lo = hi = seconds
            elif seconds < lo:
                lo = seconds
            elif seconds > hi:  # type: ignore[operator]
                hi = seconds
        return Encoded(prefixes, values, len(values), lo or 0, hi or 0)


def payload(encoded: Sequence[Encoded]) -> bytes:
    """The binary COPY payload of every row of `encoded`, ordered by series (stable: rows of a
    series stay in arrival order)."""
    pairs: list[tuple[bytes, bytes]] = []
    for e in encoded:
        pairs.extend(zip(e.prefixes, e.values, strict=True))
    pairs.sort(key=itemgetter(0))
    return b"".join(chain((_HEADER,), chain.from_iterable(pairs), (_TRAILER,)))


async def ensure_partitions(conn: asyncpg.Connection, *, first: date, last: date) -> int:
    """Create the day partitions first..last (inclusive) that are missing; returns how many."""
    return await conn.fetchval("SELECT telemetry.ensure_partitions($1, $2)", first, last)


async def drop_partitions_before(conn: asyncpg.Connection, *, cutoff: date) -> list[str]:
    rows = await conn.fetch("SELECT telemetry.drop_partitions_before($1) AS name", cutoff)
    return [r["name"] for r in rows]


async def existing_days(conn: asyncpg.Connection) -> set[date]:
    rows = await conn.fetch(
        """SELECT to_date(substr(c.relname, 9), 'YYYYMMDD') AS day
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace
           WHERE n.nspname = 'telemetry' AND p.relname = 'samples'
             AND c.relname ~ '^samples_[0-9]{8}$'"""
    )
    return {r["day"] for r in rows}


async def write_messages(
    conn: asyncpg.Connection, *, messages: Sequence[tuple[str, Encoded]]
) -> list[str]:
    """Write the rows of every message not written before, recording the message ids in the
    same transaction. Returns the ids that were new (the others were skipped as duplicates)."""
    ids = [m for m, _ in messages]
    counts = [e.rows for _, e in messages]
    async with conn.transaction():
        fresh = await conn.fetch(
            """INSERT INTO telemetry.ingested_messages (msg_id, samples)
               SELECT * FROM unnest($1::text[], $2::int[])
               ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id""",
            ids, counts,
        )
        new = {r["msg_id"] for r in fresh}
        todo = [e for m, e in messages if m in new and e.rows]
        if todo:
            await conn.copy_to_table(
                "samples", schema_name="telemetry", columns=list(COLUMNS),
                source=io.BytesIO(payload(todo)), format="binary",
            )
    return [m for m in ids if m in new]


async def forget_messages(conn: asyncpg.Connection, *, older_than_s: float) -> int:
    """Forget written message ids older than the stream can redeliver."""
    status = await conn.execute(
        "DELETE FROM telemetry.ingested_messages WHERE ingested_at < now() - make_interval(secs => $1)",
        older_than_s,
    )
    return int(status.split()[-1])
