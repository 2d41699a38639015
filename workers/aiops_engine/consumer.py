"""The aiops_engine's consumers: TELEMETRY -> detectors (domain) -> anomalies and predictions in
the aiops schema and towerco.aiops.* events through the aiops outbox; register changes -> the
site configurations the rules read.

One transaction per fetched batch: the message ids, the anomalies and predictions it produced,
their events and the detectors' state of every site it touched. So a killed worker restarts
where it left off: a batch whose transaction committed is skipped on redelivery, one that did
not is processed again from the state before it, and no anomaly is lost or stored twice.
Memory (site states, configurations, feedback adjustments) is a cache rebuilt from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter
from towerco.aiops.v1 import aiops_pb2
from towerco.events.v1 import events_pb2
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

from mesh import config, events, leases, outbox, subjects
from workers.aiops_engine import domain, store

log = logging.getLogger("towerco.aiops_engine")

SCHEMA = "aiops"
SOURCE = "aiops_engine"
DETECTED = subjects.AIOPS_ANOMALY_DETECTED
CLEARED = subjects.AIOPS_ANOMALY_CLEARED
PREDICTED = subjects.AIOPS_ANOMALY_PREDICTED
SITES_FILTER = subjects.SITES_EVENTS
COUNTS = Counter("towerco_aiops_engine", "What the aiops_engine did: samples, batches, duplicate_batches, "
                 "anomalies_opened, anomalies_cleared, predictions, detector_errors.", ["what"])


@dataclass(frozen=True)
class EngineConfig:
    """The engine's tuning, from the TOWERCO_AIOPS_* variables of mesh.config.AiopsEngineSettings
    (docs/operations.md). While a dead replica's batch waits out ack_wait_s, nothing newer of its
    partition is delivered (order matters here)."""

    partitions: tuple[int, ...]
    replica: str = "all"
    durable_prefix: str = "aiops-engine"
    batch: int = 100
    ack_wait_s: float = 30.0
    tick_s: float = 5.0
    live_lag_s: float = 120.0
    adjust_s: float = 5.0
    retrain_s: float = 3600.0
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0)
    params: domain.Params = field(default_factory=domain.Params)
    leased: bool = False  # TOWERCO_AIOPS_PARTITIONS=auto: the partitions are shared by leases
    lease_ttl_s: float = 10.0
    lease_heartbeat_s: float = 2.0

    @classmethod
    def from_env(cls, partition_count: int) -> EngineConfig:
        """From mesh.config.AiopsEngineSettings (TOWERCO_AIOPS_*) and LeaseSettings."""
        env = config.load(config.AiopsEngineSettings)
        lease = config.load(config.LeaseSettings)
        parts = subjects.parse_partitions(env.partitions, partition_count)
        leased = subjects.is_leased(env.partitions)
        replica = env.replica or (socket.gethostname() if leased else subjects.replica_name(parts, partition_count))
        return cls(partitions=tuple(parts), replica=replica, leased=leased, lease_ttl_s=lease.ttl_s,
                   lease_heartbeat_s=lease.heartbeat_s, durable_prefix=env.durable_prefix or "aiops-engine",
                   batch=max(1, env.batch), ack_wait_s=env.ack_wait_s, tick_s=env.tick_s,
                   live_lag_s=env.live_lag_s, adjust_s=env.adjust_s, retrain_s=env.retrain_s)


# --------------------------------------------------------------------------- reference data


def site_cfgs(rows: dict[str, list]) -> dict[str, domain.SiteCfg]:
    """Site configurations from the aiops copy of the register."""
    tenancies: dict[str, list] = defaultdict(list)
    for t in rows["tenancies"]:
        tenancies[t["site_id"]].append(t)
    windows: dict[str, list] = defaultdict(list)
    for w in rows["windows"]:
        windows[w["site_id"]].append(domain.Window(w["start_time"].timestamp(), w["end_time"].timestamp(),
                                                   int(w["category"])))
    out = {}
    for s in rows["sites"]:
        ts_ = tenancies.get(s["site_id"], [])
        lo = max((float(t["dc_min_v"]) for t in ts_), default=domain.DEFAULT_BAND[0])
        hi = min((float(t["dc_max_v"]) for t in ts_), default=domain.DEFAULT_BAND[1])
        out[s["site_id"]] = domain.SiteCfg(
            site_id=s["site_id"], region=s["region"], tenant_ids=tuple(sorted({t["tenant_id"] for t in ts_})),
            has_grid=bool(s["has_grid"]), has_dg=float(s["dg_capacity_kva"]) > 0,
            dg_capacity_kva=float(s["dg_capacity_kva"]), dg_start_delay_s=float(s["dg_start_delay_s"]),
            battery_bank_ah=float(s["battery_bank_ah"]), fuel_tank_l=float(s["fuel_tank_l"]),
            dc_min_v=lo, dc_max_v=hi, windows=tuple(windows.get(s["site_id"], ())))
    return out


def band(t: sites_pb2.Tenancy) -> tuple[float, float]:
    lo, hi = t.dc_voltage_min_v, t.dc_voltage_max_v
    if lo == 0 and hi == 0:
        return domain.DEFAULT_BAND
    return lo, (hi if hi > 0 else domain.DEFAULT_BAND[1])


def _ts(epoch_s: float | None) -> timestamp_pb2.Timestamp | None:
    if epoch_s is None:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(round(epoch_s * 1e9)))
    return t


def features_pb(features: Iterable[domain.Feature]) -> list[aiops_pb2.Feature]:
    return [aiops_pb2.Feature(name=f.name, observed=f.observed, expected=f.expected, threshold=f.threshold,
                              contribution=f.contribution) for f in features]


def anomaly_pb(row: asyncpg.Record) -> aiops_pb2.Anomaly:
    a = aiops_pb2.Anomaly(
        id=str(row["id"]), site_id=row["site_id"], region=row["region"], tenant_ids=list(row["tenant_ids"]),
        metrics=list(row["metrics"]), detector=row["detector"], detector_version=row["detector_version"],
        layer=row["layer"], score=row["score"], severity=row["severity"], state=row["state"],
        explanation=aiops_pb2.Explanation.FromString(row["explanation"]), feedback=row["feedback"],
        feedback_note=row["feedback_note"], tenant_id=row["tenant_id"])
    a.start_time.FromDatetime(row["start_time"])
    a.detect_time.FromDatetime(row["detect_time"])
    a.update_time.FromDatetime(row["update_time"])
    if row["end_time"] is not None:
        a.end_time.FromDatetime(row["end_time"])
    return a


def prediction_pb(row: asyncpg.Record) -> aiops_pb2.Prediction:
    p = aiops_pb2.Prediction(
        id=str(row["id"]), site_id=row["site_id"], region=row["region"], tenant_ids=list(row["tenant_ids"]),
        kind=row["kind"], confidence=row["confidence"], outcome=row["outcome"], detector=row["detector"],
        inputs=aiops_pb2.Explanation.FromString(row["inputs"]).features)
    p.predict_time.FromDatetime(row["predict_time"])
    p.expected_time.FromDatetime(row["expected_time"])
    if row["outcome_time"] is not None:
        p.outcome_time.FromDatetime(row["outcome_time"])
    if row["actual_time"] is not None:
        p.actual_time.FromDatetime(row["actual_time"])
    return p


# --------------------------------------------------------------------------- the engine


@dataclass
class Clock:
    """A partition's event-time clock: the newest sample time seen, running on with the wall
    clock once the partition is live (so silence is noticed even when every site goes quiet)."""

    watermark: float | None = None
    received_at: float | None = None  # wall time of the newest batch, when it was live

    def see(self, newest: float, wall: float, live_lag_s: float) -> None:
        if self.watermark is None or newest > self.watermark:
            self.watermark = newest
        self.received_at = wall if wall - newest <= live_lag_s else None

    def now(self, wall: float) -> float | None:
        if self.watermark is None:
            return None
        if self.received_at is not None:
            return self.watermark + max(0.0, wall - self.received_at)
        return self.watermark


class AiopsEngine:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, *, config: EngineConfig, partition_count: int,
                 fetch_register: Callable[[], Awaitable[dict]] | None = None, database_url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.js = js
        self.config = config
        self.partition_count = partition_count
        self.fetch_register = fetch_register
        self.database_url = database_url
        self.clock = clock
        self.engine = domain.Engine(config.params)
        # the partitions whose consumers run here: fixed, or (leased) changed by the LeaseKeeper
        self.owned: set[int] = set() if config.leased else set(config.partitions)
        self.keeper: leases.LeaseKeeper | None = None
        self.partition_consumers: dict[int, tuple[events.PullConsumer, asyncio.Task]] = {}
        self.cfgs: dict[str, domain.SiteCfg] = {}
        self.states: dict[str, domain.SiteState] = {}
        self.adjust: dict[str, dict[str, domain.Adjustment]] = {}
        self.clocks: dict[int, Clock] = defaultdict(Clock)
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.consumers: list[events.PullConsumer] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.latest_sample: float | None = None
        self.arrived: dict[str, float] = {}  # site -> wall time its latest samples were folded
        self.started = clock()
        self.models = None  # workers.aiops_engine.models.ModelLayer, when enabled
        self._tasks: list[asyncio.Task] = []

    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] += n
        COUNTS.labels(what).inc(n)

    def owns(self, site_id: str) -> bool:
        return subjects.partition_of(site_id, self.partition_count) in self.owned

    def cfg(self, site_id: str) -> domain.SiteCfg:
        return self.cfgs.get(site_id) or domain.SiteCfg(site_id)

    # -- lifecycle

    async def load(self) -> None:
        async with self.pool.acquire() as conn:
            self.cfgs = site_cfgs(await store.load_reference(conn))
            states = await store.load_states(conn)
            await self._load_adjustments(conn)
        self.states = {s: domain.SiteState.from_json(v) for s, v in states.items() if self.owns(s)}

    async def _load_adjustments(self, conn: asyncpg.Connection) -> None:
        adj: dict[str, dict[str, domain.Adjustment]] = defaultdict(dict)
        for r in await store.adjustments(conn):
            adj[r["site_id"]][r["key"]] = domain.Adjustment(float(r["factor"]), bool(r["suppressed"]))
        self.adjust = dict(adj)

    def _partition_consumer(self, p: int) -> events.PullConsumer:
        return events.PullConsumer(
            self.js, stream=events.TELEMETRY_STREAM, durable=f"{self.config.durable_prefix}-{p}",
            filter_subject=subjects.telemetry_subject(p), handler=self._handler(p), batch=self.config.batch,
            ack_wait=self.config.ack_wait_s, max_deliver=self.config.max_deliver, backoff=self.config.backoff,
            # one fetch in flight: after a crash its messages are redelivered (after ack_wait)
            # before anything newer, so each site's samples are judged in order
            max_ack_pending=self.config.batch, ordered=True)

    def _forget_partition(self, p: int) -> None:
        for sid in [s for s in self.states if subjects.partition_of(s, self.partition_count) == p]:
            self.states.pop(sid, None)
            self.arrived.pop(sid, None)
        self.clocks.pop(p, None)

    async def _start_partition(self, p: int) -> None:
        """A leased partition became ours: rebuild its sites' detector state from PostgreSQL
        (what the previous owner committed last), then consume it."""
        async with self.locks[p]:
            self._forget_partition(p)
            sites = [s for s in self.cfgs if subjects.partition_of(s, self.partition_count) == p]
            async with self.pool.acquire() as conn:  # the register's sites of p (others load on arrival)
                states = await store.load_states(conn, site_ids=sites)
            for sid, raw in states.items():
                self.states[sid] = domain.SiteState.from_json(raw)
            self.owned.add(p)
        c = self._partition_consumer(p)
        self.partition_consumers[p] = (c, asyncio.create_task(c.run(), name=c.durable))

    async def _stop_partition(self, p: int) -> None:
        """A leased partition goes to another replica: finish the batch in hand, then forget it."""
        entry = self.partition_consumers.pop(p, None)
        if entry is not None:
            c, task = entry
            await c.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self.locks[p]:
            self.owned.discard(p)
            self._forget_partition(p)

    async def run(self) -> None:
        await self.load()
        if self.config.leased:
            self.keeper = leases.LeaseKeeper(
                self.pool, schema=SCHEMA, group=self.config.durable_prefix, member=self.config.replica,
                partitions=self.partition_count, on_acquire=self._start_partition, on_release=self._stop_partition,
                ttl_s=self.config.lease_ttl_s, heartbeat_s=self.config.lease_heartbeat_s)
        else:
            self.consumers += [self._partition_consumer(p) for p in self.config.partitions]
        self.consumers.append(events.PullConsumer(
            self.js, stream=events.EVENTS_STREAM,
            durable=f"{self.config.durable_prefix}-register-{self.config.replica}",
            filter_subject=SITES_FILTER, handler=self.handle_events, batch=50, ack_wait=60.0))
        tasks = [asyncio.create_task(c.run(), name=c.durable) for c in self.consumers]
        if self.keeper is not None:
            tasks.append(asyncio.create_task(self.keeper.run(), name="aiops-leases"))
        tasks.append(asyncio.create_task(self._tick_loop(), name="aiops-tick"))
        tasks.append(asyncio.create_task(self._adjust_loop(), name="aiops-adjust"))
        tasks.append(asyncio.create_task(self._purge_loop(), name="aiops-purge"))
        if self.fetch_register is not None:
            tasks.append(asyncio.create_task(self._sync_loop(), name="aiops-sync"))
        if self.models is not None:
            tasks.append(asyncio.create_task(self.models.run(self), name="aiops-models"))
        relay = outbox.OutboxRelay(self.pool, self.js, schema=SCHEMA, database_url=self.database_url)
        tasks.append(asyncio.create_task(relay.run(), name="aiops-outbox"))
        self._tasks = tasks
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def stop(self) -> None:
        if self.keeper is not None:
            with contextlib.suppress(Exception):
                await self.keeper.close()  # stops the partitions' consumers, hands their leases back
        for c in self.consumers:
            with contextlib.suppress(Exception):
                await c.stop()
        log.info("aiops_engine stopping: %s", dict(self.stats))

    # -- telemetry

    def _handler(self, partition: int) -> Callable[[list[Msg]], Awaitable[None]]:
        async def handle(msgs: list[Msg]) -> None:
            await self.handle_telemetry(msgs, partition)
        return handle

    async def handle_telemetry(self, msgs: list[Msg], partition: int) -> None:
        batches: list[tuple[str, telemetry_pb2.TelemetryBatch]] = []
        for m in msgs:
            key = (m.headers or {}).get("Nats-Msg-Id") or f"seq:{m.metadata.sequence.stream}"
            try:
                batch = telemetry_pb2.TelemetryBatch.FromString(m.data)
            except Exception as exc:  # noqa: BLE001 - undecodable: nothing to retry
                raise events.Poison(f"not a TelemetryBatch: {exc}", msgs=[m]) from exc
            batches.append((key, batch))
        async with self.locks[partition]:
            await self._fold(batches, partition)

    async def _fold(self, batches: list[tuple[str, telemetry_pb2.TelemetryBatch]], partition: int) -> None:
        touched: set[str] = set()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if self.keeper is not None:
                    await self.keeper.fence(conn, partition)  # leases.Fenced once another replica took it
                new = await store.claim(conn, keys=[k for k, _ in batches])
                self._count("duplicate_batches", len(batches) - len(new))
                by_site: dict[str, list[tuple[float, str, str, float]]] = defaultdict(list)
                newest = None
                for key, batch in batches:
                    if key not in new:
                        continue
                    for s in batch.samples:
                        if not self.owns(s.site_id):
                            continue
                        t = s.time.seconds + s.time.nanos * 1e-9
                        by_site[s.site_id].append((t, s.metric, s.tenant_id, s.value))
                        if newest is None or t > newest:
                            newest = t
                if not by_site:
                    return
                touched = set(by_site)
                missing = [s for s in touched if s not in self.states]
                if missing:
                    for sid, raw in (await store.load_states(conn, site_ids=missing)).items():
                        self.states[sid] = domain.SiteState.from_json(raw)
                transitions: list[tuple[str, domain.Transition]] = []
                predictions: list[tuple[str, domain.PredictionChange]] = []
                n = 0
                for sid, samples in by_site.items():
                    samples.sort(key=lambda x: x[0])
                    st = self.states.setdefault(sid, domain.SiteState())
                    try:
                        tr, pr = self.engine.process(st, self.cfg(sid), samples, self.adjust.get(sid))
                    except Exception:
                        # counted and logged; the consumer retries the message, then dead-letters it
                        self._count("detector_errors")
                        log.exception("aiops detector failed on site %s", sid)
                        raise
                    transitions += [(sid, x) for x in tr]
                    predictions += [(sid, x) for x in pr]
                    n += len(samples)
                if self.models is not None:
                    transitions += self.models.score_many(
                        [(sid, self.cfg(sid), self.states[sid], self.adjust.get(sid)) for sid in by_site])
                else:
                    for sid in by_site:
                        self.states[sid].features.clear()
                await self._write(conn, transitions, predictions, touched)
            self._count("samples", n)
            self._count("batches", len(new))
            wall = self.clock()
            for sid in by_site:
                self.arrived[sid] = wall
            if newest is not None:
                self.clocks[partition].see(newest, wall, self.config.live_lag_s)
                self.latest_sample = max(self.latest_sample or newest, newest)
        except BaseException:
            for sid in touched:  # the transaction did not commit: forget what it changed
                self.states.pop(sid, None)
            raise

    async def _write(self, conn: asyncpg.Connection, transitions: list[tuple[str, domain.Transition]],
                     predictions: list[tuple[str, domain.PredictionChange]], touched: Iterable[str]) -> None:
        # in the order the detectors decided: a key's anomaly cleared and a new one of the same key
        # opened in one batch must clear first (one open anomaly per site and key), so the
        # transitions are written as runs of opens and runs of clears, in order
        runs: list[tuple[str, list[Any]]] = []
        for sid, x in transitions:
            if not runs or runs[-1][0] != x.kind:
                runs.append((x.kind, []))
            if x.kind == "open":
                cfg = self.cfg(sid)
                runs[-1][1].append({
                    "id": x.id, "site_id": sid, "region": cfg.region, "tenant_ids": list(cfg.tenant_ids),
                    "key": x.key, "detector": x.detector, "version": x.version, "layer": x.layer,
                    "metrics": list(x.metrics), "tenant_id": x.tenant_id, "score": x.score, "severity": x.severity,
                    "start": x.start, "time": x.time,
                    "explanation": aiops_pb2.Explanation(summary=x.summary,
                                                         features=features_pb(x.features)).SerializeToString()})
            else:
                runs[-1][1].append((x.id, x.time))
        items: list[outbox.Event] = []
        n_open = n_clear = 0
        for kind, run in runs:
            if kind == "open":
                n_open += len(run)
                for row in await store.insert_anomalies(conn, rows=run):
                    a = anomaly_pb(row)
                    items.append(outbox.Event(DETECTED, DETECTED, SOURCE, aiops_pb2.AnomalyDetected(anomaly=a),
                                              list(a.tenant_ids)))
            else:
                n_clear += len(run)
                for row in await store.clear_anomalies(conn, items=run):
                    a = anomaly_pb(row)
                    items.append(outbox.Event(CLEARED, CLEARED, SOURCE, aiops_pb2.AnomalyCleared(anomaly=a),
                                              list(a.tenant_ids)))
        self._count("anomalies_opened", n_open)
        self._count("anomalies_cleared", n_clear)
        popen, presolve = [], []
        for sid, pc in predictions:
            if pc.kind == "open":
                cfg = self.cfg(sid)
                popen.append({"id": pc.id, "site_id": sid, "region": cfg.region, "tenant_ids": list(cfg.tenant_ids),
                              "kind": pc.pkind, "detector": pc.detector, "predict_time": pc.predict_time,
                              "expected_time": pc.expected_time, "confidence": pc.confidence,
                              "inputs": aiops_pb2.Explanation(features=features_pb(pc.inputs)).SerializeToString()})
            else:
                presolve.append((pc.id, pc.outcome, pc.time, pc.actual_time))
        for row in await store.insert_predictions(conn, rows=popen):
            p = prediction_pb(row)
            items.append(outbox.Event(PREDICTED, PREDICTED, SOURCE, aiops_pb2.AnomalyPredicted(prediction=p),
                                      list(p.tenant_ids)))
        await store.resolve_predictions(conn, items=presolve)
        self._count("predictions", len(popen))
        await store.save_states(conn, states={sid: (self.states[sid].to_json(), self.states[sid].last_t)
                                              for sid in touched if sid in self.states})
        if items:
            await outbox.enqueue_many(conn, schema=SCHEMA, items=items)

    # -- silence

    async def tick(self) -> int:
        """Judge every owned site's silence against its partition's clock; returns transitions."""
        wall = self.clock()
        done = 0
        for p in sorted(self.owned):
            now = self.clocks[p].now(wall)
            if now is None:
                continue
            async with self.locks[p]:
                # a site whose samples are still arriving (a backlog, a lagging remote unit) is
                # not silent: its own samples will show a real gap when they come
                sites = [s for s in self.states if subjects.partition_of(s, self.partition_count) == p
                         and wall - self.arrived.get(s, self.started) > self.engine.gap_limit(self.states[s])]
                transitions = []
                for sid in sites:
                    tr = self.engine.tick(self.states[sid], self.cfg(sid), now, self.adjust.get(sid))
                    transitions += [(sid, x) for x in tr]
                if not transitions:
                    continue
                touched = {sid for sid, _ in transitions}
                try:
                    async with self.pool.acquire() as conn, conn.transaction():
                        if self.keeper is not None:
                            await self.keeper.fence(conn, p)
                        await self._write(conn, transitions, [], touched)
                except BaseException:
                    for sid in touched:
                        self.states.pop(sid, None)
                    raise
                done += len(transitions)
        return done

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried next tick
                self._count("detector_errors")
                log.warning("aiops tick failed: %s", exc)

    async def _adjust_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.adjust_s)
            try:
                async with self.pool.acquire() as conn:
                    await self._load_adjustments(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("aiops adjustments reload failed: %s", exc)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                async with self.pool.acquire() as conn:
                    await store.purge_consumed(conn, older_than_s=8 * 86400)
            except Exception as exc:  # noqa: BLE001
                log.warning("aiops purge failed: %s", exc)

    # -- the register

    async def handle_events(self, msgs: list[Msg]) -> None:
        for m in msgs:
            env = events_pb2.Envelope.FromString(m.data)
            change = sites_pb2.SitesChange()
            if not env.payload.Unpack(change):
                continue
            await self.apply_change(change)

    async def apply_change(self, change: sites_pb2.SitesChange) -> None:
        deleted = change.kind == sites_pb2.CHANGE_KIND_DELETED
        which = change.WhichOneof("entity")
        async with self.pool.acquire() as conn, conn.transaction():
            if which == "site":
                s = change.site
                if deleted:
                    await store.delete_site(conn, site_id=s.id)
                else:
                    await self._upsert_site(conn, s)
            elif which == "tenancy":
                t = change.tenancy
                if deleted:
                    await store.delete_tenancy(conn, tenancy_id=t.id)
                else:
                    lo, hi = band(t)
                    await store.upsert_tenancy(conn, tenancy_id=t.id, site_id=t.site_id, tenant_id=t.tenant_id,
                                               dc_min_v=lo, dc_max_v=hi)
            elif which == "window":
                w = change.window
                if deleted:
                    await store.delete_window(conn, window_id=w.id)
                else:
                    await store.upsert_window(conn, window_id=w.id, site_id=w.site_id,
                                              start=w.start_time.ToDatetime(tzinfo=UTC),
                                              end=w.end_time.ToDatetime(tzinfo=UTC), category=int(w.category))
            else:
                return
            self.cfgs = site_cfgs(await store.load_reference(conn))

    @staticmethod
    async def _upsert_site(conn: asyncpg.Connection, s: sites_pb2.Site) -> None:
        p = s.power
        await store.upsert_site(conn, site_id=s.id, region=s.region,
                                has_grid=p.grid != sites_pb2.GRID_CONNECTION_NONE,
                                dg_capacity_kva=p.dg_capacity_kva, dg_start_delay_s=p.dg_start_delay_s,
                                battery_bank_ah=p.battery_bank_ah, fuel_tank_l=p.fuel_tank_l)

    async def sync_register(self) -> None:
        assert self.fetch_register is not None
        reg = await self.fetch_register()
        async with self.pool.acquire() as conn, conn.transaction():
            await store.clear_reference(conn)
            for s in reg["sites"]:
                await self._upsert_site(conn, s)
            for t in reg["tenancies"]:
                lo, hi = band(t)
                await store.upsert_tenancy(conn, tenancy_id=t.id, site_id=t.site_id, tenant_id=t.tenant_id,
                                           dc_min_v=lo, dc_max_v=hi)
            for w in reg["windows"]:
                await store.upsert_window(conn, window_id=w.id, site_id=w.site_id,
                                          start=w.start_time.ToDatetime(tzinfo=UTC),
                                          end=w.end_time.ToDatetime(tzinfo=UTC), category=int(w.category))
            self.cfgs = site_cfgs(await store.load_reference(conn))

    async def _sync_loop(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.sync_register()
                log.info("aiops register synced: %d sites", len(self.cfgs))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Sites down: keep the copy we have, retry
                log.warning("aiops register sync failed (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

