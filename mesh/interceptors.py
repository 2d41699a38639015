"""The server interceptor chain every gRPC service runs behind.

One grpc_interceptor.AsyncServerInterceptor subclass, `MeshServerInterceptor`, runs these stages in
this order for every call (outermost first):

1. exception mapping  GrpcException -> its code, message and a grpc-status-details-bin trailer
                      (google.rpc.Status with rich details); database unreachable -> UNAVAILABLE
                      "database unavailable" + RetryInfo 1s; anything else -> INTERNAL
                      "internal error; correlation id <id>" (logged with its traceback, never sent)
2. metrics            towerco_grpc_server_handled_total{service,method,code},
                      towerco_grpc_server_handling_seconds{service,method}, in-flight gauge
3. access log         one JSON line "grpc.call" per call
4. deadline guard     a call whose deadline has already passed gets DEADLINE_EXCEEDED unrun;
                      the remaining time goes to sdk.context.deadline
5. auth               "authorization: Bearer <jwt>" verified; identity set (mesh.auth), token and
                      correlation id bound in sdk.context so internal calls forward them
6. validation         towerco.validate.v1 rules on the request, and on every streamed request
                      message when the handler iterates the request stream
7. the handler

The stages live in one interceptor rather than six because every grpc.aio interceptor layer costs
a handler lookup and a wrapper per call; one layer keeps the mesh close to a bare server's
throughput. It overrides `intercept_service` so it knows each method's kind and can wrap all four
(unary/streaming request x unary/streaming response), which the base class's single `intercept`
hook cannot do for exceptions raised while a response stream is being iterated. Wrapped handlers
are built once per method and cached, so this interceptor must be the LAST in the server's list
(OpenTelemetry's goes before it).

Health (grpc.health.v1.Health) and reflection need no token and bypass the chain.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc_interceptor import AsyncServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from mesh import auth
from mesh.config import Settings
from mesh.errors import (
    STATUS_DETAILS_KEY,
    DeadlineExceeded,
    FieldViolation,
    Internal,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    status_of_exception,
)
from mesh.observability import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_IN_FLIGHT, log_enabled, log_line
from mesh.validation import has_rules, violations
from sdk import context as sdk_context

PUBLIC_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
CORRELATION_HEADER = "x-correlation-id"
_MISSING_TOKEN = "missing bearer token (metadata 'authorization: Bearer <jwt>')"
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN

_log = structlog.get_logger("towerco.grpc")


def _structlog_var(key: str) -> Any:
    """The ContextVar behind structlog.contextvars.bind_contextvars(key=...), so that the chain
    sets it directly (what bind_contextvars does, minus its per-call key handling)."""
    token = structlog.contextvars.bind_contextvars(**{key: None})[key]
    token.var.reset(token)  # leave the importing context as it was
    return token.var


_set_log_correlation_id = _structlog_var("correlation_id").set
_INFO = logging.INFO
_random_bits = random.getrandbits  # reseeded in forked children by the random module itself
_set_correlation_id = sdk_context.correlation_id.set
_set_deadline = sdk_context.deadline.set
_set_outgoing_token = sdk_context.outgoing_token.set
_set_identity = auth.set_identity
_monotonic = time.monotonic
_perf_counter = time.perf_counter


def new_correlation_id() -> str:
    """32 random hex digits (a correlation id, not a secret: no system call per request)."""
    return f"{_random_bits(128):032x}"


def _db_unavailable(exc: BaseException) -> bool:
    try:
        from mesh.db import is_unavailable
    except ImportError:  # pragma: no cover - mesh.db is part of the mesh
        return isinstance(exc, ConnectionError)
    return is_unavailable(exc)


class _Method:
    """Per-method constants: metric children (one per code, bound on first use) and whether its
    request type has rules."""

    __slots__ = ("full", "service", "name", "hist", "in_flight", "handled", "validate")

    def __init__(self, full: str, request_type: Any):
        self.full = full
        _, service, name = full.split("/", 2) if full.count("/") >= 2 else ("", full, "")
        self.service = service
        self.name = name
        self.hist = GRPC_HANDLING_SECONDS.labels(service, name)
        self.in_flight = GRPC_IN_FLIGHT.labels(service, name)
        self.handled: dict[grpc.StatusCode, Any] = {_OK: GRPC_HANDLED.labels(service, name, "OK")}
        descriptor = getattr(request_type, "DESCRIPTOR", None)
        # Unknown request type: validate dynamically (violations() caches per type anyway).
        self.validate = True if descriptor is None else has_rules(descriptor)

    def count(self, code: grpc.StatusCode) -> None:
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = GRPC_HANDLED.labels(self.service, self.name, code.name)
        child.inc()


class _Call:
    """What the access log and metrics need to know about one call."""

    __slots__ = ("method", "start", "code", "correlation_id", "identity")

    def __init__(self, method: _Method):
        self.method = method
        self.start = _perf_counter()
        self.code = _OK
        self.correlation_id = ""
        self.identity: auth.Identity | None = None


def _request_type(handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    deserializer = handler.request_deserializer
    return getattr(deserializer, "__self__", None)


def _final_code(context: Any) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:  # pragma: no cover - defensive: a context without code()
        return _OK
    if code is None:
        return _OK
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:  # some versions hand back the integer value
        if candidate.value[0] == code:
            return candidate
    return _UNKNOWN


class MeshServerInterceptor(AsyncServerInterceptor):
    """Exception mapping, metrics, access log, deadline guard, auth and validation in one layer."""

    def __init__(
        self,
        settings: Settings,
        *,
        authenticate: bool = True,
        validate: bool = True,
        access_log: bool = True,
        public_prefixes: tuple[str, ...] = PUBLIC_PREFIXES,
    ):
        self.settings = settings
        self.authenticator = auth.Authenticator(settings)
        self.authenticate = authenticate
        self.validate = validate
        self.access_log = access_log
        self.public_prefixes = public_prefixes
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    # The base class's hook; unused because intercept_service builds kind-specific wrappers.
    async def intercept(self, method: Callable[..., Any], request_or_iterator: Any, context: Any,
                        method_name: str) -> Any:
        return await method(request_or_iterator, context)

    async def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        name = handler_call_details.method
        wrapped = self._handlers.get(name)
        if wrapped is not None:
            return wrapped
        if name.startswith(self.public_prefixes):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, name)
        self._handlers[name] = wrapped
        return wrapped

    # ------------------------------------------------------------------------------------------
    # Stages shared by the four kinds

    def _admit(self, call: _Call, context: Any) -> None:
        """Deadline guard and auth; binds identity, token, correlation id and deadline."""
        authorization = ""
        cid = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
            elif key == CORRELATION_HEADER:
                cid = value
        if not cid or not isinstance(cid, str) or len(cid) > 128:
            cid = new_correlation_id()
        call.correlation_id = cid
        _set_correlation_id(cid)
        _set_log_correlation_id(cid)  # = structlog.contextvars.bind_contextvars(correlation_id=cid)

        left = context.time_remaining()
        if left is not None:
            if left <= 0:
                raise DeadlineExceeded("deadline exceeded before the call started")
            _set_deadline(_monotonic() + left)

        if not self.authenticate:
            return
        if not authorization or not isinstance(authorization, str):
            raise Unauthenticated(_MISSING_TOKEN)
        try:
            identity = self.authenticator.verify_authorization(authorization)
        except auth.MissingBearer:
            raise Unauthenticated(_MISSING_TOKEN) from None
        except auth.AuthError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        call.identity = identity
        _set_identity(identity)
        _set_outgoing_token(identity.token)

    async def _fail(self, call: _Call, context: Any, exc: BaseException) -> None:
        """Map `exc` to a status and abort the call (raises), or return to let it pass through."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            call.code = _CANCELLED
            return
        if isinstance(exc, grpc.aio.AbortError):  # the handler aborted itself
            call.code = _final_code(context)
            if call.code == _OK:
                call.code = _UNKNOWN
            return
        if isinstance(exc, GrpcException):
            mapped: GrpcException = exc
        elif isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            mapped = (
                Unavailable("a dependency is unavailable", retry_after_s=1.0)
                if exc.code() == grpc.StatusCode.UNAVAILABLE
                else DeadlineExceeded("deadline exceeded while calling a dependency")
            )
            _log.warning("grpc.dependency_failed", method=call.method.full, dependency_code=exc.code().name)
        elif isinstance(exc, Exception) and _db_unavailable(exc):
            mapped = Unavailable("database unavailable", retry_after_s=1.0)
            _log.warning("grpc.database_unavailable", method=call.method.full, error=type(exc).__name__)
        elif isinstance(exc, Exception):
            mapped = Internal(f"internal error; correlation id {call.correlation_id or 'none'}")
            _log.error("grpc.unhandled_exception", method=call.method.full, exc_info=exc)
        else:
            return  # KeyboardInterrupt, SystemExit: let them go
        call.code = mapped.status_code
        status = status_of_exception(mapped)
        await context.abort(
            mapped.status_code,
            mapped.details,
            trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
        )

    def _finish(self, call: _Call) -> None:
        method = call.method
        elapsed = _perf_counter() - call.start
        code = call.code
        method.in_flight.dec()
        method.hist.observe(elapsed)
        method.count(code)
        if self.access_log and log_enabled(_INFO):
            identity = call.identity
            # Rendered by mesh.observability.log_line: the same JSON line as
            # _log.info("grpc.call", ...) without structlog's processor chain.
            log_line("grpc.call", {
                "method": method.full,
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 3),
                "correlation_id": call.correlation_id,
                "tenant": identity.tenant if identity else None,
                "subject": identity.subject if identity else None,
            }, _INFO, logger=_log)

    def _check(self, request: Any) -> None:
        found = violations(request)
        if found:
            first = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise InvalidArgument(f"invalid {request.DESCRIPTOR.name}: {first.field} {first.description}{more}", found)

    def _validated_stream(self, iterator: Any) -> AsyncIterator[Any]:
        check = self._check_streamed

        async def gen() -> AsyncIterator[Any]:
            index = 0
            async for message in iterator:
                check(message, index)
                index += 1
                yield message

        return gen()

    @staticmethod
    def _check_streamed(message: Any, index: int) -> None:
        found = violations(message)
        if found:
            first = found[0]
            raise InvalidArgument(
                f"invalid request message #{index}: {first.field} {first.description}",
                [FieldViolation(v.field, f"message #{index}: {v.description}") for v in found],
            )

    # ------------------------------------------------------------------------------------------
    # Wrappers per kind
    #
    # The four RPC kinds differ along two seams only: how the request arrives (one message,
    # validated before the handler runs, or a stream, validated as the handler reads it) and how
    # the response leaves (one awaited message, or a stream passed through). `_request_one` /
    # `_request_stream` give the request side, `_unary_response` / `_stream_response` wrap the
    # handler with the stages around it (admit, fail, finish) once per response shape.

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], name: str) -> grpc.RpcMethodHandler[Any, Any]:
        method = _Method(name, _request_type(handler))
        check = self.validate and method.validate
        kw: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_response(method, handler.unary_unary, self._request_one(check)), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream_response(method, handler.unary_stream, self._request_one(check)), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_response(method, handler.stream_unary, self._request_stream(check)), **kw)
        return grpc.stream_stream_rpc_method_handler(
            self._stream_response(method, handler.stream_stream, self._request_stream(check)), **kw)

    def _request_one(self, check: bool) -> Callable[[Any], Any] | None:
        """A single request: validated before the handler runs (None: nothing to do)."""
        if not check:
            return None
        validate_one = self._check

        def prepare(request: Any) -> Any:
            validate_one(request)
            return request

        return prepare

    def _request_stream(self, check: bool) -> Callable[[Any], Any] | None:
        """A request stream: each message validated as the handler iterates it."""
        return self._validated_stream if check else None

    def _unary_response(self, method: _Method, inner: Any, prepare: Callable[[Any], Any] | None
                        ) -> Callable[[Any, Any], Awaitable[Any]]:
        admit, fail, finish = self._admit, self._fail, self._finish

        async def handle(request: Any, context: Any) -> Any:
            call = _Call(method)
            method.in_flight.inc()
            try:
                admit(call, context)
                response = inner(request if prepare is None else prepare(request), context)
                if hasattr(response, "__await__"):
                    response = await response
                call.code = _final_code(context)
                return response
            except BaseException as exc:
                await fail(call, context, exc)
                raise
            finally:
                finish(call)

        return handle

    def _stream_response(self, method: _Method, inner: Any, prepare: Callable[[Any], Any] | None
                         ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        admit, fail, finish = self._admit, self._fail, self._finish

        async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(method)
            method.in_flight.inc()
            try:
                admit(call, context)
                result = inner(request if prepare is None else prepare(request), context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif hasattr(result, "__await__"):
                    await result  # read/write API: the handler wrote with context.write()
                else:
                    for item in result or ():
                        yield item
                call.code = _final_code(context)
            except BaseException as exc:
                await fail(call, context, exc)
                raise
            finally:
                finish(call)

        return handle


def server_interceptors(settings: Settings, service: str, *, extra: Sequence[Any] = (), **kw: Any) -> list[Any]:
    """The full chain for a server: OpenTelemetry's (when enabled), then `extra`, then the mesh's."""
    from mesh.observability import setup_tracing

    chain: list[Any] = []
    otel = setup_tracing(settings, service)
    if otel is not None:
        chain.append(otel)
    chain.extend(extra)
    chain.append(MeshServerInterceptor(settings, **kw))
    return chain
