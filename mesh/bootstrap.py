"""Process bootstrap for every gRPC service: one call builds and runs a complete server.

    async def setup(rt: Runtime) -> list[ServiceSpec]:
        servicer = SitesServicer(rt.pool, rt.js)
        rt.spawn(OutboxRelay(rt.pool, rt.js, schema="sites").run())
        return [ServiceSpec("towerco.sites.v1.SitesService", servicer,
                            sites_pb2_grpc.add_SitesServiceServicer_to_server)]

    if __name__ == "__main__":
        main("sites", setup)

`start()` reads settings, configures logging and tracing, opens the PostgreSQL pool and the NATS
connection (JetStream streams ensured), calls `setup`, adds the servicers behind the interceptor
chain (mesh.interceptors), grpc.health.v1 (SERVING for "" and every service), reflection, binds
settings.host:port and starts; Prometheus metrics are served on port + 2000.
`RunningServer.stop()` flips health to NOT_SERVING, waits a short drain so load balancers notice,
stops the server with a grace period, cancels spawned tasks, runs on_shutdown callbacks and closes
NATS and the pool. `main()` does all that around SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.config import Settings, get_settings
from mesh.interceptors import server_interceptors
from mesh.observability import configure_logging, get_logger, serve_metrics, shutdown_tracing

DRAIN_S = 0.5  # time between health NOT_SERVING and refusing new calls


@dataclass
class ServiceSpec:
    full_name: str
    servicer: object
    add: Callable[[object, grpc.aio.Server], None]


@dataclass
class Runtime:
    """What a service's setup() gets: settings, shared connections and lifecycle hooks."""

    service: str
    settings: Settings
    pool: Any = None  # asyncpg.Pool | None
    nc: Any = None  # nats.aio.client.Client | None
    js: Any = None  # JetStreamContext | None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    _on_shutdown: list[Callable[[], Awaitable[Any]]] = field(default_factory=list, repr=False)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` in the background until it ends or the process shuts down (then cancelled).

        A task that dies with an exception is logged (it does not take the server down)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            get_logger("towerco.bootstrap").error(
                "task.failed", service=self.service, task=task.get_name(), exc_info=exc
            )

    def on_shutdown(self, callback: Callable[[], Awaitable[Any]]) -> None:
        """Await `callback()` on shutdown, after the server stopped (last registered, first run)."""
        self._on_shutdown.append(callback)


Setup = Callable[[Runtime], Awaitable[list[ServiceSpec]]]


@dataclass
class RunningServer:
    service: str
    port: int
    metrics_port: int | None
    runtime: Runtime
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: list[str]
    _stop_metrics: Callable[[], Awaitable[None]] | None = None
    _stopped: bool = False

    async def stop(self, grace: float = 5.0, *, drain_s: float = DRAIN_S) -> None:
        """Graceful stop: NOT_SERVING, drain, stop accepting, finish in-flight calls, clean up."""
        if self._stopped:
            return
        self._stopped = True
        log = get_logger("towerco.bootstrap")
        started = time.monotonic()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if drain_s > 0:
            await asyncio.sleep(drain_s)
        await self.server.stop(grace)
        await _close_runtime(self.runtime)
        if self._stop_metrics is not None:
            await self._stop_metrics()
        shutdown_tracing()
        log.info("service.stopped", service=self.service, seconds=round(time.monotonic() - started, 3))

    async def wait(self) -> None:
        await self.server.wait_for_termination()


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Server reflection under both names clients use: v1alpha (grpcurl <= 1.8) and v1.

    grpcio-reflection ships only v1alpha; v1's messages are identical on the wire (same fields,
    other package), so the same servicer answers the v1 method too.
    """
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servicer = reflection.aio.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(REFLECTION_V1, {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        }),
    ))


async def _close_runtime(rt: Runtime) -> None:
    log = get_logger("towerco.bootstrap")
    tasks = list(rt._tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    for callback in reversed(rt._on_shutdown):
        try:
            await callback()
        except Exception as exc:  # one failing hook must not skip the rest
            log.error("shutdown.callback_failed", service=rt.service, exc_info=exc)
    if rt.nc is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.nc.drain(), timeout=5)
        with contextlib.suppress(Exception):
            await rt.nc.close()
    if rt.pool is not None:
        try:
            await asyncio.wait_for(rt.pool.close(), timeout=5)
        except Exception:
            rt.pool.terminate()


async def start(
    service: str,
    setup: Setup,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    database: bool = True,
    nats: bool = True,
    settings: Settings | None = None,
    interceptor_options: dict[str, Any] | None = None,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Build and start the server of `service` (see the module docstring).

    port: None = the settings port, 0 = a free port. metrics_port: None = port + 2000 (a free port
    when port is 0), 0 = a free port, -1 = no metrics endpoint. interceptor_options go to
    MeshServerInterceptor; extra_interceptors run after OpenTelemetry's and before the mesh's.
    """
    settings = settings or get_settings()
    configure_logging(settings, service)
    log = get_logger("towerco.bootstrap")
    rt = Runtime(service=service, settings=settings)
    try:
        if database:
            if not settings.database_url:
                raise RuntimeError("DATABASE_URL is not set (`towerco up` sets it for the processes it starts)")
            from mesh.db import create_pool

            rt.pool = await create_pool(settings.database_url)
        if nats:
            if not settings.nats_url:
                raise RuntimeError("NATS_URL is not set (`towerco up` sets it for the processes it starts)")
            from mesh.events import connect, ensure_streams

            rt.nc = await connect(settings.nats_url, name=f"towerco-{service}")
            rt.js = rt.nc.jetstream()
            await ensure_streams(rt.js)
        specs = await setup(rt)

        server = grpc.aio.server(
            interceptors=server_interceptors(
                settings, service, extra=extra_interceptors, **(interceptor_options or {})
            ),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        names = [spec.full_name for spec in specs]
        for spec in specs:
            spec.add(spec.servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        _enable_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        wanted = settings.port(service) if port is None and service in settings.ports else (port or 0)
        bound = server.add_insecure_port(f"{settings.host}:{wanted}")
        if bound == 0:
            raise RuntimeError(f"cannot bind {settings.host}:{wanted}")
        await server.start()
    except BaseException:
        await _close_runtime(rt)
        raise

    try:
        stop_metrics = None
        real_metrics: int | None = None
        if metrics_port is None:
            metrics_port = bound + 2000 if port is None or port != 0 else 0
        if metrics_port >= 0:
            try:
                real_metrics, stop_metrics = await serve_metrics(metrics_port, settings.host)
            except OSError as exc:
                log.warning("metrics.unavailable", port=metrics_port, error=str(exc))
        running = RunningServer(
            service=service,
            port=bound,
            metrics_port=real_metrics,
            runtime=rt,
            server=server,
            health=health_servicer,
            service_names=names,
            _stop_metrics=stop_metrics,
        )
        log.info("service.started", service=service, host=settings.host, port=bound, metrics_port=real_metrics,
                 services=names)
    except BaseException:
        await server.stop(0)
        await _close_runtime(rt)
        raise
    return running


def main(service: str, setup: Setup, **kw: Any) -> None:
    """Run `service` until SIGTERM/SIGINT, then stop gracefully (health NOT_SERVING, drain, stop)."""

    async def run() -> None:
        running = await start(service, setup, **kw)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.ensure_future(running.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        await running.stop()
        waiter.cancel()

    # uvloop (a dependency) cuts the per-call CPU of a grpc.aio server by ~7% here; plain asyncio
    # stays the fallback where it cannot be imported.
    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
