"""Worker health: the Prometheus endpoint with the event-loop heartbeat, the worker metrics ports
in the process registry, and the heartbeat a running worker keeps."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from cli.health import check
from cli.processes import BY_NAME
from mesh import lifecycle
from mesh.config import Settings
from mesh.observability import WORKER_HEARTBEAT


@pytest.fixture
def serve_text() -> Iterator:
    """serve_text(status, body) -> URL of a server answering every GET with them."""
    servers = []

    def start(status: int, body: str) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - stdlib name
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/metrics"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_a_fresh_heartbeat_is_healthy_a_stale_one_is_not(serve_text):
    fresh = serve_text(200, f"# HELP x\ntowerco_worker_heartbeat_seconds {time.time() - 1:.3f}\n")
    assert check("metrics", fresh) == (True, "HTTP 200, heartbeat ok")
    stale = serve_text(200, f"towerco_worker_heartbeat_seconds {time.time() - 60:.3f}\n")
    ok, status = check("metrics", stale)
    assert not ok and "stalled" in status
    starting = serve_text(200, "towerco_worker_heartbeat_seconds 0.0\n")
    assert check("metrics", starting) == (False, "no heartbeat yet")
    without = serve_text(200, "python_info 1.0\n")  # a process without the gauge: answering is all
    assert check("metrics", without) == (True, "HTTP 200")
    assert check("metrics", serve_text(503, "")) == (False, "HTTP 503")


def test_an_unreachable_worker_is_unhealthy():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, status = check("metrics", f"http://127.0.0.1:{port}/metrics", timeout=0.5)
    assert not ok and status


def test_workers_have_metrics_endpoints_that_can_be_moved_or_turned_off(monkeypatch):
    settings = Settings()
    calc = BY_NAME["kpi_calculator"]
    assert calc.metrics_port(settings) == 9102 and calc.endpoint(settings) == "http://127.0.0.1:9102/metrics"
    assert BY_NAME["ingestor"].metrics_port(settings) == 9101
    monkeypatch.setenv("TOWERCO_KPI_CALCULATOR_METRICS_PORT", "19102")
    monkeypatch.setenv("TOWERCO_INGESTOR_METRICS_PORT", "-1")
    moved = Settings.from_env()
    assert calc.endpoint(moved) == "http://127.0.0.1:19102/metrics"
    assert BY_NAME["ingestor"].metrics_port(moved) is None and BY_NAME["ingestor"].endpoint(moved) is None
    assert check("metrics", None) == (True, "no health check")


async def test_a_running_worker_keeps_its_heartbeat():
    class Worker:
        async def run(self) -> None:
            await asyncio.sleep(0.3)

        async def stop(self) -> None:
            pass

    WORKER_HEARTBEAT.set(0)
    started = time.time()
    await lifecycle.run_until_signalled(Worker())
    assert REGISTRY.get_sample_value("towerco_worker_heartbeat_seconds") >= started
