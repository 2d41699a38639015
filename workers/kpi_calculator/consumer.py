"""The kpi_calculator's consumers: TELEMETRY -> minute aggregates -> hour rows, register changes
-> recomputation, closed hours -> towerco.kpi.hour.computed events (through the kpi outbox).

Everything that must survive is in PostgreSQL (schema kpi) or JetStream; the in-memory
reference data (sites, tenancies, windows, policies) is reloaded from the kpi tables on start and
refreshed from the Sites service, so a killed worker loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge
from towerco.common.v1 import common_pb2
from towerco.events.v1 import events_pb2
from towerco.kpi.v1 import kpi_pb2
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

from mesh import config, events, leases, outbox, subjects
from workers.kpi_calculator import domain, store

log = logging.getLogger("towerco.kpi_calculator")

SCHEMA = "kpi"
HOUR_SUBJECT = subjects.KPI_HOUR_COMPUTED
SITES_FILTER = subjects.SITES_EVENTS
POLICY_SUBJECT = subjects.KPI_POLICY_UPDATED
RECOMPUTE_CHUNK_H = 24
RECOMPUTE_GROUP = 16  # sites re-evaluated in one transaction
COUNTS = Counter("towerco_kpi_calculator", "What the kpi_calculator did: samples (folded or skipped "
                 "as unused), too_late_samples, batches, duplicate_batches, hours_computed, "
                 "hours_published, register_changes.", ["what"])
FOLD_LAG = Gauge("towerco_kpi_calculator_fold_lag_seconds",
                 "Seconds from the ingest API accepting the newest folded batch to its folding (whole seconds).")


@dataclass(frozen=True)
class CalculatorConfig:
    """The calculator's tuning, from mesh.config.KpiCalculatorSettings (TOWERCO_KPI_*, each
    described there and in docs/operations.md)."""

    partitions: tuple[int, ...]
    allowed_lateness_s: float = 7 * 86400.0
    recompute_days: float = 35.0
    publish_grace_s: float = 60.0
    publish_interval_s: float = 5.0
    minute_retention_days: float = 35.0
    replica: str = "all"
    batch: int = 100
    durable_prefix: str = "kpi-calculator"
    ack_wait_s: float = 60.0
    recompute_interval_s: float = 0.1
    settle_s: float = 0.5
    recompute_max_delay_s: float = 10.0
    recompute_concurrency: int = 3
    leased: bool = False  # TOWERCO_KPI_PARTITIONS=auto: the partitions are shared by leases
    lease_ttl_s: float = 10.0
    lease_heartbeat_s: float = 2.0

    @classmethod
    def from_env(cls, partition_count: int) -> CalculatorConfig:
        env = config.load(config.KpiCalculatorSettings)
        lease = config.load(config.LeaseSettings)
        parts = subjects.parse_partitions(env.partitions, partition_count)
        leased = subjects.is_leased(env.partitions)
        replica = env.replica or (socket.gethostname() if leased else subjects.replica_name(parts, partition_count))
        return cls(
            leased=leased, lease_ttl_s=lease.ttl_s, lease_heartbeat_s=lease.heartbeat_s,
            partitions=tuple(parts),
            allowed_lateness_s=env.allowed_lateness_s,
            recompute_days=env.recompute_days,
            publish_grace_s=env.publish_grace_s,
            publish_interval_s=env.publish_interval_s,
            minute_retention_days=env.minute_retention_days,
            replica=replica,
            durable_prefix=env.durable_prefix or "kpi-calculator",
            ack_wait_s=env.ack_wait_s,
            batch=max(1, env.batch),
            recompute_interval_s=env.recompute_interval_s,
            settle_s=env.settle_s,
            recompute_max_delay_s=env.recompute_max_delay_s,
            recompute_concurrency=max(1, env.recompute_concurrency),
        )


# --------------------------------------------------------------------------- reference data


@dataclass
class Reference:
    """Sites, tenancies, windows and policies as the calculator needs them."""

    sites: dict[str, dict] = field(default_factory=dict)  # site_id -> kpi.site columns
    tenancies: dict[str, dict] = field(default_factory=dict)  # tenancy_id -> kpi.tenancy columns
    windows: dict[str, dict] = field(default_factory=dict)  # window_id -> kpi.calendar_window columns
    policies: dict[str, int] = field(default_factory=dict)  # tenant_id -> min outage minutes
    # built on first use; `changed()` drops them after the dicts above are changed in place
    cfg_cache: dict[str, domain.SiteCfg] = field(default_factory=dict, compare=False, repr=False)
    site_index: dict[str, tuple[list, list]] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_rows(cls, rows: dict[str, list]) -> Reference:
        ref = cls()
        ref.sites = {r["site_id"]: dict(r) for r in rows["sites"]}
        ref.tenancies = {r["tenancy_id"]: dict(r) for r in rows["tenancies"]}
        ref.windows = {r["window_id"]: dict(r) for r in rows["windows"]}
        ref.policies = {r["tenant_id"]: int(r["min_outage_minutes"]) for r in rows["policies"]}
        return ref

    def changed(self) -> None:
        """Call after changing the dicts above in place: drops the cached configurations."""
        self.cfg_cache.clear()
        self.site_index = None

    def site_cfg(self, site_id: str) -> domain.SiteCfg:
        cfg = self.cfg_cache.get(site_id)
        if cfg is None:
            if self.site_index is None:  # tenancies and windows by site, indexed once per change
                index: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
                for t in self.tenancies.values():
                    index[t["site_id"]][0].append(t)
                for w in self.windows.values():
                    index[w["site_id"]][1].append(w)
                self.site_index = dict(index)
            cfg = self.cfg_cache[site_id] = self._build_cfg(site_id, *self.site_index.get(site_id, ((), ())))
        return cfg

    def _build_cfg(self, site_id: str, tenancies_of: Iterable[dict], windows_of: Iterable[dict]) -> domain.SiteCfg:
        s = self.sites.get(site_id, {})
        tenancies = sorted(
            (domain.TenancyCfg(t["tenant_id"], float(t["dc_min_v"]), float(t["dc_max_v"]),
                               self.policies.get(t["tenant_id"], 0))
             for t in tenancies_of),
            key=lambda t: t.tenant_id)
        windows = tuple(
            domain.WindowCfg(store.minute_index(w["start_time"]), -(-int(w["end_time"].timestamp()) // 60),
                             int(w["category"]), frozenset(w["tenant_ids"] or ()))
            for w in windows_of)
        return domain.SiteCfg(site_id, float(s.get("dg_capacity_kva", 0.0)), float(s.get("dg_start_delay_s", 0.0)),
                              float(s.get("battery_bank_ah", 0.0)), tuple(tenancies), windows)


def band(t: sites_pb2.Tenancy) -> tuple[float, float]:
    """A tenancy's DC band; an unset (0/0) band means the default 43-60 V."""
    lo, hi = t.dc_voltage_min_v, t.dc_voltage_max_v
    if lo == 0 and hi == 0:
        return domain.DEFAULT_BAND
    return lo, (hi if hi > 0 else domain.DEFAULT_BAND[1])


def _ts(t) -> datetime:
    return t.ToDatetime(tzinfo=UTC)


# --------------------------------------------------------------------------- the calculator


class Calculator:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, *, config: CalculatorConfig,
                 partition_count: int, fetch_register: Callable[[], Awaitable[dict]] | None = None,
                 clock: Callable[[], float] = time.time, database_url: str | None = None) -> None:
        self.pool = pool
        self.database_url = database_url
        self.js = js
        self.config = config
        self.partition_count = partition_count
        self.fetch_register = fetch_register
        self.clock = clock
        self.ref = Reference()
        # the partitions whose consumers run here: fixed, or (leased) changed by the LeaseKeeper
        self.owned: set[int] = set() if config.leased else set(config.partitions)
        self.keeper: leases.LeaseKeeper | None = None
        self.partition_consumers: dict[int, tuple[events.PullConsumer, asyncio.Task]] = {}
        self.consumers: list[events.PullConsumer] = []
        self.stats = defaultdict(int)
        self.last_batch_accepted: float | None = None  # accepted_time of the newest folded batch
        self._lock = asyncio.Lock()  # serialises hour recomputation of the register path
        self._dirty = asyncio.Event()
        self._settle = domain.Settling(config.settle_s, config.recompute_max_delay_s)

    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] += n
        COUNTS.labels(what).inc(n)

    def owns(self, site_id: str) -> bool:
        return subjects.partition_of(site_id, self.partition_count) in self.owned

    # -- lifecycle

    async def load(self) -> None:
        async with self.pool.acquire() as conn:
            self.ref = Reference.from_rows(await store.load_reference(conn))

    def _partition_consumer(self, p: int) -> events.PullConsumer:
        async def handle(msgs: list[Msg]) -> None:
            await self.handle_telemetry(msgs, partition=p)

        return events.PullConsumer(
            self.js, stream=events.TELEMETRY_STREAM, durable=f"{self.config.durable_prefix}-{p}",
            filter_subject=subjects.telemetry_subject(p), handler=handle,
            batch=self.config.batch, ack_wait=self.config.ack_wait_s)

    async def _start_partition(self, p: int) -> None:
        """A leased partition became ours: consume it (its state is in PostgreSQL already)."""
        c = self._partition_consumer(p)
        self.owned.add(p)
        self.partition_consumers[p] = (c, asyncio.create_task(c.run(), name=c.durable))

    async def _stop_partition(self, p: int) -> None:
        """A leased partition goes to another replica: finish the batch in hand, then let go."""
        self.owned.discard(p)
        entry = self.partition_consumers.pop(p, None)
        if entry is None:
            return
        c, task = entry
        await c.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def run(self) -> None:
        await self.load()
        tasks = []
        if self.config.leased:
            self.keeper = leases.LeaseKeeper(
                self.pool, schema=SCHEMA, group=self.config.durable_prefix, member=self.config.replica,
                partitions=self.partition_count, on_acquire=self._start_partition, on_release=self._stop_partition,
                ttl_s=self.config.lease_ttl_s, heartbeat_s=self.config.lease_heartbeat_s)
        else:
            self.consumers += [self._partition_consumer(p) for p in self.config.partitions]
        reg = events.PullConsumer(
            self.js, stream=events.EVENTS_STREAM, durable=f"{self.config.durable_prefix}-register-{self.config.replica}",
            filter_subject=[SITES_FILTER, POLICY_SUBJECT], handler=self.handle_events, batch=50, ack_wait=120.0)
        self.consumers.append(reg)
        tasks = [asyncio.create_task(c.run(), name=c.durable) for c in self.consumers]
        if self.keeper is not None:
            tasks.append(asyncio.create_task(self.keeper.run(), name="kpi-leases"))
        tasks.append(asyncio.create_task(self._recompute_loop(), name="kpi-recompute"))
        tasks.append(asyncio.create_task(self._publish_loop(), name="kpi-publish"))
        tasks.append(asyncio.create_task(self._purge_loop(), name="kpi-purge"))
        if self.fetch_register is not None:
            tasks.append(asyncio.create_task(self._sync_loop(), name="kpi-sync"))
        relay = outbox.OutboxRelay(self.pool, self.js, schema=SCHEMA, database_url=self.database_url)
        tasks.append(asyncio.create_task(relay.run(), name="kpi-outbox"))
        try:
            await asyncio.gather(*tasks)
        finally:
            # cancel each task once (a second cancel would interrupt its own clean-up)
            for t in tasks:
                if not t.done() and not t.cancelling():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        if self.keeper is not None:
            await self.keeper.close()  # stops the partitions' consumers, hands their leases back
        for c in self.consumers:
            await c.stop()
        log.info("kpi_calculator stopped: %s", dict(sorted(self.stats.items())))

    # -- telemetry

    async def handle_telemetry(self, msgs: list[Msg], partition: int | None = None) -> None:
        batches: list[tuple[str, telemetry_pb2.TelemetryBatch]] = []
        for msg in msgs:
            batch = telemetry_pb2.TelemetryBatch()
            try:
                batch.ParseFromString(msg.data)
            except Exception as exc:  # noqa: BLE001
                raise events.Poison(f"not a TelemetryBatch: {exc}") from exc
            msg_id = (msg.headers or {}).get(events.MSG_ID_HEADER, "")
            key = msg_id or f"{batch.batch_id}:{batch.partition}"
            batches.append((key, batch))
        now = self.clock()
        oldest = now - self.config.allowed_lateness_s
        async with self.pool.acquire() as conn, conn.transaction():
            if self.keeper is not None and partition is not None:
                await self.keeper.fence(conn, partition)  # leases.Fenced once another replica took it
            fresh = await store.claim_batches(conn, keys=[k for k, _ in batches])
            todo = []
            for key, batch in batches:
                if key in fresh:
                    fresh.discard(key)  # the same message twice in one fetch is folded once
                    todo.append(batch.samples)
                else:
                    self._count("duplicate_batches")
            folded, samples, late = domain.fold_messages(todo, oldest=oldest)
            self._count("too_late_samples", late)
            if folded:
                by_site: dict[str, set[int]] = defaultdict(set)
                for site_id, minute in folded:
                    by_site[site_id].add(minute)
                await store.lock_sites(conn, site_ids=by_site)
                existing = await store.load_minutes_raw(conn, keys=folded.keys())
                for key, aggs in folded.items():
                    have = existing.get(key)
                    if have is None:
                        existing[key] = aggs
                    else:
                        domain.merge_raw(have, aggs)
                await store.save_minutes_raw(conn, minutes=existing)
                await store.mark_dirty(conn, hours={
                    site_id: domain.affected_hours(minutes, self.ref.site_cfg(site_id).pad_minutes)
                    for site_id, minutes in by_site.items()})
            self._count("samples", samples)
        if folded:
            self._settle.touch(by_site, time.monotonic())
            self._dirty.set()
        self._count("batches", len(batches))
        accepted = [b.accepted_time.seconds for _, b in batches if b.HasField("accepted_time")]
        if accepted:
            self.last_batch_accepted = max(accepted)
            FOLD_LAG.set(max(0.0, self.clock() - self.last_batch_accepted))

    async def _recompute(self, conn: asyncpg.Connection, cfg: domain.SiteCfg, hours: Iterable[int]) -> int:
        hours = sorted(set(hours))
        done = 0
        for i in range(0, len(hours), RECOMPUTE_CHUNK_H):
            chunk = hours[i:i + RECOMPUTE_CHUNK_H]
            pad = cfg.pad_minutes
            states = await store.minute_states(conn, site_id=cfg.site_id, lo=chunk[0] - pad,
                                               hi=chunk[-1] + 60 + pad)
            site_rows, ten_rows = domain.evaluate_hours(cfg, chunk, states)
            await store.save_hours(conn, site_rows=site_rows, tenancy_rows=ten_rows, site_id=cfg.site_id,
                                   hours=[r.hour for r in site_rows], tenants=[t.tenant_id for t in cfg.tenancies])
            await store.refresh_days(conn, site_id=cfg.site_id, hours=[r.hour for r in site_rows])
            done += len(site_rows)
        self._count("hours_computed", done)
        return done

    async def recompute_dirty(self, *, settled_only: bool = False) -> int:
        """Re-evaluate every site-hour marked when the call starts, once (groups of sites, each in
        its own short transaction); marks made meanwhile wait for the next call. `settled_only`:
        only the sites `Settling` calls due (the loop); the others keep their marks."""
        started = time.monotonic()
        async with self.pool.acquire() as conn:
            # only this replica's sites: their marks come from its own partitions (another
            # replica's would be taken under that replica's feet, holding its site locks)
            sites = [s for s in await store.dirty_sites(conn, limit=None) if self.owns(s)]
        self._settle.forget_all_but(sites)
        if settled_only:
            sites = self._settle.due(sites, started)
        if not sites:
            return 0
        # groups of sites, each in one transaction; a few groups at once, so one group's SQL
        # round trips overlap another's evaluation
        todo = iter([sites[i:i + RECOMPUTE_GROUP] for i in range(0, len(sites), RECOMPUTE_GROUP)])
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._recompute_groups(todo))
                     for _ in range(min(self.config.recompute_concurrency, len(sites)))]
        self._settle.evaluated(sites, started)
        return sum(t.result() for t in tasks)

    async def _recompute_groups(self, groups: Iterator[list[str]]) -> int:
        """Re-evaluate the marked hours of the site groups taken from `groups` (shared by several
        of these): per group one transaction holding the group's site locks, one read of the minutes,
        one write of the hour rows and day rollups."""
        done = 0
        for group in groups:
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock_sites(conn, site_ids=group)
                dirty = await store.take_dirty_many(conn, site_ids=group)
                ranges: dict[str, tuple[int, int]] = {}
                for site_id, hours in sorted(dirty.items()):
                    cfg = self.ref.site_cfg(site_id)
                    if hours[-1] - hours[0] >= RECOMPUTE_CHUNK_H * 60:  # a long span: chunk by chunk
                        done += await self._recompute(conn, cfg, hours)
                    else:
                        ranges[site_id] = (hours[0] - cfg.pad_minutes, hours[-1] + 60 + cfg.pad_minutes)
                if not ranges:
                    continue
                states = await store.minute_states_many(conn, ranges=ranges)
                site_rows: list[domain.SiteHour] = []
                ten_rows: list[domain.TenancyHour] = []
                tenants: dict[str, list[str]] = {}
                for site_id in ranges:
                    cfg = self.ref.site_cfg(site_id)
                    rows, trows = domain.evaluate_hours(cfg, dirty[site_id], states[site_id])
                    site_rows += rows
                    ten_rows += trows
                    tenants[site_id] = [t.tenant_id for t in cfg.tenancies]
                await store.replace_hours(conn, site_rows=site_rows, tenancy_rows=ten_rows, tenants=tenants)
                by_site: dict[str, list[int]] = defaultdict(list)
                for r in site_rows:
                    by_site[r.site_id].append(r.hour)
                await store.refresh_days_many(conn, hours=by_site)
                self._count("hours_computed", len(site_rows))
                done += len(site_rows)
        return done

    async def _recompute_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=5.0)
            self._dirty.clear()
            await asyncio.sleep(self._settle.next_due_in(time.monotonic()))
            try:
                await self.recompute_dirty(settled_only=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - marks stay in the table; retried next round
                log.warning("kpi recompute failed: %s", exc)
            await asyncio.sleep(self.config.recompute_interval_s)
            if self._settle.waiting():  # sites not due yet: look again when the first one is
                self._dirty.set()

    async def recompute_site(self, site_id: str, *, lo: int | None = None, hi: int | None = None) -> int:
        """Re-evaluate a site's stored hours (all within the recompute horizon, or [lo, hi))."""
        if not self.owns(site_id):
            return 0
        since = int(self.clock() // 60 - self.config.recompute_days * 1440)
        async with self._lock, self.pool.acquire() as conn, conn.transaction():
            await store.lock_sites(conn, site_ids=[site_id])
            cfg = self.ref.site_cfg(site_id)
            hours = await store.site_hours_with_data(conn, site_id=site_id, since=since)
            if lo is not None and hi is not None:
                hours = [h for h in hours if h + 60 > lo - cfg.pad_minutes and h < hi + cfg.pad_minutes]
            return await self._recompute(conn, cfg, hours)

    # -- register changes and policies

    async def handle_events(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            subject = msg.subject
            if not (subject.startswith(subjects.SITES_EVENTS_PREFIX) or subject == POLICY_SUBJECT):
                continue
            env = events_pb2.Envelope()
            try:
                env.ParseFromString(msg.data)
            except Exception as exc:  # noqa: BLE001
                raise events.Poison(f"not an Envelope: {exc}") from exc
            if subject == POLICY_SUBJECT:
                await self.apply_policy(events.unpack(env, kpi_pb2.PolicyUpdated).policy)
            else:
                await self.apply_change(events.unpack(env, sites_pb2.SitesChange))

    async def apply_policy(self, policy: kpi_pb2.AvailabilityPolicy) -> None:
        old = self.ref.policies.get(policy.tenant_id, 0)
        self.ref.policies[policy.tenant_id] = policy.min_outage_minutes
        self.ref.changed()
        if old != policy.min_outage_minutes:
            sites = sorted({t["site_id"] for t in self.ref.tenancies.values()
                            if t["tenant_id"] == policy.tenant_id})
            for site_id in sites:
                await self.recompute_site(site_id)

    async def apply_change(self, change: sites_pb2.SitesChange) -> None:
        kind = change.kind
        deleted = kind == sites_pb2.CHANGE_KIND_DELETED
        which = change.WhichOneof("entity")
        async with self.pool.acquire() as conn, conn.transaction():
            if which == "site":
                s = change.site
                if deleted:
                    await store.delete_site(conn, site_id=s.id)
                else:
                    await store.upsert_site(conn, site_id=s.id, region=s.region,
                                            dg_capacity_kva=s.power.dg_capacity_kva,
                                            dg_start_delay_s=s.power.dg_start_delay_s,
                                            battery_bank_ah=s.power.battery_bank_ah)
                affected = (s.id, None, None)
            elif which == "tenancy":
                t = change.tenancy
                if deleted:  # its figures so far stay as history; nothing to re-evaluate
                    await store.delete_tenancy(conn, tenancy_id=t.id)
                    self.ref = Reference.from_rows(await store.load_reference(conn))
                    return
                else:
                    lo, hi = band(t)
                    await store.upsert_tenancy(conn, tenancy_id=t.id, site_id=t.site_id, tenant_id=t.tenant_id,
                                               sla_target=t.sla_availability_target, dc_min_v=lo, dc_max_v=hi)
                affected = (t.site_id, None, None)
            elif which == "window":
                w = change.window
                old = await store.get_window(conn, window_id=w.id)
                start, end = _ts(w.start_time), _ts(w.end_time)
                if deleted:
                    await store.delete_window(conn, window_id=w.id)
                else:
                    await store.upsert_window(conn, window_id=w.id, site_id=w.site_id, start=start, end=end,
                                              category=int(w.category), tenant_ids=list(w.tenant_ids))
                lo, hi = store.minute_index(start), -(-int(end.timestamp()) // 60)
                if old is not None:
                    lo = min(lo, store.minute_index(old["start_time"]))
                    hi = max(hi, -(-int(old["end_time"].timestamp()) // 60))
                affected = (w.site_id, lo, hi)
            else:
                return  # tenants themselves change nothing here
            self.ref = Reference.from_rows(await store.load_reference(conn))
        site_id, lo, hi = affected
        await self.recompute_site(site_id, lo=lo, hi=hi)
        self._count("register_changes")

    async def sync_register(self) -> int:
        """Replace the reference copy with the Sites service's register; recompute changed sites."""
        assert self.fetch_register is not None
        reg = await self.fetch_register()
        before = {sid: self.ref.site_cfg(sid) for sid in self._known_sites()}
        async with self.pool.acquire() as conn, conn.transaction():
            await store.clear_reference(conn)  # replaced wholesale below
            for s in reg["sites"]:
                await store.upsert_site(conn, site_id=s.id, region=s.region,
                                        dg_capacity_kva=s.power.dg_capacity_kva,
                                        dg_start_delay_s=s.power.dg_start_delay_s,
                                        battery_bank_ah=s.power.battery_bank_ah)
            for t in reg["tenancies"]:
                lo, hi = band(t)
                await store.upsert_tenancy(conn, tenancy_id=t.id, site_id=t.site_id, tenant_id=t.tenant_id,
                                           sla_target=t.sla_availability_target, dc_min_v=lo, dc_max_v=hi)
            for w in reg["windows"]:
                await store.upsert_window(conn, window_id=w.id, site_id=w.site_id, start=_ts(w.start_time),
                                          end=_ts(w.end_time), category=int(w.category),
                                          tenant_ids=list(w.tenant_ids))
            self.ref = Reference.from_rows(await store.load_reference(conn))
        changed = 0
        for sid in sorted(set(before) | self._known_sites()):
            if before.get(sid) != self.ref.site_cfg(sid):
                changed += 1
                await self.recompute_site(sid)
        return changed

    def _known_sites(self) -> set[str]:
        return set(self.ref.sites) | {t["site_id"] for t in self.ref.tenancies.values()}

    async def _sync_loop(self) -> None:
        delay = 1.0
        while True:
            try:
                changed = await self.sync_register()
                log.info("kpi register synced: %d sites, %d changed", len(self.ref.sites), changed)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Sites down: keep the copy we have, retry
                log.warning("kpi register sync failed (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- announcing hours

    async def publish_closed(self, *, limit: int = 500) -> int:
        closed_before = int((self.clock() - self.config.publish_grace_s) // 60) - 60
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await store.unpublished_hours(conn, closed_before=closed_before + 1, site_ids=None,
                                                 limit=limit)
            if not rows:
                return 0
            tenancy_rows = await store.tenancy_rows_many(
                conn, keys=[(row["site_id"], store.minute_index(row["hour"])) for row in rows])
            items = []
            for row in rows:
                trows = tenancy_rows.get((row["site_id"], store.minute_index(row["hour"])), [])
                payload = kpi_pb2.HourComputed(kpis=hour_kpis(row, trows, self.ref), revision=row["revision"])
                items.append(outbox.Event(HOUR_SUBJECT, HOUR_SUBJECT, "kpi_calculator", payload,
                                          sorted({r["tenant_id"] for r in trows})))
            await outbox.enqueue_many(conn, schema=SCHEMA, items=items)
            await store.mark_published_many(conn, rows=[(r["site_id"], r["hour"], r["revision"]) for r in rows])
        self._count("hours_published", len(rows))
        return len(rows)

    async def _publish_loop(self) -> None:
        while True:
            try:
                while await self.publish_closed() > 0:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("kpi publish failed: %s", exc)
            await asyncio.sleep(self.config.publish_interval_s)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                async with self.pool.acquire() as conn:
                    await store.purge_consumed(conn, older_than_s=self.config.allowed_lateness_s + 86400)
                    await store.purge_minutes(conn, older_than_s=self.config.minute_retention_days * 86400)
            except Exception as exc:  # noqa: BLE001
                log.warning("kpi purge failed: %s", exc)


def hour_kpis(row, tenancy_rows: Sequence, ref: Reference) -> kpi_pb2.SiteKpis:
    """The SiteKpis of one site-hour row, for the hour event (tenancies under the default
    EXCLUDED unknown-minute policy; the KPI service applies other policies at query time)."""
    site_id = row["site_id"]
    start = row["hour"]
    rng = common_pb2.TimeRange()
    rng.start_time.FromDatetime(start)
    rng.end_time.FromSeconds(int(start.timestamp()) + 3600)
    k = kpi_pb2.SiteKpis(
        site_id=site_id, region=ref.sites.get(site_id, {}).get("region", ""), range=rng, period_minutes=60,
        power_known_minutes=row["power_known"], power_ok_minutes=row["power_ok"],
        power_availability=row["power_ok"] / row["power_known"] if row["power_known"] else 1.0,
        grid_known_minutes=row["grid_known"], grid_present_minutes=row["grid_present"],
        grid_availability=row["grid_present"] / row["grid_known"] if row["grid_known"] else 1.0,
        dg_run_hours=row["dg_run_minutes"] / 60.0, dg_starts=row["dg_starts"],
        dg_fail_to_start=row["dg_fail_to_start"], fuel_consumed_l=row["fuel_consumed_l"],
        fuel_expected_l=row["fuel_expected_l"], fuel_drop_dg_off_l=row["fuel_drop_dg_off_l"],
        refuel_l=row["refuel_l"], refuels=row["refuels"], energy_grid_kwh=row["energy_grid_kwh"],
        energy_dg_kwh=row["energy_dg_kwh"], energy_battery_kwh=row["energy_battery_kwh"],
    )
    bank = float(ref.sites.get(site_id, {}).get("battery_bank_ah", 0.0))
    if row["soc_pct"] is not None and row["load_a"] and bank > 0:
        k.battery_autonomy_h = max(0.0, row["soc_pct"]) / 100.0 * bank / row["load_a"]
        k.battery_autonomy_time.FromDatetime(row["soc_time"])
    for t in tenancy_rows:
        c = {code: t[column] for code, column in store.CODE_COLUMNS.items()}  # stored with the row
        a, defined = domain.default_availability_of_counts(c, len(t["minutes"]))
        k.tenancies.add(
            site_id=site_id, tenant_id=t["tenant_id"], region=k.region,
            availability=kpi_pb2.Availability(
                availability=a, defined=defined, unknown_policy=kpi_pb2.UNKNOWN_POLICY_EXCLUDED,
                period_minutes=60, up_minutes=c["U"] + c["u"], unknown_minutes=c["?"],
                outage=kpi_pb2.OutageMinutes(total=c["L"] + c["H"] + c["N"], dc_low=c["L"], dc_high=c["H"],
                                             link_down=c["N"], ignored_short=c["u"]),
                excluded=kpi_pb2.ExcludedMinutes(
                    total=sum(c[x] for x in "PFTApfta?"), planned_maintenance=c["P"] + c["p"],
                    force_majeure=c["F"] + c["f"], tenant_caused=c["T"] + c["t"],
                    access_denied=c["A"] + c["a"], unknown=c["?"]),
                sla_target=float(t["sla_target"]),
                sla_met=(not defined) or a >= float(t["sla_target"])))
    return k
