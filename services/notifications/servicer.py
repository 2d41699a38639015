"""NotificationsService handlers: check the caller and the request, read and write the
notifications schema (store), decide (domain), map to protobuf.

Roles: admin and noc_operator write, viewer reads. A tenant viewer sees only its tenant's channels
and their notifications (another's is NOT_FOUND, lists leave it out); routes, escalation
policies, schedules and silences are the towerco's own: NOT_FOUND and empty lists for it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.notifications.v1 import notifications_pb2_grpc

from mesh import masks, oncall, validation
from mesh.auth import Identity, require_role, tenant_scope
from mesh.errors import FieldViolation, InvalidArgument, NotFound
from services.notifications import domain, store

READ_ROLES = ("viewer", "tenant_viewer")
WRITE_ROLES = ("noc_operator",)
KIND_TEST = 5


def _reader() -> Identity:
    return require_role(*READ_ROLES)


def _staff_reader(what: str, value: str) -> Identity:
    """A read of the towerco's own configuration: a tenant is answered NOT_FOUND."""
    identity = _reader()
    if not identity.is_staff:
        raise NotFound(f"{what} {value!r} not found", what, value)
    return identity


def _id(value: str, what: str) -> uuid.UUID:
    """A malformed id names nothing: NOT_FOUND, like one the caller may not see."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value!r} not found", what, value) from None


def _offset(token: str) -> int:
    try:
        return domain.decode_offset(token)
    except ValueError:
        raise InvalidArgument("invalid page token",
                              [FieldViolation("page.token", "is not a token of this list")]) from None


def _next(offset: int, size: int, n: int) -> str:
    return domain.encode_offset(offset + size) if n > size else ""


def _invalid(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise InvalidArgument("invalid request", [FieldViolation(f, d) for f, d in problems])


def _id_required(value: str, field: str) -> None:
    if not value:
        _invalid([(field, "is required")])


def _merge(current: Message, incoming: Message, columns: tuple[str, ...]) -> None:
    """Copy the masked fields of `incoming` into `current` (a masked message or list is replaced
    as a whole, an unset one cleared)."""
    field_mask_pb2.FieldMask(paths=list(columns)).MergeMessage(
        incoming, current, replace_message_field=True, replace_repeated_field=True)


def _declared(request: Message) -> list[tuple[str, str]]:
    """The contract's declarative rules on a whole (merged) entity, wrapped in its Create request,
    so an update is held to the same rules as a create."""
    return [(v.field, v.description) for v in validation.violations(request)]


def _dt(ts: Any) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def channel_pb(row: asyncpg.Record) -> pb.Channel:
    c = pb.Channel(id=str(row["id"]), name=row["name"], kind=row["kind"], tenant_id=row["tenant_id"],
                   webhook_url=row["webhook_url"], email_address=row["email_address"],
                   has_signing_secret=bool(row["signing_secret"]))
    c.create_time.FromDatetime(row["create_time"])
    return c


def _config_pb(cls: type[Message], row: asyncpg.Record) -> Any:
    msg = cls.FromString(row["body"])
    msg.id = str(row["id"])  # type: ignore[attr-defined]
    msg.create_time.FromDatetime(row["create_time"])  # type: ignore[attr-defined]
    return msg


def notification_pb(row: asyncpg.Record, attempts: list[asyncpg.Record] | None = None) -> pb.Notification:
    n = pb.Notification(
        id=str(row["id"]), channel_id=str(row["channel_id"]), tenant_id=row["tenant_id"], kind=row["kind"],
        route_id=str(row["route_id"]) if row["route_id"] else "", group_key=row["group_key"],
        incident_ids=list(row["incident_ids"]), escalation_step=row["escalation_step"],
        escalation_round=row["escalation_round"], state=row["state"], attempts=row["attempts"],
        last_error=row["last_error"], summary=row["summary"])
    n.create_time.FromDatetime(row["create_time"])
    if row["finish_time"] is not None:
        n.finish_time.FromDatetime(row["finish_time"])
    if row["state"] in (1, 2):
        n.next_attempt_time.FromDatetime(row["due"])
    for a in attempts or []:
        d = n.deliveries.add(attempt=a["attempt"], response_code=a["response_code"], latency_ms=a["latency_ms"],
                             error=a["error"] if a["ok"] is not None else "interrupted: the notifier stopped during "
                             "this attempt", ok=bool(a["ok"]))
        d.start_time.FromDatetime(a["start_time"])
    return n


class NotificationsServicer(notifications_pb2_grpc.NotificationsServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ------------------------------------------------------------------------------ channels

    async def CreateChannel(self, request: pb.CreateChannelRequest, context: Any) -> pb.CreateChannelResponse:
        require_role(*WRITE_ROLES)
        c = request.channel
        _invalid(_channel_problems(c))
        async with self.pool.acquire() as conn:
            row = await store.insert_channel(conn, tenant_id=c.tenant_id, name=c.name, kind=c.kind,
                                             webhook_url=c.webhook_url, signing_secret=c.signing_secret,
                                             email_address=c.email_address)
        return pb.CreateChannelResponse(channel=channel_pb(row))

    async def _channel(self, conn: asyncpg.Connection, identity: Identity, channel_id: str, *,
                       for_update: bool = False) -> asyncpg.Record:
        row = await store.get_channel(conn, channel_id=_id(channel_id, "channel"), tenant=tenant_scope(identity),
                                      for_update=for_update)
        if row is None:
            raise NotFound(f"channel {channel_id!r} not found", "channel", channel_id)
        return row

    async def GetChannel(self, request: pb.GetChannelRequest, context: Any) -> pb.GetChannelResponse:
        identity = _reader()
        async with self.pool.acquire() as conn:
            row = await self._channel(conn, identity, request.channel_id)
        return pb.GetChannelResponse(channel=channel_pb(row))

    async def ListChannels(self, request: pb.ListChannelsRequest, context: Any) -> pb.ListChannelsResponse:
        identity = _reader()
        if request.tenant_id and not identity.is_staff and request.tenant_id != identity.tenant:
            return pb.ListChannelsResponse()  # a list filtered on another tenant: empty
        scope = tenant_scope(identity, request.tenant_id)
        offset, size = _offset(request.page.token), domain.page_size(request.page.size)
        async with self.pool.acquire() as conn:
            rows = await store.list_channels(conn, tenant=scope, offset=offset, limit=size + 1)
        resp = pb.ListChannelsResponse(channels=[channel_pb(r) for r in rows[:size]])
        resp.page.next_token = _next(offset, size, len(rows))
        return resp

    async def UpdateChannel(self, request: pb.UpdateChannelRequest, context: Any) -> pb.UpdateChannelResponse:
        """The caller's tenant scope first (another tenant's channel is NOT_FOUND, before the role),
        then the mask, then the merged channel by the rules of CreateChannel."""
        identity = _reader()
        c = request.channel
        _id_required(c.id, "channel.id")
        rules = domain.CHANNEL_MASK
        async with self.pool.acquire() as conn, conn.transaction():
            current = await self._channel(conn, identity, c.id, for_update=True)
            require_role(*WRITE_ROLES)
            columns = masks.resolve_mask(rules, masks.request_paths(request, c, rules))
            incoming = {k: getattr(c, k) for k in store.CHANNEL_COLUMNS}
            merged = masks.apply_mask(dict(current), incoming, columns)
            _invalid(_channel_problems(pb.Channel(
                name=merged["name"], kind=merged["kind"], tenant_id=merged["tenant_id"],
                webhook_url=merged["webhook_url"], signing_secret=merged["signing_secret"],
                email_address=merged["email_address"]), declared=True))
            row = await store.update_channel(conn, channel_id=current["id"], values={k: merged[k] for k in columns})
        return pb.UpdateChannelResponse(channel=channel_pb(row))

    async def DeleteChannel(self, request: pb.DeleteChannelRequest, context: Any) -> pb.DeleteChannelResponse:
        identity = _reader()
        async with self.pool.acquire() as conn:
            row = await self._channel(conn, identity, request.channel_id)  # NOT_FOUND before the role
            require_role(*WRITE_ROLES)
            await store.delete_channel(conn, channel_id=row["id"])
        return pb.DeleteChannelResponse()

    async def TestSend(self, request: pb.TestSendRequest, context: Any) -> pb.TestSendResponse:
        identity = _reader()
        async with self.pool.acquire() as conn:
            ch = await self._channel(conn, identity, request.channel_id)
            require_role(*WRITE_ROLES)
            summary = f"[TEST] Towerco notification test{': ' + request.message if request.message else ''}"
            row = await store.insert_notification(conn, id=uuid.uuid4(), channel_id=ch["id"], tenant_id=ch["tenant_id"],
                                                  kind=KIND_TEST, summary=summary,
                                                  payload=json.dumps({"message": request.message}))
        return pb.TestSendResponse(notification=notification_pb(row))

    # ------------------------------------------------------------------------ shared checks

    async def _check_channels(self, conn: asyncpg.Connection, ids: list[str], field: str) -> list[tuple[str, str]]:
        problems, parsed = [], []
        for i, v in enumerate(ids):
            try:
                parsed.append(uuid.UUID(v))
            except ValueError:
                problems.append((f"{field}[{i}]", "is not a channel id"))
        if parsed:
            found = await store.existing_channels(conn, ids=parsed)
            problems += [(f"{field}[{i}]", "no such channel") for i, v in enumerate(ids)
                         if _maybe_uuid(v) is not None and _maybe_uuid(v) not in found]
        return problems

    async def _check_ref(self, conn: asyncpg.Connection, table: str, value: str, field: str) -> list[tuple[str, str]]:
        if not value:
            return []
        u = _maybe_uuid(value)
        if u is None or not await store.existing_config(conn, table=table, ids=[u]):
            return [(field, f"no such {'escalation policy' if table == 'policy' else table}")]
        return []

    # -------------------------------------------------------------------------------- routes

    async def CreateRoute(self, request: pb.CreateRouteRequest, context: Any) -> pb.CreateRouteResponse:
        require_role(*WRITE_ROLES)
        r = pb.Route()
        r.CopyFrom(request.route)
        r.ClearField("id")
        r.ClearField("create_time")
        async with self.pool.acquire() as conn, conn.transaction():
            _invalid(await self._route_problems(conn, r))
            row = await store.insert_config(conn, table="route", row_id=uuid.uuid4(), name=r.name,
                                            body=r.SerializeToString(), position=r.position)
        return pb.CreateRouteResponse(route=_config_pb(pb.Route, row))

    async def _route_problems(self, conn: asyncpg.Connection, r: pb.Route, *, declared: bool = False
                              ) -> list[tuple[str, str]]:
        """What makes a route invalid (CreateRoute's rules; `declared`: the contract's too, for a
        merged update): a name, channels that exist and/or a policy that exists."""
        problems = _declared(pb.CreateRouteRequest(route=r)) if declared else []
        problems += domain.missing("route", name=r.name)
        problems += await self._check_channels(conn, list(r.channel_ids), "route.channel_ids")
        problems += await self._check_ref(conn, "policy", r.escalation_policy_id, "route.escalation_policy_id")
        if not r.channel_ids and not r.escalation_policy_id:
            problems.append(("route.channel_ids", "a route needs channels or an escalation policy"))
        return problems

    async def _update_config(self, request: Message, entity: Message, *, table: str, what: str, field: str,
                             check: Any) -> asyncpg.Record:
        """The update of a route, policy or schedule: staff only (a tenant is answered NOT_FOUND,
        before the role), the mask, the stored message with the masked fields replaced, checked
        by `check` (the rules of its Create) and stored."""
        row_id = getattr(entity, "id")  # noqa: B009
        _id_required(row_id, f"{field}.id")
        _staff_reader(what, row_id)
        require_role(*WRITE_ROLES)
        rules = domain.MASKS[table]
        columns = masks.resolve_mask(rules, masks.request_paths(request, entity, rules))
        async with self.pool.acquire() as conn, conn.transaction():
            current = await store.get_config(conn, table=table, row_id=_id(row_id, what), for_update=True)
            if current is None:
                raise NotFound(f"{what} {row_id!r} not found", what, row_id)
            merged = type(entity).FromString(current["body"])
            _merge(merged, entity, columns)
            _invalid(await check(conn, merged, declared=True))
            row = await store.update_config(conn, table=table, row_id=current["id"], name=merged.name,
                                            body=merged.SerializeToString(),
                                            position=getattr(merged, "position", None))
        return row

    async def UpdateRoute(self, request: pb.UpdateRouteRequest, context: Any) -> pb.UpdateRouteResponse:
        row = await self._update_config(request, request.route, table="route", what="route", field="route",
                                        check=self._route_problems)
        return pb.UpdateRouteResponse(route=_config_pb(pb.Route, row))

    async def GetRoute(self, request: pb.GetRouteRequest, context: Any) -> pb.GetRouteResponse:
        _staff_reader("route", request.route_id)
        async with self.pool.acquire() as conn:
            row = await store.get_config(conn, table="route", row_id=_id(request.route_id, "route"))
        if row is None:
            raise NotFound(f"route {request.route_id!r} not found", "route", request.route_id)
        return pb.GetRouteResponse(route=_config_pb(pb.Route, row))

    async def ListRoutes(self, request: pb.ListRoutesRequest, context: Any) -> pb.ListRoutesResponse:
        identity = _reader()
        offset, size = _offset(request.page.token), domain.page_size(request.page.size)
        if not identity.is_staff:
            return pb.ListRoutesResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_config(conn, table="route", offset=offset, limit=size + 1)
        resp = pb.ListRoutesResponse(routes=[_config_pb(pb.Route, r) for r in rows[:size]])
        resp.page.next_token = _next(offset, size, len(rows))
        return resp

    async def DeleteRoute(self, request: pb.DeleteRouteRequest, context: Any) -> pb.DeleteRouteResponse:
        _staff_reader("route", request.route_id)
        require_role(*WRITE_ROLES)
        async with self.pool.acquire() as conn:
            if not await store.delete_config(conn, table="route", row_id=_id(request.route_id, "route")):
                raise NotFound(f"route {request.route_id!r} not found", "route", request.route_id)
        return pb.DeleteRouteResponse()

    # ---------------------------------------------------------------------------- policies

    async def CreateEscalationPolicy(self, request: pb.CreateEscalationPolicyRequest, context: Any
                                     ) -> pb.CreateEscalationPolicyResponse:
        require_role(*WRITE_ROLES)
        p = pb.EscalationPolicy()
        p.CopyFrom(request.policy)
        p.ClearField("id")
        p.ClearField("create_time")
        async with self.pool.acquire() as conn, conn.transaction():
            _invalid(await self._policy_problems(conn, p))
            row = await store.insert_config(conn, table="policy", row_id=uuid.uuid4(), name=p.name,
                                            body=p.SerializeToString())
        return pb.CreateEscalationPolicyResponse(policy=_config_pb(pb.EscalationPolicy, row))

    async def _policy_problems(self, conn: asyncpg.Connection, p: pb.EscalationPolicy, *, declared: bool = False
                               ) -> list[tuple[str, str]]:
        """What makes a policy invalid (CreateEscalationPolicy's rules): a name, at least one step,
        each with channels or a schedule that exist and a delay of at least a second."""
        problems = _declared(pb.CreateEscalationPolicyRequest(policy=p)) if declared else []
        problems += domain.missing("policy", name=p.name, steps=len(p.steps))
        for i, step in enumerate(p.steps):
            problems += await self._check_channels(conn, list(step.channel_ids), f"policy.steps[{i}].channel_ids")
            problems += await self._check_ref(conn, "schedule", step.schedule_id, f"policy.steps[{i}].schedule_id")
            if not step.channel_ids and not step.schedule_id:
                problems.append((f"policy.steps[{i}]", "a step needs channels or a schedule"))
            if step.escalate_after_seconds < 1:
                problems.append((f"policy.steps[{i}].escalate_after_seconds", "must be at least 1"))
        return list(dict.fromkeys(problems))

    async def UpdateEscalationPolicy(self, request: pb.UpdateEscalationPolicyRequest, context: Any
                                     ) -> pb.UpdateEscalationPolicyResponse:
        row = await self._update_config(request, request.policy, table="policy", what="escalation policy",
                                        field="policy", check=self._policy_problems)
        return pb.UpdateEscalationPolicyResponse(policy=_config_pb(pb.EscalationPolicy, row))

    async def GetEscalationPolicy(self, request: pb.GetEscalationPolicyRequest, context: Any
                                  ) -> pb.GetEscalationPolicyResponse:
        _staff_reader("escalation policy", request.policy_id)
        async with self.pool.acquire() as conn:
            row = await store.get_config(conn, table="policy", row_id=_id(request.policy_id, "escalation policy"))
        if row is None:
            raise NotFound(f"escalation policy {request.policy_id!r} not found", "escalation policy",
                           request.policy_id)
        return pb.GetEscalationPolicyResponse(policy=_config_pb(pb.EscalationPolicy, row))

    async def ListEscalationPolicies(self, request: pb.ListEscalationPoliciesRequest, context: Any
                                     ) -> pb.ListEscalationPoliciesResponse:
        identity = _reader()
        offset, size = _offset(request.page.token), domain.page_size(request.page.size)
        if not identity.is_staff:
            return pb.ListEscalationPoliciesResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_config(conn, table="policy", offset=offset, limit=size + 1)
        resp = pb.ListEscalationPoliciesResponse(policies=[_config_pb(pb.EscalationPolicy, r) for r in rows[:size]])
        resp.page.next_token = _next(offset, size, len(rows))
        return resp

    async def DeleteEscalationPolicy(self, request: pb.DeleteEscalationPolicyRequest, context: Any
                                     ) -> pb.DeleteEscalationPolicyResponse:
        _staff_reader("escalation policy", request.policy_id)
        require_role(*WRITE_ROLES)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.delete_config(conn, table="policy",
                                             row_id=_id(request.policy_id, "escalation policy")):
                raise NotFound(f"escalation policy {request.policy_id!r} not found", "escalation policy",
                               request.policy_id)
        return pb.DeleteEscalationPolicyResponse()

    # --------------------------------------------------------------------------- schedules

    async def CreateSchedule(self, request: pb.CreateScheduleRequest, context: Any) -> pb.CreateScheduleResponse:
        require_role(*WRITE_ROLES)
        s = pb.Schedule()
        s.CopyFrom(request.schedule)
        s.ClearField("id")
        s.ClearField("create_time")
        async with self.pool.acquire() as conn, conn.transaction():
            _invalid(await self._schedule_problems(conn, s))
            row = await store.insert_config(conn, table="schedule", row_id=uuid.uuid4(), name=s.name,
                                            body=s.SerializeToString())
        return pb.CreateScheduleResponse(schedule=_config_pb(pb.Schedule, row))

    async def _schedule_problems(self, conn: asyncpg.Connection, s: pb.Schedule, *, declared: bool = False
                                 ) -> list[tuple[str, str]]:
        """What makes a schedule invalid (CreateSchedule's rules): a name, at least one rotation,
        shifts of a minute or more, members' and overrides' channels that exist."""
        problems = _declared(pb.CreateScheduleRequest(schedule=s)) if declared else []
        problems += domain.missing("schedule", name=s.name, rotations=len(s.rotations))
        for i, r in enumerate(s.rotations):
            if r.shift_seconds < 60:
                problems.append((f"schedule.rotations[{i}].shift_seconds", "must be at least 60"))
            ids = [m.channel_id for m in r.members if m.channel_id]
            problems += [(f"schedule.rotations[{i}].members.channel_id", d)
                         for _, d in await self._check_channels(conn, ids, "members")]
        for i, o in enumerate(s.overrides):
            problems += [(f"schedule.overrides[{i}].member.channel_id", d) for _, d in
                         await self._check_channels(conn, [o.member.channel_id] if o.member.channel_id else [], "m")]
        return list(dict.fromkeys(problems))

    async def UpdateSchedule(self, request: pb.UpdateScheduleRequest, context: Any) -> pb.UpdateScheduleResponse:
        row = await self._update_config(request, request.schedule, table="schedule", what="schedule",
                                        field="schedule", check=self._schedule_problems)
        return pb.UpdateScheduleResponse(schedule=_config_pb(pb.Schedule, row))

    async def GetSchedule(self, request: pb.GetScheduleRequest, context: Any) -> pb.GetScheduleResponse:
        _staff_reader("schedule", request.schedule_id)
        async with self.pool.acquire() as conn:
            row = await self._schedule(conn, request.schedule_id)
        return pb.GetScheduleResponse(schedule=_config_pb(pb.Schedule, row))

    async def _schedule(self, conn: asyncpg.Connection, schedule_id: str, *, for_update: bool = False
                        ) -> asyncpg.Record:
        row = await store.get_config(conn, table="schedule", row_id=_id(schedule_id, "schedule"), for_update=for_update)
        if row is None:
            raise NotFound(f"schedule {schedule_id!r} not found", "schedule", schedule_id)
        return row

    async def ListSchedules(self, request: pb.ListSchedulesRequest, context: Any) -> pb.ListSchedulesResponse:
        identity = _reader()
        offset, size = _offset(request.page.token), domain.page_size(request.page.size)
        if not identity.is_staff:
            return pb.ListSchedulesResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_config(conn, table="schedule", offset=offset, limit=size + 1)
        resp = pb.ListSchedulesResponse(schedules=[_config_pb(pb.Schedule, r) for r in rows[:size]])
        resp.page.next_token = _next(offset, size, len(rows))
        return resp

    async def DeleteSchedule(self, request: pb.DeleteScheduleRequest, context: Any) -> pb.DeleteScheduleResponse:
        _staff_reader("schedule", request.schedule_id)
        require_role(*WRITE_ROLES)
        async with self.pool.acquire() as conn:
            if not await store.delete_config(conn, table="schedule", row_id=_id(request.schedule_id, "schedule")):
                raise NotFound(f"schedule {request.schedule_id!r} not found", "schedule", request.schedule_id)
        return pb.DeleteScheduleResponse()

    async def AddOverride(self, request: pb.AddOverrideRequest, context: Any) -> pb.AddOverrideResponse:
        _staff_reader("schedule", request.schedule_id)
        require_role(*WRITE_ROLES)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._schedule(conn, request.schedule_id, for_update=True)
            ch = request.override.member.channel_id
            _invalid([("override.member.channel_id", d)
                      for _, d in await self._check_channels(conn, [ch] if ch else [], "m")])
            s = pb.Schedule.FromString(row["body"])
            if len(s.overrides) >= 1000:
                _invalid([("override", "the schedule has 1000 overrides already")])
            s.overrides.append(request.override)
            await store.update_config_body(conn, table="schedule", row_id=row["id"], body=s.SerializeToString())
            row = await store.get_config(conn, table="schedule", row_id=row["id"])
        return pb.AddOverrideResponse(schedule=_config_pb(pb.Schedule, row))

    async def GetOnCall(self, request: pb.GetOnCallRequest, context: Any) -> pb.GetOnCallResponse:
        _staff_reader("schedule", request.schedule_id)
        async with self.pool.acquire() as conn:
            row = await self._schedule(conn, request.schedule_id)
        s = pb.Schedule.FromString(row["body"])
        at = _dt(request.at_time) if request.HasField("at_time") else datetime.now(UTC)
        oc = oncall.on_call(oncall.schedule_spec(s), at.timestamp())
        resp = pb.GetOnCallResponse()
        if oc is not None:
            resp.member.name, resp.member.channel_id = oc.member.name, oc.member.channel_id
            resp.source = oc.source
            resp.shift_start_time.FromNanoseconds(int(oc.start * 1e9))
            resp.shift_end_time.FromNanoseconds(int(oc.end * 1e9))
        return resp

    # ---------------------------------------------------------------------------- silences

    async def CreateSilence(self, request: pb.CreateSilenceRequest, context: Any) -> pb.CreateSilenceResponse:
        identity = require_role(*WRITE_ROLES)
        s = pb.Silence()
        s.CopyFrom(request.silence)
        s.ClearField("id")
        s.ClearField("create_time")
        problems = []
        for i, m in enumerate(s.matchers):
            if m.operator in (pb.MATCH_OPERATOR_REGEX, pb.MATCH_OPERATOR_NOT_REGEX):
                p = domain.regex_problem(m.value)
                if p:
                    problems.append((f"silence.matchers[{i}].value", p))
        now = datetime.now(UTC)
        if not s.HasField("start_time"):
            s.start_time.FromDatetime(now)
        if _dt(s.end_time) <= now:
            problems.append(("silence.end_time", "must be in the future"))
        if _dt(s.end_time) <= _dt(s.start_time):
            problems.append(("silence.end_time", "must be after start_time"))
        _invalid(problems)
        s.author = identity.subject
        async with self.pool.acquire() as conn:
            row = await store.insert_silence(conn, row_id=uuid.uuid4(), body=s.SerializeToString(),
                                             start=_dt(s.start_time), end=_dt(s.end_time))
        return pb.CreateSilenceResponse(silence=_config_pb(pb.Silence, row))

    async def GetSilence(self, request: pb.GetSilenceRequest, context: Any) -> pb.GetSilenceResponse:
        _staff_reader("silence", request.silence_id)
        async with self.pool.acquire() as conn:
            row = await store.get_silence(conn, silence_id=_id(request.silence_id, "silence"))
        if row is None:
            raise NotFound(f"silence {request.silence_id!r} not found", "silence", request.silence_id)
        return pb.GetSilenceResponse(silence=_config_pb(pb.Silence, row))

    async def ListSilences(self, request: pb.ListSilencesRequest, context: Any) -> pb.ListSilencesResponse:
        identity = _reader()
        offset, size = _offset(request.page.token), domain.page_size(request.page.size)
        if not identity.is_staff:
            return pb.ListSilencesResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_silences(conn, active_only=request.active_only, offset=offset, limit=size + 1)
        resp = pb.ListSilencesResponse(silences=[_config_pb(pb.Silence, r) for r in rows[:size]])
        resp.page.next_token = _next(offset, size, len(rows))
        return resp

    async def ExpireSilence(self, request: pb.ExpireSilenceRequest, context: Any) -> pb.ExpireSilenceResponse:
        _staff_reader("silence", request.silence_id)
        require_role(*WRITE_ROLES)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_silence(conn, silence_id=_id(request.silence_id, "silence"))
            if row is None:
                raise NotFound(f"silence {request.silence_id!r} not found", "silence", request.silence_id)
            now = datetime.now(UTC)
            end = min(now, row["end_time"])
            start = min(row["start_time"], end)
            s = pb.Silence.FromString(row["body"])
            s.end_time.FromDatetime(end)
            s.start_time.FromDatetime(start)
            row = await store.expire_silence(conn, silence_id=row["id"], body=s.SerializeToString(), end=end)
        return pb.ExpireSilenceResponse(silence=_config_pb(pb.Silence, row))

    # ------------------------------------------------------------------------ delivery log

    async def ListNotifications(self, request: pb.ListNotificationsRequest, context: Any
                                ) -> pb.ListNotificationsResponse:
        identity = _reader()
        if request.tenant_id and not identity.is_staff and request.tenant_id != identity.tenant:
            return pb.ListNotificationsResponse()
        scope = tenant_scope(identity, request.tenant_id)
        channel = None
        if request.channel_id:
            channel = _maybe_uuid(request.channel_id)
            if channel is None:
                return pb.ListNotificationsResponse()
        offset, size = _offset(request.page.token), domain.page_size(request.page.size)
        async with self.pool.acquire() as conn:
            rows = await store.list_notifications(conn, tenant=scope, channel_id=channel,
                                                  incident_id=request.incident_id, state=request.state,
                                                  offset=offset, limit=size + 1)
        resp = pb.ListNotificationsResponse(notifications=[notification_pb(r) for r in rows[:size]])
        resp.page.next_token = _next(offset, size, len(rows))
        return resp

    async def GetNotification(self, request: pb.GetNotificationRequest, context: Any) -> pb.GetNotificationResponse:
        identity = _reader()
        nid = _id(request.notification_id, "notification")
        async with self.pool.acquire() as conn:
            row = await store.get_notification(conn, notification_id=nid, tenant=tenant_scope(identity))
            if row is None:
                raise NotFound(f"notification {request.notification_id!r} not found", "notification",
                               request.notification_id)
            tries = await store.attempts(conn, notification_id=nid)
        return pb.GetNotificationResponse(notification=notification_pb(row, tries))


def _channel_problems(c: pb.Channel, *, declared: bool = False) -> list[tuple[str, str]]:
    """What makes a channel invalid (CreateChannel's rules; `declared`: the contract's too, for a
    merged update): a name and a kind, and the fields of its kind."""
    problems = _declared(pb.CreateChannelRequest(channel=c)) if declared else []
    problems += domain.missing("channel", name=c.name, kind=c.kind)
    problems += domain.channel_problems(kind=c.kind, webhook_url=c.webhook_url, signing_secret=c.signing_secret,
                                        email_address=c.email_address)
    return list(dict.fromkeys(problems))


def _maybe_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


