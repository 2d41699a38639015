"""Logs and the metrics endpoints (mesh.observability)."""

from __future__ import annotations

import json
import urllib.request

import structlog

from mesh.config import Settings
from mesh.observability import GRPC_HANDLED, configure_logging, serve_metrics, start_metrics_server


def test_threaded_metrics_endpoint_serves_and_stops() -> None:
    GRPC_HANDLED.labels("towerco.test.v1.X", "Y", "OK").inc()
    port, stop = start_metrics_server(0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'towerco_grpc_server_handled_total{code="OK",method="Y",service="towerco.test.v1.X"}' in text
    finally:
        stop()


async def test_asyncio_metrics_endpoint() -> None:
    import httpx

    port, stop = await serve_metrics(0)
    try:
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert ok.status_code == 200 and "towerco_grpc_server_handled_total" in ok.text
            assert ok.headers["content-type"].startswith("text/plain")
            assert (await client.get(f"http://127.0.0.1:{port}/nope")).status_code == 404
            assert (await client.post(f"http://127.0.0.1:{port}/metrics")).status_code == 405
    finally:
        await stop()


def test_json_logs_with_level_filter_and_context(capsys) -> None:
    configure_logging(Settings(log_level="warning"), "kpi")
    log = structlog.get_logger("t")
    structlog.contextvars.bind_contextvars(correlation_id="c-1")
    try:
        log.info("hidden.event")
        log.warning("shown.event", site_id="NBO-1")
    finally:
        structlog.contextvars.unbind_contextvars("correlation_id")
        configure_logging(Settings(), "")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"')]
    assert [x["event"] for x in lines] == ["shown.event"]
    line = lines[0]
    assert line["level"] == "warning" and line["service"] == "kpi" and line["correlation_id"] == "c-1"
    assert line["site_id"] == "NBO-1" and line["timestamp"].endswith("Z")
