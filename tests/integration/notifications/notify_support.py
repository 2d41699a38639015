"""Helpers of the notifications tests: incident events published as the NOC publishes them (an
Envelope with a towerco.noc.v1.IncidentEvent on towerco.noc.incident.<change>, Nats-Msg-Id = its
id), a running notifier, the service's stub with tokens, polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from towerco.noc.v1 import noc_pb2

from mesh import events, subjects
from workers.notifier.consumer import Notifier, NotifierConfig

T = TypeVar("T")
CHANGES = {noc_pb2.INCIDENT_CHANGE_OPENED: "opened", noc_pb2.INCIDENT_CHANGE_UPDATED: "updated",
           noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED: "acknowledged", noc_pb2.INCIDENT_CHANGE_RESOLVED: "resolved",
           noc_pb2.INCIDENT_CHANGE_CLOSED: "closed", noc_pb2.INCIDENT_CHANGE_REOPENED: "reopened"}
STATE_OF = {noc_pb2.INCIDENT_CHANGE_OPENED: noc_pb2.INCIDENT_STATE_OPEN,
            noc_pb2.INCIDENT_CHANGE_UPDATED: None,
            noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED: noc_pb2.INCIDENT_STATE_ACKNOWLEDGED,
            noc_pb2.INCIDENT_CHANGE_RESOLVED: noc_pb2.INCIDENT_STATE_RESOLVED,
            noc_pb2.INCIDENT_CHANGE_CLOSED: noc_pb2.INCIDENT_STATE_CLOSED,
            noc_pb2.INCIDENT_CHANGE_REOPENED: noc_pb2.INCIDENT_STATE_OPEN}


def incident(*, region: str, site: str = "TWR-0001", tenants: tuple[str, ...] = ("acme",),
             severity: int = noc_pb2.INCIDENT_SEVERITY_MAJOR, kind: int = noc_pb2.INCIDENT_KIND_POWER,
             suppressed: bool = False, incident_id: str | None = None) -> noc_pb2.Incident:
    inc = noc_pb2.Incident(id=incident_id or str(uuid.uuid4()), title=f"{site}: mains failure", kind=kind,
                           severity=severity, state=noc_pb2.INCIDENT_STATE_OPEN, site_ids=[site], region=region,
                           tenant_ids=list(tenants), suppressed=suppressed,
                           root_cause=noc_pb2.RootCause(code="mains_failure", summary="mains failure"))
    for t in tenants:
        inc.impacts.add(tenant_id=t, tenancy_id=f"ten-{t}-{site}", site_id=site, service_down=True,
                        sla_target_percent=99.5)
    inc.first_seen.GetCurrentTime()
    return inc


async def publish(js, inc: noc_pb2.Incident, change: int = noc_pb2.INCIDENT_CHANGE_OPENED) -> str:
    """Publish one incident change as the NOC does; the incident's state follows the change."""
    state = STATE_OF[change]
    if state is not None:
        inc.state = state
    inc.update_time.FromNanoseconds(time.time_ns())
    subject = subjects.noc_incident_subject(CHANGES[change])
    ev = noc_pb2.IncidentEvent(change=change, incident=inc,
                               entry=noc_pb2.TimelineEntry(actor="correlator", kind=noc_pb2.TIMELINE_KIND_OPENED))
    env = events.make_envelope(event_type=subject, source="noc", subject=subject, payload=ev,
                               tenant_ids=list(inc.tenant_ids))
    await events.publish_envelope(js, env)
    return env.id


async def eventually(fn: Callable[[], Awaitable[T]] | Callable[[], T], check: Callable[[T], bool], *,
                     within: float = 30.0, interval: float = 0.05) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if check(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(interval)


async def dead_letter(js, subject: str, notification_id: str, *, within: float = 30.0):
    """The message on the DLQ stream, subject `subject`, that dead-letters this notification
    (header Towerco-Notification-Id); AssertionError when none arrives in time."""
    sub = await js.subscribe(subject, stream=events.DLQ_STREAM, ordered_consumer=True)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                continue
            if (msg.headers or {}).get("Towerco-Notification-Id") == notification_id:
                return msg
        raise AssertionError(f"no dead letter of notification {notification_id} on {subject} within {within}s")
    finally:
        await sub.unsubscribe()


def fast_config(**kw) -> NotifierConfig:
    base = dict(durable=f"notifier-test-{uuid.uuid4().hex[:8]}", tick_s=0.1, retry_base_s=0.05, retry_max_s=0.3,
                max_attempts=5, timeout_s=5.0, lease_s=3.0, batch=50)
    base.update(kw)
    return NotifierConfig(**base)


@contextlib.asynccontextmanager
async def running_notifier(pool, js, cfg: NotifierConfig, database_url: str | None = None):
    n = Notifier(pool, js, config=cfg, database_url=database_url)
    task = asyncio.create_task(n.run())
    try:
        yield n
    finally:
        await n.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            await js.delete_consumer(events.EVENTS_STREAM, cfg.durable)
