"""mesh.outbox against real PostgreSQL and JetStream: commit publishes exactly once, rollback
publishes nothing, a NATS outage loses nothing and keeps order, two relays never double-publish."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from google.protobuf import wrappers_pb2

from mesh import events, outbox


async def wait_for(predicate, within: float = 10.0, step: float = 0.05):
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not await predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def write(pool, schema: str, subject: str, value: str, *, commit: bool = True,
                thing_id: int | None = None) -> events.Envelope:
    """A domain row and its event in one transaction, like a service does."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            if thing_id is not None:
                await conn.execute(f"INSERT INTO {schema}.things (id) VALUES ($1)", thing_id)
            env = await outbox.enqueue(conn, schema=schema, subject=subject, event_type="towerco.test.said",
                                       source="tests", payload=wrappers_pb2.StringValue(value=value),
                                       tenant_ids=["tenant-a"])
        except BaseException:
            await tx.rollback()
            raise
        if commit:
            await tx.commit()
        else:
            await tx.rollback()
    return env


async def unpublished(pool, schema: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL")


@contextlib.asynccontextmanager
async def running(relay: outbox.OutboxRelay):
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_commit_publishes_once_with_event_id_and_payload(pool, js, schema, topic, stream_messages):
    subject = f"{topic}.said"
    async with running(outbox.OutboxRelay(pool, js, schema=schema)) as _:
        env = await write(pool, schema, subject, "hello", thing_id=1)
        stored = await stream_messages(js, "EVENTS", subject, expect=1)
        # the relay marks the row after JetStream's ack: the message can be read a moment before
        for _ in range(1500):  # 30 s at most
            if not await pool.fetchval(f"SELECT published_at IS NULL FROM {schema}.outbox"):
                break
            await asyncio.sleep(0.02)
    assert len(stored) == 1
    msg = stored[0]
    assert msg.headers["Nats-Msg-Id"] == env.id
    got = events.Envelope.FromString(msg.data)
    assert got == env
    assert got.type == "towerco.test.said" and got.source == "tests" and list(got.tenant_ids) == ["tenant-a"]
    assert events.unpack(got, wrappers_pb2.StringValue).value == "hello"
    async with pool.acquire() as conn:
        row = await conn.fetchrow(f"SELECT id, event_id, published_at FROM {schema}.outbox")
        assert row["id"] == env.sequence and str(row["event_id"]) == env.id
        assert row["published_at"] is not None
        replay = await outbox.read_since(conn, schema=schema, after_id=0, limit=10)
    assert replay == [(env.sequence, env)]


async def test_rollback_publishes_nothing(pool, js, schema, topic, stream_messages):
    subject = f"{topic}.said"
    relay = outbox.OutboxRelay(pool, js, schema=schema, poll_s=0.1)
    async with running(relay):
        await write(pool, schema, subject, "never", commit=False)
        with pytest.raises(Exception, match="duplicate key"):  # the domain write fails -> whole tx fails
            await write(pool, schema, subject, "a", thing_id=7)
            await write(pool, schema, subject, "b", thing_id=7)
        await asyncio.sleep(0.5)  # several polls
    stored = await stream_messages(js, "EVENTS", subject, expect=1, wait_s=0.5)
    assert [events.unpack(events.Envelope.FromString(m.data), wrappers_pb2.StringValue).value
            for m in stored] == ["a"]
    async with pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 1


async def test_enqueue_requires_a_transaction_and_an_events_subject(pool, schema):
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await outbox.enqueue(conn, schema=schema, subject="towerco.test.x", event_type="x", source="t",
                                 payload=wrappers_pb2.StringValue())
        async with conn.transaction():
            with pytest.raises(ValueError, match="EVENTS"):
                await outbox.enqueue(conn, schema=schema, subject="telemetry.samples.1", event_type="x",
                                     source="t", payload=wrappers_pb2.StringValue())
    with pytest.raises(ValueError, match="schema"):
        outbox.outbox_ddl("Robert'); DROP TABLE students;--")


async def test_writers_commit_in_id_order(pool, schema, topic):
    """A second writer waits for the first to commit, so ids never commit out of order and a
    read_since() reader can never skip a late-committing row."""
    subject = f"{topic}.o"
    async with pool.acquire() as a, pool.acquire() as b:
        ta = a.transaction()
        await ta.start()
        env_a = await outbox.enqueue(a, schema=schema, subject=subject, event_type="x", source="t",
                                     payload=wrappers_pb2.StringValue(value="a"))
        async with b.transaction():
            pending_b = asyncio.ensure_future(outbox.enqueue(
                b, schema=schema, subject=subject, event_type="x", source="t",
                payload=wrappers_pb2.StringValue(value="b")))
            await asyncio.sleep(0.3)
            assert not pending_b.done()  # blocked behind a's open transaction
            async with pool.acquire() as reader:
                assert await outbox.read_since(reader, schema=schema, after_id=0, limit=10) == []
            await ta.commit()
            env_b = await pending_b
    assert env_b.sequence > env_a.sequence
    async with pool.acquire() as reader:
        rows = await outbox.read_since(reader, schema=schema, after_id=0, limit=10)
        assert [i for i, _ in rows] == [env_a.sequence, env_b.sequence]
        assert await outbox.read_since(reader, schema=schema, after_id=env_a.sequence, limit=10) == [rows[1]]
        assert await outbox.read_since(reader, schema=schema, after_id=0, limit=1) == [rows[0]]


async def test_two_relays_never_both_publish_a_row(pool, js, schema, topic, stream_messages):
    subject = f"{topic}.two"
    for i in range(60):
        await write(pool, schema, subject, str(i))
    r1 = outbox.OutboxRelay(pool, js, schema=schema, batch=7)
    r2 = outbox.OutboxRelay(pool, js, schema=schema, batch=7)
    async with running(r1), running(r2):
        await wait_for(lambda: _zero(pool, schema))
    assert r1.published + r2.published == 60  # counted by the relays, before JetStream dedup
    stored = await stream_messages(js, "EVENTS", subject, expect=60)
    values = [events.unpack(events.Envelope.FromString(m.data), wrappers_pb2.StringValue).value for m in stored]
    assert values == [str(i) for i in range(60)]  # and in commit order


async def _zero(pool, schema):
    return await unpublished(pool, schema) == 0


async def test_purge_keeps_unpublished_and_recent_rows(pool, js, schema, topic):
    subject = f"{topic}.purge"
    for i in range(3):
        await write(pool, schema, subject, str(i))
    relay = outbox.OutboxRelay(pool, js, schema=schema, retention=3600)
    assert await relay.publish_pending() == 3
    await write(pool, schema, subject, "unpublished")
    async with pool.acquire() as conn:
        await conn.execute(f"UPDATE {schema}.outbox SET published_at = now() - interval '2 hours' "
                           f"WHERE id = (SELECT min(id) FROM {schema}.outbox)")
    assert await relay.purge() == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 3
        first = await outbox.oldest_id(conn, schema=schema)
        rows = await outbox.read_since(conn, schema=schema, after_id=0, limit=10)
    assert rows[0][0] == first
    assert await unpublished(pool, schema) == 1


@pytest.mark.slow
async def test_nats_outage_loses_nothing_and_keeps_order(pool, private_js, schema, topic, nats_down,
                                                          stream_messages):
    js = private_js
    subject = f"{topic}.outage"
    relay = outbox.OutboxRelay(pool, js, schema=schema, publish_timeout_s=0.5)
    async with running(relay):
        await write(pool, schema, subject, "0")
        await wait_for(lambda: _zero(pool, schema))
        async with nats_down():
            for i in range(1, 21):  # the service keeps committing while NATS is down
                await write(pool, schema, subject, str(i))
            await asyncio.sleep(1.0)
            assert await unpublished(pool, schema) == 20
        await wait_for(lambda: _zero(pool, schema), within=30)
    stored = await stream_messages(js, "EVENTS", subject, expect=21)
    values = [events.unpack(events.Envelope.FromString(m.data), wrappers_pb2.StringValue).value for m in stored]
    assert values == [str(i) for i in range(21)]  # each once, in order


@pytest.mark.slow
async def test_relay_and_pool_recover_after_postgres_restart(private_pg, private_pool, js, topic, postgres_down,
                                                            stream_messages):
    from mesh import db

    pool, schema = private_pool, "outbox_restart"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA {schema};" + outbox.outbox_ddl(schema))
    subject = f"{topic}.pg"
    # a dedicated LISTEN connection (database_url), as the services run it
    relay = outbox.OutboxRelay(pool, js, schema=schema, poll_s=0.2, database_url=private_pg.url)
    async with running(relay) as task:
        await write(pool, schema, subject, "before")
        await wait_for(lambda: _zero(pool, schema))
        async with postgres_down():
            with pytest.raises(Exception) as info:
                async with pool.acquire(timeout=2) as conn:
                    await conn.fetchval("SELECT 1")
            assert db.is_unavailable(info.value), repr(info.value)
            await asyncio.sleep(0.5)
            assert not task.done()
        # the pool heals by itself: at most one failure per dead connection, then fresh ones
        ok = False
        for _ in range(20):
            try:
                await write(pool, schema, subject, "after")
                ok = True
                break
            except Exception as exc:  # noqa: BLE001
                assert db.is_unavailable(exc), repr(exc)
                await asyncio.sleep(0.2)
        assert ok
        await wait_for(lambda: _zero_quiet(pool, schema), within=30)
        assert not task.done()
    stored = await stream_messages(js, "EVENTS", subject, expect=2)
    values = [events.unpack(events.Envelope.FromString(m.data), wrappers_pb2.StringValue).value for m in stored]
    assert values == ["before", "after"]


async def _zero_quiet(pool, schema):
    try:
        return await unpublished(pool, schema) == 0
    except Exception:  # noqa: BLE001 - a stale pooled connection may fail once
        return False


async def test_notify_wakes_the_relay_without_waiting_for_the_poll(stack, pool, js, schema, topic, stream_messages):
    """With a long poll interval, only the NOTIFY sent at commit can make delivery prompt."""
    relay = outbox.OutboxRelay(pool, js, schema=schema, poll_s=30, database_url=stack.database_url)
    async with running(relay):
        await asyncio.sleep(0.3)  # listening
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await write(pool, schema, f"{topic}.fast", "quick")
        await wait_for(lambda: _zero(pool, schema), within=5, step=0.01)
        assert loop.time() - t0 < 3
    assert len(await stream_messages(js, "EVENTS", f"{topic}.fast", expect=1)) == 1


async def test_oversized_event_is_refused_in_the_writers_transaction(pool, schema, topic):
    with pytest.raises(ValueError, match="limit"):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"INSERT INTO {schema}.things (id) VALUES (99)")
            await outbox.enqueue(conn, schema=schema, subject=f"{topic}.big", event_type="x", source="t",
                                 payload=wrappers_pb2.BytesValue(value=b"x" * (outbox.MAX_ENVELOPE_BYTES + 1)))
    async with pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.things") == 0
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 0


async def test_enqueue_many_writes_every_event_in_order_and_publishes_each_once(pool, js, schema, topic,
                                                                                  stream_messages):
    subject = f"{topic}.many"
    items = [outbox.Event(subject, "towerco.test.said", "tests", wrappers_pb2.StringValue(value=f"v{i}"),
                          [f"tenant-{i}"], {"x-test": str(i)}) for i in range(5)]
    async with pool.acquire() as conn, conn.transaction():
        assert await outbox.enqueue_many(conn, schema=schema, items=[]) == []
        envs = await outbox.enqueue_many(conn, schema=schema, items=items)
    seqs = [e.sequence for e in envs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    async with running(outbox.OutboxRelay(pool, js, schema=schema)) as _:
        stored = await stream_messages(js, "EVENTS", subject, expect=5)
    got = [events.Envelope.FromString(m.data) for m in stored]
    assert [events.unpack(g, wrappers_pb2.StringValue).value for g in got] == [f"v{i}" for i in range(5)]
    assert [list(g.tenant_ids) for g in got] == [[f"tenant-{i}"] for i in range(5)]
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.id for e in envs]
    assert [m.headers["x-test"] for m in stored] == [str(i) for i in range(5)]


async def test_enqueue_many_refuses_the_whole_call_for_one_bad_subject(pool, schema, topic):
    good = outbox.Event(f"{topic}.ok", "x", "t", wrappers_pb2.StringValue(value="a"))
    bad = outbox.Event("elsewhere.subject", "x", "t", wrappers_pb2.StringValue(value="b"))
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match="EVENTS stream"):
            await outbox.enqueue_many(conn, schema=schema, items=[good, bad])
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 0


async def test_a_cancelled_relay_without_database_url_gives_its_connection_back(stack, schema):
    """The relay borrows its LISTEN connection from the pool when it has no database_url; a
    cancelled relay (even cancelled twice, as a shutdown with a timeout does) must hand it back,
    or pool.close() waits forever."""
    import asyncpg

    own = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    relay = outbox.OutboxRelay(own, None, schema=schema, poll_s=30)
    task = asyncio.create_task(relay.run())
    await wait_for(lambda: _true(relay._listener.connected))
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(own.close(), timeout=5)


async def _true(value: bool) -> bool:
    return value
