"""An in-process TranscodingService (the test-only contract) and helpers to serve a gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import uvicorn
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from towerco.testing.v1 import transcoding_pb2 as pb
from towerco.testing.v1 import transcoding_pb2_grpc as pb_grpc

from mesh.embedded import free_port


def _md(context) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class FakeTranscoding(pb_grpc.TranscodingServiceServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.last_metadata: dict[str, str] = {}

    def _seen(self, context) -> None:
        self.calls += 1
        self.last_metadata = _md(context)

    async def GetBook(self, request, context):
        self._seen(context)
        return pb.GetBookResponse(name=request.name, view=request.view)

    async def GetFile(self, request, context):
        self._seen(context)
        return pb.GetFileResponse(path=request.path)

    async def ArchiveShelf(self, request, context):
        self._seen(context)
        return pb.ArchiveShelfResponse(request=request)

    async def CreateBook(self, request, context):
        self._seen(context)
        book = pb.Book()
        book.CopyFrom(request.book)
        book.publish_time.FromSeconds(1_700_000_000)
        return pb.CreateBookResponse(book=book, etag="e1")

    async def UpdateBook(self, request, context):
        self._seen(context)
        return pb.UpdateBookResponse(book=request.book, update_mask=request.update_mask)

    async def Echo(self, request, context):
        self._seen(context)
        md = _md(context)
        left = context.time_remaining()
        return pb.EchoResponse(
            request=request,
            authorization=md.get("authorization", ""),
            correlation_id=md.get("x-correlation-id", ""),
            deadline_s=left or 0.0,
        )

    async def Fail(self, request, context):
        self._seen(context)
        status = status_pb2.Status(code=request.code, message=request.message)
        if request.violation:
            field, _, desc = request.violation.partition(":")
            br = error_details_pb2.BadRequest()
            br.field_violations.add(field=field, description=desc)
            status.details.add().Pack(br)
        if request.retry_after_s:
            ri = error_details_pb2.RetryInfo()
            ri.retry_delay.seconds = request.retry_after_s
            status.details.add().Pack(ri)
        if request.reason:
            a = any_pb2.Any()
            a.Pack(error_details_pb2.ErrorInfo(reason=request.reason, domain="towerco.io"))
            status.details.append(a)
        await context.abort_with_status(rpc_status.to_status(status))

    async def Sleep(self, request, context):
        self._seen(context)
        left = context.time_remaining() or 0.0
        await asyncio.sleep(request.duration.ToTimedelta().total_seconds())
        return pb.SleepResponse(deadline_s=left)

    async def Ticks(self, request, context):
        self._seen(context)
        seq = request.after_sequence
        pad = "x" * request.padding
        n = 0
        while request.count == 0 or n < request.count:
            if request.fail_after and n >= request.fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "ticker went away")
            seq += 1
            n += 1
            yield pb.TicksResponse(sequence=seq, padding=pad)
            if request.interval_ms:
                await asyncio.sleep(request.interval_ms / 1000)
            else:
                await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def fake_server(port: int = 0) -> AsyncIterator[tuple[str, FakeTranscoding, grpc.aio.Server]]:
    server = grpc.aio.server()
    servicer = FakeTranscoding()
    pb_grpc.add_TranscodingServiceServicer_to_server(servicer, server)
    hs = health.aio.HealthServicer()
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{bound}", servicer, server
    finally:
        await server.stop(grace=None)


@contextlib.asynccontextmanager
async def serve_gateway(app, log_level: str = "warning") -> AsyncIterator[str]:
    """Run the ASGI app under a real uvicorn server in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, access_log=False, lifespan="on", ws_ping_interval=None)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
