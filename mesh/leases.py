"""Partition leases: the replicas of a stateful worker (kpi_calculator, aiops_engine) share the
TELEMETRY partitions among themselves, and hand them over when one dies or joins, through two
tables in the worker's own schema (`lease_ddl(schema)`, included by the domain's migration):

    <schema>.lease_member    (grp, member, token, heartbeat_at)        who is alive
    <schema>.partition_lease (grp, partition, owner, member, epoch, expires_at)   who owns what

`grp` is the consumer group (the worker's durable prefix), `member` a replica's stable name
(TOWERCO_KPI_REPLICA, the host name by default), `owner` the token of one process incarnation
(member#random), so a restarted replica never mistakes an old incarnation's lease for its own.

Every `heartbeat_s` a `LeaseKeeper` (one per replica process), with the database's clock only:
  1. upserts its member row, renews the leases it holds (expires_at = now() + ttl);
  2. reads the live members (heartbeat newer than ttl) and the group's leases;
  3. `decide()` (pure): the plan (`plan()`: rendezvous hashing with a capacity of
     ceil(partitions / members), so each member gets its fair share and a partition moves only
     when its owner leaves or a newcomer needs it) says which partitions are this member's;
     those it does not hold are acquired only when free or expired, those it holds but no longer
     should are released after their consumer stopped (the batch in hand finished and acked).

Fencing: every batch transaction of a partition calls `fence(conn, partition)`, which reads this
process's lease row FOR SHARE. A takeover must UPDATE that row, so it waits for the batch
transactions in progress and every later batch of the old owner fails its fence (`events.Fenced`:
the consumer naks and stops). Together with the workers' per-batch message-id claims in the same
transaction, a handover loses no sample and folds none twice; the new owner rebuilds its state of
the partition from PostgreSQL.

Timing: a clean stop releases at once (the others take over within one heartbeat); a joining
replica gets its share within two heartbeats; a killed one's partitions move once its leases
expire (ttl), then its unacknowledged messages come back after the consumer's ack_wait. So a
partition is idle at most ttl + heartbeat + ack_wait (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.events import Relinquished

log = logging.getLogger("towerco.leases")

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


# --------------------------------------------------------------------------- pure logic


def plan(members: Sequence[str], partitions: int) -> dict[str, frozenset[int]]:
    """Which partitions each member should own: every partition to exactly one member, each
    member floor or ceil of partitions / members. The (member, partition) pairs are taken best
    first by a stable hash of the pair (rendezvous hashing under a quota), so every member
    computes the same plan from the same member set, and a change of members moves few
    partitions besides those that must move."""
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    names = sorted(set(members))
    if not names:
        return {}
    base, extra = divmod(partitions, len(names))
    pairs = sorted(((m, p) for m in names for p in range(partitions)),
                   key=lambda mp: (-zlib.crc32(f"{mp[0]}/{mp[1]}".encode()), mp))
    load = dict.fromkeys(names, 0)
    owner: dict[int, str] = {}
    for m, p in pairs:
        if p in owner:
            continue
        if load[m] < base or (load[m] == base and extra > 0):
            if load[m] == base:
                extra -= 1
            owner[p] = m
            load[m] += 1
    out: dict[str, set[int]] = {m: set() for m in names}
    for p, m in owner.items():
        out[m].add(p)
    return {m: frozenset(ps) for m, ps in out.items()}


@dataclass(frozen=True)
class Lease:
    """A partition's lease as read: its owner token (None when released) and whether it expired."""

    partition: int
    owner: str | None
    expired: bool


@dataclass(frozen=True)
class Moves:
    acquire: frozenset[int] = frozenset()  # free (or expired) and planned for us: take them
    release: frozenset[int] = frozenset()  # ours but planned for another: stop, then give back
    lost: frozenset[int] = frozenset()     # we thought we held them but another owner has them


def decide(*, member: str, token: str, members: Sequence[str], partitions: int,
           leases: Mapping[int, Lease], held: frozenset[int] | set[int]) -> Moves:
    """What this process does this round. `members`: the live members (this one included, it
    just heartbeated); `held`: the partitions whose consumers run here."""
    mine = plan([*members, member], partitions).get(member, frozenset())
    acquire, release, lost = set(), set(), set()
    for p in range(partitions):
        lease = leases.get(p)
        ours = lease is not None and lease.owner == token
        if p in held and not ours:
            lost.add(p)
            continue
        if p in mine and p not in held:
            if lease is None or lease.owner is None or lease.expired or ours:
                acquire.add(p)
        elif p in held and p not in mine:
            release.add(p)
    return Moves(frozenset(acquire), frozenset(release), frozenset(lost))


def pool_settings(ttl_s: float) -> dict[str, str]:
    """Server settings for a leased worker's pool: a transaction left idle longer than twice the
    lease ttl (its process paused or hung between two statements) is ended by PostgreSQL, so its
    lease row is no longer held FOR SHARE and another replica can take the partition over; the
    paused process's commit then fails and its batch is redelivered."""
    return {"idle_in_transaction_session_timeout": str(max(5000, int(2000 * ttl_s)))}


def new_token(member: str) -> str:
    """The owner token of one process incarnation of `member`."""
    return f"{member}#{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- SQL


def _check_schema(schema: str) -> str:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    return schema


def lease_ddl(schema: str) -> str:
    """The SQL creating the two lease tables in `schema` (which must exist)."""
    s = _check_schema(schema)
    return f"""
CREATE TABLE IF NOT EXISTS {s}.lease_member (
    grp          text        NOT NULL,
    member       text        NOT NULL,
    token        text        NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    PRIMARY KEY (grp, member)
);
CREATE TABLE IF NOT EXISTS {s}.partition_lease (
    grp          text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    owner        text,
    member       text,
    epoch        bigint      NOT NULL DEFAULT 0,
    expires_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grp, partition)
);
"""


class Fenced(Relinquished):
    """This process no longer holds the partition's lease: the batch must not commit (the
    consumer naks it at once and stops; the lease's new owner handles it)."""


@dataclass
class LeaseKeeper:
    """Keeps this replica's share of a group's partitions (see the module doc). `on_acquire(p)`
    starts the partition's consumer (after any state of it was rebuilt), `on_release(p)` stops
    it (letting the batch in hand finish); both are awaited before the lease changes hands."""

    pool: Any  # asyncpg.Pool
    schema: str
    group: str
    member: str
    partitions: int
    on_acquire: Callable[[int], Awaitable[None]]
    on_release: Callable[[int], Awaitable[None]]
    ttl_s: float = 10.0
    heartbeat_s: float = 2.0
    token: str = ""
    held: set[int] = field(default_factory=set)
    rounds: int = 0
    moves: list[tuple[str, int]] = field(default_factory=list)  # (acquired|released|lost, p)
    closed: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _last_ok: float | None = field(default=None, repr=False)  # monotonic time of the last good round

    def __post_init__(self) -> None:
        self.schema = _check_schema(self.schema)
        self.token = self.token or new_token(self.member)
        if not 0 < self.heartbeat_s < self.ttl_s:
            raise ValueError("the lease heartbeat must be positive and shorter than its ttl")

    def owns(self, partition: int) -> bool:
        return partition in self.held

    async def fence(self, conn: Any, partition: int) -> None:
        """In a batch's transaction: raise Fenced unless this process still holds the lease;
        holds the lease row FOR SHARE until the transaction ends, so a takeover waits for it."""
        ok = await conn.fetchval(
            f"SELECT true FROM {self.schema}.partition_lease WHERE grp = $1 AND partition = $2 "
            f"AND owner = $3 FOR SHARE", self.group, partition, self.token)
        if not ok:
            raise Fenced(f"partition {partition} of {self.group} is no longer leased to {self.token}")

    async def round(self) -> Moves:
        """One heartbeat: renew, read, decide, act (nothing once closed)."""
        async with self._lock:
            if self.closed:
                return Moves()
            return await self._round()

    async def _round(self) -> Moves:
        s = self.schema
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO {s}.lease_member (grp, member, token, heartbeat_at) VALUES ($1, $2, $3, now()) "
                f"ON CONFLICT (grp, member) DO UPDATE SET token = EXCLUDED.token, heartbeat_at = now()",
                self.group, self.member, self.token)
            await conn.execute(
                f"UPDATE {s}.partition_lease SET expires_at = now() + make_interval(secs => $3) "
                f"WHERE grp = $1 AND owner = $2", self.group, self.token, self.ttl_s)
            members = [r["member"] for r in await conn.fetch(
                f"SELECT member FROM {s}.lease_member WHERE grp = $1 "
                f"AND heartbeat_at > now() - make_interval(secs => $2)", self.group, self.ttl_s)]
            leases = {r["partition"]: Lease(r["partition"], r["owner"], r["expired"]) for r in await conn.fetch(
                f"SELECT partition, owner, expires_at < now() AS expired FROM {s}.partition_lease "
                f"WHERE grp = $1", self.group)}
        moves = decide(member=self.member, token=self.token, members=members, partitions=self.partitions,
                       leases=leases, held=frozenset(self.held))
        now = time.monotonic()
        if self._last_ok is not None and now - self._last_ok > self.ttl_s and moves.acquire:
            # we were cut off from the database ourselves (an outage, a pause): the others may be
            # alive and just as late to renew; give them one heartbeat before taking their leases
            log.info("lease round of %s after %.1fs without the database: not acquiring this round",
                     self.group, now - self._last_ok)
            moves = Moves(frozenset(), moves.release, moves.lost)
        self._last_ok = now
        for p in sorted(moves.lost):
            log.warning("lease of partition %d of %s lost to another replica; stopping it", p, self.group)
            self.held.discard(p)
            self.moves.append(("lost", p))
            await self.on_release(p)
        for p in sorted(moves.release):
            await self.on_release(p)
            self.held.discard(p)
            async with self.pool.acquire() as conn:
                await conn.execute(
                    f"UPDATE {s}.partition_lease SET owner = NULL, member = NULL, expires_at = now() "
                    f"WHERE grp = $1 AND partition = $2 AND owner = $3", self.group, p, self.token)
            self.moves.append(("released", p))
            log.info("released partition %d of %s", p, self.group)
        for p in sorted(moves.acquire):
            if await self._take(p):
                self.held.add(p)
                self.moves.append(("acquired", p))
                log.info("acquired partition %d of %s", p, self.group)
                try:
                    await self.on_acquire(p)
                except BaseException:
                    self.held.discard(p)
                    await self._give_back(p)
                    raise
        self.rounds += 1
        return moves

    async def _take(self, p: int) -> bool:
        s = self.schema
        async with self.pool.acquire() as conn, conn.transaction():
            # a batch of the old owner holds the row FOR SHARE: do not wait long, retry next round
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            try:
                got = await conn.fetchval(
                    f"INSERT INTO {s}.partition_lease AS l (grp, partition, owner, member, epoch, expires_at) "
                    f"VALUES ($1, $2, $3, $4, 1, now() + make_interval(secs => $5)) "
                    f"ON CONFLICT (grp, partition) DO UPDATE SET owner = EXCLUDED.owner, member = EXCLUDED.member, "
                    f"epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at "
                    f"WHERE l.owner IS NULL OR l.expires_at < now() OR l.owner = EXCLUDED.owner "
                    f"RETURNING l.epoch", self.group, p, self.token, self.member, self.ttl_s)
            except Exception as exc:  # noqa: BLE001 - lock timeout: the old owner is mid-batch
                if "lock timeout" not in str(exc) and "LockNotAvailable" not in type(exc).__name__:
                    raise
                return False
        return got is not None

    async def _give_back(self, p: int) -> None:
        with contextlib.suppress(Exception):
            async with self.pool.acquire() as conn:
                await conn.execute(
                    f"UPDATE {self.schema}.partition_lease SET owner = NULL, member = NULL, expires_at = now() "
                    f"WHERE grp = $1 AND partition = $2 AND owner = $3", self.group, p, self.token)

    async def run(self) -> None:
        """Heartbeat until cancelled; a database outage is waited out (the fence keeps batches
        honest meanwhile)."""
        while not self.closed:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database away: retry next heartbeat
                log.warning("lease round of %s failed: %s", self.group, exc)
            await asyncio.sleep(self.heartbeat_s)

    async def close(self) -> None:
        """A clean stop: stop every consumer, give every lease back and leave the group, so the
        other replicas take over at their next heartbeat. No round runs after it."""
        async with self._lock:
            self.closed = True
            await self._close()

    async def _close(self) -> None:
        for p in sorted(self.held):
            with contextlib.suppress(Exception):
                await self.on_release(p)
        with contextlib.suppress(Exception):
            async with self.pool.acquire() as conn:
                await conn.execute(
                    f"UPDATE {self.schema}.partition_lease SET owner = NULL, member = NULL, expires_at = now() "
                    f"WHERE grp = $1 AND owner = $2", self.group, self.token)
                await conn.execute(f"DELETE FROM {self.schema}.lease_member WHERE grp = $1 AND token = $2",
                                   self.group, self.token)
        self.held.clear()


def owners(rows: Sequence[Mapping[str, Any]]) -> dict[int, str | None]:
    """partition -> member, from partition_lease rows (for status pages and tests)."""
    return {int(r["partition"]): r["member"] for r in rows}
