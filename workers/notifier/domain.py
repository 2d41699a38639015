"""The notifier's decisions, pure (no I/O, explicit clocks): routing, grouping timers with
Alertmanager's meaning, escalation steps, who is on call (the rule: mesh/oncall), silences, the webhook body and its
signature, retry delays. docs/notifications.md states the same rules for people.

Times are epoch seconds (floats) so tests drive every clock by hand."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from towerco.noc.v1 import noc_pb2

from mesh.incident_scope import incident_for_tenant
from mesh.oncall import Member as Member
from mesh.oncall import OnCall as OnCall
from mesh.oncall import OverrideSpec as OverrideSpec
from mesh.oncall import RotationSpec as RotationSpec
from mesh.oncall import ScheduleSpec as ScheduleSpec
from mesh.oncall import on_call as on_call

PAYLOAD_VERSION = "1"
SIGNATURE_HEADER = "X-Towerco-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_GROUP_INTERVAL_S = 300.0
DEFAULT_REPEAT_INTERVAL_S = 4 * 3600.0
SIGNATURE_TOLERANCE_S = 300.0

FIRING_STATES = (noc_pb2.INCIDENT_STATE_OPEN, noc_pb2.INCIDENT_STATE_ACKNOWLEDGED)
STOPPING_STATES = (noc_pb2.INCIDENT_STATE_ACKNOWLEDGED, noc_pb2.INCIDENT_STATE_RESOLVED,
                   noc_pb2.INCIDENT_STATE_CLOSED)  # what ends an escalation (besides suppression)
GROUP_FIELDS = ("incident", "site", "region", "tenant", "kind", "severity")

# notification kinds (NotificationKind) and delivery states (DeliveryState), as stored
KIND_FIRING, KIND_RESOLVED, KIND_ESCALATION, KIND_ESCALATION_STOPPED, KIND_TEST = 1, 2, 3, 4, 5
KIND_NAMES = {1: "firing", 2: "resolved", 3: "escalation", 4: "escalation_stopped", 5: "test"}
PENDING, SENDING, DELIVERED, DEAD, SILENCED = 1, 2, 3, 4, 5


# --------------------------------------------------------------------------- incidents


@dataclass(frozen=True)
class Facts:
    """What routing, grouping and silences look at in an incident."""

    id: str
    severity: int
    region: str
    site_ids: tuple[str, ...]
    tenant_ids: tuple[str, ...]
    kind: int
    state: int
    suppressed: bool

    @property
    def firing(self) -> bool:
        """Open or acknowledged, and not suppressed by a calendar window."""
        return self.state in FIRING_STATES and not self.suppressed

    @property
    def resolved(self) -> bool:
        return self.state in (noc_pb2.INCIDENT_STATE_RESOLVED, noc_pb2.INCIDENT_STATE_CLOSED)

    @property
    def pageable(self) -> bool:
        """An escalation pages it: open (nobody acknowledged it) and not suppressed."""
        return self.state == noc_pb2.INCIDENT_STATE_OPEN and not self.suppressed

    def values(self, name: str) -> tuple[str, ...]:
        """The values of a matcher / group_by field."""
        if name == "incident":
            return (self.id,)
        if name == "site":
            return self.site_ids
        if name == "region":
            return (self.region,)
        if name == "tenant":
            return self.tenant_ids
        if name == "kind":
            return (kind_name(self.kind),)
        if name == "severity":
            return (severity_name(self.severity),)
        raise ValueError(f"unknown field {name!r}")


def facts_of(incident: noc_pb2.Incident) -> Facts:
    return Facts(id=incident.id, severity=int(incident.severity), region=incident.region,
                 site_ids=tuple(incident.site_ids), tenant_ids=tuple(incident.tenant_ids),
                 kind=int(incident.kind), state=int(incident.state), suppressed=incident.suppressed)


def kind_name(kind: int) -> str:
    try:
        return noc_pb2.IncidentKind.Name(kind).removeprefix("INCIDENT_KIND_")  # type: ignore[arg-type]
    except ValueError:
        return str(kind)


def severity_name(severity: int) -> str:
    try:
        return noc_pb2.IncidentSeverity.Name(severity).removeprefix("INCIDENT_SEVERITY_")  # type: ignore[arg-type]
    except ValueError:
        return str(severity)


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Rule:
    """A routing rule (Route) as the notifier applies it."""

    id: str
    position: int = 0
    min_severity: int = 0
    regions: tuple[str, ...] = ()
    tenant_ids: tuple[str, ...] = ()
    site_ids: tuple[str, ...] = ()
    kinds: tuple[int, ...] = ()
    continue_matching: bool = False
    channel_ids: tuple[str, ...] = ()
    policy_id: str = ""
    group_by: tuple[str, ...] = ()
    group_wait_s: float = 0.0
    group_interval_s: float = DEFAULT_GROUP_INTERVAL_S
    repeat_interval_s: float = DEFAULT_REPEAT_INTERVAL_S
    send_resolved: bool = False
    created: float = 0.0


def matches(rule: Rule, inc: Facts) -> bool:
    """Every condition set on the rule holds (an empty list matches anything)."""
    if rule.min_severity and inc.severity < rule.min_severity:
        return False
    if rule.regions and inc.region not in rule.regions:
        return False
    if rule.tenant_ids and not set(rule.tenant_ids) & set(inc.tenant_ids):
        return False
    if rule.site_ids and not set(rule.site_ids) & set(inc.site_ids):
        return False
    return not (rule.kinds and inc.kind not in rule.kinds)


def route(rules: Iterable[Rule], inc: Facts) -> list[Rule]:
    """The rules that take the incident: in (position, creation) order, the first that matches,
    and after it the next matching ones for as long as the matched rule says continue_matching."""
    out: list[Rule] = []
    for rule in sorted(rules, key=lambda r: (r.position, r.created, r.id)):
        if matches(rule, inc):
            out.append(rule)
            if not rule.continue_matching:
                break
    return out


def group_key(rule: Rule, inc: Facts) -> str:
    """The group the incident joins under `rule`: equal group_by values, one group. No group_by:
    one group per incident."""
    fields = rule.group_by or ("incident",)
    parts = [f"{name}={','.join(sorted(inc.values(name)))}" for name in sorted(set(fields))]
    return ";".join(parts)


# --------------------------------------------------------------------------- grouping


@dataclass(frozen=True)
class GroupTimes:
    """A group's timers (Alertmanager): `created` when its first incident arrived; `flushed` the
    last time it was evaluated for sending; `sent` the last time it notified; `changed` whether
    incidents joined or resolved since it last notified; `firing` whether any of its incidents
    is still firing."""

    created: float
    flushed: float | None = None
    sent: float | None = None
    changed: bool = True
    firing: bool = True


def next_flush(g: GroupTimes, rule: Rule) -> float | None:
    """When the group is next evaluated, or None when it has nothing left to say.

    - a new group waits group_wait after its first incident (to collect more);
    - a group that notified and then changed waits until group_interval after its last
      evaluation;
    - an unchanged group with incidents still firing is re-sent repeat_interval after its last
      notification;
    - otherwise (everything resolved and told) it is done."""
    if g.flushed is None:
        return g.created + rule.group_wait_s
    if g.changed:
        return g.flushed + rule.group_interval_s
    if g.firing and g.sent is not None:
        return g.sent + rule.repeat_interval_s
    return None


def should_send(g: GroupTimes, rule: Rule, now: float) -> bool:
    """At an evaluation: send when the group changed, or when it still fires and repeat_interval
    has passed since it last notified."""
    if g.changed:
        return True
    return g.firing and g.sent is not None and now >= g.sent + rule.repeat_interval_s


def after_flush(g: GroupTimes, *, sent: bool, now: float, firing: bool) -> GroupTimes:
    return GroupTimes(created=g.created, flushed=now, sent=now if sent else g.sent, changed=False, firing=firing)


def after_change(g: GroupTimes, *, firing: bool) -> GroupTimes:
    """An incident joined the group or resolved."""
    return GroupTimes(created=g.created, flushed=g.flushed, sent=g.sent, changed=True, firing=firing)


# --------------------------------------------------------------------------- escalation


@dataclass(frozen=True)
class Step:
    channel_ids: tuple[str, ...]
    schedule_id: str
    escalate_after_s: float


@dataclass(frozen=True)
class Policy:
    id: str
    steps: tuple[Step, ...]
    repeat: int = 0


@dataclass(frozen=True)
class Escalation:
    """Where an incident's escalation is: the next step to run (0-based) in round `round`, due at
    `due`. None from `advance` means the policy is exhausted."""

    step: int
    round: int
    due: float


def advance(policy: Policy, esc: Escalation, now: float) -> Escalation | None:
    """After running `esc.step` at `now`: the next step, due when the step's delay has passed
    without an acknowledgement; after the last step the policy starts over `repeat` times."""
    if not policy.steps:
        return None
    delay = policy.steps[min(esc.step, len(policy.steps) - 1)].escalate_after_s
    nxt, rnd = esc.step + 1, esc.round
    if nxt >= len(policy.steps):
        nxt, rnd = 0, rnd + 1
        if rnd > policy.repeat:
            return None
    return Escalation(step=nxt, round=rnd, due=now + delay)


# --------------------------------------------------------------------------- silences


@dataclass(frozen=True)
class MatcherSpec:
    name: str
    value: str
    operator: int = 1  # MatchOperator: 0/1 equal, 2 not equal, 3 regex, 4 not regex


@dataclass(frozen=True)
class SilenceSpec:
    id: str
    matchers: tuple[MatcherSpec, ...]
    start: float
    end: float


def _matcher_holds(m: MatcherSpec, inc: Facts) -> bool:
    values = inc.values(m.name)
    if m.operator in (0, 1):
        return m.value in values
    if m.operator == 2:
        return m.value not in values
    pattern = re.compile(f"(?:{m.value})\\Z")
    hit = any(pattern.match(v) for v in values)
    return hit if m.operator == 3 else not hit


def silenced_by(silences: Iterable[SilenceSpec], inc: Facts, now: float) -> str | None:
    """The id of an active silence all of whose matchers hold for the incident, or None."""
    for s in silences:
        if s.start <= now < s.end and s.matchers and all(_matcher_holds(m, inc) for m in s.matchers):
            return s.id
    return None


def check_regex(value: str) -> str | None:
    """The problem with a matcher's regular expression, or None."""
    try:
        re.compile(value)
    except re.error as exc:
        return f"is not a regular expression: {exc}"
    return None


# --------------------------------------------------------------------------- payloads


def scoped(incidents: Sequence[noc_pb2.Incident], tenant: str) -> list[noc_pb2.Incident]:
    """What a channel may receive: every incident for an internal channel (tenant ""), only the
    tenant's incidents, scoped to it, for a tenant's channel."""
    if not tenant:
        return list(incidents)
    out = []
    for inc in incidents:
        s = incident_for_tenant(inc, tenant)
        if s is not None:
            out.append(s)
    return out


def incident_json(inc: noc_pb2.Incident) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(inc, preserving_proto_field_name=True)
    out.pop("timeline", None)
    return out


def summary(kind: int, incidents: Sequence[noc_pb2.Incident], *, step: int = 0, message: str = "") -> str:
    """The one line of a notification: its email subject."""
    if kind == KIND_TEST:
        return f"[TEST] Towerco notification test{': ' + message if message else ''}"
    label = {KIND_FIRING: "FIRING", KIND_RESOLVED: "RESOLVED", KIND_ESCALATION: f"ESCALATION step {step}",
             KIND_ESCALATION_STOPPED: "ESCALATION STOPPED"}.get(kind, "NOTICE")
    if kind == KIND_ESCALATION_STOPPED and incidents and incidents[0].state in STOPPING_STATES:
        # say why (an open one was stopped by its suppression: no reason to add)
        label += ": " + noc_pb2.IncidentState.Name(incidents[0].state).removeprefix("INCIDENT_STATE_")
    if not incidents:
        return f"[{label}] no incidents"
    first = incidents[0]
    more = f" (+{len(incidents) - 1} more)" if len(incidents) > 1 else ""
    return f"[{label}] {severity_name(first.severity)} {first.title or first.id}{more}"


def webhook_body(*, notification_id: str, kind: int, channel_id: str, tenant_id: str, route_id: str,
                 group_key: str, incidents: Sequence[noc_pb2.Incident], created: str, step: int = 0,
                 round_: int = 0, message: str = "") -> dict[str, Any]:
    """The JSON body of a notification (docs/notifications.md): the same for webhook and email."""
    body: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "notification_id": notification_id,
        "kind": KIND_NAMES.get(kind, "unknown"),
        "status": "resolved" if kind in (KIND_RESOLVED, KIND_ESCALATION_STOPPED) else "firing",
        "summary": summary(kind, incidents, step=step, message=message),
        "channel_id": channel_id,
        "tenant_id": tenant_id,
        "route_id": route_id,
        "group_key": group_key,
        "created_at": created,
        "incidents": [incident_json(i) for i in incidents],
    }
    if kind in (KIND_ESCALATION, KIND_ESCALATION_STOPPED):
        body["escalation"] = {"step": step, "round": round_}
    if message:
        body["message"] = message
    return body


def encode_body(body: dict[str, Any]) -> bytes:
    """Canonical bytes of a body (what is signed and sent)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Towerco-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver does: the header parses, its time is within `tolerance_s` of `now`, and one
    v1 signature equals the HMAC of this body (compared in constant time)."""
    try:
        parts = [p.split("=", 1) for p in header.split(",")]
        ts_values = [v for k, v in parts if k.strip() == "t"]
        sigs = [v for k, v in parts if k.strip() == "v1"]
        ts = int(ts_values[0])
    except (ValueError, IndexError):
        return False
    if abs(now - ts) > tolerance_s:
        return False
    want = sign(secret, ts, body).split("v1=", 1)[1]
    return any(hmac.compare_digest(want, s) for s in sigs)


# --------------------------------------------------------------------------- delivery


def retryable(code: int) -> bool:
    """A webhook answer worth retrying: no answer (0), 408, 425, 429 and 5xx. Other 4xx are
    permanent refusals (dead at once)."""
    return code == 0 or code in (408, 425, 429) or code >= 500


def retry_delay(attempt: int, *, base_s: float, cap_s: float,
                rand: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff with jitter after failed attempt `attempt` (1-based): half of
    min(cap, base × 2^(attempt-1)) plus a random part up to the other half."""
    d = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return float(d / 2 + rand(0.0, d / 2))
