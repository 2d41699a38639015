"""Process helpers shared by the benchmarks: CPU accounting, the PostgreSQL server pid, waiting
for a gRPC server to be healthy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group of processes (and their children)."""
    import psutil

    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                pass
        out[name] = total
    return out


def pg_postmaster(data_dir: Path) -> int:
    """The pid of the PostgreSQL server whose data folder this is."""
    return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])


async def wait_grpc(target: str, timeout_s: float = 60.0) -> None:
    """Until the gRPC server at `target` answers SERVING (TimeoutError after timeout_s)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not become healthy")
            await asyncio.sleep(0.2)
