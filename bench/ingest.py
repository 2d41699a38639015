"""Ingest benchmark (`make bench-ingest`, `python -m bench.ingest`): end-to-end samples per second
from the ingest API to rows visible in PostgreSQL, against the ceiling of raw asyncpg COPY of the
same rows into the same table, in the same run, on this machine.

Set-up (all local, own embedded PostgreSQL and NATS on free ports, fsync on as in production):
the Sites service, the telemetry service and the ingestor run as their own processes
(`python -m ...`), exactly as `towerco up` starts them; a load generator, also its own process,
pre-builds every batch (serialised IngestRequest bytes) before the clock starts, then sends them
through Ingest with a few calls in flight (and, in a second phase, through one IngestStream).

Figures:
  ceiling_sps        raw asyncpg copy_records_to_table of the same rows (records pre-built)
  ingest_sps         samples / (first send -> last row visible), unary Ingest
  stream_sps         the same through IngestStream
  ratio              ingest_sps / ceiling_sps
  ack_to_visible p50/p99   from a batch's ack at the client to its rows being visible (polled
                     every 25 ms, so +-25 ms)
  ingestor_rss_mb    peak resident memory of the ingestor process
The table goes to stdout, then ONE JSON line with the figures.

Profiling: BENCH_PROFILE=<telemetry|ingestor0|sites> runs that process under pyinstrument and
writes <logs>/<name>.profile.txt.

Options: --samples N (total per phase, default 1,500,000), --batch N (samples per request, 5000),
--sites N (1000), --concurrency N (unary calls in flight, 8), --ingestors N (replicas, 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.procs import cpu_seconds, pg_postmaster, wait_grpc

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["mains_present", "dg_running", "fuel_level_l", "dc_bus_v", "load_a", "battery_soc_pct",
           "battery_v", "cabinet_temp_c", "door_open", "rectifier_fault"]


def site_ids(n: int) -> list[str]:
    return [f"BENCH-{i:05d}" for i in range(n)]


def rows_for(phase: str, batch_index: int, batch: int, sites: list[str], t0: float):
    """Deterministic samples of one batch: (site_id, metric, tenant_id, unix time, value)."""
    per_site = len(METRICS)
    n_sites = batch // per_site
    start = (batch_index * n_sites) % len(sites)
    t = t0 + batch_index  # one second per batch
    out = []
    for j in range(n_sites):
        sid = sites[(start + j) % len(sites)]
        for k, metric in enumerate(METRICS):
            value = float((batch_index + j + k) % 2) if k in (0, 1, 8, 9) else float((batch_index * 7 + j + k) % 50)
            out.append((sid, metric, "", t, value))
    return out


# ---------------------------------------------------------------------------------------------
# load generator (its own process)


async def loadgen(args: argparse.Namespace) -> None:
    import grpc
    from towerco.telemetry.v1 import telemetry_pb2 as pb

    from mesh.auth import service_token

    sites = site_ids(args.sites)
    t0 = args.t0
    payloads: list[tuple[str, bytes]] = []
    n_batches = args.samples // args.batch
    for b in range(n_batches):
        req = pb.IngestRequest(batch_id=f"{args.phase}-{b}")
        for sid, metric, tenant, t, value in rows_for(args.phase, b, args.batch, sites, t0):
            s = req.samples.add(site_id=sid, metric=metric, tenant_id=tenant, value=value)
            s.time.seconds = int(t)
        payloads.append((req.batch_id, req.SerializeToString()))
    md = (("authorization", f"Bearer {service_token('bench')}"),)
    channel = grpc.aio.insecure_channel(args.target, options=[("grpc.max_send_message_length", 64 << 20)])
    acks: dict[str, float] = {}
    sent = 0
    print("ready", flush=True)
    sys.stdin.readline()  # go
    started = time.time()
    if args.mode == "unary":
        call = channel.unary_unary("/towerco.telemetry.v1.TelemetryService/Ingest",
                                   request_serializer=lambda b: b, response_deserializer=pb.IngestResponse.FromString)
        queue = list(reversed(payloads))

        async def worker() -> None:
            nonlocal sent
            while queue:
                batch_id, data = queue.pop()
                reply = await call(data, metadata=md, timeout=60)
                acks[batch_id] = time.time()
                sent += reply.accepted

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    else:
        call = channel.stream_unary("/towerco.telemetry.v1.TelemetryService/IngestStream",
                                    request_serializer=lambda b: b,
                                    response_deserializer=pb.IngestStreamResponse.FromString)

        async def requests():
            for _, data in payloads:
                yield data  # IngestRequest and IngestStreamRequest share their wire format

        reply = await call(requests(), metadata=md, timeout=600)
        done = time.time()
        acks = {batch_id: done for batch_id, _ in payloads}
        sent = reply.accepted
    finished = time.time()
    await channel.close()
    print(json.dumps({"started": started, "finished": finished, "accepted": sent, "acks": acks}), flush=True)


# ---------------------------------------------------------------------------------------------
# orchestration


class Proc:
    def __init__(self, name: str, module: str, env: dict, logdir: Path, extra: list[str] | None = None) -> None:
        self.name = name
        log = open(logdir / f"{name}.log", "ab")  # noqa: SIM115
        prefix = ["-m", "pyinstrument", "-o", str(logdir / f"{name}.profile.txt")] \
            if os.environ.get("BENCH_PROFILE") == name else []
        self.p = subprocess.Popen([sys.executable, *prefix, "-m", module, *(extra or [])], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()


async def ceiling(url: str, args: argparse.Namespace, t0: float) -> float:
    """Raw asyncpg COPY (copy_records_to_table) of the same rows, records built beforehand."""
    import asyncpg

    sites = site_ids(args.sites)
    records = []
    for b in range(args.samples // args.batch):
        for sid, metric, tenant, t, value in rows_for("ceiling", b, args.batch, sites, t0):
            records.append((sid, metric, tenant, datetime.fromtimestamp(int(t), UTC), value))
    conn = await asyncpg.connect(url)
    try:
        chunk = 50_000
        started = time.perf_counter()
        for i in range(0, len(records), chunk):
            await conn.copy_records_to_table("samples", schema_name="telemetry", records=records[i:i + chunk],
                                             columns=["site_id", "metric", "tenant_id", "time", "value"])
        elapsed = time.perf_counter() - started
        await conn.execute("TRUNCATE telemetry.samples")
    finally:
        await conn.close()
    return len(records) / elapsed


async def phase(mode: str, url: str, env: dict, args: argparse.Namespace, t0: float, ingestors: list,
                pids: dict[str, list[int]]) -> dict:
    import asyncpg
    import psutil

    total = (args.samples // args.batch) * (args.batch // len(METRICS) * len(METRICS))
    gen = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
        [sys.executable, "-m", "bench.ingest", "--loadgen", "--mode", mode, "--phase", mode,
         "--target", env["TOWERCO_TELEMETRY_TARGET"], "--samples", str(args.samples), "--batch", str(args.batch),
         "--sites", str(args.sites), "--concurrency", str(args.concurrency), "--t0", str(t0)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdout.readline().strip() == "ready"
    conn = await asyncpg.connect(url)
    procs = [psutil.Process(p.p.pid) for p in ingestors]
    pids = {**pids, "loadgen": [gen.pid]}
    cpu_before = cpu_seconds(pids)
    peak_rss = 0
    visible: dict[str, float] = {}
    try:
        started = time.time()
        gen.stdin.write("go\n")
        gen.stdin.flush()
        rows = 0
        since = datetime.fromtimestamp(started - 5, UTC)
        deadline = time.monotonic() + 600
        while rows < total and time.monotonic() < deadline:
            await asyncio.sleep(0.025)
            now = time.time()
            fresh = await conn.fetch("SELECT msg_id, samples, ingested_at FROM telemetry.ingested_messages "
                                     "WHERE ingested_at >= $1", since)
            newest = since
            for r in fresh:
                if r[0] not in visible:
                    visible[r[0]] = now
                    rows += r[1]
                newest = max(newest, r[2])
            since = datetime.fromtimestamp(newest.timestamp() - 2, UTC)
            peak_rss = max(peak_rss, *(p.memory_info().rss for p in procs))
        finished = time.time()
        cpu_after = cpu_seconds(pids)
        out = json.loads(gen.stdout.readline())
        gen.wait(30)
        counted = await conn.fetchval("SELECT count(*) FROM telemetry.samples")
        await conn.execute("TRUNCATE telemetry.samples, telemetry.ingested_messages")
    finally:
        await conn.close()
    lat = []
    batch_visible: dict[str, float] = {}
    for msg_id, t in visible.items():
        batch_id = msg_id.rsplit(":", 1)[0]
        batch_visible[batch_id] = max(batch_visible.get(batch_id, 0.0), t)
    for batch_id, acked in out["acks"].items():
        if batch_id in batch_visible:
            lat.append(max(0.0, batch_visible[batch_id] - acked))
    lat.sort()
    if mode == "stream":
        lat = []  # one ack for the whole stream: per-batch ack-to-visible is not defined
    elapsed = finished - started
    return {
        "samples": total, "rows": counted, "accepted": out["accepted"], "seconds": elapsed,
        "sps": counted / elapsed, "send_seconds": out["finished"] - out["started"],
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "rss_mb": peak_rss / 2**20,
        "cpu_us_per_sample": {k: round(1e6 * (cpu_after[k] - cpu_before[k]) / max(1, counted), 2) for k in pids},
    }


async def orchestrate(args: argparse.Namespace, *, unary_only: bool = False) -> dict:
    """Every phase (ceiling, unary, stream), or only the unary one (bench.kpi's baseline)."""
    import grpc
    from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

    from mesh.auth import service_token
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port
    from mesh.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-ingest-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    nats = EmbeddedNats(tmp / "nats").start()
    procs: list[Proc] = []
    try:
        await migrate(pg.url, components=["sites", "telemetry"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
        sites_port, tel_port = free_port(), free_port()
        env.update(DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_SITES_PORT=str(sites_port),
                   TOWERCO_TELEMETRY_PORT=str(tel_port), TOWERCO_SITES_TARGET=f"127.0.0.1:{sites_port}",
                   TOWERCO_TELEMETRY_TARGET=f"127.0.0.1:{tel_port}", TOWERCO_LOG_LEVEL="warning",
                   TOWERCO_MAX_MESSAGE_BYTES=str(16 << 20))
        procs.append(Proc("sites", "services.sites.server", env, tmp))
        await wait_grpc(f"127.0.0.1:{sites_port}")
        md = (("authorization", f"Bearer {service_token('bench')}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sites_port}") as ch:
            stub = sites_pb2_grpc.SitesServiceStub(ch)
            for sid in site_ids(args.sites):
                await stub.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                    id=sid, name=sid, region="bench", location={"latitude": 0, "longitude": 0})), metadata=md)
        procs.append(Proc("telemetry", "services.telemetry.server", env, tmp))
        await wait_grpc(f"127.0.0.1:{tel_port}")
        await asyncio.sleep(2.0)  # the telemetry service lists the sites at start
        ingestors = [Proc(f"ingestor{i}", "workers.ingestor.worker", env, tmp) for i in range(args.ingestors)]
        procs.extend(ingestors)
        await asyncio.sleep(2.0)
        t0 = float(int(time.time()) - 3 * 3600)
        results: dict = {} if unary_only else {"ceiling_sps": await ceiling(pg.url, args, t0)}
        pids = {"telemetry": [procs[1].p.pid], "ingestor": [p.p.pid for p in ingestors],
                "postgres": [pg_postmaster(pg.data_dir)], "nats": [nats.process.pid]}
        results["unary"] = await phase("unary", pg.url, env, args, t0, ingestors, pids)
        if not unary_only:
            results["stream"] = await phase("stream", pg.url, env, args, t0 + 10_000, ingestors, pids)
        results["logs"] = str(tmp)
        return results
    finally:
        for p in reversed(procs):
            p.stop()
        nats.stop()
        pg.stop()
        for data in ("pg", "nats"):  # keep the logs, drop the data
            shutil.rmtree(tmp / data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_500_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ingestors", type=int, default=2)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="unary", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="unary", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        asyncio.run(loadgen(args))
        return
    r = asyncio.run(orchestrate(args))
    u, s = r["unary"], r["stream"]
    ceiling_sps = r["ceiling_sps"]
    print(f"ingest benchmark: {args.samples:,} samples per phase, batches of {args.batch}, {args.sites} sites, "
          f"{args.concurrency} unary calls in flight, {args.ingestors} ingestor(s); logs in {r['logs']}")
    print(f"{'path':<28}{'samples/s':>12}{'x ceiling':>11}{'ack->visible p50':>18}{'p99':>9}{'ingestor RSS':>14}")
    print(f"{'raw asyncpg COPY (ceiling)':<28}{ceiling_sps:>12,.0f}{1.0:>11.2f}")
    for name, x in (("Ingest (unary) end to end", u), ("IngestStream end to end", s)):
        lat = (f"{x['p50_ms']:>16.0f}ms{x['p99_ms']:>7.0f}ms" if x["p50_ms"] is not None
               else f"{'n/a (one ack)':>18}{'':>9}")
        print(f"{name:<28}{x['sps']:>12,.0f}{x['sps'] / ceiling_sps:>11.2f}{lat}{x['rss_mb']:>12.0f}MB")
    print("CPU microseconds per sample (where the time goes; the loadgen's includes building nothing):")
    for name, x in (("unary", u), ("stream", s)):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in x["cpu_us_per_sample"].items())
        print(f"  {name:<7} {parts}; total {sum(x['cpu_us_per_sample'].values()):.1f}")
    for name, x in (("unary", u), ("stream", s)):
        if x["rows"] != x["samples"]:
            print(f"WARNING: {name}: {x['rows']} rows for {x['samples']} samples sent")
    figures = {
        "bench": "ingest", "samples_per_phase": args.samples, "batch": args.batch, "sites": args.sites,
        "ceiling_sps": round(ceiling_sps), "ingest_sps": round(u["sps"]), "stream_sps": round(s["sps"]),
        "ingest_ratio": round(u["sps"] / ceiling_sps, 3), "stream_ratio": round(s["sps"] / ceiling_sps, 3),
        "ingest_ack_to_visible_p50_ms": round(u["p50_ms"] or 0, 1), "ingest_ack_to_visible_p99_ms": round(u["p99_ms"] or 0, 1),
        "ingestor_rss_mb": round(max(u["rss_mb"], s["rss_mb"]), 1),
        "rows_ok": u["rows"] == u["samples"] and s["rows"] == s["samples"],
        "ingest_cpu_us_per_sample": u["cpu_us_per_sample"], "stream_cpu_us_per_sample": s["cpu_us_per_sample"],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
