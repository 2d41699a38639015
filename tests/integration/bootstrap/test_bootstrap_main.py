"""mesh.bootstrap.main in a real child process: starts, serves health, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

CHILD = """
from mesh.bootstrap import main

async def setup(rt):
    return []

main("sites", setup, port=0, metrics_port=0, database=False, nats=False)
"""


@pytest.mark.slow
async def test_main_runs_until_sigterm_then_stops_gracefully() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        started = None
        while started is None:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            assert raw, (await proc.stderr.read()).decode()
            line = json.loads(raw)
            if line["event"] == "service.started":
                started = line
        assert started["service"] == "sites" and started["port"] > 0 and started["metrics_port"] > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started['port']}") as channel:
            resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0
        events = [json.loads(x)["event"] for x in rest.decode().splitlines() if x.startswith('{"')]
        assert "service.stopped" in events
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
