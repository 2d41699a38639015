"""The notifier: NOC incident events in, webhooks and emails out, exactly once per notification.

Three parts, all state in PostgreSQL (the notifications schema):

* the consumer (its own durable on towerco.noc.incident.>): one transaction per fetched batch
  records the event ids (a redelivery is skipped), the newest copy of each incident, the groups
  it joins or leaves (their timers) and the escalations it starts or stops;
* the scheduler: due groups and escalations (timers as rows with due times, claimed FOR UPDATE
  SKIP LOCKED) are flushed in one transaction each batch, which writes the notifications they
  produce and moves the timers on, so a killed notifier neither loses a timer nor makes a
  notification twice;
* the sender: claims due notifications (claim-then-send: the attempt is counted and recorded as
  (notification, attempt) before anything leaves), sends them (webhook: httpx, signed; email:
  aiosmtplib, plain text + HTML from Jinja2 templates), records the outcome, and retries with
  exponential backoff and jitter until the last attempt, then dead-letters: state DEAD with the
  reason, and in the same transaction its dead letter (the Notification with its attempts, the
  reason in Towerco-Dlq-Reason) into the notifications outbox, which the notifier's relay
  publishes to dlq.EVENTS.<durable> on the DLQ stream. An attempt whose process died is retried
  when its lease ends, with the same Idempotency-Key (the notification id), so a receiver can
  drop it if the first one did arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import httpx
import jinja2
from google.protobuf import timestamp_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Histogram
from towerco.events.v1 import events_pb2
from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as npb

from mesh import config, events, oncall, outbox, subjects
from mesh.listener import PgListener
from workers.notifier import domain, store

log = logging.getLogger("towerco.notifier")

TEMPLATES = Path(__file__).resolve().parent / "templates"
COUNTS = Counter("towerco_notifier", "What the notifier did: events, duplicate_events, notifications, delivered, "
                 "retried, dead, silenced.", ["what"])
LATENCY = Histogram("towerco_notifier_delivery_seconds", "One delivery attempt's duration", ["kind"])
ACTIVE, STOPPED, EXHAUSTED = 1, 2, 3
SCHEMA = "notifications"  # its outbox carries the dead letters
SOURCE = "notifier"
WEBHOOK, EMAIL = 1, 2
BATCH = 100


@dataclass(frozen=True)
class NotifierConfig:
    """The notifier's tuning (mesh.config.NotifierSettings, TOWERCO_NOTIFIER_*)."""

    durable: str = "notifier"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    mail_from: str = "towerco-noc@localhost"
    tick_s: float = 0.5
    max_attempts: int = 8
    retry_base_s: float = 2.0
    retry_max_s: float = 600.0
    timeout_s: float = 10.0
    lease_s: float = 60.0
    concurrency: int = 32
    batch: int = 100
    ack_wait_s: float = 30.0

    @classmethod
    def from_env(cls) -> NotifierConfig:
        s = config.load(config.NotifierSettings)
        return cls(durable=s.durable, smtp_host=s.smtp_host, smtp_port=s.smtp_port, smtp_username=s.smtp_username,
                   smtp_password=s.smtp_password, smtp_starttls=s.smtp_starttls, mail_from=s.mail_from,
                   tick_s=s.tick_s, max_attempts=s.max_attempts, retry_base_s=s.retry_base_s,
                   retry_max_s=s.retry_max_s, timeout_s=s.timeout_s, lease_s=s.lease_s, concurrency=s.concurrency)


# ------------------------------------------------------------------------------- conversions


def rule_of(row: asyncpg.Record) -> domain.Rule:
    r = npb.Route.FromString(row["body"])
    return domain.Rule(
        id=str(row["id"]), position=r.position, min_severity=r.match.min_severity, regions=tuple(r.match.regions),
        tenant_ids=tuple(r.match.tenant_ids), site_ids=tuple(r.match.site_ids), kinds=tuple(r.match.kinds),
        continue_matching=r.continue_matching, channel_ids=tuple(r.channel_ids), policy_id=r.escalation_policy_id,
        group_by=tuple(r.group_by), group_wait_s=float(r.group_wait_seconds),
        group_interval_s=float(r.group_interval_seconds or domain.DEFAULT_GROUP_INTERVAL_S),
        repeat_interval_s=float(r.repeat_interval_seconds or domain.DEFAULT_REPEAT_INTERVAL_S),
        send_resolved=r.send_resolved, created=row["create_time"].timestamp())


def policy_of(row: asyncpg.Record) -> domain.Policy:
    p = npb.EscalationPolicy.FromString(row["body"])
    return domain.Policy(id=str(row["id"]), repeat=p.repeat, steps=tuple(
        domain.Step(tuple(s.channel_ids), s.schedule_id, float(s.escalate_after_seconds)) for s in p.steps))


def schedule_of(row: asyncpg.Record) -> domain.ScheduleSpec:
    return oncall.schedule_spec(npb.Schedule.FromString(row["body"]))


def silence_of(row: asyncpg.Record) -> domain.SilenceSpec:
    s = npb.Silence.FromString(row["body"])
    return domain.SilenceSpec(str(row["id"]), tuple(domain.MatcherSpec(m.name, m.value, int(m.operator))
                                                    for m in s.matchers),
                              row["start_time"].timestamp(), row["end_time"].timestamp())


def _pb_time(t: datetime | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def dead_notification(row: asyncpg.Record, tries: list[asyncpg.Record], *, error: str, finished: datetime
                      ) -> npb.Notification:
    """The Notification a dead letter carries: the claimed row as it is now dead, with its
    delivery log."""
    n = npb.Notification(
        id=str(row["id"]), channel_id=str(row["channel_id"]), tenant_id=row["tenant_id"], kind=row["kind"],
        route_id=str(row["route_id"]) if row["route_id"] else "", group_key=row["group_key"],
        incident_ids=list(row["incident_ids"]), escalation_step=row["escalation_step"],
        escalation_round=row["escalation_round"], state=domain.DEAD, attempts=row["attempts"], last_error=error,
        summary=row["summary"], create_time=_pb_time(row["create_time"]), finish_time=_pb_time(finished))
    for a in tries:
        n.deliveries.add(attempt=a["attempt"], start_time=_pb_time(a["start_time"]), response_code=a["response_code"],
                         latency_ms=a["latency_ms"], error=a["error"], ok=bool(a["ok"]))
    return n


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _epoch(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()


# ---------------------------------------------------------------------------------- notifier


class Notifier:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, *, config: NotifierConfig | None = None,
                 database_url: str | None = None) -> None:
        self.pool = pool
        self.js = js
        self.cfg = config or NotifierConfig()
        self.database_url = database_url
        self._wake_schedule = asyncio.Event()  # a timer may be due: the consumer wrote one, or a peer said so
        self._wake_send = asyncio.Event()  # a notification may be due, or a send slot came free
        self._saturated = False  # every send slot was taken at the sender's last claim
        self._rule_cache: dict[uuid.UUID, tuple[bytes, datetime, domain.Rule]] = {}
        self._stopping = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self.dlq_subject = subjects.dlq_subject(events.EVENTS_STREAM, self.cfg.durable)
        self.consumer = events.PullConsumer(
            js, stream=events.EVENTS_STREAM, durable=self.cfg.durable, filter_subject=subjects.NOC_INCIDENT_EVENTS,
            handler=self.handle, batch=self.cfg.batch, ack_wait=self.cfg.ack_wait_s, backoff=(0.5, 2, 10))
        self._jinja = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                         autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
        self.stats = {"events": 0, "notifications": 0, "delivered": 0, "dead": 0, "retried": 0}

    # -- lifecycle

    async def run(self) -> None:
        # keep-alive connections for every concurrent send: with the default (20 idle kept) a storm to
        # more receivers than that reopened TCP connections all the time
        limits = httpx.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency,
                              keepalive_expiry=30.0)
        self._http = httpx.AsyncClient(timeout=self.cfg.timeout_s, follow_redirects=False, limits=limits)
        tasks = [asyncio.create_task(self.consumer.run(), name="notifier-consume"),
                 asyncio.create_task(self._schedule_loop(), name="notifier-schedule"),
                 asyncio.create_task(self._send_loop(), name="notifier-send"),
                 asyncio.create_task(outbox.OutboxRelay(self.pool, self.js, schema=SCHEMA,
                                                        database_url=self.database_url).run(),
                                     name="notifier-outbox")]
        if self.database_url:
            listener = PgListener(store.WAKE_CHANNEL, on_notify=self.wake, database_url=self.database_url,
                                  application_name="towerco:notifier")
            tasks.append(asyncio.create_task(listener.run(), name="notifier-listen"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            for t in list(self._sends):
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(t, self.cfg.timeout_s)
            await self._http.aclose()

    async def stop(self) -> None:
        self._stopping.set()
        self.wake()
        await self.consumer.stop(grace=5.0)

    def wake(self) -> None:
        """Wake the scheduler and the sender now (a NOTIFY from a peer or the service, or stopping)."""
        self._wake_schedule.set()
        self._wake_send.set()

    async def _rules(self, conn: asyncpg.Connection) -> list[domain.Rule]:
        """The routes in order, parsed once per version of each (the rows are read every time, so a
        route changed through the service counts from the next batch on)."""
        out: list[domain.Rule] = []
        seen: dict[uuid.UUID, tuple[bytes, datetime, domain.Rule]] = {}
        for r in await store.routes(conn):
            body, created = bytes(r["body"]), r["create_time"]
            hit = self._rule_cache.get(r["id"])
            rule = hit[2] if hit is not None and hit[0] == body and hit[1] == created else rule_of(r)
            seen[r["id"]] = (body, created, rule)
            out.append(rule)
        self._rule_cache = seen
        return out

    # -- consuming

    async def handle(self, msgs: list[Msg]) -> None:
        parsed: list[tuple[str, noc_pb2.IncidentEvent]] = []
        for m in msgs:
            try:
                env = events_pb2.Envelope.FromString(m.data)
                ev = events.unpack(env, noc_pb2.IncidentEvent)
            except Exception as exc:  # noqa: BLE001 - not an incident event: it can never succeed
                raise events.Poison(f"not an IncidentEvent envelope: {exc}", [m]) from exc
            if not ev.incident.id:
                raise events.Poison("incident event without an incident id", [m])
            parsed.append((env.id, ev))
        made = self.stats["notifications"]
        async with self.pool.acquire() as conn, conn.transaction():
            now = await store.db_now(conn)
            rules = await self._rules(conn)
            for event_id, ev in parsed:
                await self._apply(conn, event_id, ev, rules, now)
                self.stats["events"] += 1
                COUNTS.labels("events").inc()
        # committed: the timers it set (group wait 0 means due now) go to the scheduler at once,
        # not at its next poll; notifications it wrote itself (escalation stopped) to the sender
        self._wake_schedule.set()
        if self.stats["notifications"] != made:
            self._wake_send.set()

    async def _apply(self, conn: asyncpg.Connection, event_id: str, ev: noc_pb2.IncidentEvent,
                     rules: list[domain.Rule], now: float) -> None:
        inc = ev.incident
        upd = inc.update_time.ToDatetime(tzinfo=UTC) if inc.HasField("update_time") else datetime.now(UTC)
        outcome = await store.record_event(conn, event_id=event_id, incident_id=inc.id, body=inc.SerializeToString(),
                                           update_time=upd)
        if outcome == "duplicate":
            COUNTS.labels("duplicate_events").inc()
            return
        if outcome == "stale":
            return  # an older state than the one already seen
        facts = domain.facts_of(inc)
        matched = domain.route(rules, facts)
        if facts.firing:
            for rule in matched:
                if rule.channel_ids:
                    await self._join(conn, rule, domain.group_key(rule, facts), inc.id, now)
        else:
            for row in await store.firing_groups_of(conn, incident_id=inc.id):
                r = await store.route(conn, route_id=row["route_id"])
                if r is not None:
                    await self._leave(conn, rule_of(r), row["group_key"], inc.id)
        # escalation: an open incident starts (a reopened one restarts) its routes' policies;
        # anything else (acknowledged, resolved, closed, suppressed) stops them
        restart = ev.change == noc_pb2.INCIDENT_CHANGE_REOPENED
        if facts.pageable:
            for rule in matched:
                pid = _uuid(rule.policy_id)
                if pid is None:
                    continue
                rid = uuid.UUID(rule.id)
                existing = await store.lock_escalation(conn, incident_id=inc.id, route_id=rid)
                if existing is None or restart or existing["state"] == STOPPED:
                    await store.start_escalation(conn, incident_id=inc.id, route_id=rid, policy_id=pid,
                                                 due=_at(now) or datetime.now(UTC))
        else:
            for esc in await store.escalations_of(conn, incident_id=inc.id):
                if esc["state"] != ACTIVE and not (esc["state"] == EXHAUSTED and facts.resolved):
                    continue
                await store.save_escalation(conn, incident_id=inc.id, route_id=esc["route_id"], step=esc["step"],
                                            rnd=esc["round"], due=None, state=STOPPED, paged=list(esc["paged"]))
                r = await store.route(conn, route_id=esc["route_id"])
                told = facts.resolved or inc.state == noc_pb2.INCIDENT_STATE_ACKNOWLEDGED
                if r is not None and rule_of(r).send_resolved and told and esc["paged"]:
                    await self._notify(conn, kind=domain.KIND_ESCALATION_STOPPED, channel_ids=list(esc["paged"]),
                                       incidents=[inc], route_id=esc["route_id"], group_key=f"escalation:{inc.id}",
                                       step=esc["step"], rnd=esc["round"], now=now)

    async def _join(self, conn: asyncpg.Connection, rule: domain.Rule, key: str, incident_id: str, now: float) -> None:
        rid = uuid.UUID(rule.id)
        g = await store.lock_group_and_member(conn, route_id=rid, group_key=key, incident_id=incident_id)
        if g is not None and g["member_firing"]:
            return  # already in the group, firing: its changes ride on the group's next notification
        times = domain.GroupTimes(created=now) if g is None else domain.after_change(self._times(g), firing=True)
        nf = domain.next_flush(times, rule)
        if g is not None and g["next_flush"] is not None and nf is not None:
            nf = min(nf, g["next_flush"].timestamp())  # a timer already set earlier stays
        await store.join_group(conn, route_id=rid, group_key=key, incident_id=incident_id,
                               created=_at(times.created) or datetime.now(UTC), flushed=_at(times.flushed),
                               sent=_at(times.sent), changed=times.changed, firing=times.firing, next_flush=_at(nf))

    async def _leave(self, conn: asyncpg.Connection, rule: domain.Rule, key: str, incident_id: str) -> None:
        rid = uuid.UUID(rule.id)
        g = await store.lock_group(conn, route_id=rid, group_key=key)
        if g is None:
            return
        await store.set_member(conn, route_id=rid, group_key=key, incident_id=incident_id, firing=False)
        firing = any(m["firing"] for m in await store.members(conn, route_id=rid, group_key=key))
        times = self._times(g)
        if rule.send_resolved and times.sent is not None:
            times = domain.after_change(times, firing=firing)
        else:
            times = domain.GroupTimes(times.created, times.flushed, times.sent, times.changed, firing)
            if not firing and times.flushed is not None:
                await store.delete_group(conn, route_id=rid, group_key=key)  # nothing more to tell
                return
        await self._save_times(conn, rid, key, times, rule, g)

    @staticmethod
    def _times(g: asyncpg.Record) -> domain.GroupTimes:
        return domain.GroupTimes(created=g["created"].timestamp(), flushed=_epoch(g["flushed"]),
                                 sent=_epoch(g["sent"]), changed=g["changed"], firing=g["firing"])

    async def _save_times(self, conn: asyncpg.Connection, rid: uuid.UUID, key: str, t: domain.GroupTimes,
                          rule: domain.Rule, g: asyncpg.Record | None) -> None:
        nf = domain.next_flush(t, rule)
        if g is not None and g["next_flush"] is not None and nf is not None:
            nf = min(nf, g["next_flush"].timestamp())  # a timer already set earlier stays
        await store.save_group(conn, route_id=rid, group_key=key, created=_at(t.created) or datetime.now(UTC),
                               flushed=_at(t.flushed), sent=_at(t.sent), changed=t.changed, firing=t.firing,
                               next_flush=_at(nf))

    # -- the scheduler

    async def _sleep(self, event: asyncio.Event, due_in: float | None) -> None:
        """Until `event` is set, the next timer is due (`due_in` seconds) or the poll tick ends
        (the safety net: timers set by another replica or before a restart)."""
        sleep = self.cfg.tick_s if due_in is None else max(0.0, min(self.cfg.tick_s, due_in))
        if sleep > 0 and not event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=sleep)

    async def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake_schedule.clear()
            due_in: float | None = None
            try:
                while await self.schedule_once() >= BATCH:
                    pass  # a full batch: more may be due
                async with self.pool.acquire() as conn:
                    due_in = await store.next_timer_in(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away: try again soon
                log.warning("notifier scheduler failed (%s: %s); retrying", type(exc).__name__, exc)
            await self._sleep(self._wake_schedule, due_in)

    async def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake_send.clear()
            due_in: float | None = None
            try:
                if await self._dispatch():
                    async with self.pool.acquire() as conn:
                        due_in = await store.next_delivery_in(conn)
                else:
                    due_in = self.cfg.tick_s  # every slot busy: a finished send wakes this loop
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away: try again soon
                log.warning("notifier sender failed (%s: %s); retrying", type(exc).__name__, exc)
            await self._sleep(self._wake_send, due_in)

    async def schedule_once(self) -> int:
        """Flush due groups and run due escalation steps (one transaction); how many. The sender is
        woken once the notifications they made are committed."""
        made = self.stats["notifications"]
        try:
            return await self._schedule_batch()
        finally:
            if self.stats["notifications"] != made:
                self._wake_send.set()

    async def _schedule_batch(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            now = await store.db_now(conn)
            groups = await store.claim_due_groups(conn, limit=BATCH)
            escs = await store.claim_due_escalations(conn, limit=BATCH)
            if not groups and not escs:
                return 0
            silences = [silence_of(r) for r in await store.active_silences(conn)]
            if groups:
                await self._flush_many(conn, groups, silences, now)
            for e in escs:
                await self._escalate(conn, e, silences, now)
        return len(groups) + len(escs)

    async def _flush_many(self, conn: asyncpg.Connection, groups: list[asyncpg.Record],
                          silences: list[domain.SilenceSpec], now: float) -> None:
        """Evaluate due groups (Alertmanager's rules, domain.py) in a few round trips: their
        members, incidents and channels read at once, the notifications and timers written at once."""
        rules = {uuid.UUID(r.id): r for r in await self._rules(conn)}
        keys = [(g["route_id"], g["group_key"]) for g in groups]
        by_group: dict[tuple[uuid.UUID, str], list[asyncpg.Record]] = {}
        for m in await store.members_of(conn, keys=keys):
            by_group.setdefault((m["route_id"], m["group_key"]), []).append(m)
        ids = sorted({m["incident_id"] for ms in by_group.values() for m in ms})
        bodies = {row["id"]: noc_pb2.Incident.FromString(row["body"]) for row in await store.incidents(conn, ids=ids)}
        wanted = {u for rid, _ in keys if rid in rules for c in rules[rid].channel_ids if (u := _uuid(c)) is not None}
        channels = {c["id"]: c for c in await store.channels(conn, ids=sorted(wanted))}
        out: list[dict[str, Any]] = []
        deleted: list[tuple[uuid.UUID, str]] = []
        dropped: list[tuple[uuid.UUID, str]] = []
        saved: list[tuple[Any, ...]] = []
        for g in groups:
            rid, key = g["route_id"], g["group_key"]
            rule = rules.get(rid)
            if rule is None:  # the route was deleted
                deleted.append((rid, key))
                continue
            times = self._times(g)
            mem = by_group.get((rid, key), [])
            firing = [bodies[m["incident_id"]] for m in mem if m["firing"] and m["incident_id"] in bodies]
            resolved = [bodies[m["incident_id"]] for m in mem if not m["firing"] and m["incident_id"] in bodies]
            sent = False
            if domain.should_send(times, rule, now):
                loud = [i for i in firing if domain.silenced_by(silences, domain.facts_of(i), now) is None]
                told = resolved if (rule.send_resolved and times.sent is not None) else []
                told = [i for i in told if domain.silenced_by(silences, domain.facts_of(i), now) is None]
                chans = [channels[u] for c in rule.channel_ids if (u := _uuid(c)) is not None and u in channels]
                if loud:
                    self._make(out, chans, kind=domain.KIND_FIRING, incidents=loud + told, route_id=rid,
                               group_key=key, now=now)
                elif told:
                    self._make(out, chans, kind=domain.KIND_RESOLVED, incidents=told, route_id=rid, group_key=key,
                               now=now)
                elif firing:  # every firing incident is silenced: logged, not sent
                    self._make(out, chans, kind=domain.KIND_FIRING, incidents=firing, route_id=rid, group_key=key,
                               now=now, silenced=True)
                sent = True
            new = domain.after_flush(times, sent=sent, now=now, firing=bool(firing))
            nf = domain.next_flush(new, rule)
            if nf is None or not firing:
                deleted.append((rid, key))
            else:
                if resolved:
                    dropped.append((rid, key))
                saved.append((rid, key, _at(new.flushed), _at(new.sent), _at(nf)))
        await store.insert_notifications(conn, rows=out)
        await store.finish_groups(conn, deleted=deleted, dropped=dropped, saved=saved)

    async def _escalate(self, conn: asyncpg.Connection, e: asyncpg.Record, silences: list[domain.SilenceSpec],
                        now: float) -> None:
        iid, rid = e["incident_id"], e["route_id"]
        prow = await store.policy(conn, policy_id=e["policy_id"])
        irow = await store.incident(conn, incident_id=iid)
        inc = noc_pb2.Incident.FromString(irow["body"]) if irow is not None else None
        if prow is None or inc is None or not domain.facts_of(inc).pageable:
            await store.save_escalation(conn, incident_id=iid, route_id=rid, step=e["step"], rnd=e["round"], due=None,
                                        state=STOPPED, paged=list(e["paged"]))
            return
        pol = policy_of(prow)
        step = pol.steps[min(e["step"], len(pol.steps) - 1)]
        targets = [c for c in step.channel_ids]
        if step.schedule_id and (sid := _uuid(step.schedule_id)) is not None:
            srow = await store.schedule(conn, schedule_id=sid)
            if srow is not None:
                who = domain.on_call(schedule_of(srow), now)
                if who is not None and who.member.channel_id:
                    targets.append(who.member.channel_id)
        ids = [u for u in dict.fromkeys(_uuid(c) for c in targets) if u is not None]
        silenced = domain.silenced_by(silences, domain.facts_of(inc), now) is not None
        await self._notify(conn, kind=domain.KIND_ESCALATION, channel_ids=ids, incidents=[inc], route_id=rid,
                           group_key=f"escalation:{iid}", step=e["step"] + 1, rnd=e["round"], now=now,
                           silenced=silenced)
        paged = list(dict.fromkeys([*e["paged"], *ids]))
        nxt = domain.advance(pol, domain.Escalation(e["step"], e["round"], now), now)
        if nxt is None:
            await store.save_escalation(conn, incident_id=iid, route_id=rid, step=e["step"], rnd=e["round"], due=None,
                                        state=EXHAUSTED, paged=paged)
        else:
            await store.save_escalation(conn, incident_id=iid, route_id=rid, step=nxt.step, rnd=nxt.round,
                                        due=_at(nxt.due), state=ACTIVE, paged=paged)

    async def _notify(self, conn: asyncpg.Connection, *, kind: int, channel_ids: list[Any],
                      incidents: list[noc_pb2.Incident], route_id: uuid.UUID, group_key: str, now: float,
                      step: int = 0, rnd: int = 0, silenced: bool = False) -> int:
        """One notification per channel, with the incidents that channel may receive (a tenant's
        channel: only its tenant's, scoped), written now. Returns how many were made."""
        ids = [c if isinstance(c, uuid.UUID) else _uuid(str(c)) for c in channel_ids]
        chans = await store.channels(conn, ids=[i for i in ids if i is not None])
        out: list[dict[str, Any]] = []
        self._make(out, chans, kind=kind, incidents=incidents, route_id=route_id, group_key=group_key, now=now,
                   step=step, rnd=rnd, silenced=silenced)
        await store.insert_notifications(conn, rows=out)
        return len(out)

    def _make(self, out: list[dict[str, Any]], chans: list[Any], *, kind: int, incidents: list[noc_pb2.Incident],
              route_id: uuid.UUID, group_key: str, now: float, step: int = 0, rnd: int = 0,
              silenced: bool = False) -> None:
        created = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
        for ch in chans:
            incs = domain.scoped(incidents, ch["tenant_id"])
            if not incs:
                continue  # a tenant's channel hears only of its tenant's incidents
            nid = uuid.uuid4()
            body = domain.webhook_body(notification_id=str(nid), kind=kind, channel_id=str(ch["id"]),
                                       tenant_id=ch["tenant_id"], route_id=str(route_id), group_key=group_key,
                                       incidents=incs, created=created, step=step, round_=rnd)
            out.append({"id": nid, "channel_id": ch["id"], "tenant_id": ch["tenant_id"], "kind": kind,
                        "route_id": route_id, "group_key": group_key, "incident_ids": [i.id for i in incs],
                        "step": step, "round": rnd, "summary": body["summary"], "payload": json.dumps(body),
                        "state": domain.SILENCED if silenced else domain.PENDING})
            COUNTS.labels("silenced" if silenced else "notifications").inc()
            if not silenced:
                self.stats["notifications"] += 1

    # -- the sender

    async def _dispatch(self) -> bool:
        """Claim due notifications for the free send slots and start sending them. False when no
        slot is left (more may be due: a finished send wakes the sender)."""
        while (free := self.cfg.concurrency - len(self._sends)) > 0:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await store.claim_deliveries(conn, limit=free, lease_s=self.cfg.lease_s)
            for row in rows:
                task = asyncio.create_task(self._deliver(row))
                self._sends.add(task)
                task.add_done_callback(self._sent)
            if len(rows) < free:
                self._saturated = False
                return True  # everything due is on its way
        self._saturated = True
        return False

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed: %s", task.exception())
        if self._saturated:
            self._wake_send.set()  # the sender waits for a free slot

    async def _deliver(self, row: asyncpg.Record) -> None:
        attempt = row["attempts"]
        ch = None if row["ch_kind"] is None else {"kind": row["ch_kind"], "webhook_url": row["webhook_url"],
                                                  "signing_secret": row["signing_secret"],
                                                  "email_address": row["email_address"]}
        started = time.perf_counter()
        if ch is None:
            ok, code, error, permanent = False, 0, "channel deleted", True
        else:
            body = self._body(row)
            try:
                if ch["kind"] == WEBHOOK:
                    ok, code, error = await self._post(ch, row, body, attempt)
                    permanent = not ok and not domain.retryable(code)
                else:
                    ok, code, error = await self._mail(ch, row, body)
                    permanent = not ok and 500 <= code < 600
            except Exception as exc:  # noqa: BLE001 - any failure of one attempt is logged and retried
                ok, code, error, permanent = False, 0, f"{type(exc).__name__}: {exc}"[:500], False
        latency_ms = (time.perf_counter() - started) * 1000
        LATENCY.labels("webhook" if ch is not None and ch["kind"] == WEBHOOK else "email").observe(latency_ms / 1000)
        retry_in = 0.0
        if ok:
            state = domain.DELIVERED
        elif permanent or attempt >= self.cfg.max_attempts:
            state = domain.DEAD
            why = "refused permanently" if permanent else f"failed {attempt} attempts"
            error = f"dead-lettered ({why}): {error}"
        else:
            state = domain.PENDING
            retry_in = domain.retry_delay(attempt, base_s=self.cfg.retry_base_s, cap_s=self.cfg.retry_max_s)
        async with self.pool.acquire() as conn, conn.transaction():
            kept = await store.finish_attempt(conn, notification_id=row["id"], attempt=attempt, ok=ok, code=code,
                                              latency_ms=latency_ms, error=error, state=state, retry_in_s=retry_in)
            if kept and state == domain.DEAD:  # its dead letter commits with it, or neither does
                await self._dead_letter(conn, row, error)
        if not kept:
            log.warning("notification %s attempt %d finished after its lease was taken over", row["id"], attempt)
            return
        if state == domain.DELIVERED:
            self.stats["delivered"] += 1
            COUNTS.labels("delivered").inc()
        elif state == domain.DEAD:
            self.stats["dead"] += 1
            COUNTS.labels("dead").inc()
            log.error("notification %s to channel %s dead-lettered after %d attempt(s): %s", row["id"],
                      row["channel_id"], attempt, error)
        else:
            self.stats["retried"] += 1
            COUNTS.labels("retried").inc()
            self._wake_send.set()  # the sender's sleep ends at the retry's due time
            log.warning("notification %s attempt %d failed (%s); retry in %.1fs", row["id"], attempt, error, retry_in)

    async def _dead_letter(self, conn: asyncpg.Connection, row: asyncpg.Record, reason: str) -> None:
        """Queue a dead notification's dead letter in the outbox, inside the transaction that
        marks it DEAD: an Envelope with the Notification (and its attempts) for
        dlq.EVENTS.<durable>, the reason in Towerco-Dlq-Reason."""
        tries = await store.attempts(conn, notification_id=row["id"])
        note = dead_notification(row, tries, error=reason, finished=datetime.now(UTC))
        headers = events.dead_letter_headers(reason, stream=events.EVENTS_STREAM, consumer=self.cfg.durable,
                                             deliveries=row["attempts"], extra={
                                                 events.DLQ_KIND: "notification",
                                                 "Towerco-Notification-Id": str(row["id"]),
                                                 "Towerco-Channel-Id": str(row["channel_id"])})
        await outbox.enqueue(conn, schema=SCHEMA, subject=self.dlq_subject, event_type=subjects.NOTIFICATION_DEAD, source=SOURCE,
                             payload=note, tenant_ids=[row["tenant_id"]] if row["tenant_id"] else [], headers=headers)

    def _body(self, row: asyncpg.Record) -> dict[str, Any]:
        payload = row["payload"]
        body: dict[str, Any] = json.loads(payload) if isinstance(payload, str) else dict(payload)
        if row["kind"] == domain.KIND_TEST:  # queued by the service: the body is made here, the same each attempt
            created = row["create_time"].astimezone(UTC).isoformat().replace("+00:00", "Z")
            body = domain.webhook_body(notification_id=str(row["id"]), kind=domain.KIND_TEST,
                                       channel_id=str(row["channel_id"]), tenant_id=row["tenant_id"], route_id="",
                                       group_key="", incidents=[], created=created,
                                       message=str(body.get("message", "")))
        return body

    async def _post(self, ch: dict[str, Any], row: asyncpg.Record, body: dict[str, Any], attempt: int
                    ) -> tuple[bool, int, str]:
        data = domain.encode_body(body)
        headers = {"Content-Type": "application/json", "User-Agent": "towerco-notifier/1",
                   domain.IDEMPOTENCY_HEADER: str(row["id"]), "X-Towerco-Attempt": str(attempt),
                   "X-Towerco-Notification-Kind": domain.KIND_NAMES.get(row["kind"], "unknown")}
        if ch["signing_secret"]:
            headers[domain.SIGNATURE_HEADER] = domain.sign(ch["signing_secret"], int(time.time()), data)
        assert self._http is not None
        try:
            resp = await self._http.post(ch["webhook_url"], content=data, headers=headers)
        except httpx.HTTPError as exc:
            return False, 0, f"{type(exc).__name__}: {exc}"[:500]
        ok = 200 <= resp.status_code < 300
        return ok, resp.status_code, "" if ok else f"HTTP {resp.status_code}: {resp.text[:200]}"

    def render_email(self, ch: asyncpg.Record | dict[str, Any], row: asyncpg.Record | dict[str, Any],
                     body: dict[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.cfg.mail_from
        msg["To"] = ch["email_address"]
        msg["Subject"] = body["summary"]
        msg["Message-ID"] = f"<{row['id']}@towerco.notifications>"
        msg["X-Towerco-Notification-Id"] = str(row["id"])
        msg["X-Towerco-Notification-Kind"] = body["kind"]
        ctx = {"n": body, "incidents": body["incidents"]}
        msg.set_content(self._jinja.get_template("email.txt.j2").render(**ctx))
        msg.add_alternative(self._jinja.get_template("email.html.j2").render(**ctx), subtype="html")
        return msg

    async def _mail(self, ch: dict[str, Any], row: asyncpg.Record, body: dict[str, Any]) -> tuple[bool, int, str]:
        msg = self.render_email(ch, row, body)
        try:
            await aiosmtplib.send(msg, hostname=self.cfg.smtp_host, port=self.cfg.smtp_port,
                                  username=self.cfg.smtp_username or None, password=self.cfg.smtp_password or None,
                                  start_tls=self.cfg.smtp_starttls, timeout=self.cfg.timeout_s)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients] or [550]
            return False, codes[0], f"recipient refused: {exc}"[:500]
        except aiosmtplib.SMTPResponseException as exc:
            return False, exc.code, f"SMTP {exc.code}: {exc.message}"[:500]
        except (aiosmtplib.SMTPException, OSError) as exc:
            return False, 0, f"{type(exc).__name__}: {exc}"[:500]
        return True, 250, ""
