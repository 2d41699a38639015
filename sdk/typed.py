"""The runtime under the typed clients of sdk/generated.py: one async and one blocking base class.

A generated service class only names its methods and their types; calling goes through these
helpers, which turn every failure into a typed `sdk.errors.RpcError` and implement pagination.
The blocking variant runs the very same async calls (with the same interceptors: token,
correlation id, deadline, breaker, retries) on a private event loop thread, carrying the
caller's `sdk.context` over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc.aio import AioRpcError

from sdk.errors import from_rpc_error

__all__ = ["AsyncService", "BlockingService", "LoopThread", "Page"]

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

# the keyword arguments every call accepts (those of grpc.aio multi-callables)
CallOptions = dict[str, Any]


class Page:
    """How a paginated RPC is walked: the request's `page` (towerco.common.v1.PageRequest), the
    response's `page.next_token`, and the repeated field holding the items."""

    __slots__ = ("items_field", "method")

    def __init__(self, method: str, items_field: str) -> None:
        self.method = method
        self.items_field = items_field


def _typed(exc: AioRpcError) -> BaseException:
    return from_rpc_error(exc)


class AsyncService:
    """Base of a generated async service client: the generated stub on a shared channel."""

    SERVICE: str = ""
    STUB: Callable[[grpc.aio.Channel], Any]
    PAGES: dict[str, Page] = {}  # request full name -> how to walk it

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = type(self).STUB(channel)

    async def _unary(self, method: str, request: Message, options: CallOptions) -> Any:
        try:
            return await getattr(self.stub, method)(request, **options)
        except AioRpcError as exc:
            typed = _typed(exc)
            if typed is exc:
                raise
            raise typed from None

    async def _client_stream(self, method: str, requests: AsyncIterable[Message] | Iterable[Message],
                             options: CallOptions) -> Any:
        try:
            return await getattr(self.stub, method)(requests, **options)
        except AioRpcError as exc:
            typed = _typed(exc)
            if typed is exc:
                raise
            raise typed from None

    async def _server_stream(self, method: str, request: Message | AsyncIterable[Message] | Iterable[Message],
                             options: CallOptions) -> AsyncIterator[Any]:
        call = getattr(self.stub, method)(request, **options)
        try:
            async for item in call:
                yield item
        except AioRpcError as exc:
            typed = _typed(exc)
            if typed is exc:
                raise
            raise typed from None
        finally:
            call.cancel()  # a consumer that stops early ends the stream; a no-op once it ended

    async def _list_all(self, request: Message, page_size: int, options: CallOptions) -> AsyncIterator[Any]:
        page = self.PAGES.get(request.DESCRIPTOR.full_name)
        if page is None:
            raise TypeError(f"{self.SERVICE} has no paginated RPC taking {request.DESCRIPTOR.full_name}")
        current = type(request)()
        current.CopyFrom(request)
        if page_size:
            current.page.size = page_size  # type: ignore[attr-defined]
        while True:
            reply = await self._unary(page.method, current, options)
            for item in getattr(reply, page.items_field):
                yield item
            token = reply.page.next_token
            if not token:
                return
            current.page.token = token  # type: ignore[attr-defined]


class LoopThread:
    """An event loop on a daemon thread, for the blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="towerco-sdk-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop with the caller's context variables; block for its result."""
        ctx = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            task = self.loop.create_task(coro, context=ctx)

            def finish(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    done.cancel()
                elif (exc := t.exception()) is not None:
                    done.set_exception(exc)
                else:
                    done.set_result(t.result())

            task.add_done_callback(finish)

        self.loop.call_soon_threadsafe(start)
        return done.result()

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """A blocking iterator over an async one (each step runs on the loop)."""

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await items.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self.run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            closer = getattr(items, "aclose", None)
            if closer is not None:
                self.run(_await(closer()))

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


async def _await(aw: Awaitable[T]) -> T:
    return await aw


class BlockingService:
    """Base of a generated blocking service client: each call runs its async twin on the loop."""

    def __init__(self, service: AsyncService, runner: LoopThread) -> None:
        self._service = service
        self._runner = runner

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        return self._runner.iterate(items)
