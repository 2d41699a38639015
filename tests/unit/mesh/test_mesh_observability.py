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


def _json_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith('{"')]


def test_utc_timestamp_is_iso_8601_with_microseconds() -> None:
    import datetime as dt
    import re

    from mesh.observability import utc_timestamp

    for t in (0.0, 1_764_077_815.777451, 1_764_077_815.999_999_7, 1_764_077_816.0, 1_764_077_816.000_001):
        got = utc_timestamp(t)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", got), got
        want = dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert got.startswith(want)  # the second is cached; the fraction never rounds up into it
        assert abs(int(got[-7:-1]) - (t - int(t)) * 1e6) <= 1
    assert utc_timestamp(1_764_077_815.5) == "2025-11-25T13:36:55.500000Z"


def test_log_line_renders_what_structlog_renders(capsys) -> None:
    from mesh.observability import log_line

    configure_logging(Settings(), "sites")
    log = structlog.get_logger("t")
    structlog.contextvars.bind_contextvars(correlation_id="c-9", site_id="NBO-7")
    try:
        capsys.readouterr()
        fields = {"method": "/a.B/C", "code": "OK", "duration_ms": 1.5, "correlation_id": "c-9",
                  "tenant": None, "subject": "bob"}
        log.info("grpc.call", **fields)
        log_line("grpc.call", dict(fields))
    finally:
        structlog.contextvars.unbind_contextvars("correlation_id", "site_id")
        configure_logging(Settings(), "")
    slow, fast = _json_lines(capsys.readouterr().out)
    assert list(fast) == list(slow)  # the same keys, in the same order
    assert {k: v for k, v in fast.items() if k != "timestamp"} == {k: v for k, v in slow.items() if k != "timestamp"}
    assert fast["site_id"] == "NBO-7" and fast["service"] == "sites" and fast["level"] == "info"
    assert fast["timestamp"].endswith("Z") and slow["timestamp"].endswith("Z")


def test_log_line_skips_filtered_levels_and_defers_to_another_configuration(capsys) -> None:
    import logging

    from mesh.observability import log_enabled, log_line

    configure_logging(Settings(log_level="warning"), "kpi")
    try:
        assert not log_enabled(logging.INFO) and log_enabled(logging.WARNING)
        capsys.readouterr()
        log_line("hidden.event", {"a": 1})
        log_line("shown.event", {"a": 2}, logging.WARNING)
        lines = _json_lines(capsys.readouterr().out)
        assert [(x["event"], x["level"], x["a"]) for x in lines] == [("shown.event", "warning", 2)]
        # structlog configured by someone else (here: capture_logs): the line goes through it.
        with structlog.testing.capture_logs() as captured:
            log_line("grpc.call", {"code": "OK"}, logging.WARNING)
        assert captured == [{"event": "grpc.call", "code": "OK", "log_level": "warning"}]
        assert _json_lines(capsys.readouterr().out) == []
    finally:
        configure_logging(Settings(), "")


def test_stdlib_extra_fields_become_keys(capsys) -> None:
    import logging

    configure_logging(Settings(), "sites")
    try:
        logging.getLogger("towerco.sdk.breaker").warning(
            "breaker_state_change", extra={"target": "127.0.0.1:1", "from_state": "closed", "to_state": "open"})
    finally:
        configure_logging(Settings(), "")
    line = [x for x in _json_lines(capsys.readouterr().err) if x["event"] == "breaker_state_change"][0]
    assert (line["target"], line["from_state"], line["to_state"]) == ("127.0.0.1:1", "closed", "open")
    assert line["level"] == "warning" and line["service"] == "sites"
