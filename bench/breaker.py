"""How fast an open circuit breaker rejects a call, through a real grpc.aio channel.

`measure_open_breaker_failfast(n)` forces the breaker of a dead target open and times `n` calls
that it rejects (the bench.mesh benchmark imports it). The garbage collector stays on; the
figures say how many collections ran during the timed calls (none: a rejection leaves no
reference cycles). On a shared machine the p99 is mostly the scheduler: a call during which
another process took the CPU waits a time slice. Each call's involuntary context switches
(getrusage, read outside the timed span) are therefore counted: `preempted` calls, and
`p99_on_cpu_us`, the p99 of the calls that kept the CPU. `p99_us` stays the plain p99 of all calls. Run alone, `python -m bench.breaker` also
times the baseline of the same run, successful round trips to an in-process server on the same
channel settings, prints a table and ends with one JSON line of the figures.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time

try:
    import resource

    _RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
except ImportError:  # pragma: no cover - not on Linux/macOS
    resource = None  # type: ignore[assignment]

import grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from sdk.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError
from sdk.channel import create_channel

_REQUEST = sites_pb2.GetSiteRequest(site_id="bench")


def _stats(samples_ns: list[int]) -> dict:
    us = sorted(s / 1000 for s in samples_ns)
    p99_index = min(len(us) - 1, max(0, int(round(0.99 * len(us))) - 1))
    return {
        "n": len(us),
        "p50_us": round(statistics.median(us), 2),
        "p99_us": round(us[p99_index], 2),
        "mean_us": round(statistics.fmean(us), 2),
    }


def _dead_target() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on (closed right away)
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _switches() -> int:
    """Involuntary context switches of this thread so far (0 where getrusage is missing)."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nivcsw if resource is not None else 0


async def measure_open_breaker_failfast(n: int = 5000) -> dict:
    """p50/p99/mean microseconds of calls rejected by an open breaker (real channel, dead port),
    plus the preempted calls, the p99 of the others and the GC collections while timing."""
    target = _dead_target()
    breaker = CircuitBreaker(target, BreakerConfig(open_base_s=3600, open_max_s=3600), metrics=True)
    breaker.force_open()
    channel = create_channel(target, breaker=breaker)
    stub = sites_pb2_grpc.SitesServiceStub(channel)
    samples: list[int] = []
    on_cpu: list[int] = []
    try:
        for _ in range(min(200, n)):  # warm-up
            try:
                await stub.GetSite(_REQUEST, timeout=1)
            except CircuitOpenError:
                pass
        collections = sum(g["collections"] for g in gc.get_stats())
        for _ in range(n):
            switches = _switches()
            start = time.perf_counter_ns()
            try:
                await stub.GetSite(_REQUEST, timeout=1)
            except CircuitOpenError:
                took = time.perf_counter_ns() - start
            else:  # pragma: no cover - would mean the breaker let a call through
                raise RuntimeError("the open breaker let a call through")
            samples.append(took)
            if _switches() == switches:
                on_cpu.append(took)
        collections = sum(g["collections"] for g in gc.get_stats()) - collections
    finally:
        await channel.close()
    stats = _stats(samples)
    stats["preempted"] = len(samples) - len(on_cpu)
    stats["p99_on_cpu_us"] = _stats(on_cpu)["p99_us"] if on_cpu else None
    stats["gc_collections"] = collections
    return stats


class _Sites(sites_pb2_grpc.SitesServiceServicer):
    async def GetSite(self, request, context):
        return sites_pb2.GetSiteResponse(site=sites_pb2.Site(id=request.site_id))


async def measure_round_trip_baseline(n: int = 2000) -> dict:
    """The same call answered by an in-process server (the breaker closed): the baseline."""
    server = grpc.aio.server()
    sites_pb2_grpc.add_SitesServiceServicer_to_server(_Sites(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = create_channel(target, breaker=CircuitBreaker(target))
    stub = sites_pb2_grpc.SitesServiceStub(channel)
    samples: list[int] = []
    try:
        for _ in range(min(200, n)):
            await stub.GetSite(_REQUEST, timeout=5)
        for _ in range(n):
            start = time.perf_counter_ns()
            await stub.GetSite(_REQUEST, timeout=5)
            samples.append(time.perf_counter_ns() - start)
    finally:
        await channel.close()
        await server.stop(0)
    return _stats(samples)


async def _main() -> dict:
    failfast = await measure_open_breaker_failfast()
    baseline = await measure_round_trip_baseline()
    rows = [("open breaker, rejected", failfast), ("round trip, breaker closed (baseline)", baseline)]
    print(f"{'case':40} {'n':>6} {'p50 us':>9} {'p99 us':>9} {'mean us':>9}")
    for name, s in rows:
        print(f"{name:40} {s['n']:>6} {s['p50_us']:>9.1f} {s['p99_us']:>9.1f} {s['mean_us']:>9.1f}")
    speedup = baseline["p50_us"] / failfast["p50_us"] if failfast["p50_us"] else float("inf")
    print(f"fail-fast is {speedup:.1f}x faster than a healthy round trip (p50); target p99 <= 1000 us")
    print(f"fail-fast: {failfast['preempted']} calls preempted by other processes; p99 of the others "
          f"{failfast['p99_on_cpu_us']} us; {failfast['gc_collections']} GC collections while timing")
    figures = {
        "bench": "breaker",
        "failfast_p50_us": failfast["p50_us"],
        "failfast_p99_us": failfast["p99_us"],
        "failfast_mean_us": failfast["mean_us"],
        "failfast_preempted": failfast["preempted"],
        "failfast_p99_on_cpu_us": failfast["p99_on_cpu_us"],
        "failfast_gc_collections": failfast["gc_collections"],
        "baseline_p50_us": baseline["p50_us"],
        "baseline_p99_us": baseline["p99_us"],
        "speedup_p50": round(speedup, 2),
        "failfast_p99_within_target": failfast["p99_us"] <= 1000,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    asyncio.run(_main())
