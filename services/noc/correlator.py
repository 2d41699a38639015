"""Correlation with its I/O: signals (anomaly events, posted alarms) -> the domain's correlator
-> rows and towerco.noc.incident.<change> events, in ONE transaction per batch; and the periodic
task (auto-resolve timers, calendar window ends, flapping calm, regional outages).

A batch: site facts and SLA exposure are gathered first (caches, gRPC; never inside the
transaction), then, in one transaction per lane (a lane is a set of regions): the locks of the
regions of the batch's sites and of the sites (store.lock: regions first, then sites, sorted;
every writer of the noc schema takes both, so the regional rule may link another site's incident
of its region and refresh the parent without a lost update), the sources already seen (a
redelivered event or a re-posted alarm changes nothing), the sites' working sets, the domain's
decisions, their rows, the sources, and the events through the noc outbox as the last step.
A deadlock between two writers (an operator merging while a batch links a region) is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Histogram

from mesh import outbox, subjects
from services.noc import convert, domain, store
from services.noc.facts import SiteFactsCache, SlaCache

log = logging.getLogger("towerco.noc.correlator")

SCHEMA = "noc"
SOURCE = "noc"
COUNTS = Counter("towerco_noc_correlator", "What the NOC correlator did: signals, duplicates, unknown_sites, "
                 "incidents_opened, events, batches, deadlocks, tick_changes.", ["what"])
BATCH_SECONDS = Histogram("towerco_noc_batch_seconds", "Seconds per correlated batch (one transaction)")
RETRIES = 5


@dataclass(frozen=True)
class Result:
    """What became of one signal."""

    signal: domain.Signal
    alarm: domain.AlarmRec | None = None
    incident_id: str = ""
    duplicate: bool = False
    conflict: bool = False  # same (source, source_alarm_id), different content
    unknown_site: bool = False
    rule: str = ""


def new_id() -> str:
    return str(uuid.uuid4())


class Correlator:
    """The NOC's correlation engine over PostgreSQL. Shared by the anomaly consumer, PostAlarm,
    the operator actions (`commit`) and the periodic task."""

    def __init__(self, pool: asyncpg.Pool, *, facts: SiteFactsCache | None, sla: SlaCache | None = None,
                 params: domain.Params | None = None, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.facts = facts
        self.sla = sla or SlaCache(None)
        self.params = params or domain.Params()
        self.clock = clock

    # -- signals

    async def process(self, signals: Sequence[domain.Signal], *, require_alarm: bool = False,
                      lanes: int = 1) -> list[Result]:
        """Correlate these signals (in order per site) and return one Result each, in order.

        The signals are split by region into `lanes` groups (a region's signals stay together,
        in order), each correlated in its own transaction, concurrently: PostgreSQL works on one
        while Python decides the other. With `require_alarm`, a clear that finds no active alarm
        raises domain.IllegalTransition (NO_ACTIVE_ALARM) and the transaction rolls back
        (PostAlarm)."""
        if not signals:
            return []
        started = time.perf_counter()
        site_ids = {s.site_id for s in signals}
        facts = await self.facts.get_many(site_ids) if self.facts is not None else {}
        sla = await self.sla.for_sites(facts.values())
        groups: list[list[int]] = [[] for _ in range(max(1, lanes))]
        for i, sig in enumerate(signals):
            f = facts.get(sig.site_id)
            groups[zlib.crc32((f.region if f else "").encode()) % len(groups)].append(i)
        results: list[Result | None] = [None] * len(signals)

        async def run(idx: list[int]) -> None:
            part = [signals[i] for i in idx]
            for r, i in zip(await self._transact(part, facts, sla, require_alarm), idx, strict=True):
                results[i] = r

        await asyncio.gather(*(run(g) for g in groups if g))
        COUNTS.labels("batches").inc()
        COUNTS.labels("signals").inc(len(signals))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        return [r for r in results if r is not None]

    async def _transact(self, signals: Sequence[domain.Signal], facts: dict[str, domain.SiteFacts],
                        sla: dict[str, domain.Sla], require_alarm: bool) -> list[Result]:
        for attempt in range(RETRIES):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await self._apply(conn, signals, facts, sla, require_alarm)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                COUNTS.labels("deadlocks").inc()
                if attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _apply(self, conn: asyncpg.Connection, signals: Sequence[domain.Signal],
                     facts: dict[str, domain.SiteFacts], sla: dict[str, domain.Sla],
                     require_alarm: bool = False) -> list[Result]:
        p = self.params
        known = [s for s in signals if s.site_id in facts]
        sites = sorted({s.site_id for s in known})
        # every write to a site's incidents happens under its region's lock and its own: the
        # regional rule links other sites' incidents of the region and refreshes the parent
        await store.lock(conn, regions={facts[s].region for s in sites}, sites=sites)
        regions = sorted({facts[s.site_id].region for s in known
                          if s.step == "mains_failure" and not s.clears and facts[s.site_id].region})
        seen = await store.sources_seen(conn, keys=[(s.source, s.source_alarm_id) for s in signals])
        tmin = min(s.time for s in known) if known else self.clock()
        views = {sid: domain.SiteView(facts[sid]) for sid in sites}
        for a in await store.site_alarms(conn, site_ids=sites, since=tmin - max(p.dedup_window_s, p.flap_window_s)):
            views[a.site_id].alarms[a.dedup_key] = a
        byid: dict[str, domain.IncidentRec] = {}
        for i in await store.site_incidents(conn, site_ids=sites,
                                            since=tmin - max(p.reopen_window_s, p.link_window_s)):
            views[i.site_id].incidents.append(i)
            byid[i.id] = i
        rviews: dict[str, domain.RegionView] = {r: domain.RegionView(r) for r in regions}
        if regions:
            for i in await store.region_incidents(conn, regions=regions, since=tmin - p.regional_window_s):
                obj = byid.setdefault(i.id, i)
                rv = rviews[obj.region]
                if obj.kind == domain.REGIONAL:
                    rv.parent = obj
                else:
                    rv.incidents.append(obj)
        out = domain.Decisions()
        results: list[Result] = []
        sources: list[tuple[str, str, str, str]] = []
        for sig in signals:
            key = (sig.source, sig.source_alarm_id)
            digest = sig.content_hash()
            if key in seen:
                alarm_id, old = seen[key]
                COUNTS.labels("duplicates").inc()
                results.append(Result(sig, alarm=_Ref(alarm_id).rec if alarm_id else None, duplicate=True,
                                      conflict=old != digest))
                continue
            if sig.site_id not in facts:
                COUNTS.labels("unknown_sites").inc()
                results.append(Result(sig, unknown_site=True))
                continue
            view = views[sig.site_id]
            rv = rviews.get(view.facts.region) if sig.step == "mains_failure" else None
            before = set(out.new_incidents)
            got = domain.correlate(view, sig, params=p, out=out, new_id=new_id, sla=sla, region=rv)
            if got.alarm is None and require_alarm:
                raise domain.IllegalTransition(f"no active alarm with clear key {sig.clear_key!r} on {sig.site_id}",
                                               "NO_ACTIVE_ALARM")
            for iid in out.new_incidents - before:
                if iid in out.incidents:
                    byid[iid] = out.incidents[iid]
            seen[key] = (got.alarm.id if got.alarm else "", digest)
            sources.append((sig.source, sig.source_alarm_id, got.alarm.id if got.alarm else "", digest))
            results.append(Result(sig, alarm=got.alarm, incident_id=got.incident_id, rule=got.rule))
        await self._refresh_parents(conn, out, byid)
        await store.record_sources(conn, rows=sources)
        await self.commit(conn, out)
        COUNTS.labels("incidents_opened").inc(len(out.new_incidents))
        return await self._fill_duplicates(conn, results)

    async def _fill_duplicates(self, conn: asyncpg.Connection, results: list[Result]) -> list[Result]:
        ids = [r.alarm.id for r in results if r.duplicate and r.alarm is not None]
        if not ids:
            return results
        recs = {a.id: a for a in await store.alarms_by_id(conn, ids=ids)}
        out = []
        for r in results:
            if r.duplicate and r.alarm is not None:
                rec = recs.get(r.alarm.id)
                r = Result(r.signal, alarm=rec, incident_id=rec.incident_id if rec else "", duplicate=True,
                           conflict=r.conflict)
            out.append(r)
        return out

    async def _refresh_parents(self, conn: asyncpg.Connection, out: domain.Decisions,
                               byid: dict[str, domain.IncidentRec]) -> None:
        pids = sorted({i.parent_id for i in [*out.incidents.values(), *out.bumped_incidents.values()] if i.parent_id})
        if not pids:
            return
        now = max((i.update_time for i in out.incidents.values()), default=self.clock())
        missing = [pid for pid in pids if pid not in byid]
        for rec in await store.incidents_by_id(conn, ids=missing):
            byid[rec.id] = rec
        kids: dict[str, dict[str, domain.IncidentRec]] = {pid: {} for pid in pids}
        for k in await store.children(conn, parent_ids=pids):
            kids[k.parent_id][k.id] = byid.get(k.id, k)
        for i in list(out.incidents.values()) + list(byid.values()):
            if i.parent_id in kids:
                kids[i.parent_id][i.id] = i
        for pid in pids:
            parent = byid.get(pid)
            if parent is not None:
                domain.refresh_parent(parent, list(kids[pid].values()), now, out)

    async def commit(self, conn: asyncpg.Connection, out: domain.Decisions) -> None:
        """Write decisions and publish their changes through the outbox (inside the caller's
        transaction, as its last step)."""
        await store.save(conn, out=out)
        pending = out.events()
        if not pending:
            return
        regional = [i.id for i in out.incidents.values() if i.kind == domain.REGIONAL and not i.child_ids]
        kids = await store.child_ids(conn, parent_ids=regional)
        items = []
        for iid, change, entry in pending:
            inc = out.incidents[iid]
            ev = convert.event_pb(inc, change, entry, kids.get(iid))
            subject = subjects.noc_incident_subject(change)
            items.append(outbox.Event(subject, subject, SOURCE, ev, list(inc.tenant_ids)))
        await outbox.enqueue_many(conn, schema=SCHEMA, items=items)
        COUNTS.labels("events").inc(len(items))

    # -- the periodic task

    async def tick(self, now: float | None = None) -> int:
        """Run the timers due at `now` (default: the clock); returns the incidents changed."""
        now = self.clock() if now is None else now
        async with self.pool.acquire() as conn:
            due = await store.due_incidents(conn, now=now, params=self.params)
        if not due:
            return 0
        site_ids = {i.site_id for i in due if i.site_id}
        facts = await self.facts.get_many(site_ids) if self.facts is not None else {}
        changed = 0
        for chunk in (due[k:k + 100] for k in range(0, len(due), 100)):
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock(conn, regions=[i.region for i in chunk],
                                 sites=[i.site_id for i in chunk if i.site_id])
                fresh = await store.incidents_by_id(conn, ids=[i.id for i in chunk])
                parents = [i.id for i in fresh if i.kind == domain.REGIONAL]
                kids: dict[str, list[domain.IncidentRec]] = {}
                for k in await store.children(conn, parent_ids=parents):
                    kids.setdefault(k.parent_id, []).append(k)
                out = domain.Decisions()
                for inc in fresh:
                    domain.tick(inc, now, params=self.params, facts=facts.get(inc.site_id), out=out,
                                children=kids.get(inc.id, ()))
                changed += len(out.changes)
                await self.commit(conn, out)
        COUNTS.labels("tick_changes").inc(changed)
        return changed

    async def run_ticks(self, every_s: float) -> None:
        """The periodic task, until cancelled (a failure is logged and retried next round)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PG trouble: the timers are in PG, retried next round
                log.warning("noc tick failed: %s", exc)


class _Ref:
    """An alarm known only by id until the duplicate's row is read."""

    def __init__(self, alarm_id: str) -> None:
        self.rec = domain.AlarmRec(id=alarm_id, source="", source_alarm_id="", site_id="", region="", alarm_type=0,
                                   probable_cause="", specific_problem="", severity=0, dedup_key="", clear_key="",
                                   state=0, first_seen=0.0, last_seen=0.0)
