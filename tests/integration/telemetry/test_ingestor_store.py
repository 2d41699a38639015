"""The ingestor's write path against real PostgreSQL: COPY, exactly-once ids, day partitions."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta

from workers.ingestor import store


def rows(site, n, t0):
    return [(site, "dc_bus_v", "", int(t0) + i, 250_000, 50.0 + i % 7) for i in range(n)]


async def test_copy_writes_rows_once_and_skips_redelivered_messages(pool):
    site = f"T-{uuid.uuid4().hex[:8].upper()}"
    t0 = time.time() - 3600
    enc = store.RowEncoder()
    async with pool.acquire() as conn:
        await store.ensure_partitions(conn, first=date.today() - timedelta(days=1), last=date.today())
        a = enc.encode(rows(site, 500, t0))
        b = enc.encode(rows(site, 300, t0 + 1000))
        first = await store.write_messages(conn, messages=[(f"{site}:0", a), (f"{site}:1", b)])
        assert first == [f"{site}:0", f"{site}:1"]
        again = await store.write_messages(conn, messages=[(f"{site}:1", b), (f"{site}:2", enc.encode([]))])
        assert again == [f"{site}:2"]
        count, total = await conn.fetchrow(
            "SELECT count(*), sum(value) FROM telemetry.samples WHERE site_id = $1", site)
        assert count == 800
        assert total == sum(r[5] for r in rows(site, 500, t0)) + sum(r[5] for r in rows(site, 300, t0 + 1000))
        first_time = await conn.fetchval(
            "SELECT min(time) FROM telemetry.samples WHERE site_id = $1", site)
        assert first_time == datetime.fromtimestamp(int(t0), UTC) + timedelta(microseconds=250)


async def test_partitions_are_created_and_dropped_by_day(pool):
    async with pool.acquire() as conn:
        old = date(2001, 2, 3)
        assert await store.ensure_partitions(conn, first=old, last=old + timedelta(days=1)) == 2
        assert await store.ensure_partitions(conn, first=old, last=old + timedelta(days=1)) == 0
        days = await store.existing_days(conn)
        assert {old, old + timedelta(days=1)} <= days
        dropped = await store.drop_partitions_before(conn, cutoff=old + timedelta(days=1))
        assert dropped == ["samples_20010203"]
        assert old not in await store.existing_days(conn)
        assert await store.drop_partitions_before(conn, cutoff=old + timedelta(days=2)) == ["samples_20010204"]


async def test_forget_messages_removes_only_old_ids(pool):
    async with pool.acquire() as conn:
        key = f"forget-{uuid.uuid4()}"
        await store.write_messages(conn, messages=[(key, store.RowEncoder().encode([]))])
        await store.forget_messages(conn, older_than_s=3600)
        assert await conn.fetchval("SELECT count(*) FROM telemetry.ingested_messages WHERE msg_id = $1", key) == 1
        await conn.execute("UPDATE telemetry.ingested_messages SET ingested_at = now() - interval '2 hours' "
                           "WHERE msg_id = $1", key)
        assert await store.forget_messages(conn, older_than_s=3600) >= 1
        assert await conn.fetchval("SELECT count(*) FROM telemetry.ingested_messages WHERE msg_id = $1", key) == 0
