"""Cluster benchmark (`make bench-cluster`, `python -m bench.cluster`): end-to-end ingest (Ingest
API -> TELEMETRY -> ingestors -> rows visible in PostgreSQL) on a 3-node NATS JetStream cluster
with the streams at replicas 3, against the same path on one nats-server (replicas 1) in the same
run, and the time the cluster takes to get back to full throughput after its TELEMETRY stream
leader is killed with SIGKILL.

Set-up (all local: one embedded PostgreSQL with fsync on; the NATS server(s) from the wheel on free
ports): the Sites service, the telemetry service and two ingestors run as their own processes, as
`towerco up` starts them; the load generator is a process of its own that pre-builds every batch
before the clock starts (bench.ingest's).

Figures:
  single_sps / cluster_sps   samples per second, first send -> last row visible
  ratio                      cluster_sps / single_sps
  baseline_sps               acknowledged samples per second in the 3 s before the kill
  leader_kill_gap_s          the longest pause between two acknowledged batches around the kill
  recover_s                  from the kill until a whole second of acks runs at >= 80 % of baseline
  lost / duplicated          rows missing or extra after the recovery phase (must be 0 / 0)
The table goes to stdout, then ONE JSON line with the figures.

Options: --samples N (per ratio phase, default 300,000), --batch N (5000), --sites N (1000),
--concurrency N (8), --recovery-s N (seconds of load in the recovery phase, 20).
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

from bench.ingest import Proc, phase, rows_for, site_ids
from bench.procs import wait_grpc

ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER_S = 6.0


async def steady_loadgen(args: argparse.Namespace) -> None:
    """Sends pre-built batches flat out (`--concurrency` calls in flight) for `--duration` s;
    a batch that fails is re-sent with the same id until acknowledged. Prints one JSON line:
    ack times and the count of samples acknowledged."""
    import grpc
    from towerco.telemetry.v1 import telemetry_pb2 as pb

    from mesh.auth import service_token

    sites = site_ids(args.sites)
    n_batches = args.samples // args.batch
    payloads = []
    for b in range(n_batches):
        req = pb.IngestRequest(batch_id=f"steady-{b}")
        for sid, metric, tenant, t, value in rows_for("steady", b, args.batch, sites, args.t0):
            s = req.samples.add(site_id=sid, metric=metric, tenant_id=tenant, value=value)
            s.time.seconds = int(t)
        payloads.append(req.SerializeToString())
    md = (("authorization", f"Bearer {service_token('bench')}"),)
    channel = grpc.aio.insecure_channel(args.target, options=[("grpc.max_send_message_length", 64 << 20)])
    call = channel.unary_unary("/towerco.telemetry.v1.TelemetryService/Ingest",
                               request_serializer=lambda b: b, response_deserializer=pb.IngestResponse.FromString)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    until = time.time() + args.duration
    acks: list[float] = []
    accepted = 0
    queue = list(reversed(payloads))

    async def worker() -> None:
        nonlocal accepted
        while queue and time.time() < until:
            data = queue.pop()
            while True:
                try:
                    reply = await call(data, metadata=md, timeout=10)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            if reply.rejected:
                raise SystemExit(f"the telemetry service rejected {reply.rejected} samples")
            acks.append(time.time())
            accepted += reply.accepted

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    await channel.close()
    print(json.dumps({"accepted": accepted, "acks": acks}), flush=True)


class Platform:
    """Sites + telemetry + two ingestors on one NATS setup (a URL and its replica count)."""

    def __init__(self, pg_url: str, nats_url: str, replicas: int, logdir: Path, name: str) -> None:
        from mesh.embedded import free_port

        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
        self.sites_port, self.tel_port = free_port(), free_port()
        self.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url, TOWERCO_NATS_REPLICAS=str(replicas),
                        TOWERCO_SITES_PORT=str(self.sites_port), TOWERCO_TELEMETRY_PORT=str(self.tel_port),
                        TOWERCO_SITES_TARGET=f"127.0.0.1:{self.sites_port}",
                        TOWERCO_TELEMETRY_TARGET=f"127.0.0.1:{self.tel_port}", TOWERCO_LOG_LEVEL="warning",
                        TOWERCO_MAX_MESSAGE_BYTES=str(16 << 20))
        self.logdir = logdir / name
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    async def start(self, args: argparse.Namespace, *, create_sites: bool) -> None:
        import grpc
        from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

        from mesh import events
        from mesh.auth import service_token

        nc = await events.connect(self.env["NATS_URL"], name="bench-cluster")
        await events.ensure_streams(nc.jetstream(), replicas=int(self.env["TOWERCO_NATS_REPLICAS"]))
        await nc.close()
        self.procs.append(Proc("sites", "services.sites.server", self.env, self.logdir))
        await wait_grpc(f"127.0.0.1:{self.sites_port}")
        if create_sites:
            md = (("authorization", f"Bearer {service_token('bench')}"),)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.sites_port}") as ch:
                stub = sites_pb2_grpc.SitesServiceStub(ch)
                for sid in site_ids(args.sites):
                    await stub.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                        id=sid, name=sid, region="bench", location={"latitude": 0, "longitude": 0})), metadata=md)
        self.procs.append(Proc("telemetry", "services.telemetry.server", self.env, self.logdir))
        await wait_grpc(f"127.0.0.1:{self.tel_port}")
        await asyncio.sleep(2.0)  # the telemetry service lists the sites at start
        self.ingestors = [Proc(f"ingestor{i}", "workers.ingestor.worker", self.env, self.logdir) for i in range(2)]
        self.procs.extend(self.ingestors)
        await asyncio.sleep(2.0)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


async def recovery(pg_url: str, plat: Platform, cluster, args: argparse.Namespace, t0: float,
                   expect_sps: float) -> dict:
    """Steady load on the cluster (enough batches for --recovery-s at `expect_sps`); kill -9 the
    TELEMETRY stream leader after KILL_AFTER_S."""
    import asyncpg

    from mesh import events

    gen = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
        [sys.executable, "-m", "bench.cluster", "--loadgen", "--target", plat.env["TOWERCO_TELEMETRY_TARGET"],
         "--samples", str(max(args.samples, int(expect_sps * (args.recovery_s + 10)) // args.batch * args.batch)), "--batch", str(args.batch), "--sites", str(args.sites),
         "--concurrency", str(args.concurrency), "--t0", str(t0), "--duration", str(args.recovery_s)],
        cwd=ROOT, env=plat.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdout is not None and gen.stdin is not None
    assert gen.stdout.readline().strip() == "ready"
    nc = await events.connect(plat.env["NATS_URL"], name="bench-cluster-kill")
    leader = (await nc.jetstream().stream_info(events.TELEMETRY_STREAM)).cluster.leader
    await nc.close()
    conn = await asyncpg.connect(pg_url)
    killed_at = None
    try:
        started = time.time()
        gen.stdin.write("go\n")
        gen.stdin.flush()
        while time.time() - started < args.recovery_s:
            await asyncio.sleep(0.1)
            if killed_at is None and time.time() - started >= KILL_AFTER_S:
                cluster.stop(cluster.node_named(leader), kill=True)
                killed_at = time.time()
        out = json.loads(gen.stdout.readline())
        gen.wait(60)
        # everything acknowledged must become visible, once
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = await conn.fetchval("SELECT count(*) FROM telemetry.samples")
            if rows >= out["accepted"]:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
        rows = await conn.fetchval("SELECT count(*) FROM telemetry.samples")
        distinct = await conn.fetchval("SELECT count(*) FROM (SELECT DISTINCT site_id, metric, tenant_id, time "
                                       "FROM telemetry.samples) d")
        await conn.execute("TRUNCATE telemetry.samples, telemetry.ingested_messages")
    finally:
        await conn.close()
    assert killed_at is not None
    # throughput as the clients see it: acknowledged samples per second (each ack is one batch)
    acks = sorted(out["acks"])
    per_ack = out["accepted"] / max(1, len(acks))
    before = [a for a in acks if killed_at - 3.0 <= a < killed_at]
    baseline = len(before) * per_ack / 3.0
    recover_s = None
    for i, a in enumerate(acks):
        if a < killed_at:
            continue
        window = [b for b in acks[i:] if b < a + 1.0]
        if len(window) * per_ack >= 0.8 * baseline and acks[-1] >= a + 1.0:
            recover_s = a - killed_at
            break
    around = [a for a in acks if killed_at - 2 <= a <= killed_at + 30]
    gap = max((b - a for a, b in zip(around, around[1:], strict=False)), default=0.0)
    return {"baseline_sps": baseline, "recover_s": recover_s, "gap_s": gap, "accepted": out["accepted"],
            "rows": rows, "lost": max(0, out["accepted"] - rows), "duplicated": rows - distinct,
            "leader": leader}


async def orchestrate(args: argparse.Namespace) -> dict:
    from mesh.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres
    from mesh.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-cluster-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    results: dict = {"logs": str(tmp)}
    t0 = float(int(time.time()) - 10 * 3600)  # every phase's samples in the past (the API refuses the future)
    try:
        await migrate(pg.url, components=["sites", "telemetry"])
        single = EmbeddedNats(tmp / "nats-single").start()
        plat = Platform(pg.url, single.url, 1, tmp, "single")
        try:
            await plat.start(args, create_sites=True)
            pids = {"telemetry": [plat.procs[1].p.pid], "ingestor": [p.p.pid for p in plat.ingestors],
                    "nats": [single.process.pid]}
            results["single"] = await phase("unary", pg.url, plat.env, args, t0, plat.ingestors, pids)
        finally:
            plat.stop()
            single.stop()
        cluster = EmbeddedNatsCluster(tmp / "nats-cluster").start()
        plat = Platform(pg.url, cluster.url, 3, tmp, "cluster")
        try:
            await plat.start(args, create_sites=False)
            pids = {"telemetry": [plat.procs[1].p.pid], "ingestor": [p.p.pid for p in plat.ingestors],
                    "nats": [n.process.pid for n in cluster.nodes if n.process]}
            results["cluster"] = await phase("unary", pg.url, plat.env, args, t0 + 10_000, plat.ingestors, pids)
            results["recovery"] = await recovery(pg.url, plat, cluster, args, t0 + 20_000,
                                                 results["cluster"]["sps"])
        finally:
            plat.stop()
            cluster.stop()
        return results
    finally:
        pg.stop()
        for data in ("pg", "nats-single", "nats-cluster"):  # keep the logs, drop the data
            shutil.rmtree(tmp / data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--recovery-s", type=float, default=20.0)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        asyncio.run(steady_loadgen(args))
        return
    r = asyncio.run(orchestrate(args))
    s, c, rec = r["single"], r["cluster"], r["recovery"]
    ratio = c["sps"] / s["sps"]
    print(f"cluster benchmark: {args.samples:,} samples per phase, batches of {args.batch}, {args.sites} sites, "
          f"{args.concurrency} Ingest calls in flight, 2 ingestors; logs in {r['logs']}")
    print(f"{'NATS':<40}{'samples/s':>12}{'x single':>10}{'ack->visible p50':>18}{'p99':>9}")
    for name, x in (("one server, streams R1", s), ("3-node cluster, streams R3", c)):
        print(f"{name:<40}{x['sps']:>12,.0f}{x['sps'] / s['sps']:>10.2f}{x['p50_ms']:>16.0f}ms{x['p99_ms']:>7.0f}ms")
    rec_s = f"{rec['recover_s']:.1f}s" if rec["recover_s"] is not None else "not within the phase"
    print(f"kill -9 of the TELEMETRY stream leader ({rec['leader']}) under steady load on the cluster:")
    print(f"  baseline {rec['baseline_sps']:,.0f} samples/s; longest gap between acks {rec['gap_s']:.1f}s; "
          f"back to >= 80% of baseline after {rec_s}; {rec['accepted']:,} acknowledged, {rec['rows']:,} stored, "
          f"{rec['lost']} lost, {rec['duplicated']} duplicated")
    for name, x in (("single", s), ("cluster", c)):
        if x["rows"] != x["samples"]:
            print(f"WARNING: {name}: {x['rows']} rows for {x['samples']} samples sent")
    print(json.dumps({
        "bench": "cluster", "samples_per_phase": args.samples, "batch": args.batch, "sites": args.sites,
        "single_sps": round(s["sps"]), "cluster_sps": round(c["sps"]), "ratio": round(ratio, 3),
        "single_p50_ms": round(s["p50_ms"] or 0, 1), "cluster_p50_ms": round(c["p50_ms"] or 0, 1),
        "cluster_p99_ms": round(c["p99_ms"] or 0, 1),
        "baseline_sps": round(rec["baseline_sps"]), "leader_kill_gap_s": round(rec["gap_s"], 2),
        "recover_s": None if rec["recover_s"] is None else round(rec["recover_s"], 2),
        "lost": rec["lost"], "duplicated": rec["duplicated"],
        "rows_ok": s["rows"] == s["samples"] and c["rows"] == c["samples"] and rec["lost"] == 0
        and rec["duplicated"] == 0,
    }))


if __name__ == "__main__":
    main()
