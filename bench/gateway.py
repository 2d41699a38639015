"""`make bench-gateway`: GET /api/v1/sites/{id} through gateway -> Sites -> PostgreSQL, against
(a) the same RPC called directly over gRPC and (b) a bare FastAPI + asyncpg monolith handler
running the same query. One worker process each, 50 concurrent connections, load from a
separate process (wrk when installed, else a small asyncio HTTP/1.1 keep-alive client; a
grpc.aio client for (a)). Plus the JSON/proto conversion cost per request, ours vs json_format.

Targets: gateway throughput >= 0.5 x monolith, gateway p99 < 50 ms, conversion < 50 us.
Prints a table, then one JSON line of the figures.

    python -m bench.gateway [--duration 8] [--concurrency 50] [--sites 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the handler's string annotations here

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# ---------------------------------------------------------------------------------- load
async def _http_worker(host: str, port: int, paths: list[str], token: str, stop_at: float, lat: list[float],
                       errors: list[int], offset: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            path = paths[i % len(paths)]
            i += 1
            req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                   "Accept: application/json\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _grpc_worker(stub, requests, md, stop_at: float, lat: list[float], errors: list[int], offset: int) -> None:
    import grpc

    i = offset
    while time.perf_counter() < stop_at:
        req = requests[i % len(requests)]
        i += 1
        t0 = time.perf_counter()
        try:
            await stub.GetSite(req, metadata=md, timeout=10)
        except grpc.RpcError:
            errors.append(1)
        lat.append(time.perf_counter() - t0)


async def _load(args: argparse.Namespace) -> dict:
    ids = args.ids.split(",")
    lat: list[float] = []
    errors: list[int] = []
    warm_until = time.perf_counter() + args.warmup
    if args.mode == "grpc":
        import grpc
        from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

        channel = grpc.aio.insecure_channel(args.target)
        stub = sites_pb2_grpc.SitesServiceStub(channel)
        reqs = [sites_pb2.GetSiteRequest(site_id=i) for i in ids]
        md = (("authorization", f"Bearer {args.token}"),)
        await asyncio.gather(*(_grpc_worker(stub, reqs, md, warm_until, [], [], k) for k in range(args.concurrency)))
        started = time.perf_counter()
        stop_at = started + args.duration
        await asyncio.gather(*(_grpc_worker(stub, reqs, md, stop_at, lat, errors, k) for k in range(args.concurrency)))
        await channel.close()
    else:
        host, port = args.target.rsplit(":", 1)
        paths = [f"/api/v1/sites/{i}" for i in ids]
        await asyncio.gather(*(_http_worker(host, int(port), paths, args.token, warm_until, [], [], k) for k in range(args.concurrency)))
        started = time.perf_counter()
        stop_at = started + args.duration
        await asyncio.gather(*(_http_worker(host, int(port), paths, args.token, stop_at, lat, errors, k) for k in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    lat.sort()
    return {
        "requests": len(lat),
        "errors": len(errors),
        "rps": len(lat) / elapsed,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
        "client": "asyncio",
        "error_statuses": sorted(set(errors))[:5],
    }


def _wrk(target: str, ids: list[str], token: str, concurrency: int, duration: float) -> dict | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    script = Path(tempfile.mkdtemp()) / "paths.lua"
    script.write_text(
        "local ids = {" + ",".join(f'"{i}"' for i in ids) + "}\nlocal n = 0\n"
        "request = function()\n  n = n + 1\n  return wrk.format('GET', '/api/v1/sites/' .. ids[(n % #ids) + 1])\nend\n"
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('JSON {\"requests\": %d, \"errors\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d}\\n',"
        " summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,"
        " summary.duration, latency:percentile(50), latency:percentile(99)))\nend\n"
    )
    out = subprocess.run(
        [wrk, "-t", "1", "-c", str(concurrency), "-d", f"{int(duration)}s", "-s", str(script),
         "-H", f"Authorization: Bearer {token}", f"http://{target}"],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("JSON "))
    d = json.loads(line[5:])
    return {"requests": d["requests"], "errors": d["errors"], "rps": d["requests"] / (d["duration_us"] / 1e6),
            "p50_ms": d["p50_us"] / 1000, "p99_ms": d["p99_us"] / 1000, "client": "wrk"}


def run_load(mode: str, target: str, ids: list[str], token: str, concurrency: int, duration: float, warmup: float) -> dict:
    if mode == "http" and duration >= 1:
        result = _wrk(target, ids, token, concurrency, duration)
        if result is not None:
            return result
    out = subprocess.run(
        [PY, "-m", "bench.gateway", "load", "--mode", mode, "--target", target, "--ids", ",".join(ids), "--token", token,
         "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- monolith
def monolith_app():
    """A bare FastAPI + asyncpg handler running the Sites store's query (the baseline)."""
    import asyncpg
    import orjson
    from fastapi import FastAPI
    from fastapi.responses import Response

    from mesh.auth import Authenticator, AuthError, bearer_token
    from mesh.config import get_settings
    from services.sites import store

    app = FastAPI()
    state: dict = {}
    auth = Authenticator(get_settings())

    @app.on_event("startup")
    async def start() -> None:
        state["pool"] = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=4, max_size=10)

    def _json(v):
        if hasattr(v, "isoformat"):
            return v.isoformat().replace("+00:00", "Z")
        return v

    @app.get("/api/v1/sites/{site_id}")
    async def get_site(site_id: str, request: Request) -> Response:
        try:
            auth.verify(bearer_token(request.headers.get("authorization", "")))
        except AuthError:
            return Response(b'{"code":16}', status_code=401, media_type="application/json")
        async with state["pool"].acquire() as conn:
            row = await store.get_site(conn, site_id=site_id, tenant=None)
        if row is None:
            return Response(b'{"code":5}', status_code=404, media_type="application/json")
        body = {"".join(p if i == 0 else p.title() for i, p in enumerate(k.split("_"))): _json(v)
                for k, v in row.items() if v is not None}
        return Response(orjson.dumps(body, default=str), media_type="application/json")

    return app


# ---------------------------------------------------------------------------------- conversion
def conversion_us(n: int = 5000) -> dict:
    """Per typical GetSite request: path param -> request message, response -> JSON bytes."""
    import orjson
    from google.protobuf import json_format
    from towerco.sites.v1 import sites_pb2

    from gateway.transcode import codec, request, routes

    router = routes.Router(routes.build_routes(routes.discover_services(("sites",))))
    route, params, _ = router.match("GET", "/api/v1/sites/NBO-0001")
    site = sites_pb2.Site(id="NBO-0001", name="Kasarani tower", region="nairobi", type=sites_pb2.SITE_TYPE_GREENFIELD,
                          status=sites_pb2.SITE_STATUS_ACTIVE)
    site.location.latitude, site.location.longitude = -1.2209, 36.8965
    p = site.power
    p.grid, p.dg_capacity_kva, p.fuel_tank_l, p.battery_bank_ah = sites_pb2.GRID_CONNECTION_THREE_PHASE, 20, 500, 600
    p.battery_voltage_v, p.solar_kwp, p.rectifier_capacity_kw, p.dg_start_delay_s = 48, 5, 12, 30
    site.create_time.FromSeconds(1_700_000_000)
    site.update_time.FromNanoseconds(1_700_000_000_123_000_000)
    site.tenant_ids.extend(["safaricom", "airtel", "telkom"])
    resp = sites_pb2.GetSiteResponse(site=site)
    wire = resp.SerializeToString()
    decoder = codec.Decoder()
    create_body = orjson.dumps(json_format.MessageToDict(site))
    create_route, create_params, _ = router.match("POST", "/api/v1/sites")

    def ours_get() -> bytes:
        request.build(request_cls=route.request_cls, body_rule=route.body, http_method="GET", path_params=params,
                      query=[], body=b"", decoder=decoder).SerializeToString()
        return orjson.dumps(request.encode_response(route.response_cls.FromString(wire), route.response_body))

    def theirs_get() -> bytes:
        json_format.ParseDict({"site_id": params["site_id"]}, route.request_cls()).SerializeToString()
        return orjson.dumps(json_format.MessageToDict(route.response_cls.FromString(wire).site))

    def ours_create() -> bytes:
        return request.build(request_cls=create_route.request_cls, body_rule="site", http_method="POST", path_params={},
                             query=[], body=create_body, decoder=decoder).SerializeToString()

    def theirs_create() -> bytes:
        msg = create_route.request_cls()
        json_format.ParseDict(orjson.loads(create_body), msg.site)
        return msg.SerializeToString()

    assert ours_get() == theirs_get(), "fast path must be exact"
    assert ours_create() == theirs_create(), "fast path must be exact"

    def pair(ours, theirs) -> tuple[float, float]:
        """Per-call microseconds, the two paths interleaved in rounds; the best round of each
        (other processes on a shared machine only ever add time)."""
        batch = max(n // 10, 1)
        best = [float("inf"), float("inf")]
        for _ in range(10):
            for k, fn in enumerate((ours, theirs)):
                t0 = time.perf_counter()
                for _ in range(batch):
                    fn()
                best[k] = min(best[k], (time.perf_counter() - t0) / batch * 1e6)
        return best[0], best[1]

    get_ours, get_theirs = pair(ours_get, theirs_get)
    create_ours, create_theirs = pair(ours_create, theirs_create)
    return {
        "get_ours_us": get_ours,
        "get_json_format_us": get_theirs,
        "create_ours_us": create_ours,
        "create_json_format_us": create_theirs,
    }


# ---------------------------------------------------------------------------------- orchestration
def _wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _wait_grpc(target: str, timeout: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{target} did not come up")


def main_bench(args: argparse.Namespace) -> int:
    from mesh.auth import mint_token
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-gw-"))
    pg = EmbeddedPostgres(tmp / "pg", fast=True).start()
    nats = EmbeddedNats(tmp / "nats").start()
    procs: list[subprocess.Popen] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
    env.update({"DATABASE_URL": pg.url, "NATS_URL": nats.url, "TOWERCO_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)})
    sites_port, gw_port, mono_port = free_port(), free_port(), free_port()
    env["TOWERCO_SITES_PORT"] = str(sites_port)
    try:
        def spawn(*cmd: str, extra: dict | None = None) -> None:
            procs.append(subprocess.Popen([PY, *cmd], cwd=ROOT, env={**env, **(extra or {})},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        spawn("-m", "services.sites.server", extra={"TOWERCO_SITES_PORT": str(sites_port)})
        _wait_grpc(f"127.0.0.1:{sites_port}")
        spawn("-m", "gateway", "--port", str(gw_port), "--log-level", "warning",
              extra={"TOWERCO_SITES_TARGET": f"127.0.0.1:{sites_port}", "TOWERCO_GATEWAY_RATE_LIMIT": "0",
                     "TOWERCO_GATEWAY_SERVICES": "sites"})
        spawn("-m", "bench.gateway", "monolith", "--port", str(mono_port))
        _wait_http(f"http://127.0.0.1:{gw_port}/health")
        _wait_http(f"http://127.0.0.1:{mono_port}/docs")

        token = mint_token(subject="bench", tenant="*", roles=["admin"])
        ids = [f"BEN-{i:04d}" for i in range(args.sites)]
        _seed(sites_port, ids, token)

        import psutil

        sites_proc, gw_proc, mono_proc = (psutil.Process(p.pid) for p in procs)
        results = {}
        for name, mode, target, watched in [
            ("monolith", "http", f"127.0.0.1:{mono_port}", [mono_proc]),
            ("grpc_direct", "grpc", f"127.0.0.1:{sites_port}", [sites_proc]),
            ("gateway", "http", f"127.0.0.1:{gw_port}", [gw_proc, sites_proc]),
        ]:
            run_load(mode, target, ids, token, args.concurrency, args.warmup, 0)  # warm-up, not measured
            before = [_cpu(p) for p in watched]
            results[name] = run_load(mode, target, ids, token, args.concurrency, args.duration, 0)
            spent = [_cpu(p) - b for p, b in zip(watched, before, strict=True)]
            n = max(results[name]["requests"], 1)
            # CPU per request of the server process(es) over the measured window
            results[name]["cpu_us_per_req"] = [round(x / n * 1e6, 1) for x in spent]
        conv = conversion_us()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = results["gateway"]["rps"] / results["monolith"]["rps"]
    print(f"\nGET /api/v1/sites/{{id}}, {args.concurrency} connections, {args.duration:g} s each, one worker each")
    print(f"{'path':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}  client")
    labels = {"monolith": "(b) FastAPI + asyncpg monolith", "grpc_direct": "(a) gRPC direct -> Sites -> PG",
              "gateway": "gateway -> Sites -> PG"}
    for key, r in results.items():
        print(f"{labels[key]:<34}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['errors']:>8}  {r['client']}"
              + (f"  error statuses {r['error_statuses']}" if r.get("error_statuses") else ""))
    print(f"server CPU per request (us): monolith {results['monolith']['cpu_us_per_req'][0]}, "
          f"Sites via gRPC {results['grpc_direct']['cpu_us_per_req'][0]}, gateway {results['gateway']['cpu_us_per_req'][0]} "
          f"+ Sites {results['gateway']['cpu_us_per_req'][1]}")
    print(f"\ngateway / monolith throughput: {ratio:.2f}  (target >= 0.5)")
    print(f"gateway p99: {results['gateway']['p99_ms']:.1f} ms  (target < 50 ms)")
    print(f"conversion per GetSite: ours {conv['get_ours_us']:.1f} us vs json_format {conv['get_json_format_us']:.1f} us; "
          f"per CreateSite body: ours {conv['create_ours_us']:.1f} us vs json_format {conv['create_json_format_us']:.1f} us"
          "  (target < 50 us)")
    figures = {
        "bench": "gateway",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "monolith_rps": round(results["monolith"]["rps"], 1),
        "grpc_direct_rps": round(results["grpc_direct"]["rps"], 1),
        "gateway_rps": round(results["gateway"]["rps"], 1),
        "gateway_vs_monolith": round(ratio, 3),
        "gateway_p50_ms": round(results["gateway"]["p50_ms"], 2),
        "gateway_p99_ms": round(results["gateway"]["p99_ms"], 2),
        "monolith_p99_ms": round(results["monolith"]["p99_ms"], 2),
        "grpc_direct_p99_ms": round(results["grpc_direct"]["p99_ms"], 2),
        "errors": sum(r["errors"] for r in results.values()),
        "monolith_cpu_us_per_req": results["monolith"]["cpu_us_per_req"][0],
        "sites_cpu_us_per_req": results["grpc_direct"]["cpu_us_per_req"][0],
        "gateway_cpu_us_per_req": results["gateway"]["cpu_us_per_req"][0],
        "conversion_get_us": round(conv["get_ours_us"], 2),
        "conversion_get_json_format_us": round(conv["get_json_format_us"], 2),
        "conversion_create_us": round(conv["create_ours_us"], 2),
        "conversion_create_json_format_us": round(conv["create_json_format_us"], 2),
        "load_client": results["gateway"]["client"],
        "targets_met": ratio >= 0.5 and results["gateway"]["p99_ms"] < 50 and conv["get_ours_us"] < 50,
    }
    print(json.dumps(figures))
    return 0


def _cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _seed(port: int, ids: list[str], token: str) -> None:
    import grpc
    from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = sites_pb2_grpc.SitesServiceStub(ch)
        md = (("authorization", f"Bearer {token}"),)
        for i, sid in enumerate(ids):
            site = sites_pb2.Site(id=sid, name=f"Bench site {i}", region="nairobi", type=sites_pb2.SITE_TYPE_GREENFIELD)
            site.location.latitude, site.location.longitude = -1.2 + i * 1e-3, 36.8
            site.power.grid, site.power.dg_capacity_kva = sites_pb2.GRID_CONNECTION_THREE_PHASE, 20
            try:
                stub.CreateSite(sites_pb2.CreateSiteRequest(site=site), metadata=md, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    load = sub.add_parser("load")
    load.add_argument("--mode", choices=["http", "grpc"], required=True)
    load.add_argument("--target", required=True)
    load.add_argument("--ids", required=True)
    load.add_argument("--token", required=True)
    load.add_argument("--concurrency", type=int, default=50)
    load.add_argument("--duration", type=float, default=8)
    load.add_argument("--warmup", type=float, default=2)
    mono = sub.add_parser("monolith")
    mono.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sites", type=int, default=200)
    args = parser.parse_args(argv)
    if args.cmd == "load":
        print(json.dumps(asyncio.run(_load(args))))
        return 0
    if args.cmd == "monolith":
        import uvicorn

        uvicorn.run(monolith_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
        return 0
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())
