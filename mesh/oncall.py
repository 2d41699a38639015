"""Who is on call: the one rule of the notifications domain, used by the notifier (escalation
steps that page a schedule) and the Notifications service (GetOnCall). Pure; times are epoch
seconds. A schedule is rotations layered in order (a later rotation, once started, is over the
earlier ones) plus overrides (the latest added that covers the time wins)."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from towerco.notifications.v1 import notifications_pb2 as npb


@dataclass(frozen=True)
class Member:
    name: str
    channel_id: str = ""


@dataclass(frozen=True)
class RotationSpec:
    members: tuple[Member, ...]
    start: float
    shift_s: float
    name: str = ""


@dataclass(frozen=True)
class OverrideSpec:
    member: Member
    start: float
    end: float


@dataclass(frozen=True)
class OnCall:
    member: Member
    source: str
    start: float
    end: float


@dataclass(frozen=True)
class ScheduleSpec:
    rotations: tuple[RotationSpec, ...]
    overrides: tuple[OverrideSpec, ...] = field(default_factory=tuple)


def on_call(schedule: ScheduleSpec, at: float) -> OnCall | None:
    """Who is on call at `at`: the latest added override covering it, else the highest rotation
    that has started (a later rotation is a layer over earlier ones), whose members take turns
    from its start, one shift each (hand-over at start + k × shift). None when nobody is."""
    for o in reversed(schedule.overrides):
        if o.start <= at < o.end:
            return OnCall(o.member, "override", o.start, o.end)
    for i in range(len(schedule.rotations) - 1, -1, -1):
        r = schedule.rotations[i]
        if not r.members or r.shift_s <= 0 or at < r.start:
            continue
        k = int((at - r.start) // r.shift_s)
        start = r.start + k * r.shift_s
        return OnCall(r.members[k % len(r.members)], r.name or f"rotation {i + 1}", start, start + r.shift_s)
    return None


def schedule_spec(s: npb.Schedule) -> ScheduleSpec:
    """The rule's view of a stored Schedule."""

    def sec(ts: Timestamp) -> float:
        return float(ts.ToNanoseconds()) / 1e9

    return ScheduleSpec(
        rotations=tuple(RotationSpec(tuple(Member(m.name, m.channel_id) for m in r.members),
                                     sec(r.start_time), float(r.shift_seconds), r.name) for r in s.rotations),
        overrides=tuple(OverrideSpec(Member(o.member.name, o.member.channel_id), sec(o.start_time),
                                     sec(o.end_time)) for o in s.overrides))
