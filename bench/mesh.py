"""The cost of the mesh: unary GetSite through the full server interceptor chain vs. the same
servicer on a bare grpc.aio server, plus the fail-fast latency of an open circuit breaker.

    make bench-mesh            (python -m bench.mesh [--seconds 10] [--passes 3] [--concurrency 16])
    python -m bench.mesh --chain [--calls 20000]      the interceptor alone (below), in seconds

Both servers run in this process on their own embedded PostgreSQL + NATS (free ports, temporary
data) and share one asyncpg pool; GetSite is served from PostgreSQL by services.sites.store.
"mesh" is mesh.bootstrap.start("sites", ...) - auth (JWT verify), validation, exception mapping,
metrics, access log, deadline guard. "bare" is grpc.aio.server() with no interceptor at all, whose
servicer only sets a fixed caller identity (the auth interceptor's job) before the same handler.

The load comes from ONE separate process (multiprocessing, spawn) with the same client code, the
same token header and the same concurrency for both targets; passes are interleaved (bare, mesh,
mesh, bare, ...) so drift on a shared machine hits both. Figures: requests per second over all
passes, p50/p99 latency, throughput ratio mesh/bare (target >= 0.85), the servers' CPU time per
request (process CPU time over each run: less sensitive to a busy machine than wall-clock
throughput, so its bare/mesh ratio is the steadier figure), and the open breaker's
fail-fast p50/p99 (target p99 <= 1 ms) from bench.breaker.measure_open_breaker_failfast().
Ends with one JSON line.

`--chain` times only the interceptor chain, with no network, server or database: the wrapped
unary handler of MeshServerInterceptor against the bare handler (which only sets the caller's
identity), called with a stand-in servicer context, each call in its own task as grpc.aio does,
logging configured as a server does (info, the access line written to a file). Figures are
process CPU microseconds per call (best of 3 rounds), with and without the access log; their
difference from the bare handler is the chain's own cost. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SITES = 200


# ---------------------------------------------------------------------------------------------
# load generator (runs in a child process; imports only grpc and the generated stubs)


def _loadgen(target: str, token: str, seconds: float, concurrency: int, site_ids: list[str], out) -> None:
    import grpc
    from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

    async def run() -> dict[str, Any]:
        channel = grpc.aio.insecure_channel(target)
        stub = sites_pb2_grpc.SitesServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        for sid in site_ids[:50]:  # warm-up: connection, statement caches
            await stub.GetSite(sites_pb2.GetSiteRequest(site_id=sid), metadata=md, timeout=10)
        latencies: list[int] = []
        errors = 0
        stop_at = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop_at:
                req = sites_pb2.GetSiteRequest(site_id=site_ids[i % len(site_ids)])
                i += concurrency
                t0 = time.perf_counter_ns()
                try:
                    await stub.GetSite(req, metadata=md, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter_ns() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
        await channel.close()
        latencies.sort()
        n = len(latencies)
        return {
            "n": n,
            "errors": errors,
            "seconds": elapsed,
            "rps": n / elapsed if elapsed else 0.0,
            "p50_ms": latencies[n // 2] / 1e6 if n else 0.0,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] / 1e6 if n else 0.0,
        }

    out.send(asyncio.run(run()))
    out.close()


async def _load(target: str, token: str, seconds: float, concurrency: int, site_ids: list[str]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_loadgen, args=(target, token, seconds, concurrency, site_ids, child), daemon=True)
    proc.start()
    child.close()
    try:
        return await asyncio.to_thread(parent.recv)
    finally:
        await asyncio.to_thread(proc.join, 30)


# ---------------------------------------------------------------------------------------------
# servers


async def _seed(pool, n: int) -> list[str]:
    from services.sites import store

    ids = [f"BENCH-{i:04d}" for i in range(n)]
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM sites.sites WHERE id LIKE 'BENCH-%'")
        await conn.execute("INSERT INTO sites.tenants (id, name) VALUES ('bench-op', 'Bench') ON CONFLICT DO NOTHING")
        for i, sid in enumerate(ids):
            await store.create_site(conn, row={
                "id": sid, "name": f"Bench site {i}", "region": "bench", "latitude": -1.0 + i / 1000,
                "longitude": 36.0, "type": "greenfield", "status": "active", "grid": "three_phase",
                "dg_capacity_kva": 20.0, "fuel_tank_l": 500.0, "battery_bank_ah": 400.0, "battery_voltage_v": 48.0,
                "solar_kwp": 0.0, "rectifier_capacity_kw": 12.0, "dg_start_delay_s": 30.0})
            await conn.execute("INSERT INTO sites.tenancies (site_id, tenant_id) VALUES ($1, 'bench-op')", sid)
    return ids


async def _bare_server(pool, secret: str):
    import grpc
    from towerco.sites.v1 import sites_pb2_grpc

    from mesh import auth
    from services.sites.servicer import SitesServicer

    identity = auth.Identity(subject="bench", tenant="*", roles=frozenset({"viewer"}))

    class Bare(SitesServicer):
        async def GetSite(self, request, context):  # the only stage the handler cannot do without
            token = auth.set_identity(identity)
            try:
                return await super().GetSite(request, context)
            finally:
                auth.reset_identity(token)

    server = grpc.aio.server()
    sites_pb2_grpc.add_SitesServiceServicer_to_server(Bare(pool, page_secret=secret), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


# ---------------------------------------------------------------------------------------------
# main


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else 0.0


async def run(seconds: float, passes: int, concurrency: int, failfast_n: int) -> dict[str, Any]:
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-mesh-"))
    pg = EmbeddedPostgres(tmp / "pg", fast=True).start()
    nats_server = EmbeddedNats(tmp / "nats").start()
    os.environ["DATABASE_URL"] = pg.url
    os.environ["NATS_URL"] = nats_server.url
    # The servers log as configured (info: one access-log line per call, rendered and written),
    # into a file so that the table stays readable; the table goes to the real stdout.
    real_stdout = sys.stdout
    log_file = (tmp / "server.log").open("w")  # closed in finally

    def say(line: str) -> None:
        real_stdout.write(line + "\n")
        real_stdout.flush()

    sys.stdout = log_file
    running = bare = None
    try:
        from mesh import bootstrap
        from mesh.auth import mint_token
        from mesh.config import Settings, reset_settings
        from services.sites.server import setup

        reset_settings()
        settings = Settings.from_env()
        running = await bootstrap.start("sites", setup, port=0, metrics_port=-1, settings=settings)
        site_ids = await _seed(running.runtime.pool, SITES)
        bare, bare_port = await _bare_server(running.runtime.pool, settings.jwt_secret)
        token = mint_token(subject="bench", tenant="*", roles=["viewer"], settings=settings)
        targets = {"bare": f"127.0.0.1:{bare_port}", "mesh": f"127.0.0.1:{running.port}"}

        results: dict[str, list[dict[str, Any]]] = {"bare": [], "mesh": []}
        say(f"GetSite from PostgreSQL, {concurrency} concurrent clients in one load process, "
              f"{seconds:.0f} s per run, {passes} interleaved passes")
        say(f"{'pass':>4} {'server':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'cpu us/req':>10}")
        for p in range(passes):
            order = ("bare", "mesh") if p % 2 == 0 else ("mesh", "bare")
            for name in order:
                cpu0 = time.process_time()  # this process = the servers only (load and PG are elsewhere)
                r = await _load(targets[name], token, seconds, concurrency, site_ids)
                r["cpu_s"] = time.process_time() - cpu0
                r["cpu_us_per_req"] = r["cpu_s"] / max(1, r["n"]) * 1e6
                results[name].append(r)
                say(f"{p + 1:>4} {name:>6} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6} "
                    f"{r['cpu_us_per_req']:>10.0f}")

        def total(name: str) -> dict[str, float]:
            rs = results[name]
            n = sum(r["n"] for r in rs)
            secs = sum(r["seconds"] for r in rs)
            return {"rps": n / secs if secs else 0.0, "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs), "errors": sum(r["errors"] for r in rs),
                    "cpu_us_per_req": sum(r["cpu_s"] for r in rs) / max(1, n) * 1e6}

        b, m = total("bare"), total("mesh")
        ratio = m["rps"] / b["rps"] if b["rps"] else 0.0
        cpu_ratio = b["cpu_us_per_req"] / m["cpu_us_per_req"] if m["cpu_us_per_req"] else 0.0
        for name, t in (("bare", b), ("mesh", m)):
            say(f"{'all':>4} {name:>6} {t['rps']:>9.0f} {t['p50_ms']:>8.2f} {t['p99_ms']:>8.2f} {t['errors']:>6} "
                f"{t['cpu_us_per_req']:>10.0f}")
        say(f"throughput ratio mesh/bare = {ratio:.3f} (target >= 0.85)")
        say(f"server CPU per request bare/mesh = {cpu_ratio:.3f} (the same ratio with the shared machine's "
            "noise removed: the capacity the mesh leaves when the server is CPU-bound)")
    finally:
        if bare is not None:
            await bare.stop(0)
        if running is not None:
            await running.stop(grace=1.0, drain_s=0)
        nats_server.stop()
        pg.stop(mode="immediate")
        sys.stdout = real_stdout
        log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)

    from bench.breaker import measure_open_breaker_failfast

    ff = await measure_open_breaker_failfast(failfast_n)
    print(f"open breaker fail-fast: p50 {ff['p50_us']:.1f} us, p99 {ff['p99_us']:.1f} us over {ff['n']} calls "
          f"(target p99 <= 1000 us); {ff['preempted']} calls preempted by other processes, p99 of the others "
          f"{ff['p99_on_cpu_us']} us; {ff['gc_collections']} GC collections while timing")
    figures = {
        "bench": "mesh",
        "seconds_per_run": seconds,
        "passes": passes,
        "concurrency": concurrency,
        "bare_rps": round(b["rps"], 1),
        "mesh_rps": round(m["rps"], 1),
        "throughput_ratio": round(ratio, 3),
        "throughput_ratio_target": 0.85,
        "cpu_ratio": round(cpu_ratio, 3),
        "bare_cpu_us_per_req": round(b["cpu_us_per_req"], 1),
        "mesh_cpu_us_per_req": round(m["cpu_us_per_req"], 1),
        "bare_p50_ms": round(b["p50_ms"], 3),
        "bare_p99_ms": round(b["p99_ms"], 3),
        "mesh_p50_ms": round(m["p50_ms"], 3),
        "mesh_p99_ms": round(m["p99_ms"], 3),
        "errors": int(b["errors"] + m["errors"]),
        "breaker_failfast_p50_us": ff["p50_us"],
        "breaker_failfast_p99_us": ff["p99_us"],
        "breaker_failfast_p99_target_us": 1000,
        "breaker_failfast_preempted": ff["preempted"],
        "breaker_failfast_p99_on_cpu_us": ff["p99_on_cpu_us"],
        "breaker_failfast_gc_collections": ff["gc_collections"],
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(figures))
    return figures


# ---------------------------------------------------------------------------------------------
# --chain: the interceptor alone


class _StandInContext:
    """What the chain asks of a grpc.aio ServicerContext on the success path."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float:
        return 9.5

    def code(self) -> None:
        return None

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        raise RuntimeError(f"unexpected abort: {code} {details}")


async def chain_cpu(calls: int) -> dict[str, Any]:
    """CPU microseconds per unary call: bare handler, chain without and with the access log."""
    import grpc
    from towerco.sites.v1 import sites_pb2

    from mesh import auth
    from mesh.config import Settings
    from mesh.interceptors import MeshServerInterceptor
    from mesh.observability import configure_logging

    settings = Settings()
    response = sites_pb2.GetSiteResponse(site=sites_pb2.Site(id="BENCH-0001", name="Bench site"))
    identity = auth.Identity(subject="bench", tenant="*", roles=frozenset({"viewer"}))

    async def handler(request: Any, context: Any) -> Any:
        auth.require_role("viewer")
        return response

    async def bare(request: Any, context: Any) -> Any:
        token = auth.set_identity(identity)
        try:
            return await handler(request, context)
        finally:
            auth.reset_identity(token)

    class Details:
        method = "/towerco.sites.v1.SitesService/GetSite"

    method_handler = grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=sites_pb2.GetSiteRequest.FromString,
        response_serializer=sites_pb2.GetSiteResponse.SerializeToString)

    async def continuation(_details: Any) -> Any:
        return method_handler

    async def wrapped(access_log: bool) -> Any:
        chain = MeshServerInterceptor(settings, access_log=access_log)
        return (await chain.intercept_service(continuation, Details())).unary_unary

    variants = {"bare": bare, "chain_no_access_log": await wrapped(False), "chain": await wrapped(True)}
    token = auth.mint_token(subject="bench", tenant="*", roles=["viewer"], settings=settings)
    context = _StandInContext((("user-agent", "grpc-python-asyncio"), ("authorization", f"Bearer {token}")))
    request = sites_pb2.GetSiteRequest(site_id="BENCH-0001")
    loop = asyncio.get_running_loop()
    real_stdout = sys.stdout
    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-chain-"))
    log_file = (tmp / "server.log").open("w")
    sys.stdout = log_file
    best: dict[str, float] = {}
    try:
        configure_logging(settings, "sites")
        for fn in variants.values():  # warm-up: caches, first-use bindings
            for _ in range(2000):
                await loop.create_task(fn(request, context))
        for _round in range(3):
            for name, fn in variants.items():
                cpu0 = time.process_time()
                for _ in range(calls):
                    await loop.create_task(fn(request, context))
                us = (time.process_time() - cpu0) / calls * 1e6
                best[name] = min(best.get(name, us), us)
    finally:
        sys.stdout = real_stdout
        log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {
        "bench": "mesh-chain",
        "calls": calls,
        "bare_cpu_us": round(best["bare"], 2),
        "chain_cpu_us": round(best["chain"], 2),
        "chain_no_access_log_cpu_us": round(best["chain_no_access_log"], 2),
        "chain_cost_us": round(best["chain"] - best["bare"], 2),
        "chain_cost_no_access_log_us": round(best["chain_no_access_log"] - best["bare"], 2),
    }
    print(f"unary call, CPU us per call (best of 3 rounds of {calls}):")
    for name in variants:
        print(f"  {name:22} {best[name]:7.2f}")
    print(f"chain cost: {figures['chain_cost_us']:.2f} us per call "
          f"({figures['chain_cost_no_access_log_us']:.2f} us without the access log)")
    print(json.dumps(figures))
    return figures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "10")))
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--failfast-calls", type=int, default=5000)
    ap.add_argument("--chain", action="store_true", help="time the interceptor chain alone (no server)")
    ap.add_argument("--calls", type=int, default=20000, help="calls per round with --chain")
    args = ap.parse_args(argv)
    if args.chain:
        asyncio.run(chain_cpu(args.calls))
        return
    asyncio.run(run(args.seconds, args.passes, args.concurrency, args.failfast_calls))


if __name__ == "__main__":
    main()
