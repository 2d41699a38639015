"""NATS JetStream for server processes: connection, streams, envelopes, publishing, consumers, DLQ.

Streams (created or updated idempotently by `ensure_streams`):

    TELEMETRY  telemetry.samples.*   raw sample batches; the token is partition_of(site_id)
                                     (subject names and partitioning: mesh/subjects.py)
    EVENTS     towerco.>             domain events, each wrapped in an Envelope (towerco.events.v1)
    DLQ        dlq.>                 messages a consumer gave up on: dlq.<stream>.<durable>

Every published message carries `Nats-Msg-Id` (the event id), so a republish inside the
2-minute duplicate window is dropped by the server. Trace context (W3C traceparent) and the
correlation id ride in headers (`headers_out` / `context_in`).

`PullConsumer` runs a durable pull consumer with explicit acks. The handler gets a fetched batch;
returning acks it all. An exception:
  * `Poison` -> the message(s) go to the DLQ at once;
  * an infrastructure failure (database or NATS unreachable) -> the batch is kept and retried
    in-process with backoff, with in-progress acks so the server does not redeliver it meanwhile;
    nothing is dead-lettered because a dependency is down;
  * anything else -> a failing multi-message batch is split and retried message by message, so
    one bad message cannot hold back its neighbours; a failing single message is nak'ed with a
    backoff delay, and dead-lettered once it has been delivered `max_deliver` times.
A dead-lettered message is copied to `dlq.<stream>.<durable>` with headers Towerco-Dlq-Reason,
-Stream, -Consumer, -Subject, -Sequence and -Deliveries, then terminated.

Something a worker gave up on that is not a stream message (the notifier's notification that
exhausted its delivery attempts) is dead-lettered the same way through its outbox, with
`dead_letter_headers` (no -Subject/-Sequence: there is no original message to replay) and a
Towerco-Dlq-Kind that says what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf import any_pb2
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from prometheus_client import Counter
from towerco.events.v1 import events_pb2

from mesh import config, db
from mesh.subjects import DLQ_SUBJECTS, EVENTS_SUBJECTS, TELEMETRY_SUBJECTS, dlq_subject

log = logging.getLogger("towerco.events")
# after a pull consumer's first message, how long it waits for more to fill its batch
AVAILABLE_WAIT_S = 0.05
ORDERED_MARGIN_S = 0.25  # past ack_wait: the server's redelivery timer has fired

TELEMETRY_STREAM = "TELEMETRY"
EVENTS_STREAM = "EVENTS"
DLQ_STREAM = "DLQ"
DUPLICATE_WINDOW_S = 120.0
DAY_S = 86400.0

MSG_ID_HEADER = "Nats-Msg-Id"
CORRELATION_HEADER = "Towerco-Correlation-Id"
DLQ_REASON = "Towerco-Dlq-Reason"
DLQ_STREAM_HEADER = "Towerco-Dlq-Stream"
DLQ_CONSUMER = "Towerco-Dlq-Consumer"
DLQ_SUBJECT = "Towerco-Dlq-Subject"
DLQ_SEQUENCE = "Towerco-Dlq-Sequence"
DLQ_DELIVERIES = "Towerco-Dlq-Deliveries"
DLQ_KIND = "Towerco-Dlq-Kind"  # what a dead letter that is not a stream message is, e.g. "notification"
DLQ_REASON_MAX = 1000

Envelope = events_pb2.Envelope

CONSUMER_MESSAGES = Counter(
    "towerco_consumer_messages_total", "Messages finished by a durable consumer, by outcome "
    "(acked, naked, dead_lettered)", ["stream", "durable", "outcome"])
M = TypeVar("M", bound=Message)


# --------------------------------------------------------------------------- connection


def server_list(url: str) -> list[str]:
    """The servers of a NATS_URL: one URL, or a comma list of a cluster's servers."""
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect(url: str, *, name: str, connect_timeout_s: float = 30.0) -> Client:
    """Connect to NATS: `url` is one server or a comma list of a cluster's servers (all of them
    are given to the client, which also learns the cluster's other members from the servers
    and fails over between them in random order). Once connected the client reconnects forever
    (every ~0.5 s) and buffers publishes meanwhile; the first connection is retried for up to
    `connect_timeout_s`."""
    servers = server_list(url)
    if not servers:
        raise ValueError("NATS url is empty (set NATS_URL or start the embedded stack)")

    async def disconnected() -> None:
        log.warning("nats disconnected", extra={"nats_name": name})

    async def reconnected() -> None:
        log.info("nats reconnected", extra={"nats_name": name})

    async def closed() -> None:
        log.info("nats connection closed", extra={"nats_name": name})

    async def error(exc: Exception) -> None:
        # Connection refused while reconnecting is expected during an outage; keep it quiet.
        log.debug("nats error: %s", exc, extra={"nats_name": name})

    # The first connection gets a bounded number of attempts (~every 0.5 s for connect_timeout_s);
    # once connected, reconnection is unlimited (nats-py reads the option at each reconnect).
    attempts = max(1, int(connect_timeout_s / 0.5))
    nc = await nats.connect(
        servers, name=name, max_reconnect_attempts=attempts, reconnect_time_wait=0.5,
        allow_reconnect=True, connect_timeout=2, ping_interval=10, max_outstanding_pings=3,
        disconnected_cb=disconnected, reconnected_cb=reconnected, closed_cb=closed, error_cb=error,
    )
    nc.options["max_reconnect_attempts"] = -1
    return nc


# --------------------------------------------------------------------------- streams


def telemetry_max_age_s() -> float:
    """How long the TELEMETRY stream keeps a batch (TOWERCO_TELEMETRY_STREAM_MAX_AGE_S, mesh.config)."""
    return config.load(config.TelemetrySettings).stream_max_age_s


def stream_replicas() -> int:
    """Replicas of every stream (TOWERCO_NATS_REPLICAS: 1 on one server, 3 on a cluster). The
    consumers inherit their stream's replica count."""
    return config.get_settings().nats_replicas


def stream_configs(replicas: int | None = None) -> list[api.StreamConfig]:
    common: dict[str, Any] = dict(storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
                  discard=api.DiscardPolicy.OLD, duplicate_window=DUPLICATE_WINDOW_S,
                  num_replicas=replicas or stream_replicas())
    return [
        api.StreamConfig(name=TELEMETRY_STREAM, subjects=[TELEMETRY_SUBJECTS],
                         max_age=telemetry_max_age_s(),
                         description="raw telemetry sample batches, by site partition", **common),
        api.StreamConfig(name=EVENTS_STREAM, subjects=[EVENTS_SUBJECTS], max_age=30 * DAY_S,
                         description="domain events (towerco.events.v1.Envelope)", **common),
        api.StreamConfig(name=DLQ_STREAM, subjects=[DLQ_SUBJECTS], max_age=30 * DAY_S,
                         description="dead-lettered messages: dlq.<stream>.<durable>", **common),
    ]


async def ensure_streams(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Create the three streams, or bring an existing one's settings up to date (its replica
    count included: a cluster scales a stream up or down in place). Idempotent and safe to run
    from every process at start-up (a concurrent creator wins, we then update)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    delay = 0.2
    for cfg in stream_configs(replicas):
        while True:
            try:
                await _ensure_stream(js, cfg)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                    nats.js.errors.ServiceUnavailableError) as exc:
                # a cluster electing its leaders, or busy creating replicated streams for many
                # processes starting at once: ask again for up to a minute
                if loop.time() > deadline:
                    raise
                log.info("stream %s not ready (%s); retrying in %.1fs", cfg.name, type(exc).__name__, delay)
                await asyncio.sleep(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, 3.0)


async def _ensure_stream(js: JetStreamContext, cfg: api.StreamConfig) -> None:
    try:
        await js.stream_info(cfg.name or "")
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(cfg)
            return
        except nats.js.errors.BadRequestError:
            pass  # created concurrently by another process: update below
    await js.update_stream(cfg)


# --------------------------------------------------------------------------- envelope


def make_envelope(*, event_type: str, source: str, subject: str, payload: Message,
                  tenant_ids: Sequence[str] = (), sequence: int = 0,
                  event_id: str | None = None, time: datetime | None = None) -> Envelope:
    """A new Envelope: a fresh UUID id (unless given), the current UTC time, `payload` in an Any."""
    env = Envelope(id=event_id or str(uuid.uuid4()), type=event_type, source=source, subject=subject,
                   tenant_ids=list(tenant_ids), sequence=sequence)
    env.time.FromDatetime(time or datetime.now(UTC))
    env.payload.Pack(payload)
    return env


def unpack(envelope: Envelope, message_cls: type[M]) -> M:
    """The envelope's payload as `message_cls`; ValueError when it holds another type."""
    out = message_cls()
    if not envelope.payload.Unpack(out):
        raise ValueError(f"envelope {envelope.id} carries {envelope.payload.type_url!r}, "
                         f"not {message_cls.DESCRIPTOR.full_name}")
    return out


def payload_type(envelope: Envelope) -> str:
    """The full protobuf name of the payload (the part of the type URL after the last '/')."""
    return envelope.payload.type_url.rsplit("/", 1)[-1]


_ = any_pb2  # the Any type is what Envelope.payload is


# --------------------------------------------------------------------------- headers / context


def _sdk_context() -> Any:
    try:
        from sdk import context as sdk_context
    except ImportError:  # sdk not installed alongside: no correlation id propagation
        return None
    return sdk_context


def headers_out(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers for an outgoing message: the current correlation id and the current
    OpenTelemetry trace context (traceparent/tracestate), plus `extra`."""
    headers: dict[str, str] = {}
    ctx = _sdk_context()
    if ctx is not None:
        cid = ctx.current_correlation_id()
        if cid:
            headers[CORRELATION_HEADER] = cid
    try:
        from opentelemetry import propagate

        propagate.inject(headers)
    except Exception:  # noqa: BLE001 - tracing must never break publishing
        pass
    if extra:
        headers.update(extra)
    return headers


@dataclass(frozen=True)
class MessageContext:
    """What an incoming message says about its origin."""

    correlation_id: str | None
    trace_context: Any  # an opentelemetry.context.Context (empty when no traceparent)
    headers: Mapping[str, str]

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Bind the correlation id (sdk.context) and attach the trace context for the block, so
        logs, spans and outgoing calls made while handling the message continue its story."""
        token = None
        otel_context: Any = None
        try:
            from opentelemetry import context as otel_context

            token = otel_context.attach(self.trace_context)
        except Exception:  # noqa: BLE001
            otel_context = None
        sdk_ctx = _sdk_context()
        bind = sdk_ctx.bind(correlation_id=self.correlation_id) if (sdk_ctx and self.correlation_id) \
            else contextlib.nullcontext()
        try:
            with bind:
                yield
        finally:
            if token is not None and otel_context is not None:
                otel_context.detach(token)


def context_in(msg: Msg) -> MessageContext:
    """Extract the correlation id and trace context from a received message's headers."""
    headers = dict(msg.headers or {})
    try:
        from opentelemetry import propagate

        trace_ctx = propagate.extract(headers)
    except Exception:  # noqa: BLE001
        trace_ctx = None
    return MessageContext(headers.get(CORRELATION_HEADER) or None, trace_ctx, headers)


# --------------------------------------------------------------------------- publish


async def publish(js: JetStreamContext, subject: str, data: bytes, *, msg_id: str,
                  headers: Mapping[str, str] | None = None, timeout: float = 5.0,  # noqa: ASYNC109
                  ) -> api.PubAck:
    """Publish to JetStream and wait for the stream's ack. `msg_id` becomes Nats-Msg-Id, so a
    retry of the same message within the duplicate window is stored once (ack.duplicate)."""
    if not msg_id:
        raise ValueError("msg_id is required (it is the idempotency key)")
    hdrs = dict(headers or {})
    hdrs[MSG_ID_HEADER] = msg_id
    return await js.publish(subject, data, timeout=timeout, headers=hdrs)


async def publish_envelope(js: JetStreamContext, envelope: Envelope, *,
                           headers: Mapping[str, str] | None = None,
                           timeout: float = 5.0) -> api.PubAck:  # noqa: ASYNC109
    """Publish an Envelope on its own subject with Nats-Msg-Id = its id."""
    return await publish(js, envelope.subject, envelope.SerializeToString(), msg_id=envelope.id,
                         headers=headers if headers is not None else headers_out(), timeout=timeout)


def dead_letter_headers(reason: str, *, stream: str, consumer: str, deliveries: int,
                        extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Towerco-Dlq-* headers of a dead letter: the reason on one line, trimmed (at most 1000
    characters), the stream and durable consumer it was given up by, and how many deliveries
    (or attempts) were made."""
    headers = dict(extra or {})
    headers.update({
        # NATS keeps no leading or trailing blanks in a header value
        DLQ_REASON: reason.replace("\r", " ").replace("\n", " ").strip()[:DLQ_REASON_MAX],
        DLQ_STREAM_HEADER: stream,
        DLQ_CONSUMER: consumer,
        DLQ_DELIVERIES: str(deliveries),
    })
    return headers


# --------------------------------------------------------------------------- consumers


class Poison(Exception):
    """Raise from a consumer handler for a message that can never succeed: it goes straight to
    the DLQ. With a batch, name the offending messages (`msgs`); the rest are handled again
    without them. Without `msgs`, a batch is retried message by message to find the culprit."""

    def __init__(self, reason: str, msgs: Sequence[Msg] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.msgs = list(msgs)


class Relinquished(Exception):  # noqa: N818 - a state, not an error
    """Raise from a handler when this consumer must give its messages back and stop (e.g. its
    partition's lease moved to another replica: mesh.leases.Fenced): the batch is nak'ed
    without delay and `run()` returns; nothing is dead-lettered."""


def is_transient(exc: BaseException) -> bool:
    """An infrastructure failure worth waiting out rather than a bad message."""
    if isinstance(exc, Poison):
        return False
    if db.is_unavailable(exc):
        return True
    return isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.NoServersError,
                            nats.errors.TimeoutError, nats.errors.StaleConnectionError,
                            nats.errors.ConnectionReconnectingError, nats.errors.NoRespondersError,
                            nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError))


async def ensure_consumer(js: JetStreamContext, *, stream: str, durable: str, filter_subject: str | Sequence[str],
                          ack_wait: float = 30.0, max_deliver: int = -1,
                          backoff: Sequence[float] = (), max_ack_pending: int = 1000) -> api.ConsumerInfo:
    """Create the durable pull consumer, or update it to this configuration. Idempotent.

    `backoff` here is the server's redelivery schedule after *ack timeouts* (it overrides
    ack_wait; the server requires max_deliver > len(backoff)); PullConsumer leaves it empty and
    applies its own delays on nak. `filter_subject` may be several subjects (an existing consumer
    is updated to them)."""
    subjects = [filter_subject] if isinstance(filter_subject, str) else list(filter_subject)
    if not subjects:
        raise ValueError("at least one filter subject is required")
    cfg = api.ConsumerConfig(
        name=durable, durable_name=durable,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
        filter_subjects=subjects if len(subjects) > 1 else None,
        deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait, max_deliver=max_deliver, backoff=list(backoff) or None,
        max_ack_pending=max_ack_pending, replay_policy=api.ReplayPolicy.INSTANT,
    )
    return await js.add_consumer(stream, config=cfg)


Handler = Callable[[list[Msg]], Awaitable[None]]


class PullConsumer:
    """A durable pull consumer that keeps going through NATS restarts (see the module doc).

    handler: `async (msgs) -> None` for each fetched batch (1..batch messages, stream order).
    max_deliver: deliveries after which a failing message is dead-lettered (enforced here; the
    server-side consumer allows unlimited deliveries so it never silently abandons a message).
    backoff: nak delays in seconds by delivery count (the last one repeats).
    ordered: the handler needs each subject's messages in stream order, and the consumer keeps one
    batch in flight (max_ack_pending = batch). Then a batch a killed process held must come back
    before anything newer: when the durable still has messages pending at subscribe time, the
    consumer waits out ack_wait first (the server redelivers expired messages before new ones).
    Without the wait, a holder that had fetched fewer than max_ack_pending left free slots, and
    newer messages went out first (a site's detectors then judged its older samples as late).
    """

    def __init__(self, js: JetStreamContext, *, stream: str, durable: str, filter_subject: str | Sequence[str],
                 handler: Handler, batch: int = 100, ack_wait: float = 30.0, max_deliver: int = 5,
                 backoff: Sequence[float] = (1, 5, 30), fetch_timeout: float = 5.0,
                 max_ack_pending: int = 1000, ordered: bool = False) -> None:
        if batch < 1 or max_deliver < 1 or ack_wait <= 0:
            raise ValueError("batch and max_deliver must be >= 1, ack_wait > 0")
        self.js = js
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.handler = handler
        self.batch = batch
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.backoff = tuple(float(b) for b in backoff) or (1.0,)
        self.fetch_timeout = fetch_timeout
        self.max_ack_pending = max_ack_pending
        self.ordered = ordered
        self.dlq_subject = dlq_subject(stream, durable)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._busy = False
        self.stats = {"acked": 0, "naked": 0, "dead_lettered": 0, "fetch_errors": 0}

    # -- lifecycle

    async def run(self) -> None:
        """Fetch and handle until cancelled or `stop()`; never returns on NATS trouble."""
        self._task = asyncio.current_task()
        delay = 0.2
        try:
            while not self._stopping.is_set():
                try:
                    if self._sub is None:
                        await self._subscribe()
                        if self._sub is None:  # stopped while waiting for an earlier holder's batch
                            continue
                    msgs = await self._fetch()
                except TimeoutError:  # nats.errors.TimeoutError too
                    delay = 0.2
                    continue  # nothing to do: the fetch itself waited fetch_timeout
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS down, consumer missing, ...
                    self.stats["fetch_errors"] += 1
                    log.warning("consumer %s fetch failed (%s: %s); retrying in %.1fs",
                                self.durable, type(exc).__name__, exc, delay)
                    if isinstance(exc, nats.js.errors.APIError | nats.errors.BadSubscriptionError):
                        await self._drop_sub()  # e.g. consumer deleted: re-create it on the next round
                    await self._sleep(delay + random.uniform(0, delay / 2))
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                if msgs:
                    self._busy = True
                    try:
                        await self._process(msgs)
                    finally:
                        self._busy = False
        finally:
            await self._drop_sub()

    async def stop(self, grace: float | None = None) -> None:
        """Let the batch in hand finish (up to `grace` seconds, default ack_wait), then leave `run()`.
        An idle fetch is simply cancelled: nothing is in hand then."""
        self._stopping.set()
        task = self._task
        if task is None or task is asyncio.current_task() or task.done():
            return
        if not self._busy:
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=grace or self.ack_wait)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _fetch(self) -> list[Msg]:
        """Wait (up to fetch_timeout) for the first message, then take what else is already there,
        up to batch. One fetch of `batch` would hold a lone message until its expiry when the
        server answers the no-wait probe empty (a fault sample waited up to fetch_timeout)."""
        assert self._sub is not None
        msgs = await self._sub.fetch(1, timeout=self.fetch_timeout)
        if self.batch > 1:
            try:
                msgs += await self._sub.fetch(self.batch - 1, timeout=AVAILABLE_WAIT_S)
            except asyncio.CancelledError:
                for m in msgs:  # stopping: hand the first one back now rather than after ack_wait
                    with contextlib.suppress(Exception):
                        await m.nak()
                raise
            except Exception:  # noqa: BLE001 - nothing more right now (or NATS trouble): go with the first
                pass
        return msgs

    async def _subscribe(self) -> None:
        info = await ensure_consumer(self.js, stream=self.stream, durable=self.durable,
                                     filter_subject=self.filter_subject, ack_wait=self.ack_wait,
                                     max_deliver=-1, max_ack_pending=self.max_ack_pending)
        if self.ordered and info.num_ack_pending:
            # they were delivered before we subscribed, so they expire within ack_wait from now
            log.info("consumer %s: %d message(s) of an earlier holder pending; waiting %.1fs for their "
                     "redelivery before anything newer", self.durable, info.num_ack_pending, self.ack_wait)
            await self._sleep(self.ack_wait + ORDERED_MARGIN_S)
            if self._stopping.is_set():
                return
        self._sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def _drop_sub(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # -- handling

    async def _process(self, msgs: list[Msg]) -> None:
        live: list[Msg] = []
        for m in msgs:
            n = _deliveries(m)
            if n > self.max_deliver:  # e.g. the handler crashed the process on every delivery
                await self._dead_letter(m, f"not acknowledged after {n - 1} deliveries")
            else:
                live.append(m)
        if live:
            await self._handle(live)

    async def _handle(self, msgs: list[Msg]) -> None:
        attempt = 0
        while True:
            try:
                await self._call(msgs)
            except asyncio.CancelledError:
                raise
            except Relinquished as exc:
                log.warning("consumer %s relinquishes %d message(s) and stops: %s", self.durable, len(msgs), exc)
                self._stopping.set()
                await self._nak_all(msgs, delay=0)
                return
            except Poison as exc:
                named = [m for m in exc.msgs if m in msgs]
                if len(msgs) == 1 and not named:
                    named = msgs
                if named:
                    for m in named:
                        await self._dead_letter(m, f"poison: {exc.reason}")
                    rest = [m for m in msgs if m not in named]
                    if rest:
                        await self._handle(rest)
                    return
                for m in msgs:  # batch poison without a culprit: find it message by message
                    await self._handle([m])
                return
            except Exception as exc:  # noqa: BLE001 - classified below
                if is_transient(exc) and not self._stopping.is_set():
                    delay = self.backoff[min(attempt, len(self.backoff) - 1)]
                    attempt += 1
                    log.warning("consumer %s: dependency unavailable (%s), retrying %d message(s) in %.1fs",
                                self.durable, type(exc).__name__, len(msgs), delay)
                    await self._keepalive_sleep(msgs, delay)
                    if self._stopping.is_set():
                        await self._nak_all(msgs, delay=0)
                        return
                    continue
                if len(msgs) > 1:
                    for m in msgs:
                        await self._handle([m])
                    return
                await self._failed(msgs[0], exc)
                return
            else:
                self.stats["acked"] += len(msgs)
                CONSUMER_MESSAGES.labels(self.stream, self.durable, "acked").inc(len(msgs))
                for m in msgs:
                    with contextlib.suppress(Exception):  # lost ack -> redelivery -> idempotent handler
                        await m.ack()
                return

    async def _call(self, msgs: list[Msg]) -> None:
        """Run the handler while telling the server we are still working on the batch."""
        beat = asyncio.create_task(self._heartbeat(msgs))
        try:
            with context_in(msgs[0]).activate():
                await self.handler(msgs)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, msgs: list[Msg]) -> None:
        interval = max(self.ack_wait / 2, 0.5)
        while True:
            await asyncio.sleep(interval)
            for m in msgs:
                with contextlib.suppress(Exception):
                    await m.in_progress()

    async def _keepalive_sleep(self, msgs: list[Msg], seconds: float) -> None:
        interval = max(self.ack_wait / 2, 0.5)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self._stopping.is_set():
            left = end - loop.time()
            if left <= 0:
                return
            await self._sleep(min(left, interval))
            for m in msgs:
                with contextlib.suppress(Exception):
                    await m.in_progress()

    async def _failed(self, msg: Msg, exc: Exception) -> None:
        n = _deliveries(msg)
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if n >= self.max_deliver:
            await self._dead_letter(msg, f"failed {n} deliveries; last error {reason}")
            return
        delay = self.backoff[min(n - 1, len(self.backoff) - 1)]
        log.warning("consumer %s: message %s failed (delivery %d/%d), redelivery in %.1fs: %s",
                    self.durable, _seq(msg), n, self.max_deliver, delay, reason)
        self.stats["naked"] += 1
        CONSUMER_MESSAGES.labels(self.stream, self.durable, "naked").inc()
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)

    async def _nak_all(self, msgs: list[Msg], *, delay: float) -> None:
        for m in msgs:
            with contextlib.suppress(Exception):
                await m.nak(delay=delay or None)

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        original_id = (msg.headers or {}).get(MSG_ID_HEADER)
        if original_id:
            headers["Towerco-Dlq-Msg-Id"] = original_id
        seq = _seq(msg)
        headers = dead_letter_headers(reason, stream=self.stream, consumer=self.durable, deliveries=_deliveries(msg),
                                      extra=headers)
        headers.update({DLQ_SUBJECT: msg.subject, DLQ_SEQUENCE: str(seq)})
        try:
            await publish(self.js, self.dlq_subject, msg.data, msg_id=f"{self.stream}:{self.durable}:{seq}",
                          headers=headers)
        except Exception as exc:  # noqa: BLE001 - keep the message; the next delivery tries again
            log.error("consumer %s: could not dead-letter message %s (%s); will retry", self.durable, seq, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.backoff[-1])
            return
        log.error("consumer %s: message %s dead-lettered to %s: %s", self.durable, seq, self.dlq_subject, reason)
        self.stats["dead_lettered"] += 1
        CONSUMER_MESSAGES.labels(self.stream, self.durable, "dead_lettered").inc()
        with contextlib.suppress(Exception):
            await msg.term()


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # noqa: BLE001 - not a JetStream message
        return 1


def _seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001
        return 0
