"""Helpers of the live-feed tests: IncidentEvent envelopes published on a real JetStream, and
reading a feed with deadlines (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

from towerco.noc.v1 import noc_pb2

from mesh import events
from mesh.auth import Identity
from mesh.subjects import noc_incident_subject

STAFF = Identity("ops@towerco", "*", frozenset({"viewer"}))
OPERATOR = Identity("op@towerco", "*", frozenset({"noc_operator"}))

_CHANGE_NAMES = {v: k.removeprefix("INCIDENT_CHANGE_").lower()
                 for k, v in noc_pb2.IncidentChange.items() if v}


def tenant_viewer(tenant: str) -> Identity:
    return Identity(f"viewer@{tenant.lower()}", tenant, frozenset({"tenant_viewer"}))


def incident_event(*, incident_id: str | None = None, change: int = noc_pb2.INCIDENT_CHANGE_OPENED,
                   site: str = "TWR-0001", region: str = "north", tenants: Sequence[str] = ("TEN-A",),
                   severity: int = noc_pb2.INCIDENT_SEVERITY_MAJOR,
                   state: int = noc_pb2.INCIDENT_STATE_OPEN, title: str = "") -> noc_pb2.IncidentEvent:
    """An IncidentEvent as the NOC publishes it: the whole incident, every tenant's impact."""
    inc = noc_pb2.Incident(id=incident_id or str(uuid.uuid4()), title=title or f"{site}: mains failure",
                           kind=noc_pb2.INCIDENT_KIND_POWER, severity=severity, state=state,
                           site_ids=[site], region=region, tenant_ids=list(tenants), alarm_count=1)
    for i, t in enumerate(tenants):
        inc.impacts.add(tenant_id=t, tenancy_id=f"{t}-{site}-{i}", site_id=site, service_down=True,
                        sla_target_percent=99.5)
    inc.root_cause.code = "mains_failure"
    inc.timeline.add(actor="correlator", kind=noc_pb2.TIMELINE_KIND_OPENED, text="in the event by mistake")
    ev = noc_pb2.IncidentEvent(change=change)
    ev.incident.CopyFrom(inc)
    ev.entry.actor = "correlator"
    ev.entry.kind = noc_pb2.TIMELINE_KIND_OPENED
    ev.entry.text = "opened"
    return ev


async def publish_incident(js, event: noc_pb2.IncidentEvent) -> int:
    """Publish one IncidentEvent envelope as the NOC's outbox relay does; its stream sequence."""
    subject = noc_incident_subject(_CHANGE_NAMES[event.change])
    env = events.make_envelope(event_type=subject, source="noc", subject=subject, payload=event,
                               tenant_ids=list(event.incident.tenant_ids))
    ack = await events.publish_envelope(js, env)
    return int(ack.seq)


async def publish_other(js, n: int = 1) -> list[int]:
    """Events of another domain on the same EVENTS stream (the feed must skip them)."""
    from towerco.common.v1 import common_pb2

    out = []
    for _ in range(n):
        env = events.make_envelope(event_type="towerco.aiops.anomaly.detected", source="aiops",
                                   subject="towerco.aiops.anomaly.detected", payload=common_pb2.PageRequest())
        out.append(int((await events.publish_envelope(js, env)).seq))
    return out


async def take(feed: AsyncIterator[noc_pb2.WatchIncidentsResponse], n: int, *, timeout: float = 20.0  # noqa: ASYNC109
               ) -> list[noc_pb2.WatchIncidentsResponse]:
    """The next `n` messages of a feed (TimeoutError when they do not come in `timeout`)."""
    out: list[noc_pb2.WatchIncidentsResponse] = []

    async def read() -> None:
        while len(out) < n:
            out.append(await anext(feed))

    await asyncio.wait_for(read(), timeout)
    return out


async def nothing_more(feed: AsyncIterator[noc_pb2.WatchIncidentsResponse], *, within: float = 1.5) -> None:
    """Assert the feed sends nothing more for `within` seconds (used after a marker proved the
    feed is caught up, so the wait is not what the assertion depends on)."""
    try:
        extra = await asyncio.wait_for(anext(feed), within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {extra.sequence} {extra.incident.id}")


async def consumers(js, stream: str = events.EVENTS_STREAM) -> list[str]:
    info = await js.stream_info(stream)
    if not info.state.consumer_count:
        return []
    return [c.name for c in await js.consumers_info(stream)]


async def eventually(predicate, *, timeout: float = 30.0, every: float = 0.1, what: str = "condition"):  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)
