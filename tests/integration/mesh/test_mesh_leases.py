"""Partition leases against a real PostgreSQL: replicas share the partitions, a clean stop hands
them over at once, a dead replica's move once its leases expire, a newcomer gets its share, and
the fence stops a replica that lost a partition from committing (and makes a takeover wait for a
batch in progress)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from mesh import leases


@pytest.fixture
async def lease_schema(pool):
    name = f"lease_test_{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA {name};" + leases.lease_ddl(name))
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            async with pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA {name} CASCADE")


class Replica:
    """A LeaseKeeper whose 'consumers' are a set, running its heartbeat loop in a task."""

    def __init__(self, pool, schema: str, member: str, partitions: int = 8) -> None:
        self.running: set[int] = set()
        self.log: list[tuple[str, int]] = []

        async def acquire(p: int) -> None:
            self.running.add(p)
            self.log.append(("start", p))

        async def release(p: int) -> None:
            self.running.discard(p)
            self.log.append(("stop", p))

        self.keeper = leases.LeaseKeeper(pool, schema=schema, group="g", member=member, partitions=partitions,
                                         on_acquire=acquire, on_release=release, ttl_s=1.5, heartbeat_s=0.2)
        self.task = asyncio.create_task(self.keeper.run())

    async def kill(self) -> None:
        """Stop heartbeating without giving anything back (as kill -9)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def close(self) -> None:
        await self.kill()
        await self.keeper.close()


async def until(pred, within: float = 15.0) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > within:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def disjoint_cover(replicas, partitions: int = 8) -> bool:
    seen = [p for r in replicas for p in r.running]
    return sorted(seen) == list(range(partitions))


async def owners(pool, schema: str) -> dict[int, str | None]:
    async with pool.acquire() as conn:
        return leases.owners(await conn.fetch(f"SELECT partition, member FROM {schema}.partition_lease "
                                              "WHERE grp = 'g' AND owner IS NOT NULL"))


async def test_replicas_share_hand_over_and_rebalance(pool, lease_schema):
    a = Replica(pool, lease_schema, "a")
    await until(lambda: a.running == set(range(8)))
    b = Replica(pool, lease_schema, "b")  # joins: a gives b its share
    await until(lambda: len(b.running) == 4 and disjoint_cover([a, b]))
    assert a.running == set(leases.plan(["a", "b"], 8)["a"])
    assert (await owners(pool, lease_schema)) == {p: ("a" if p in a.running else "b") for p in range(8)}
    # at no moment did two replicas run one partition: b started a partition only after a stopped it
    for p in b.running:
        assert ("stop", p) in a.log

    c = Replica(pool, lease_schema, "c")
    await until(lambda: len(c.running) >= 2 and disjoint_cover([a, b, c]))

    await c.close()  # a clean stop hands over within a heartbeat or two
    took = await until(lambda: disjoint_cover([a, b]) and not c.running)
    assert took < 2.0

    await b.kill()  # kill -9: its partitions move once its leases expire (ttl 1.5 s)
    t0 = time.monotonic()
    await until(lambda: a.running == set(range(8)))
    assert 1.0 < time.monotonic() - t0 < 1.5 + 3 * 0.2 + 1.0
    await a.close()
    assert await owners(pool, lease_schema) == {}


async def test_the_fence_stops_an_old_owner_and_a_takeover_waits_for_its_batch(pool, lease_schema):
    a = Replica(pool, lease_schema, "a", partitions=1)
    await until(lambda: a.running == {0})
    async with pool.acquire() as conn, conn.transaction():
        await a.keeper.fence(conn, 0)  # a batch in progress holds the lease row FOR SHARE
        await a.kill()  # ... and a stops heartbeating while in it
        b = Replica(pool, lease_schema, "b", partitions=1)
        await asyncio.sleep(2.5)  # a's lease has expired, but b cannot take it mid-batch
        assert b.running == set()
    # the batch committed: now b takes over, and a's next batch is fenced
    await until(lambda: b.running == {0})
    async with pool.acquire() as conn:
        with pytest.raises(leases.Fenced):
            async with conn.transaction():
                await a.keeper.fence(conn, 0)
        async with conn.transaction():
            await b.keeper.fence(conn, 0)
    async with pool.acquire() as conn:
        epoch = await conn.fetchval(f"SELECT epoch FROM {lease_schema}.partition_lease WHERE grp = 'g'")
    assert epoch == 2
    await b.close()


async def test_a_heartbeat_must_be_shorter_than_the_ttl(pool, lease_schema):
    async def nothing(p: int) -> None:
        return None

    with pytest.raises(ValueError, match="shorter"):
        leases.LeaseKeeper(pool, schema=lease_schema, group="g", member="a", partitions=4, on_acquire=nothing,
                           on_release=nothing, ttl_s=1.0, heartbeat_s=1.0)
    with pytest.raises(ValueError, match="schema"):
        leases.LeaseKeeper(pool, schema="bad;name", group="g", member="a", partitions=4, on_acquire=nothing,
                           on_release=nothing)


async def test_a_closed_keeper_never_takes_a_lease_again(pool, lease_schema):
    a = Replica(pool, lease_schema, "a", partitions=4)
    await until(lambda: a.running == set(range(4)))
    await a.keeper.close()  # its heartbeat loop still running: it must not take them back
    await asyncio.sleep(1.0)
    assert a.running == set() and await owners(pool, lease_schema) == {}
    assert a.task.done()  # the loop ended by itself
    b = Replica(pool, lease_schema, "b", partitions=4)
    took = await until(lambda: b.running == set(range(4)))
    assert took < 2.0  # released leases are taken at the next heartbeat, no ttl to wait
    await b.close()


async def test_after_its_own_database_outage_a_keeper_lets_the_others_renew_first(pool, lease_schema):
    a = Replica(pool, lease_schema, "a", partitions=4)
    await until(lambda: a.running == set(range(4)))
    b = Replica(pool, lease_schema, "b", partitions=4)
    await until(lambda: len(b.running) == 2 and disjoint_cover([a, b], 4))
    await a.kill()
    await b.kill()
    # both were cut off longer than the ttl (as during a database restart): every lease expired
    await asyncio.sleep(2.0)
    b.keeper._last_ok = time.monotonic() - 2.0
    moves = await b.keeper.round()  # b comes back first: it renews its own, takes none of a's
    assert not moves.acquire and b.running == set(leases.plan(["a", "b"], 4)["b"])
    await a.keeper.round()  # a renews its own (its first round back)
    await b.keeper.round()
    assert disjoint_cover([a, b], 4) and a.running == set(leases.plan(["a", "b"], 4)["a"])
    await a.keeper.close()
    await b.keeper.close()
