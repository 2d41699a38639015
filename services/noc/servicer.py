"""NocService handlers: check the caller and the request, read or change the noc schema through
the store and the correlator, decide in the domain, map with convert.

Roles: viewer and tenant_viewer read; noc_operator (and admin) act on incidents; PostAlarm also
takes the service role. Visibility: services/noc/scope.py on every read path, after the store's
tenant filter: an incident or alarm a tenant may not see is NOT_FOUND (checked before the role,
so a refusal never confirms it exists); a list filtered on another tenant is an empty page;
PERMISSION_DENIED only for a visible incident the role may not change.

WatchIncidents delegates to the live feed (services/noc/feed.py: JetStream-backed, resumable,
scoped by the same rule), which server.py builds on the process's NATS connection.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from towerco.noc.v1 import noc_pb2, noc_pb2_grpc

from mesh import paging
from mesh.auth import Identity, current_identity, require_role, tenant_scope
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from services.noc import convert, domain, store
from services.noc.correlator import Correlator
from services.noc.feed import IncidentFeed
from services.noc.scope import scope_alarm, scope_incident

READ_ROLES = ("viewer", "tenant_viewer")
ACT_ROLES = ("noc_operator",)
POST_ROLES = ("noc_operator", "service")
MAX_FUTURE_S = 300.0
MAX_PAST_S = 30 * 86400.0  # an older alarm is history, not something to correlate
TIMELINE_ALARMS = 200

Action = Callable[[asyncpg.Connection, domain.IncidentRec, domain.Decisions, Identity, float], Awaitable[Any]]


def _reader() -> Identity:
    return require_role(*READ_ROLES)


def _check_id(value: str, what: str) -> str:
    """A malformed id can name nothing: NOT_FOUND, like an id the caller may not see."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{what} {value!r} not found", what, value) from None


def _norm_id(value: str) -> str:
    """An id in canonical form when it is a UUID; as given otherwise (it then names nothing)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value




def _page_size(size: int) -> int:
    if size < 0 or size > domain.MAX_PAGE:
        raise InvalidArgument("invalid page size",
                              [FieldViolation("page.size", f"must be between 0 and {domain.MAX_PAGE}")])
    return domain.page_size(size)


def _filtered_away(identity: Identity, tenant_id: str) -> bool:
    """A tenant caller filtering on another tenant: an empty answer (its data does not exist)."""
    return not identity.is_staff and bool(tenant_id) and tenant_id != identity.tenant


def _scope(identity: Identity) -> str | None:
    return tenant_scope(identity)


class NocServicer(noc_pb2_grpc.NocServiceServicer):
    """NocService over the noc schema. `pool`: the service's asyncpg pool; `correlator`: the
    correlation engine (services/noc/correlator.py) shared with the anomaly consumer; `feed`:
    the live incident feed (services/noc/feed.py)."""

    def __init__(self, pool: asyncpg.Pool, correlator: Correlator, *, feed: IncidentFeed,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.correlator = correlator
        self.feed = feed
        self.clock = clock

    def WatchIncidents(self, request: noc_pb2.WatchIncidentsRequest, context: Any
                       ) -> AsyncIterator[noc_pb2.WatchIncidentsResponse]:
        return self.feed.watch(request, current_identity())

    # -- reads

    async def _incident_pb(self, conn: asyncpg.Connection, recs: list[domain.IncidentRec], identity: Identity
                           ) -> list[noc_pb2.Incident]:
        kids = await store.child_ids(conn, parent_ids=[r.id for r in recs if r.kind == domain.REGIONAL])
        out = []
        for r in recs:
            m = scope_incident(convert.incident_pb(r, child_ids=kids.get(r.id, [])), identity)
            if m is not None:
                out.append(m)
        return out

    async def ListIncidents(self, request: noc_pb2.ListIncidentsRequest, context: Any
                            ) -> noc_pb2.ListIncidentsResponse:
        identity = _reader()
        lo, hi = paging.time_bounds(request.range, request.HasField("range"))
        after = paging.page_after(request.page.token)
        size = _page_size(request.page.size)
        if request.parent_id:
            try:
                parent = str(uuid.UUID(request.parent_id))
            except ValueError:
                return noc_pb2.ListIncidentsResponse()
        else:
            parent = ""
        if _filtered_away(identity, request.tenant_id):
            return noc_pb2.ListIncidentsResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_incidents(
                conn, tenant=_scope(identity), state=request.state, min_severity=request.min_severity,
                kind=request.kind, site_id=request.site_id, region=request.region, tenant_id=request.tenant_id,
                parent_id=parent, active_only=request.active_only, exclude_suppressed=request.exclude_suppressed,
                first_from=lo, first_to=hi, after=after, limit=size + 1)
            resp = noc_pb2.ListIncidentsResponse(incidents=await self._incident_pb(conn, rows[:size], identity))
        if len(rows) > size:
            last = rows[size - 1]
            resp.page.next_token = paging.encode_keyset(last.first_seen, last.id)
        return resp

    async def GetIncident(self, request: noc_pb2.GetIncidentRequest, context: Any) -> noc_pb2.GetIncidentResponse:
        identity = _reader()
        iid = _check_id(request.incident_id, "incident")
        async with self.pool.acquire() as conn:
            rec = await store.get_incident(conn, tenant=_scope(identity), incident_id=iid)
            if rec is None:
                raise NotFound(f"incident {request.incident_id} not found", "incident", request.incident_id)
            entries = await store.timeline(conn, incident_id=iid)
            kids = await store.child_ids(conn, parent_ids=[iid] if rec.kind == domain.REGIONAL else [])
            alarms = await store.list_alarms(conn, tenant=_scope(identity), incident_id=iid, limit=TIMELINE_ALARMS)
        inc = scope_incident(convert.incident_pb(rec, child_ids=kids.get(iid, []), timeline=entries), identity)
        if inc is None:
            raise NotFound(f"incident {request.incident_id} not found", "incident", request.incident_id)
        resp = noc_pb2.GetIncidentResponse(incident=inc)
        for a in alarms:
            m = scope_alarm(convert.alarm_pb(a), identity)
            if m is not None:
                resp.alarms.append(m)
        return resp

    async def ListAlarms(self, request: noc_pb2.ListAlarmsRequest, context: Any) -> noc_pb2.ListAlarmsResponse:
        identity = _reader()
        lo, hi = paging.time_bounds(request.range, request.HasField("range"))
        after = paging.page_after(request.page.token)
        size = _page_size(request.page.size)
        incident = ""
        if request.incident_id:
            try:
                incident = str(uuid.UUID(request.incident_id))
            except ValueError:
                return noc_pb2.ListAlarmsResponse()
        if _filtered_away(identity, request.tenant_id):
            return noc_pb2.ListAlarmsResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_alarms(
                conn, tenant=_scope(identity), incident_id=incident, site_id=request.site_id, region=request.region,
                source=request.source, state=request.state, min_severity=request.min_severity,
                tenant_id=request.tenant_id, first_from=lo, first_to=hi, after=after, limit=size + 1)
        resp = noc_pb2.ListAlarmsResponse()
        for a in rows[:size]:
            m = scope_alarm(convert.alarm_pb(a), identity)
            if m is not None:
                resp.alarms.append(m)
        if len(rows) > size:
            last = rows[size - 1]
            resp.page.next_token = paging.encode_keyset(last.first_seen, last.id)
        return resp

    async def GetAlarm(self, request: noc_pb2.GetAlarmRequest, context: Any) -> noc_pb2.GetAlarmResponse:
        identity = _reader()
        aid = _check_id(request.alarm_id, "alarm")
        async with self.pool.acquire() as conn:
            rec = await store.get_alarm(conn, tenant=_scope(identity), alarm_id=aid)
        m = scope_alarm(convert.alarm_pb(rec), identity) if rec is not None else None
        if m is None:
            raise NotFound(f"alarm {request.alarm_id} not found", "alarm", request.alarm_id)
        return noc_pb2.GetAlarmResponse(alarm=m)

    # -- external alarms

    async def PostAlarm(self, request: noc_pb2.PostAlarmRequest, context: Any) -> noc_pb2.PostAlarmResponse:
        require_role(*POST_ROLES)
        now = self.clock()
        t = request.event_time.ToNanoseconds() / 1e9 if request.HasField("event_time") else now
        if t > now + MAX_FUTURE_S:
            raise InvalidArgument("event_time is in the future", [FieldViolation(
                "event_time", f"must be at most {MAX_FUTURE_S:.0f}s in the future")])
        if t < now - MAX_PAST_S:
            raise InvalidArgument("event_time is too old", [FieldViolation(
                "event_time", f"must be at most {MAX_PAST_S / 86400:.0f} days in the past")])
        if self.correlator.facts is None:
            raise Unavailable("the site register is not available")
        try:
            facts = await self.correlator.facts.get(request.site_id)
        except Exception as exc:  # noqa: BLE001 - Sites down: retryable
            raise Unavailable(f"the site register cannot be asked: {type(exc).__name__}") from exc
        if facts is None:
            raise InvalidArgument(f"unknown site {request.site_id}",
                                  [FieldViolation("site_id", f"site {request.site_id} is not in the register")])
        if request.tenant_id and request.tenant_id not in facts.tenant_ids:
            raise InvalidArgument(f"tenant {request.tenant_id} does not lease site {request.site_id}", [
                FieldViolation("tenant_id", f"must be a tenant leasing site {request.site_id}")])
        sig = domain.signal_from_external(
            source=request.source, source_alarm_id=request.source_alarm_id, site_id=request.site_id, time=t,
            probable_cause=request.probable_cause, alarm_type=request.alarm_type, severity=request.perceived_severity,
            dedup_key=request.dedup_key, clear_key=request.clear_key, specific_problem=request.specific_problem,
            tenant_id=request.tenant_id, text=request.text,
            explicit_time=request.HasField("event_time"))
        try:
            [res] = await self.correlator.process([sig], require_alarm=True)
        except domain.IllegalTransition as exc:
            raise FailedPrecondition(str(exc), exc.reason) from None
        if res.conflict:
            raise FailedPrecondition(
                f"alarm {request.source_alarm_id} of {request.source} was posted before with different content",
                "SOURCE_ALARM_ID_REUSED")
        if res.unknown_site:
            raise InvalidArgument(f"unknown site {request.site_id}",
                                  [FieldViolation("site_id", f"site {request.site_id} is not in the register")])
        resp = noc_pb2.PostAlarmResponse(incident_id=res.incident_id, duplicate=res.duplicate)
        if res.alarm is not None:
            resp.alarm.CopyFrom(convert.alarm_pb(res.alarm))
        return resp

    # -- lifecycle

    async def _act(self, incident_id: str, action: Action, *, also: list[str] | None = None
                   ) -> tuple[domain.IncidentRec, Any]:
        """Run an operator action on a visible incident under its site's (or region's) lock, in
        one transaction with its timeline and events. `also`: other incidents it touches (their
        locks are taken together with the incident's, in order)."""
        identity = current_identity()
        iid = _check_id(incident_id, "incident")
        others = [_check_id(x, "incident") for x in (also or [])]
        async with self.pool.acquire() as conn, conn.transaction():
            scope = _scope(identity)
            rec = await store.get_incident(conn, tenant=scope, incident_id=iid)
            if rec is None:  # checked before the role, so a refusal never confirms it exists
                raise NotFound(f"incident {incident_id} not found", "incident", incident_id)
            recs = [rec, *await store.incidents_by_id(conn, ids=[o for o in others if o != iid], tenant=scope)]
            found = {r.id for r in recs}
            for o in others:  # every incident named is found (and visible) before the role is asked
                if o not in found:
                    raise NotFound(f"incident {o} not found", "incident", o)
            require_role(*ACT_ROLES)
            await store.lock(conn, regions=[r.region for r in recs], sites=[r.site_id for r in recs if r.site_id])
            fresh = await store.get_incident(conn, tenant=None, incident_id=iid, for_update=True)
            assert fresh is not None
            out = domain.Decisions()
            try:
                extra = await action(conn, fresh, out, identity, self.clock())
            except domain.IllegalTransition as exc:
                raise FailedPrecondition(str(exc), exc.reason) from None
            await self.correlator.commit(conn, out)
        return fresh, extra

    async def _answer(self, rec: domain.IncidentRec) -> noc_pb2.Incident:
        identity = current_identity()
        async with self.pool.acquire() as conn:
            [m] = await self._incident_pb(conn, [rec], identity) or [noc_pb2.Incident()]
        return m

    def _transition(self, action: str, note: str) -> Action:
        async def run(conn: asyncpg.Connection, inc: domain.IncidentRec, out: domain.Decisions, who: Identity,
                      now: float) -> None:
            domain.transition(inc, action, actor=who.subject, now=now, note=note, out=out)
        return run

    async def AcknowledgeIncident(self, request: noc_pb2.AcknowledgeIncidentRequest, context: Any
                                  ) -> noc_pb2.AcknowledgeIncidentResponse:
        rec, _ = await self._act(request.incident_id, self._transition("acknowledge", request.note))
        return noc_pb2.AcknowledgeIncidentResponse(incident=await self._answer(rec))

    async def ResolveIncident(self, request: noc_pb2.ResolveIncidentRequest, context: Any
                              ) -> noc_pb2.ResolveIncidentResponse:
        rec, _ = await self._act(request.incident_id, self._transition("resolve", request.note))
        return noc_pb2.ResolveIncidentResponse(incident=await self._answer(rec))

    async def CloseIncident(self, request: noc_pb2.CloseIncidentRequest, context: Any
                            ) -> noc_pb2.CloseIncidentResponse:
        rec, _ = await self._act(request.incident_id, self._transition("close", request.note))
        return noc_pb2.CloseIncidentResponse(incident=await self._answer(rec))

    async def ReopenIncident(self, request: noc_pb2.ReopenIncidentRequest, context: Any
                             ) -> noc_pb2.ReopenIncidentResponse:
        rec, _ = await self._act(request.incident_id, self._transition("reopen", request.reason))
        return noc_pb2.ReopenIncidentResponse(incident=await self._answer(rec))

    async def AssignIncident(self, request: noc_pb2.AssignIncidentRequest, context: Any
                             ) -> noc_pb2.AssignIncidentResponse:
        async def run(conn: asyncpg.Connection, inc: domain.IncidentRec, out: domain.Decisions, who: Identity,
                      now: float) -> None:
            domain.assign(inc, request.assignee, actor=who.subject, now=now, out=out)
        rec, _ = await self._act(request.incident_id, run)
        return noc_pb2.AssignIncidentResponse(incident=await self._answer(rec))

    async def CommentIncident(self, request: noc_pb2.CommentIncidentRequest, context: Any
                              ) -> noc_pb2.CommentIncidentResponse:
        if not request.text.strip():
            raise InvalidArgument("empty comment", [FieldViolation("text", "must not be blank")])

        async def run(conn: asyncpg.Connection, inc: domain.IncidentRec, out: domain.Decisions, who: Identity,
                      now: float) -> None:
            domain.comment(inc, request.text, actor=who.subject, now=now, out=out)
        rec, _ = await self._act(request.incident_id, run)
        return noc_pb2.CommentIncidentResponse(incident=await self._answer(rec))

    async def MergeIncidents(self, request: noc_pb2.MergeIncidentsRequest, context: Any
                             ) -> noc_pb2.MergeIncidentsResponse:
        sources = list(request.source_incident_ids)

        async def run(conn: asyncpg.Connection, inc: domain.IncidentRec, out: domain.Decisions, who: Identity,
                      now: float) -> None:
            ids = [_check_id(s, "incident") for s in sources]
            recs = {r.id: r for r in await store.incidents_by_id(conn, ids=ids)}
            srcs = [recs[i] for i in ids if i in recs]
            alarms = await store.alarms_of(conn, incident_ids=list(recs))
            domain.merge(inc, srcs, alarms, actor=who.subject, now=now, out=out)
        rec, _ = await self._act(request.incident_id, run, also=sources)
        return noc_pb2.MergeIncidentsResponse(incident=await self._answer(rec))

    async def SplitIncident(self, request: noc_pb2.SplitIncidentRequest, context: Any
                            ) -> noc_pb2.SplitIncidentResponse:
        facts_cache = self.correlator.facts

        async def run(conn: asyncpg.Connection, inc: domain.IncidentRec, out: domain.Decisions, who: Identity,
                      now: float) -> domain.IncidentRec:
            alarms = await store.alarms_of(conn, incident_ids=[inc.id])
            facts = None
            if facts_cache is not None and inc.site_id:
                facts = await facts_cache.get(inc.site_id)
            new, _ = domain.split(inc, [_norm_id(a) for a in request.alarm_ids], alarms, title=request.title,
                                  actor=who.subject, now=now, new_id=lambda: str(uuid.uuid4()),
                                  facts=facts or domain.SiteFacts(inc.site_id, inc.region), out=out)
            return new
        rec, new = await self._act(request.incident_id, run)
        return noc_pb2.SplitIncidentResponse(incident=await self._answer(rec), new_incident=await self._answer(new))

    # -- statistics

    async def GetNocStats(self, request: noc_pb2.GetNocStatsRequest, context: Any) -> noc_pb2.GetNocStatsResponse:
        identity = _reader()
        lo, hi = paging.time_bounds(request.range, True)
        if lo is None or hi is None:
            raise InvalidArgument("the range needs both bounds", [
                FieldViolation("range", "start_time and end_time are required")])
        if _filtered_away(identity, request.tenant_id):
            return noc_pb2.GetNocStatsResponse(overall=noc_pb2.NocStats())
        async with self.pool.acquire() as conn:
            incs, alarms = await store.stats_rows(conn, tenant=_scope(identity), start=lo, end=hi,
                                                  region=request.region, tenant_id=request.tenant_id,
                                                  site_id=request.site_id)
        if not identity.is_staff:  # a tenant's figures name only its own tenant
            incs = [domain.StatIncident(i.id, i.site_ids, i.region, (identity.tenant,), i.first_seen,
                                        i.acknowledge_time, i.resolve_time) for i in incs]
            alarms = [domain.StatAlarms(a.site_id, a.region, (identity.tenant,), a.occurrences) for a in alarms]
        overall, groups = domain.noc_stats(incs, alarms, range_s=(hi - lo).total_seconds(),
                                           group_by=int(request.group_by))
        return noc_pb2.GetNocStatsResponse(overall=noc_pb2.NocStats(**overall.__dict__),
                                           groups=[noc_pb2.NocStats(**g.__dict__) for g in groups])
