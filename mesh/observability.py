"""Logs, metrics and traces for every server process.

- Logs: structlog, one JSON object per line on stdout with timestamp, level, event, the service
  name, every contextvar bound with structlog.contextvars, and trace_id/span_id when tracing is
  on and an OpenTelemetry span is active. Level from settings.log_level. Standard-library loggers (grpc,
  asyncio, asyncpg, nats) are rendered the same way. `log_line()` writes one such line without
  the processor chain (same keys, same format), for events logged on every request (the gRPC
  access log); it falls back to structlog when the process runs another structlog configuration.
- Metrics: prometheus_client in the default registry; `await serve_metrics(port)` serves /metrics
  from the event loop (servers), `start_metrics_server(port)` from a daemon thread (workers);
  port 0 takes a free port and the real one is returned.
- Traces: OpenTelemetry, off unless settings.otel_exporter is "console" or "otlp";
  `setup_tracing` then returns the grpc aio server interceptor to put first in the chain.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace as _otel_trace
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from mesh.config import Settings

# ----------------------------------------------------------------------------------------------
# Metrics (one set per process, labelled by gRPC service and method)

GRPC_HANDLED = Counter(
    "towerco_grpc_server_handled",
    "gRPC calls completed on the server, by status code.",
    ["service", "method", "code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "towerco_grpc_server_handling_seconds",
    "Time from receiving a gRPC call to finishing it (streams: until the stream ends).",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GRPC_IN_FLIGHT = Gauge(
    "towerco_grpc_server_in_flight",
    "gRPC calls being handled right now.",
    ["service", "method"],
)
WORKER_HEARTBEAT = Gauge(
    "towerco_worker_heartbeat_seconds",
    "Unix time of the worker's latest event-loop heartbeat (every second); `towerco health` calls a "
    "worker whose heartbeat is older than 15 s stalled, though its metrics thread still answers.",
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> tuple[int, Callable[[], None]]:
    """Serve /metrics from a daemon thread (for processes without a loop at hand, e.g. workers).

    Port 0 takes a free port. Returns the bound port and a function that stops serving (quickly).
    """
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

    httpd = make_server(host, port, make_wsgi_app(REGISTRY), ThreadingWSGIServer, handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name="metrics-http", daemon=True)
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)

    return int(httpd.server_port), stop


async def serve_metrics(port: int, host: str = "127.0.0.1") -> tuple[int, Callable[[], Awaitable[None]]]:
    """Serve Prometheus text on GET /metrics at (host, port) from the running event loop.

    Port 0 takes a free port. Returns the bound port and an async function that stops serving.
    A tiny asyncio HTTP/1.0 responder: no thread, and stopping it is immediate.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + ["", ""]
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"method not allowed\n"
            elif path in ("/metrics", "/"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found; try /metrics\n"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    real_port = int(server.sockets[0].getsockname()[1])

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return real_port, stop


# ----------------------------------------------------------------------------------------------
# Logs

# (whole second, "YYYY-MM-DDTHH:MM:SS") of the last timestamp: one tuple, swapped atomically, so
# threads (stdlib loggers) may share it.
_ts_cache: tuple[int, str] = (-1, "")


def utc_timestamp(now: float | None = None) -> str:
    """`now` (default: time.time()) as UTC ISO 8601 with microseconds and "Z".

    E.g. "2026-11-25T13:36:55.777451Z". The date and time of day are formatted once per second;
    the rest is one f-string, several times cheaper than datetime.isoformat().
    """
    global _ts_cache
    t = time.time() if now is None else now
    sec = int(t)
    cached_sec, prefix = _ts_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache = (sec, prefix)
    return f"{prefix}.{int((t - sec) * 1_000_000):06d}Z"


def _timestamp(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["timestamp"] = utc_timestamp()
    return event


def _trace_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if _tracer_provider is not None and "trace_id" not in event:
        ids = current_trace_ids()
        if ids is not None:
            event["trace_id"], event["span_id"] = ids
    return event


def _json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=repr).decode()


_STRUCTLOG_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_STRUCTLOG_PREFIX_LEN = len(_STRUCTLOG_PREFIX)
# structlog's registry of the ContextVars behind bind_contextvars (one per key ever bound).
# Asking each of them is cheaper than walking the whole context like merge_contextvars does;
# if a structlog release drops the registry, get_contextvars() gives the same answer.
_structlog_vars: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


def _bound_contextvars() -> list[tuple[str, Any]]:
    """The (key, value) pairs bound with structlog.contextvars in this context."""
    registry = _structlog_vars
    if registry is None:  # pragma: no cover - depends on the structlog release
        return list(structlog.contextvars.get_contextvars().items())
    out = []
    for name, var in tuple(registry.items()):
        value = var.get()
        if value is not Ellipsis:  # unset, or unbound with unbind_contextvars()
            out.append((name[_STRUCTLOG_PREFIX_LEN:], value))
    return out


class _LineLog:
    """What configure_logging set up, for log_line(): level, service and the processors."""

    __slots__ = ("level", "service", "processors", "count")

    def __init__(self, level: int, service: str, processors: list[Any]):
        self.level = level
        self.service = service
        self.processors = processors
        self.count = len(processors)


_line_log: _LineLog | None = None
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "critical"}


def log_enabled(level: int = logging.INFO) -> bool:
    """Whether a line at `level` would be written (as configured by configure_logging)."""
    cfg = _line_log
    return cfg is None or level >= cfg.level


def log_line(event: str, fields: dict[str, Any], level: int = logging.INFO, *,
             logger: Any = None) -> None:
    """Write one log line for `event` with `fields`, like `logger.<level>(event, **fields)` would.

    The line has the same keys in the same order as the configured structlog pipeline renders
    (the fields, event, the structlog contextvars not among the fields, level, timestamp,
    service, trace_id/span_id) and goes to the same place (the current sys.stdout), but skips
    the processor chain: it is meant for events logged on every request. Nothing is done when
    `level` is filtered out. When the process did not call configure_logging, or structlog has
    since been configured otherwise (e.g. structlog.testing.capture_logs), it logs through
    `logger` (default: structlog.get_logger("towerco")) instead. `fields` is consumed.
    """
    cfg = _line_log
    processors = structlog.get_config()["processors"]
    # (capture_logs swaps the processors inside the same list, hence the look at its content)
    if cfg is None or processors is not cfg.processors or len(processors) != cfg.count or processors[-1] is not _json:
        log = logger if logger is not None else structlog.get_logger("towerco")
        getattr(log, _LEVEL_NAMES.get(level, "info"))(event, **fields)
        return
    if level < cfg.level:
        return
    fields["event"] = event
    for key, value in _bound_contextvars():
        if key not in fields:
            fields[key] = value
    fields["level"] = _LEVEL_NAMES.get(level, "info")
    fields["timestamp"] = utc_timestamp()
    if cfg.service and "service" not in fields:
        fields["service"] = cfg.service
    if _tracer_provider is not None and "trace_id" not in fields:
        ids = current_trace_ids()
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
    out = sys.stdout
    out.write(orjson.dumps(fields, default=repr, option=orjson.OPT_APPEND_NEWLINE).decode())
    out.flush()


class _StdoutLogger:
    """Writes each rendered line to whatever sys.stdout is now (test capture friendly)."""

    def msg(self, message: str) -> None:
        out = sys.stdout
        out.write(message + "\n")
        out.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stdout_logger_factory(*_args: Any) -> _StdoutLogger:
    return _StdoutLogger()


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def configure_logging(settings: Settings, service: str = "") -> None:
    """Configure structlog JSON logging (and route stdlib logging through it). Idempotent."""
    global _line_log
    level = _LEVELS.get(settings.log_level.lower(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    if service:
        def add_service(_l: Any, _n: str, event: dict[str, Any]) -> dict[str, Any]:
            event.setdefault("service", service)
            return event

        shared.append(add_service)
    shared.append(_trace_ids)
    processors = [*shared, structlog.processors.dict_tracebacks, _json]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stdout_logger_factory,
        cache_logger_on_first_use=True,
    )
    _line_log = _LineLog(level, service, structlog.get_config()["processors"])
    formatter = structlog.stdlib.ProcessorFormatter(
        # ExtraAdder: a stdlib record's `extra=` fields become keys (e.g. the sdk breaker's
        # target, from_state and to_state), as structlog keyword arguments do.
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.dict_tracebacks,
            _json,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_towerco", False)]:
        root.removeHandler(old)
    handler._towerco = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(level, logging.INFO))


def get_logger(name: str = "towerco") -> Any:
    return structlog.get_logger(name)


# ----------------------------------------------------------------------------------------------
# Traces

_tracer_provider: Any = None


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the active span, or None."""
    ctx = _otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def setup_tracing(settings: Settings, service: str) -> Any | None:
    """Set up OpenTelemetry per settings.otel_exporter; return the grpc aio server interceptor or None."""
    global _tracer_provider
    exporter_name = settings.otel_exporter.lower()
    if exporter_name in ("", "none"):
        return None
    log = get_logger("towerco.observability")
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        exporter: Any = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("otel.exporter_missing", exporter="otlp",
                        hint="pip install opentelemetry-exporter-otlp; tracing stays off")
            return None
        exporter = OTLPSpanExporter()
    else:
        log.warning("otel.exporter_unknown", exporter=exporter_name)
        return None
    if _tracer_provider is None:
        _tracer_provider = TracerProvider(resource=Resource.create({"service.name": f"towerco-{service}"}))
        _tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(_tracer_provider)
    return aio_server_interceptor(tracer_provider=_tracer_provider)  # type: ignore[no-untyped-call]


def shutdown_tracing() -> None:
    """Flush spans (called on process stop)."""
    if _tracer_provider is not None:
        _tracer_provider.force_flush(timeout_millis=2000)
