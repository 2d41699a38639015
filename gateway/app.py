"""The gateway: one ASGI app that transcodes REST to gRPC, plus docs, health and metrics.

Transcoded routes are served by a small ASGI core (no per-request framework routing or
middleware stack: this path is the hot one). Everything else — /health, /ready, /metrics,
/api/v1/openapi.json, the Swagger UI at /api/v1/docs with its bundled assets and the web console
at / (gateway/console.py) — is a FastAPI app the core hands over to. Streaming RPCs go to gateway.live (SSE and WebSocket).

Per API request: correlation id -> CORS -> route -> bearer JWT (401 before any upstream call;
routes answering google.api.HttpBody, i.e. downloads, also take it as ?access_token=)
-> per-principal token bucket (429) -> deadline (Grpc-Timeout / X-Request-Timeout, default
10 s) -> body size (413) -> transcode (400) -> upstream call through the sdk channel (token,
correlation id and deadline forwarded; its circuit breaker fails fast with 503) -> JSON.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from importlib import resources
from typing import Any

import grpc
import orjson
import structlog
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.staticfiles import StaticFiles

from gateway import console, edge, live, openapi
from gateway.call import RESERVED_QUERY, TOKEN_PARAM, Call, headers_of, query_of
from gateway.config import GatewayConfig
from gateway.transcode import codec, errors, request, routes
from mesh.auth import Authenticator, AuthError, bearer_token
from mesh.config import Settings, get_settings
from mesh.errors import FieldViolation

log = structlog.get_logger("gateway")

OPENAPI_PATH = "/api/v1/openapi.json"
DOCS_PATH = "/api/v1/docs"
FIXED_PATHS = frozenset({"/health", "/ready", "/metrics", OPENAPI_PATH, DOCS_PATH, "/favicon.ico"})

REQUESTS = Counter("towerco_gateway_requests_total", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram(
    "towerco_gateway_request_seconds",
    "HTTP request latency by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JSON_CT = (b"content-type", b"application/json")
GATEWAY_SLOW_CALL_S = 30.0  # what the gateway's circuit breakers count as a slow (failed) call


def _is_json(content_type: str | None) -> bool:
    """application/json, with parameters (charset) or a +json suffix type."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
_CHILDREN: dict[tuple[str, int], tuple[Any, Any]] = {}


def _observe(label: str, status: int, seconds: float) -> None:
    """Count and time one request; the labelled children are looked up once per route/status
    (prometheus_client's labels() takes a lock and builds a tuple on every call)."""
    pair = _CHILDREN.get((label, status))
    if pair is None:
        pair = _CHILDREN[(label, status)] = (REQUESTS.labels(label, str(status)), LATENCY.labels(label))
    pair[0].inc()
    if seconds >= 0:
        pair[1].observe(seconds)


class Gateway:
    def __init__(self, config: GatewayConfig | None = None, settings: Settings | None = None):
        self.config = config or GatewayConfig.from_env()
        self.settings = settings or get_settings()
        self.services = routes.discover_services(self.config.services)
        if self.config.services is None:
            # a contract whose service has no known address yet is left out, not fatal
            kept = []
            for svc in self.services:
                try:
                    self.target(routes.short_name(svc))
                    kept.append(svc)
                except ValueError as exc:
                    log.warning("service_skipped", service=svc.full_name, reason=str(exc))
            self.services = kept
        self.routes = routes.build_routes(self.services)
        self.router = routes.Router(self.routes)
        self.upstreams = sorted({r.upstream for r in self.routes})
        for up in self.upstreams:
            self.target(up)  # fail at start-up, not on the first request
        self.decoder = codec.Decoder(ignore_unknown=self.config.ignore_unknown_fields)
        self.auth = Authenticator(self.settings)
        self.limiter = edge.RateLimiter(self.config.rate_per_s, self.config.rate_burst)
        self.cors = edge.Cors(self.config.cors_origins)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._breakers: dict[str, Any] = {}
        self._ready: tuple[float, int, dict[str, str]] | None = None
        self._openapi: bytes | None = None
        self.inner = self._build_inner()
        self.live = live.Live(self)
        edge.install_log_redaction()

    # -------------------------------------------------------------------------------- upstreams
    def target(self, upstream: str) -> str:
        target = self.config.targets.get(upstream)
        if target:
            return target
        try:
            return self.settings.target(upstream)
        except KeyError:
            raise ValueError(
                f"no upstream target for {upstream!r}: set TOWERCO_GATEWAY_TARGETS={upstream}=host:port"
            ) from None

    def channel(self, upstream: str) -> grpc.aio.Channel:
        """The upstream channel: the sdk's channel options (retry service config, message size,
        keepalive) without its Python interceptor chain, which costs more per call than the rest
        of the gateway together. The gateway sets token, correlation id and deadline on each
        call itself and applies the sdk's process-wide circuit breaker of the target directly
        (see `call`), so the behaviour is the mesh's, at a fraction of the cost."""
        ch = self._channels.get(upstream)
        if ch is None:
            from sdk.retry import retry_options

            services = [s for s in self.services if routes.short_name(s) == upstream]
            opts = [
                ("grpc.max_send_message_length", self.settings.max_message_bytes),
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.keepalive_time_ms", 300_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                *retry_options(services),
            ]
            ch = grpc.aio.insecure_channel(self.target(upstream), options=opts)
            self._channels[upstream] = ch
        return ch

    def breaker(self, upstream: str):
        """The sdk's process-wide circuit breaker of the upstream target (None when off)."""
        if not self.config.breaker:
            return None
        cb = self._breakers.get(upstream)
        if cb is None:
            from sdk.breaker import BreakerConfig, breaker_for

            # Only a call slower than any deadline a client may normally ask for counts as slow:
            # some answers (a large tenant's monthly statement) take seconds by nature, and the
            # sdk's 2 s default would open the breaker on a healthy service. Deadline expiry
            # (DEADLINE_EXCEEDED) still counts as a failure.
            cfg = BreakerConfig(slow_call_threshold_s=GATEWAY_SLOW_CALL_S)
            cb = self._breakers[upstream] = breaker_for(self.target(upstream), cfg)
        return cb

    def unary(self, route: routes.Route):
        key = route.grpc_path
        stub = self._stubs.get(key)
        if stub is None:
            ch = self.channel(route.upstream)
            factory = ch.unary_stream if route.server_streaming else ch.unary_unary
            stub = factory(
                route.grpc_path,
                request_serializer=route.request_cls.SerializeToString,
                response_deserializer=route.response_cls.FromString,
                # as generated stubs do: the method is registered with the channel once,
                # instead of gRPC core resolving its name on every call
                _registered_method=True,
            )
            self._stubs[key] = stub
        return stub

    async def call(self, route: routes.Route, msg, call: Call):
        """One unary upstream call through the breaker (raises grpc.RpcError)."""
        stub = self.unary(route)
        cb = self.breaker(route.upstream)
        if cb is None:
            return await stub(msg, timeout=call.timeout, metadata=call.metadata())
        permit = cb.acquire()  # raises CircuitOpenError (UNAVAILABLE) when open
        try:
            resp = await stub(msg, timeout=call.timeout, metadata=call.metadata())
        except grpc.aio.AioRpcError as exc:
            cb.record(permit, exc.code(), cb.elapsed(permit))
            raise
        except BaseException:
            cb.release(permit)
            raise
        cb.record(permit, grpc.StatusCode.OK, cb.elapsed(permit))
        return resp

    async def aclose(self) -> None:
        channels, self._channels, self._stubs = self._channels, {}, {}
        for ch in channels.values():
            await ch.close(grace=None)

    # -------------------------------------------------------------------------------- ASGI core
    async def __call__(self, scope: dict, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self.live.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # what start-up built (descriptors, routes, FastAPI, ...) lives as long as the
                # process: keep it out of the cyclic GC, whose full passes would otherwise walk
                # it all and stall every request in flight for tens of milliseconds
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive, send) -> None:
        headers = headers_of(scope)
        cid = edge.correlation_id(headers.get("x-correlation-id"))
        cors = self.cors.headers(headers.get("origin"))
        method = scope["method"]
        path = scope["path"]
        raw = scope.get("raw_path") or path.encode()
        raw_path = raw.decode("latin-1").split("?", 1)[0] if isinstance(raw, bytes) else raw

        if method == "OPTIONS" and "access-control-request-method" in headers:
            _, _, allowed = self.router.match("", raw_path)
            hdrs = self.cors.preflight(headers.get("origin"), ", ".join(allowed or ["GET"]))
            await _send(send, 204, b"", [(b"x-correlation-id", cid.encode())] + hdrs, json=False)
            return

        if path in FIXED_PATHS or path.startswith(DOCS_PATH + "/"):
            await self.inner(scope, receive, _with_headers(send, [(b"x-correlation-id", cid.encode())] + cors))
            return
        if console.is_console(path):  # the web console's page and assets, with its CSP
            await self.inner(scope, receive, _with_headers(send, [(b"x-correlation-id", cid.encode()), *console.HEADERS]))
            return

        started = time.perf_counter()
        route, params, allowed = self.router.match(method, raw_path)
        call = Call(scope, headers, cid, cors)
        if route is None:
            if allowed:
                err = errors.make(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not allowed on {path}; use {', '.join(allowed)}")
                await self._error(send, call, err, status=405, extra=[(b"allow", ", ".join(allowed).encode())])
            else:
                await self._error(send, call, errors.make(grpc.StatusCode.NOT_FOUND, f"no route for {method} {path}"))
            _observe("unmatched", 405 if allowed else 404, -1.0)
            return
        label = route.label
        started_response = False

        async def tracked(message: dict) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
            await send(message)

        try:
            status = await self._api(call, route, params, receive, tracked)
        except Exception:  # noqa: BLE001 - a bug must still answer with a Status, never a traceback
            # type and text only: rendering a traceback's locals can take longer than the request
            exc = sys.exc_info()[1]
            log.error("gateway_error", route=route.grpc_path, correlation_id=cid, error=f"{type(exc).__name__}: {exc}"[:500])
            status = 500
            if not started_response:
                err = errors.make(grpc.StatusCode.INTERNAL, "internal error", correlation_id=cid)
                await self._error(send, call, err)
        _observe(label, status, time.perf_counter() - started)

    async def _api(self, call: Call, route: routes.Route, params: dict[str, str], receive, send) -> int:
        query = query_of(call.scope)
        raw = route.http_body
        err = self.authenticate(call, query if route.server_streaming or raw else None)
        if err is None:
            err = self.rate_limit(call)
        if err is None:
            problem = edge.correlation_problem(call.headers.get("x-correlation-id"))
            if problem:
                err = errors.make(grpc.StatusCode.INVALID_ARGUMENT, problem,
                                  violations=[FieldViolation("X-Correlation-ID", problem)])
        if err is None:
            try:
                call.timeout = edge.parse_timeout(call.headers.get("grpc-timeout"), call.headers.get("x-request-timeout"))
            except ValueError as exc:
                err = errors.make(grpc.StatusCode.INVALID_ARGUMENT, str(exc),
                                  violations=[FieldViolation("X-Request-Timeout", str(exc))])
            else:
                if call.timeout is None and not route.server_streaming:
                    call.timeout = self.config.default_timeout_s
                if call.timeout is not None:
                    call.timeout = min(call.timeout, self.config.max_timeout_s)
        if err is not None:
            return await self._error(send, call, err)
        body, err = await self._read_body(call, receive)
        if err is not None:
            return await self._error(send, call, err)
        if not body and route.body and route.body_required:
            return await self._error(send, call, errors.make(
                grpc.StatusCode.INVALID_ARGUMENT, "this method needs a JSON body (Content-Type: application/json)"))
        if body and route.body and not _is_json(call.headers.get("content-type")):
            text = f"the request body must be JSON: send Content-Type: application/json (got {call.headers.get('content-type', 'none')!r})"
            return await self._error(send, call, errors.make(grpc.StatusCode.INVALID_ARGUMENT, text), status=415)
        if route.server_streaming:
            last_event = call.headers.get("last-event-id")
            if last_event and route.resume_field and not any(k == route.resume_field for k, _ in query):
                query = [*query, (route.resume_field, last_event)]
        try:
            msg = request.build(
                request_cls=route.request_cls,
                body_rule=route.body,
                http_method=route.http_method,
                path_params=params,
                query=query,
                body=body,
                decoder=self.decoder,
                reserved_query=RESERVED_QUERY if route.server_streaming or raw else frozenset(),
            )
        except request.TranscodeError as exc:
            return await self._error(send, call, errors.make(grpc.StatusCode.INVALID_ARGUMENT, exc.message, violations=exc.violations))
        if route.server_streaming:
            return await self.live.sse(call, route, msg, receive, send)
        try:
            resp = await self.call(route, msg, call)
        except grpc.RpcError as exc:
            err = errors.from_rpc_error(exc, correlation_id=call.cid)
            if err.status >= 500:
                log.warning("upstream_error", route=route.grpc_path, code=str(exc.code()), correlation_id=call.cid)
            return await self._error(send, call, err)
        except asyncio.CancelledError:
            raise
        if raw:  # google.api.HttpBody: its bytes, with its content type
            body_msg = getattr(resp, route.response_body) if route.response_body else resp
            hdrs = [(b"content-type", (body_msg.content_type or "application/octet-stream").encode("latin-1")),
                    (b"x-correlation-id", call.cid.encode()), *call.origin_headers]
            await _send(send, 200, body_msg.data, hdrs, json=False)
            return 200
        try:
            payload = orjson.dumps(request.encode_response(resp, route.response_body))
        except Exception as exc:  # noqa: BLE001 - e.g. a Timestamp out of range from upstream
            log.error("encode_failed", route=route.grpc_path, correlation_id=call.cid, error=f"{type(exc).__name__}: {exc}"[:500])
            return await self._error(send, call, errors.make(grpc.StatusCode.INTERNAL, "bad upstream response", correlation_id=call.cid))
        await _send(send, 200, payload, [(b"x-correlation-id", call.cid.encode()), *call.origin_headers])
        return 200

    def authenticate(self, call: Call, query: list[tuple[str, str]] | None) -> errors.HttpError | None:
        token = bearer_token(call.headers.get("authorization", ""))
        if not token and query is not None:  # SSE: EventSource cannot set headers
            token = next((v for k, v in query if k == TOKEN_PARAM), "")
        if not token:
            return errors.make(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required (Authorization: Bearer <token>)")
        try:
            call.identity = self.auth.verify(token)
        except AuthError as exc:
            return errors.make(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc}", auth_error=str(exc))
        call.token = token
        return None

    def rate_limit(self, call: Call) -> errors.HttpError | None:
        ident = call.identity
        if ident is None or not self.limiter.enabled:
            return None
        wait = self.limiter.take(f"{ident.tenant}/{ident.subject}")
        if wait > 0:
            return errors.make(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {self.limiter.rate:g} requests/s exceeded for {ident.subject}",
                reason="RATE_LIMITED",
                retry_after_s=wait,
            )
        return None

    def _too_big(self) -> errors.HttpError:
        limit = self.config.max_body_bytes
        err = errors.make(grpc.StatusCode.INVALID_ARGUMENT, f"the request body exceeds {limit} bytes", reason="BODY_TOO_LARGE")
        err.status = 413
        return err

    async def _read_body(self, call: Call, receive) -> tuple[bytes, errors.HttpError | None]:
        limit = self.config.max_body_bytes
        length = call.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return b"", self._too_big()
            except ValueError:
                return b"", errors.make(grpc.StatusCode.INVALID_ARGUMENT, "bad Content-Length")
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", None
        body = message.get("body", b"")
        if len(body) > limit:
            return b"", self._too_big()
        if not message.get("more_body", False):
            return body, None  # the usual case: the whole body (or none) in one message
        chunks: list[bytes] = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", self._too_big()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None

    async def _error(self, send, call: Call, err: errors.HttpError, *, status: int | None = None, extra=()) -> int:
        code = status or err.status
        hdrs = [(b"x-correlation-id", call.cid.encode()), *call.origin_headers, *extra]
        hdrs += [(k.lower().encode(), v.encode("latin-1", "replace")) for k, v in err.headers.items()]
        await _send(send, code, orjson.dumps(err.body), hdrs)
        return code

    # -------------------------------------------------------------------------------- the rest
    async def ready(self) -> tuple[int, dict[str, str]]:
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < self.config.ready_cache_s:
            return self._ready[1], self._ready[2]

        async def check(up: str) -> str:
            try:
                stub = health_pb2_grpc.HealthStub(self.channel(up))
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                return f"UNREACHABLE ({code.name if code else 'error'})"

        states = await asyncio.gather(*(check(up) for up in self.upstreams))
        result = dict(zip(self.upstreams, states, strict=True))
        # one upstream down leaves the others usable (its breaker answers 503 fast), so the
        # gateway stays in rotation unless no upstream at all is serving
        status = 200 if any(s == "SERVING" for s in states) or not states else 503
        self._ready = (now, status, result)
        return status, result

    def openapi_bytes(self) -> bytes:
        if self._openapi is None:

            self._openapi = orjson.dumps(openapi.build(self.routes))
        return self._openapi

    def _build_inner(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        static = resources.files("fastapi_offline") / "static"
        app.mount(DOCS_PATH + "/static", StaticFiles(directory=str(static)), name="docs-static")
        console.mount(app)

        @app.get("/health")
        async def health() -> JSONResponse:
            return JSONResponse({"status": "SERVING"})

        @app.get("/ready")
        async def ready() -> JSONResponse:
            status, upstreams = await self.ready()
            every = all(v == "SERVING" for v in upstreams.values())
            label = "READY" if every else "DEGRADED" if status == 200 else "NOT_READY"
            return JSONResponse({"status": label, "upstreams": upstreams}, status_code=status)

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        @app.get(OPENAPI_PATH)
        async def openapi_json() -> Response:
            return Response(self.openapi_bytes(), media_type="application/json")

        @app.get(DOCS_PATH)
        async def docs() -> HTMLResponse:
            return HTMLResponse(SWAGGER_HTML)

        @app.get("/favicon.ico")
        async def favicon() -> Response:
            return Response((static / "favicon.png").read_bytes(), media_type="image/png")

        return app


SWAGGER_HTML = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Towerco AIOps API</title>
<link rel="icon" href="{DOCS_PATH}/static/favicon.png">
<link rel="stylesheet" href="{DOCS_PATH}/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{DOCS_PATH}/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{OPENAPI_PATH}", dom_id: "#swagger-ui", deepLinking: true,
  persistAuthorization: true, displayRequestDuration: true, tryItOutEnabled: true,
  presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"
}});
</script></body></html>"""


async def _send(send, status: int, body: bytes, headers: list, *, json: bool = True) -> None:
    hdrs = [JSON_CT, *headers] if json else list(headers)
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def _with_headers(send, extra: list):
    if not extra:
        return send

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def create_app(config: GatewayConfig | None = None, settings: Settings | None = None) -> Gateway:
    """The ASGI app (uvicorn factory: `uvicorn --factory gateway.app:create_app`)."""
    return Gateway(config, settings)
