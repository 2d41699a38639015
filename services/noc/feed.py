"""WatchIncidents: the lossless live incident feed, read straight from JetStream.

    feed = IncidentFeed(rt.nc)                        # server.py, once per process
    def WatchIncidents(self, request, context):       # servicer.py, one line
        return self.feed.watch(request, current_identity())

`IncidentFeed.watch(request, identity)` is an async iterator of WatchIncidentsResponse. Each call
gets its own ephemeral, memory-backed push consumer on the EVENTS stream, filtered on
`towerco.noc.incident.>` (mesh.subjects.NOC_INCIDENT_EVENTS), with no acks, flow control and idle
heartbeats; it is deleted when the call ends (client cancellation included) and, should the
process die first, removed by the server after `inactive_threshold_s` without interest.

The cursor
----------
`sequence` in each response is the message's JetStream **stream sequence** on EVENTS, and
`after_sequence` resumes after it. The stream assigns it once, when the NOC's outbox relay
publishes the event (Nats-Msg-Id = event id, so a relay republishing after a crash inside the
duplicate window is stored once and gets no second sequence); it is strictly increasing and never
reused, and a stored message never changes. So "every message on the filter subject with a
sequence > cursor, in sequence order" is exactly the set the client has not seen yet:

* no gap: a consumer started at cursor+1 delivers every matching stored message from there, in
  order; each one we receive moves the cursor, and after any trouble the consumer is recreated at
  cursor+1 (see below), so nothing between is skipped;
* no duplicate: the client only ever asks for sequences above the last one it got, and one
  sequence is one stored message;
* it survives restarts of the NOC process and the gateway, because the position lives in the
  client and the messages in the stream (file storage), not in either process.

Messages the caller may not see (scope_incident) or that fail the request's filters are not sent.
They still advance the consumer; the client's cursor stays the last sequence it received, which
remains valid: resuming from it skips the unsent ones again.

Where the stream starts
-----------------------
* `after_sequence = N > 0`: after N. N beyond the stream's last sequence (the stream was
  recreated) or N + 1 older than the first message still kept (EVENTS keeps 30 days) answers
  OUT_OF_RANGE with reason CURSOR_AHEAD / CURSOR_EXPIRED: changes may have been lost, so the
  client must re-list (ListIncidents) and then watch with `live_only` or the new cursor. A
  message removed by the retention limits while a slow reader was still replaying is detected the
  same way (the stream's first sequence passed the cursor) and ends the call with CURSOR_EXPIRED.
  Silent loss is never an outcome.
* `after_sequence = 0`: every change still kept, then live.
* `live_only`: from the stream's end at the time of the call (after_sequence must be 0, else
  INVALID_ARGUMENT).

Trouble
-------
The consumer is recreated at cursor+1 when a delivery is missing (consumer sequence gap, e.g. a
NATS reconnect dropped pushed messages), when neither a message nor a heartbeat came for
`stale_after` heartbeats (the server restarted and lost the memory consumer), or when NATS calls
fail; while NATS stays unreachable it retries with backoff, and after `outage_s` the call ends
with UNAVAILABLE (retry info) so the client reconnects with its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from prometheus_client import Counter, Gauge
from towerco.noc.v1 import noc_pb2

from mesh import events
from mesh.auth import Identity, can_see
from mesh.errors import FieldViolation, InvalidArgument, OutOfRange, PermissionDenied, Unavailable
from mesh.observability import get_logger
from mesh.subjects import NOC_INCIDENT_EVENTS
from services.noc.scope import scope_incident

log = get_logger("towerco.noc.feed")

READ_ROLES = ("viewer", "tenant_viewer")
CURSOR_EXPIRED = "CURSOR_EXPIRED"
CURSOR_AHEAD = "CURSOR_AHEAD"
AGE_MARGIN_S = 120.0  # how close to max_age a message must be before removal by age is checked

WATCHERS = Gauge("towerco_noc_feed_watchers", "Open WatchIncidents calls")
SENT = Counter("towerco_noc_feed_messages_total", "Incident changes read by WatchIncidents calls, by outcome "
               "(sent, filtered, undecodable)", ["outcome"])
RESETS = Counter("towerco_noc_feed_consumer_resets_total", "WatchIncidents consumers recreated at the cursor, "
                 "by reason (gap, stale, error)", ["reason"])


class _Reset(Exception):
    """Recreate the consumer at cursor + 1 (reason: gap, stale, error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Head:
    """What the stream keeps: first and last sequence, and the limits that remove messages."""

    first: int
    last: int
    max_age_s: float
    other_limits: bool  # max_msgs / max_bytes / per-subject limits also remove messages


def request_problems(request: noc_pb2.WatchIncidentsRequest) -> list[FieldViolation]:
    """The request's field violations (the validation interceptor checks the field rules too;
    these are the ones it cannot express, plus its own rules for direct callers)."""
    out: list[FieldViolation] = []
    if request.after_sequence < 0:
        out.append(FieldViolation("after_sequence", "must be >= 0"))
    if request.live_only and request.after_sequence:
        out.append(FieldViolation("live_only", "live_only starts at the stream's end: after_sequence must be 0 "
                                               "(resume with after_sequence alone)"))
    enums = (("min_severity", noc_pb2.IncidentSeverity), ("state", noc_pb2.IncidentState))
    for name, enum in enums:
        value = getattr(request, name)
        if value not in enum.values():
            out.append(FieldViolation(name, f"unknown value {value}"))
    for name, limit in (("region", 64), ("site_id", 32), ("tenant_id", 32)):
        if len(getattr(request, name)) > limit:
            out.append(FieldViolation(name, f"at most {limit} characters"))
    return out


def matches(request: noc_pb2.WatchIncidentsRequest, incident: noc_pb2.Incident) -> bool:
    """The request's filters on the incident as it is after the change (before scoping)."""
    if request.min_severity and incident.severity < request.min_severity:
        return False
    if request.region and incident.region != request.region:
        return False
    if request.site_id and request.site_id not in incident.site_ids:
        return False
    if request.tenant_id and request.tenant_id not in incident.tenant_ids:
        return False
    return not (request.state and incident.state != request.state)


def response_for(sequence: int, event: noc_pb2.IncidentEvent, request: noc_pb2.WatchIncidentsRequest,
                 identity: Identity) -> noc_pb2.WatchIncidentsResponse | None:
    """The message a caller gets for one stored change, or None when it gets none (filters,
    visibility). A tenant viewer naming another tenant in `tenant_id` gets nothing, as a list
    filtered on another tenant is an empty page."""
    incident = event.incident
    if request.tenant_id and not can_see(identity, [request.tenant_id]):
        return None
    if not matches(request, incident):
        return None
    scoped = scope_incident(incident, identity)
    if scoped is None:
        return None
    out = noc_pb2.WatchIncidentsResponse(sequence=sequence, change=event.change, entry=event.entry)
    out.incident.CopyFrom(scoped)
    del out.incident.timeline[:]
    return out


class IncidentFeed:
    """WatchIncidents over JetStream (module doc: cursor, start, trouble).

    nc: the process's NATS connection (mesh.events.connect: it reconnects by itself).
    heartbeat_s: the consumer's idle heartbeat; `stale_after` heartbeats without anything mean
    the consumer is gone. outage_s: how long NATS may stay unreachable before the call ends with
    UNAVAILABLE. inactive_threshold_s: the server removes a consumer nobody listens to after
    this (a process killed with its calls open leaks nothing for longer).
    """

    def __init__(self, nc: Client, *, stream: str = events.EVENTS_STREAM, subject: str = NOC_INCIDENT_EVENTS,
                 heartbeat_s: float = 2.0, stale_after: float = 3.0, outage_s: float = 60.0,
                 inactive_threshold_s: float = 30.0, api_timeout_s: float = 5.0) -> None:
        if heartbeat_s <= 0 or stale_after < 2 or outage_s <= 0 or inactive_threshold_s <= 0:
            raise ValueError("heartbeat_s, outage_s and inactive_threshold_s must be > 0, stale_after >= 2")
        self.nc = nc
        self.js = nc.jetstream(timeout=api_timeout_s)
        self.stream = stream
        self.subject = subject
        self.heartbeat_s = heartbeat_s
        self.stale_s = heartbeat_s * stale_after
        self.outage_s = outage_s
        self.inactive_threshold_s = inactive_threshold_s
        self.api_timeout_s = api_timeout_s

    def watch(self, request: noc_pb2.WatchIncidentsRequest, identity: Identity
              ) -> AsyncIterator[noc_pb2.WatchIncidentsResponse]:
        """The caller's feed: every change it may see that passes the filters, in stream order,
        each with its stream sequence, until the caller cancels. Raises PermissionDenied (not a
        reader) or InvalidArgument (bad request) at once; the iterator raises OutOfRange (cursor
        outside what the stream keeps) or Unavailable (NATS unreachable at the start, or for
        outage_s later)."""
        if not identity.has_role(*READ_ROLES):
            raise PermissionDenied(f"requires role {' or '.join(READ_ROLES)}")
        problems = request_problems(request)
        if problems:
            raise InvalidArgument("invalid WatchIncidents request", problems)
        return _Watch(self, request, identity).run()


class _Watch:
    """One WatchIncidents call: its consumer, its cursor."""

    def __init__(self, feed: IncidentFeed, request: noc_pb2.WatchIncidentsRequest, identity: Identity) -> None:
        self.feed = feed
        self.request = request
        self.identity = identity
        self.cursor = request.after_sequence  # the last stream sequence read (sent or not)
        self.cursor_time: float | None = None  # its stored time (epoch seconds), once one was read
        self.consumer_seq = 0  # the consumer's last delivery sequence
        self.sub: Subscription | None = None
        self.consumer = ""
        self.head: _Head | None = None

    async def run(self) -> AsyncIterator[noc_pb2.WatchIncidentsResponse]:
        WATCHERS.inc()
        try:
            try:
                head = await self._head()
                if self.request.live_only:
                    self.cursor = head.last
                else:
                    self._check_cursor(head)
                await self._open(check=True)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                raise Unavailable("event stream unreachable, retry shortly", retry_after_s=1) from exc
            down_since: float | None = None
            delay = 0.2
            while True:
                try:
                    if self.sub is None:
                        await self._open(check=True)
                    msg = await self._next()
                    down_since, delay = None, 0.2
                except _Reset as reset:
                    RESETS.labels(reset.reason).inc()
                    log.info("noc.feed.reset", reason=reset.reason, cursor=self.cursor, consumer=self.consumer)
                    await self._close()
                    continue
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    if self.feed.nc.is_closed:  # the process is shutting down: nothing to wait for
                        raise Unavailable(f"shutting down; resume with after_sequence={self.cursor}",
                                          retry_after_s=1) from exc
                    now = time.monotonic()
                    down_since = down_since or now
                    if now - down_since > self.feed.outage_s:
                        raise Unavailable(f"event stream unreachable; resume with after_sequence={self.cursor}",
                                          retry_after_s=5) from exc
                    RESETS.labels("error").inc()
                    log.warning("noc.feed.nats_error", error=type(exc).__name__, cursor=self.cursor,
                                retry_in_s=round(delay, 2))
                    await self._close()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if msg is None:
                    continue
                out = self._decode(msg)
                if out is not None:
                    SENT.labels("sent").inc()
                    yield out
        finally:
            WATCHERS.dec()
            await self._close()

    # ------------------------------------------------------------------ the stream's head

    async def _head(self) -> _Head:
        info = await self.feed.js.stream_info(self.feed.stream)
        cfg, state = info.config, info.state
        limits = any((getattr(cfg, f, None) or -1) > 0 for f in ("max_msgs", "max_bytes", "max_msgs_per_subject"))
        self.head = _Head(first=state.first_seq, last=state.last_seq, max_age_s=float(cfg.max_age or 0),
                          other_limits=limits)
        return self.head

    def _check_cursor(self, head: _Head) -> None:
        """OUT_OF_RANGE when the cursor is not a position of this stream with everything after it
        still kept."""
        cursor = self.cursor
        if cursor == 0:
            return
        if cursor > head.last:
            raise OutOfRange(f"after_sequence {cursor} is beyond the stream's last sequence {head.last} "
                             "(the event stream was reset): re-list the incidents, then watch with live_only",
                             reason=CURSOR_AHEAD)
        if cursor + 1 < head.first:
            raise OutOfRange(f"after_sequence {cursor} is older than what the event stream keeps "
                             f"(first kept sequence {head.first}): changes may have been missed; re-list the "
                             "incidents, then watch with live_only", reason=CURSOR_EXPIRED)

    def _may_have_removed(self) -> bool:
        """Could the retention limits have removed messages just after the cursor? Only by age
        (the platform's setting) once the cursor's message is close to max_age, or any time when
        the stream also has count/size limits."""
        head = self.head
        if head is None or head.other_limits or self.cursor_time is None:
            return True
        if head.max_age_s <= 0:
            return False
        return time.time() - self.cursor_time > head.max_age_s - AGE_MARGIN_S

    # ------------------------------------------------------------------ the consumer

    async def _open(self, *, check: bool) -> None:
        """A consumer delivering from cursor + 1 (the first kept message when the cursor is 0)."""
        feed = self.feed
        name = f"noc-feed-{uuid.uuid4().hex}"
        inbox = feed.nc.new_inbox()
        sub = await feed.nc.subscribe(inbox)
        try:
            cfg = api.ConsumerConfig(
                name=name, description="WatchIncidents (ephemeral)",
                deliver_subject=inbox, filter_subject=feed.subject,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.cursor + 1,
                ack_policy=api.AckPolicy.NONE, max_deliver=1, flow_control=True,
                idle_heartbeat=feed.heartbeat_s, inactive_threshold=feed.inactive_threshold_s,
                mem_storage=True, num_replicas=1, replay_policy=api.ReplayPolicy.INSTANT,
            )
            await feed.js.add_consumer(feed.stream, config=cfg)
        except BaseException:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            raise
        self.sub, self.consumer, self.consumer_seq = sub, name, 0
        if check and self.cursor > 0:
            # the consumer starts where the stream is now; if retention passed the cursor in the
            # meantime, the messages between were never going to be delivered
            self._check_cursor(await self._head())

    async def _close(self) -> None:
        sub, name = self.sub, self.consumer
        self.sub, self.consumer = None, ""
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if name:
            # shielded: a cancelled call still removes its consumer
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._delete(name))

    async def _delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.feed.js.delete_consumer(self.feed.stream, name), self.feed.api_timeout_s)

    async def _next(self) -> Msg | None:
        """The next data message; None after a control message. _Reset when the consumer must be
        recreated."""
        assert self.sub is not None
        try:
            msg = await self.sub.next_msg(timeout=self.feed.stale_s)
        except nats.errors.TimeoutError:
            raise _Reset("stale") from None
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS)
        if status:
            if status == "100":
                if msg.reply:  # flow control request: we have read everything before it
                    await self.feed.nc.publish(msg.reply)
                stalled = headers.get(api.Header.CONSUMER_STALLED)
                if stalled:
                    await self.feed.nc.publish(stalled)
                last = headers.get(api.Header.LAST_CONSUMER)
                if last is not None and int(last) != self.consumer_seq:
                    raise _Reset("gap")  # the server delivered messages we never got
                return None
            raise _Reset("error")  # e.g. 409 consumer deleted
        meta = msg.metadata
        if meta.sequence.consumer != self.consumer_seq + 1:
            raise _Reset("gap")
        stream_seq = meta.sequence.stream
        if stream_seq > self.cursor + 1 and self._may_have_removed():
            # messages between the cursor and this one were skipped: by the filter, or removed by
            # retention before we read them; only the second is loss
            self._check_cursor(await self._head())
        self.consumer_seq = meta.sequence.consumer
        self.cursor = stream_seq
        self.cursor_time = meta.timestamp.timestamp() if meta.timestamp else None
        return msg

    def _decode(self, msg: Msg) -> noc_pb2.WatchIncidentsResponse | None:
        sequence = self.cursor
        try:
            envelope = events.Envelope.FromString(msg.data)
            event = events.unpack(envelope, noc_pb2.IncidentEvent)
        except Exception as exc:  # noqa: BLE001 - a message nobody can show must not end the feed
            SENT.labels("undecodable").inc()
            log.error("noc.feed.undecodable", sequence=sequence, subject=msg.subject, error=str(exc)[:200])
            return None
        out = response_for(sequence, event, self.request, self.identity)
        if out is None:
            SENT.labels("filtered").inc()
        return out
