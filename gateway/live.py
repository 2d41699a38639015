"""Server-streaming RPCs bridged to Server-Sent Events and WebSocket.

Every server-streaming RPC with an http rule is reachable at its REST path:

* **SSE** — a plain HTTP GET (`Accept: text/event-stream`). Each upstream message is one event,
  `data:` holding the message's JSON (unwrapped); when the RPC can resume (request field
  `after_sequence`, response field `sequence`) the event `id:` is the sequence, so a browser's
  EventSource resumes by itself through `Last-Event-ID`. A failure is an `event: error` whose
  data is a google.rpc.Status JSON, then the stream ends. Heartbeats are comment lines
  (`: heartbeat`).
* **WebSocket** — the same path over ws:// (query parameters as for GET). Each frame is a JSON
  text: `{"result": <message>}`, `{"heartbeat": {"time": "..."}}` or `{"error": <Status>}`.
  Resume with `?after_sequence=<last sequence seen>` on reconnect.

Auth: the `Authorization: Bearer` header, or `?access_token=<jwt>` (browsers cannot set headers
on EventSource/WebSocket), or — WebSocket only — a first client frame `{"token": "<jwt>"}` sent
within 10 s. The gateway never logs query strings, so the token does not end up in logs.

Resume inside the gateway: when the upstream of a resumable stream fails with UNAVAILABLE (or is
cancelled by the server, e.g. the service process died or restarted) after it was established,
the gateway keeps the client's SSE/WebSocket open (heartbeats go on) and re-opens the upstream
with `after_sequence` = the last sequence it sent (a `live_only` start is cleared then: the
cursor says where to go on), with backoff, for up to TOWERCO_GATEWAY_STREAM_RESUME_S (30 s); only
then does the client get the error. A refusal at once (the service down when the client
connects) and a `live_only` stream that has sent nothing yet (no cursor to continue from
without a gap) are not resumed.

Each client has a bounded queue (TOWERCO_GATEWAY_STREAM_QUEUE messages). A client that falls
that far behind is cut: WebSocket close code 4008 ("slow consumer"), SSE an error event with
RESOURCE_EXHAUSTED. Close codes for upstream failures are 4000 + the HTTP status of the gRPC
code (4401, 4403, 4404, 4400, 4503, 4504, ...); 1000 when the stream simply ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
import orjson
import structlog
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway import edge
from gateway.call import RESERVED_QUERY, TOKEN_PARAM, Call, headers_of, query_of
from gateway.transcode import codec, errors, request

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.transcode.routes import Route

log = structlog.get_logger("gateway.live")

CLOSE_NORMAL = 1000
CLOSE_SLOW_CONSUMER = 4008
CLOSE_AUTH_TIMEOUT = 4401
FIRST_MESSAGE_TIMEOUT_S = 10.0
FIRST_ITEM_WAIT_S = 0.5  # SSE: how long to wait for an immediate upstream refusal before the 200

RESUME_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
RESUME_DELAYS_S = (0.2, 0.5, 1.0, 2.0)

STREAMS = Gauge("towerco_gateway_streams", "Open SSE/WebSocket streams", ["transport"])
SLOW = Counter("towerco_gateway_slow_consumers_total", "Streams cut because the client fell behind", ["transport"])
RESUMED = Counter("towerco_gateway_stream_upstream_resumes_total",
                  "Upstreams of resumable streams re-opened from the last sequence sent")

_END = object()


class SlowConsumer(Exception):
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def resumed_request(msg: Message, field: str, last: int | None) -> Message | None:
    """The request continuing a resumable stream after sequence `last` (None: nothing was sent
    yet): the original with `field` = last and a `live_only` start cleared; None when it cannot
    continue without a gap (a live_only stream that has sent nothing)."""
    out = type(msg)()
    out.CopyFrom(msg)
    live = "live_only" in out.DESCRIPTOR.fields_by_name
    if last is None:
        return None if live and out.live_only else out
    setattr(out, field, last)
    if live:
        out.ClearField("live_only")
    return out


Reopen = Any  # (last sequence sent or None) -> (call, breaker, permit) | None


class _Pump:
    """Reads the upstream stream into a bounded queue; overflow marks the client slow. With
    `reopen`, an upstream that becomes unavailable after it was established is re-opened from the
    last sequence sent for up to `resume_s` seconds (module doc)."""

    def __init__(self, call: Any, size: int, breaker: Any = None, permit: Any = None, *,
                 reopen: Reopen = None, resume_s: float = 0.0):
        self.call = call
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=size)
        self.overflow = asyncio.Event()
        self._breaker, self._permit = breaker, permit
        self._reopen, self._resume_s = reopen, resume_s
        self._closing = False
        self.task = asyncio.ensure_future(self._run())

    def _verdict(self, code: grpc.StatusCode | None) -> None:
        """Tell the breaker once: OK at the first message, else the code the stream ended with."""
        cb, permit = self._breaker, self._permit
        if cb is None:
            return
        self._breaker = None
        if code is None:
            cb.release(permit)
        else:
            cb.record(permit, code, None)

    async def _run(self) -> None:
        try:
            await self._pump()
        finally:
            self._verdict(None)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        last: int | None = None  # the last sequence queued for the client
        failing_since: float | None = None
        attempt = 0
        while True:
            try:
                async for msg in self.call:
                    self._verdict(grpc.StatusCode.OK)
                    failing_since, attempt = None, 0
                    try:
                        self.queue.put_nowait(msg)
                    except asyncio.QueueFull:
                        self.overflow.set()
                        self.call.cancel()
                        return
                    if self._reopen is not None:
                        last = msg.sequence
                item: Any = _END
            except grpc.RpcError as exc:
                item = exc
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                self._verdict(code)
                now = loop.time()
                if (self._reopen is not None and self._resume_s > 0 and not self._closing and code in RESUME_CODES
                        and (last is not None or now - started >= FIRST_ITEM_WAIT_S)):
                    failing_since = failing_since if failing_since is not None else now
                    if now - failing_since < self._resume_s:
                        await asyncio.sleep(RESUME_DELAYS_S[min(attempt, len(RESUME_DELAYS_S) - 1)])
                        attempt += 1
                        try:
                            nxt = self._reopen(last)
                        except grpc.RpcError:  # the breaker is open: wait on
                            continue
                        if nxt is not None:
                            self.call, self._breaker, self._permit = nxt
                            RESUMED.inc()
                            log.info("stream_upstream_resumed", after_sequence=last, attempt=attempt)
                            continue
            except asyncio.CancelledError:
                raise
            break
        # the end marker may wait for room: the consumer is still draining
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                try:
                    self.queue.put_nowait(item)
                    return
                except asyncio.QueueFull:
                    await asyncio.sleep(0.01)
                    if self.overflow.is_set():
                        return

    async def next(self, heartbeat_s: float) -> Any:
        """The next message, an RpcError, _END, or None on heartbeat timeout."""
        if self.overflow.is_set():
            raise SlowConsumer()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout=heartbeat_s)
        except TimeoutError:
            if self.overflow.is_set():
                raise SlowConsumer() from None
            return None

    async def close(self) -> None:
        self._closing = True
        self.call.cancel()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def _event(msg: Message, resume: bool) -> bytes:
    data = orjson.dumps(codec.ENCODER.encode(msg))
    if resume:
        return b"id: %d\ndata: %s\n\n" % (msg.sequence, data)
    return b"data: %s\n\n" % data


class Live:
    def __init__(self, gw: Gateway):
        self.gw = gw

    def open(self, route: Route, msg: Message, call: Call) -> _Pump:
        """Start the upstream stream through the target's circuit breaker."""
        gw = self.gw

        def start(request: Message) -> tuple[Any, Any, Any]:
            cb = gw.breaker(route.upstream)
            permit = cb.acquire() if cb is not None else None  # raises CircuitOpenError when open
            return gw.unary(route)(request, timeout=call.timeout, metadata=call.metadata()), cb, permit

        def reopen(last: int | None) -> tuple[Any, Any, Any] | None:
            again = resumed_request(msg, route.resume_field, last)
            return None if again is None else start(again)

        upstream, cb, permit = start(msg)
        resumable = bool(route.resume_field) and gw.config.stream_resume_s > 0
        return _Pump(upstream, gw.config.stream_queue, cb, permit, reopen=reopen if resumable else None,
                     resume_s=gw.config.stream_resume_s)

    # ------------------------------------------------------------------------------------ SSE
    async def sse(self, call: Call, route: Route, msg: Message, receive, send) -> int:
        gw = self.gw
        try:
            pump = self.open(route, msg, call)
        except grpc.RpcError as exc:  # the breaker is open
            return await gw._error(send, call, errors.from_rpc_error(exc, correlation_id=call.cid))
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-correlation-id", call.cid.encode()),
            *call.origin_headers,
        ]
        # an upstream that refuses the call at once (bad argument, denied, down) gets a plain
        # HTTP error rather than a 200 stream holding one error event
        first = None
        try:
            first = await pump.next(min(gw.config.heartbeat_s, FIRST_ITEM_WAIT_S))
        except SlowConsumer:
            pass
        if isinstance(first, grpc.RpcError):
            await pump.close()
            err = errors.from_rpc_error(first, correlation_id=call.cid)
            return await gw._error(send, call, err)

        await send({"type": "http.response.start", "status": 200, "headers": headers})
        STREAMS.labels("sse").inc()
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.ensure_future(watch())
        resume = bool(route.resume_field)
        writer: asyncio.Task | None = None
        try:
            item = first
            while not disconnected.is_set():
                if item is _END:
                    break
                if isinstance(item, grpc.RpcError):
                    err = errors.from_rpc_error(item, correlation_id=call.cid)
                    await send({"type": "http.response.body", "body": b"event: error\ndata: %s\n\n" % orjson.dumps(err.body), "more_body": True})
                    break
                chunk = b": heartbeat\n\n" if item is None else _event(item, resume)
                writer = asyncio.ensure_future(send({"type": "http.response.body", "body": chunk, "more_body": True}))
                overflow = asyncio.ensure_future(pump.overflow.wait())
                done, _ = await asyncio.wait({writer, overflow, watcher}, return_when=asyncio.FIRST_COMPLETED)
                overflow.cancel()
                if writer not in done:
                    writer.cancel()
                    if pump.overflow.is_set():
                        raise SlowConsumer()
                    break
                writer.result()
                item = await pump.next(gw.config.heartbeat_s)
        except SlowConsumer:
            SLOW.labels("sse").inc()
            log.info("slow_consumer", transport="sse", route=route.grpc_path, correlation_id=call.cid)
            err = errors.make(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow consumer: the client fell too far behind the stream", reason="SLOW_CONSUMER")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"event: error\ndata: %s\n\n" % orjson.dumps(err.body), "more_body": True}),
                    1.0,
                )
        except OSError:
            pass
        finally:
            STREAMS.labels("sse").dec()
            watcher.cancel()
            await pump.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}), 1.0)
        return 200

    # ------------------------------------------------------------------------------ WebSocket
    async def websocket(self, scope: dict, receive, send) -> None:
        """One WebSocket client: accept and authenticate it, then forward the stream to it."""
        ws = WebSocket(scope, receive, send)
        opened = await self._ws_open(ws, scope)
        if opened is None:
            return
        route, msg, call = opened
        try:
            pump = self.open(route, msg, call)
        except grpc.RpcError as exc:  # the breaker is open
            await _ws_fail(ws, errors.from_rpc_error(exc, correlation_id=call.cid))
            return
        STREAMS.labels("ws").inc()
        try:
            await self._ws_forward(ws, receive, pump, route, call.cid)
        finally:
            STREAMS.labels("ws").dec()
            await pump.close()

    async def _ws_open(self, ws: WebSocket, scope: dict) -> tuple[Route, Message, Call] | None:
        """Route, origin, accept, token (header, query or first frame), limits and the request
        message; None once the socket has been closed with the reason."""
        gw = self.gw
        headers = headers_of(scope)
        cid = edge.correlation_id(headers.get("x-correlation-id"))
        raw = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        route, params, _ = gw.router.match("GET", raw_path.split("?", 1)[0])
        if route is None or not route.server_streaming:
            await ws.close(code=4404, reason="no streaming route at this path")
            return None
        origin = headers.get("origin")
        same_origin = bool(origin) and origin.split("://", 1)[-1] == headers.get("host")
        if origin and not same_origin and not gw.cors.headers(origin):
            await ws.close(code=4403, reason="origin not allowed")
            return None
        await ws.accept(headers=[(b"x-correlation-id", cid.encode())])
        call = Call(scope, headers, cid, [])
        query = query_of(scope)
        if not bearer_from(headers) and not any(k == TOKEN_PARAM for k, _ in query):
            token = await _first_frame_token(ws)
            if token:
                call.headers = {**headers, "authorization": f"Bearer {token}"}
        err = gw.authenticate(call, query) or gw.rate_limit(call) or _ws_header_problem(headers)
        msg = None
        if err is None:
            try:
                call.timeout = edge.parse_timeout(headers.get("grpc-timeout"), headers.get("x-request-timeout"))
                msg = request.build(request_cls=route.request_cls, body_rule="", http_method="GET",
                                    path_params=params, query=query, body=b"", decoder=gw.decoder,
                                    reserved_query=RESERVED_QUERY)
            except ValueError as exc:
                err = errors.make(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except request.TranscodeError as exc:
                err = errors.make(grpc.StatusCode.INVALID_ARGUMENT, exc.message, violations=exc.violations)
        if err is not None:
            await _ws_fail(ws, err)
            return None
        return route, msg, call

    async def _ws_forward(self, ws: WebSocket, receive, pump: _Pump, route: Route, cid: str) -> None:
        """Send each item as a frame until the stream ends, fails, the client leaves or falls
        behind (then close code 4008)."""
        closed = asyncio.Event()

        async def watch() -> None:
            try:
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
            finally:
                closed.set()

        watcher = asyncio.ensure_future(watch())
        try:
            while not closed.is_set():
                item = await pump.next(self.gw.config.heartbeat_s)
                if item is _END:
                    await ws.close(code=CLOSE_NORMAL)
                    return
                if isinstance(item, grpc.RpcError):
                    await _ws_fail(ws, errors.from_rpc_error(item, correlation_id=cid))
                    return
                frame = {"heartbeat": {"time": _now()}} if item is None else {"result": codec.ENCODER.encode(item)}
                writer = asyncio.ensure_future(ws.send_text(orjson.dumps(frame).decode()))
                overflow = asyncio.ensure_future(pump.overflow.wait())
                done, _ = await asyncio.wait({writer, overflow, watcher}, return_when=asyncio.FIRST_COMPLETED)
                overflow.cancel()
                if writer not in done:
                    writer.cancel()
                    if pump.overflow.is_set():
                        raise SlowConsumer()
                    return
                writer.result()
        except SlowConsumer:
            SLOW.labels("ws").inc()
            log.info("slow_consumer", transport="ws", route=route.grpc_path, correlation_id=cid)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=CLOSE_SLOW_CONSUMER, reason="slow consumer"), 1.0)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass
        finally:
            watcher.cancel()


async def _first_frame_token(ws: WebSocket) -> str:
    """The token of a first client frame {"token": "<jwt>"} ("" when none comes in time)."""
    try:
        first = await asyncio.wait_for(ws.receive_text(), FIRST_MESSAGE_TIMEOUT_S)
        return str(orjson.loads(first).get("token", ""))
    except (TimeoutError, ValueError, AttributeError, WebSocketDisconnect, RuntimeError):
        return ""


def _ws_header_problem(headers: dict[str, str]) -> errors.HttpError | None:
    problem = edge.correlation_problem(headers.get("x-correlation-id"))
    return errors.make(grpc.StatusCode.INVALID_ARGUMENT, problem) if problem else None


def bearer_from(headers: dict[str, str]) -> str:
    value = headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


async def _ws_fail(ws: WebSocket, err: errors.HttpError) -> None:
    code = 4000 + err.status if 400 <= err.status <= 599 else 1011
    with contextlib.suppress(Exception):
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.send_text(orjson.dumps({"error": err.body}).decode())
            await ws.close(code=code, reason=str(err.body.get("message", ""))[:120])
