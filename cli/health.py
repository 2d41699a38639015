"""`towerco health <process>`: one health check, exit 0 when healthy (for container probes).

gRPC processes answer grpc.health.v1.Health/Check (overall server status, service "");
the gateway answers HTTP GET /health with 200; a worker's Prometheus endpoint answers 200 with an
event-loop heartbeat younger than HEARTBEAT_MAX_AGE_S (its metrics thread would answer even with
the loop stuck).
"""

from __future__ import annotations

import argparse

HELP = "check one process's health (exit 0 when SERVING)"


def check_grpc(target: str, timeout: float = 2.0) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return False, exc.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check_http(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    import httpx

    try:
        reply = httpx.get(url.rstrip("/") + "/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    return reply.status_code == 200, f"HTTP {reply.status_code}"


HEARTBEAT_MAX_AGE_S = 15.0
_HEARTBEAT = "towerco_worker_heartbeat_seconds "


def check_metrics(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    import time

    import httpx

    try:
        reply = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    if reply.status_code != 200:
        return False, f"HTTP {reply.status_code}"
    beat = next((line[len(_HEARTBEAT):] for line in reply.text.splitlines() if line.startswith(_HEARTBEAT)), None)
    if beat is None:
        return True, "HTTP 200"
    age = time.time() - float(beat)
    if float(beat) <= 0 or age > HEARTBEAT_MAX_AGE_S:
        return False, "no heartbeat yet" if float(beat) <= 0 else f"event loop stalled ({age:.0f}s)"
    return True, "HTTP 200, heartbeat ok"


def check(kind: str | None, endpoint: str | None, timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, short status text) for a health kind ("grpc", "http", "metrics" or None) and
    endpoint."""
    if kind == "grpc" and endpoint:
        return check_grpc(endpoint, timeout)
    if kind == "http" and endpoint:
        return check_http(endpoint, timeout)
    if kind == "metrics" and endpoint:
        return check_metrics(endpoint, timeout)
    return True, "no health check"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cli.processes import BY_NAME

    parser.add_argument("process", choices=sorted(BY_NAME), help="process type")
    parser.add_argument("--target", help="host:port (gRPC) or URL (HTTP); default from the settings")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")


def run(args: argparse.Namespace) -> int:
    from cli.processes import BY_NAME
    from mesh.config import get_settings

    proc = BY_NAME[args.process]
    endpoint = args.target or proc.endpoint(get_settings())
    if proc.health == "http" and endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    ok, status = check(proc.health, endpoint, args.timeout)
    print(f"{proc.name} {endpoint or '-'} {status}")
    return 0 if ok else 1
