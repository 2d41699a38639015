"""grpc.aio client interceptors: propagation (token, correlation id, deadline) and the breaker.

Order on a channel built by `create_channel`: PropagationInterceptor first (outermost), then
BreakerInterceptor, then any interceptors you add. gRPC core retries below all of them, so the
breaker sees the final outcome of a call after its retries; a call that the propagation
interceptor refuses (deadline already spent) never reaches the breaker.

Each of the two classes handles all four call kinds; pass `obj.grpc_interceptors()` (four
adapters, one per grpc.aio interceptor class) to a channel, because grpc.aio files an
interceptor object under one kind only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import grpc
from grpc.aio import (
    AioRpcError,
    ClientCallDetails,
    Metadata,
    StreamStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    UnaryUnaryClientInterceptor,
)

from sdk import context
from sdk.breaker import CircuitBreaker, CircuitOpenError, Permit

__all__ = [
    "AUTHORIZATION",
    "CORRELATION_ID",
    "DEFAULT_MARGIN_S",
    "BreakerInterceptor",
    "PropagationInterceptor",
    "TokenSource",
]

AUTHORIZATION = "authorization"
CORRELATION_ID = "x-correlation-id"
DEFAULT_MARGIN_S = 0.05

TokenSource = str | Callable[[], str | None] | Callable[[], Awaitable[str | None]] | None


def _new_correlation_id() -> str:
    """32 random hex digits, like uuid4().hex without the system call and the UUID object."""
    return f"{random.getrandbits(128):032x}"


def _metadata_keys(metadata: Any) -> set[str]:
    if not metadata:
        return set()
    return {key.lower() for key, _ in metadata}

TRAILERS_GRACE_S = 0.05  # how long a stream's first headers wait for a trailers-only status


class _AllKinds:
    """Handles the four call kinds. grpc.aio files an interceptor object under ONE kind only
    (the first base class it matches), so `grpc_interceptors()` wraps this object in four
    single-kind adapters, one per grpc.aio interceptor class."""

    def grpc_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


class _UnaryUnary(UnaryUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self.inner.intercept_unary_unary(continuation, client_call_details, request)


class _UnaryStream(UnaryStreamClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self.inner.intercept_unary_stream(continuation, client_call_details, request)


class _StreamUnary(StreamUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self.inner.intercept_stream_unary(continuation, client_call_details, request_iterator)


class _StreamStream(StreamStreamClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self.inner.intercept_stream_stream(continuation, client_call_details, request_iterator)


class PropagationInterceptor(_AllKinds):
    """Adds `authorization: Bearer <token>`, `x-correlation-id` and a propagated deadline.

    * token: the explicit `token` (a string, or a sync/async callable returning one) wins over
      the context's outgoing token; metadata the caller passed on the call wins over both.
    * correlation id: per-call metadata, else the context's, else 32 new random hex digits.
    * deadline: timeout = min(the call's timeout, context deadline remaining - margin). When no
      time is left after the margin, the call fails at once with DEADLINE_EXCEEDED and is never
      sent.
    """

    def __init__(self, token: TokenSource = None, *, margin_s: float = DEFAULT_MARGIN_S) -> None:
        self._token = token
        self._margin_s = margin_s

    async def _token_value(self) -> str | None:
        source = self._token
        if source is None:
            return context.outgoing_token.get()
        if isinstance(source, str):
            value: Any = source
        else:
            value = source()
            if inspect.isawaitable(value):
                value = await value
        return value or context.outgoing_token.get()

    async def _details(self, details: ClientCallDetails) -> ClientCallDetails:
        timeout = details.timeout
        dl = context.deadline.get()
        if dl is not None:
            left = dl - time.monotonic() - self._margin_s
            if left <= 0:
                raise AioRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    initial_metadata=None,
                    trailing_metadata=None,
                    details="deadline exceeded before the call was sent (no time left from the caller's deadline)",
                    debug_error_string="towerco.sdk deadline propagation",
                )
            if timeout is None or left < timeout:
                timeout = left

        present = _metadata_keys(details.metadata)
        metadata = Metadata.from_tuple(tuple(details.metadata)) if details.metadata else Metadata()
        if AUTHORIZATION not in present:
            token = await self._token_value()
            if token:
                if token[:7].lower() != "bearer ":
                    token = "Bearer " + token
                metadata.add(AUTHORIZATION, token)
        if CORRELATION_ID not in present:
            metadata.add(CORRELATION_ID, context.correlation_id.get() or _new_correlation_id())
        return details._replace(timeout=timeout, metadata=metadata)  # type: ignore[attr-defined,no-any-return]

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(await self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(await self._details(client_call_details), request_iterator)


class _RejectedCall(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary-unary call the breaker rejected: finished, UNAVAILABLE, never sent.

    Awaiting it raises CircuitOpenError, as awaiting a failed call raises AioRpcError. The
    interceptor returns this instead of raising inside grpc.aio's interceptor task: an exception
    raised there is kept by the task, and its traceback holds the frames that hold the task, a
    reference cycle per rejected call that only the garbage collector frees (about 40 objects
    each, and GC pauses in the fail-fast latency). Raised here, the exception travels through the
    caller's frames only and is freed as soon as the caller drops it.
    """

    __slots__ = ("_target", "_retry_in_s")

    def __init__(self, target: str, retry_in_s: float) -> None:
        self._target = target
        self._retry_in_s = retry_in_s

    def _error(self) -> CircuitOpenError:
        return CircuitOpenError(self._target, self._retry_in_s)

    def __await__(self) -> Generator[Any, None, Any]:
        raise self._error()
        yield  # type: ignore[unreachable]  # makes __await__ a generator, as the protocol wants

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    async def initial_metadata(self) -> Metadata:
        return Metadata()

    async def trailing_metadata(self) -> Metadata:
        return Metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    async def details(self) -> str:
        return self._error().details() or ""

    async def debug_error_string(self) -> str:
        return self._error().debug_error_string() or ""

    async def wait_for_connection(self) -> None:
        raise self._error()


class BreakerInterceptor(_AllKinds):
    """Runs every call of a channel through one target's CircuitBreaker.

    * unary-unary: the outcome is the call's final code and its duration (slow calls count).
    * response streams (unary-stream, stream-stream): the outcome is decided at the first sign
      of life from the server (response headers, which come with the first response at the
      latest) or at the end of the call, whichever comes first; a stream that got headers counts
      as a success, one that ended before them counts by its code. A long-lived stream therefore
      holds a half-open trial slot only until the server first answers.
    * client streams (stream-unary): the outcome is the final code, at the end of the call.
    * stream durations are never judged slow (streams are long by nature).
    * a call the client cancels is no outcome; its half-open trial slot is given back.
    * a rejected call is never sent and fails with CircuitOpenError (UNAVAILABLE); rejections
      are counted in towerco_breaker_rejected_total, never logged one by one. A rejected
      unary-unary call is handed back as a finished call (see _RejectedCall) rather than raised
      inside grpc.aio's interceptor task, which keeps the fail-fast path free of garbage cycles.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self._watchers: set[asyncio.Task[None]] = set()

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        breaker = self.breaker
        permit = breaker.try_acquire()
        if not isinstance(permit, Permit):
            return _RejectedCall(breaker.target, permit)
        try:
            call = await continuation(client_call_details, request)
        except asyncio.CancelledError:
            breaker.release(permit)
            raise
        except AioRpcError as exc:
            breaker.record(permit, exc.code(), breaker.elapsed(permit))
            raise
        except BaseException:
            breaker.release(permit)
            raise
        try:
            await call
        except AioRpcError as exc:
            breaker.record(permit, exc.code(), breaker.elapsed(permit))
        except asyncio.CancelledError:
            breaker.release(permit)
            raise
        except BaseException:
            # Not a gRPC outcome (e.g. a response that failed to deserialize): no verdict.
            breaker.release(permit)
        else:
            breaker.record(permit, grpc.StatusCode.OK, breaker.elapsed(permit))
        return call

    def _watch(self, call: Any, permit: Permit, *, first_sign: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._observe(call, permit, first_sign))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _observe(self, call: Any, permit: Permit, first_sign: bool) -> None:
        breaker = self.breaker
        try:
            if first_sign:
                await call.initial_metadata()
                # A trailers-only answer (an immediate error) resolves the headers a moment before
                # the status is set: give the status that moment, or it would count as a success.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(call.code()), TRAILERS_GRACE_S)
                if not call.done():
                    breaker.record(permit, grpc.StatusCode.OK, None)
                    return
            breaker.record(permit, await call.code(), None)
        except asyncio.CancelledError:
            breaker.release(permit)
            raise
        except AioRpcError as exc:
            breaker.record(permit, exc.code(), None)
        except Exception:
            breaker.release(permit)

    async def _stream(self, continuation: Any, client_call_details: Any, request_or_iterator: Any, *,
                      first_sign: bool) -> Any:
        permit = self.breaker.acquire()
        try:
            call = await continuation(client_call_details, request_or_iterator)
        except AioRpcError as exc:
            self.breaker.record(permit, exc.code(), None)
            raise
        except BaseException:
            self.breaker.release(permit)
            raise
        self._watch(call, permit, first_sign=first_sign)
        return call

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._stream(continuation, client_call_details, request, first_sign=True)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator, first_sign=False)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator, first_sign=True)
