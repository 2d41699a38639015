"""Fault-to-WebSocket latency benchmark (`make bench-incident-latency`, `python -m bench.incident_latency`).

What it measures: from the Ingest acknowledgement of a fault sample (a grid-connected site's
`mains_present` = 0) to the incident change for that site arriving on a WebSocket client of the
gateway's live incident feed (`/api/v1/incidents:watch?live_only=true`), with p50/p99 over
--faults injections per phase. The path is the platform's own, every hop a real process:

    Ingest (telemetry) -> TELEMETRY -> aiops_engine (rule.mains_lost) -> aiops outbox -> EVENTS
    -> noc (alarm -> incident) -> noc outbox -> EVENTS -> WatchIncidents (services/noc/feed.py)
    -> gateway WebSocket -> client

On the same injections it also times the raw anomaly's arrival on a second WebSocket
(`/api/v1/anomalies:watch`, the AIOps feed), so the table shows where the time goes: "anomaly" is
ingest -> detection -> the AIOps feed, "noc+feed" is that anomaly -> the incident on the NOC feed
(correlation, the NOC outbox, EVENTS, WatchIncidents, the gateway).

Phases, in the same run on the same processes:
  idle     no background load: the baseline
  loaded   the telemetry simulator (`python -m cli.simulate`, speed 0, a backfill of --backfill
           hours of the sites of one region outside the faults' regions, no faults of its own)
           ingesting through the ingest API at --rate samples/s (the simulator's cap; 24,000, so
           that the measured rate clears the target with a margin), the rate measured from the telemetry service's
           towerco_telemetry_samples_total{outcome="accepted"} over the phase; the issue's target
           is >= 20,000 samples/s of background and p99 <= 1 s
Faults are injected one at a time, every --every seconds, each on its own site (fresh state, no
cooldown), sites spread over the regions other than the simulator's.

Set-up: own embedded PostgreSQL and NATS on free ports (fsync on), every process started as
`python -m <module>` from the launcher's registry (cli/processes.py), on free ports; the demo
fleet seeded through the Sites API (`python -m cli.main seed`). Logs stay in the printed folder.

The table goes to stdout, then ONE JSON line with the figures.

Options: --sites N (seeded fleet, 600), --faults N per phase (100, so that the p99 is not just the
slowest one), --every S (1.0), --ingestors N (2), --engines N (aiops_engine replicas, 2),
--backfill H (48), --rate N (background samples/s, 24,000; 0 = as fast as the simulator can),
--timeout S per fault (20), --warmup S (load before the loaded phase's first fault, 15).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import Proc
from bench.procs import cpu_seconds, pg_postmaster, wait_grpc

ROOT = Path(__file__).resolve().parent.parent
BACKGROUND_REGION = "nairobi"
TARGET_P99_S = 1.0
TARGET_BACKGROUND_SPS = 20_000
ACCEPTED = re.compile(r'^towerco_telemetry_samples_total\{outcome="accepted"\}\s+([0-9.e+]+)', re.M)


def _module(name: str) -> str:
    from cli.processes import BY_NAME

    proc = BY_NAME.get(name)
    if proc is None or not proc.exists():
        raise SystemExit(f"bench-incident-latency: the launcher has no runnable {name!r} process "
                         "(cli/processes.py); it needs the NOC service")
    return proc.module


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


@dataclass
class Injection:
    site: str
    region: str
    sent: float = 0.0
    acked: float = 0.0
    anomaly: float | None = None
    incident: float | None = None
    incident_change: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)  # what the phase waits for arrived


@dataclass
class Watchers:
    """The two WebSocket clients: the first message per site on each feed after its injection."""

    pending: dict[str, Injection] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=lambda: {"incidents": 0, "anomalies": 0, "heartbeats": 0})
    errors: list[str] = field(default_factory=list)
    anomaly_is_enough: bool = False  # --without-noc

    def on_incident(self, result: dict, now: float) -> None:
        self.frames["incidents"] += 1
        inc = result.get("incident") or {}
        for site in inc.get("siteIds", inc.get("site_ids", [])):
            inj = self.pending.get(site)
            if inj is not None and inj.sent and inj.incident is None:
                inj.incident = now
                inj.incident_change = str(result.get("change", ""))
                inj.done.set()

    def on_anomaly(self, result: dict, now: float) -> None:
        self.frames["anomalies"] += 1
        a = result.get("anomaly") or {}
        inj = self.pending.get(a.get("siteId", a.get("site_id", "")))
        # from the send on, not the ack: under load the frame can be read before the bench resumes
        # from Ingest's await (the ack was already on the wire); _stats counts that as 0 ms
        if inj is not None and inj.sent and inj.anomaly is None:
            inj.anomaly = now
            if self.anomaly_is_enough:
                inj.done.set()


async def _ws_reader(url: str, token: str, on_result, w: Watchers, ready: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=None, open_timeout=30) as ws:
        ready.set()
        async for raw in ws:
            now = time.time()
            frame = json.loads(raw)
            if "result" in frame:
                on_result(frame["result"], now)
            elif "heartbeat" in frame:
                w.frames["heartbeats"] += 1
            elif "error" in frame:
                w.errors.append(json.dumps(frame["error"])[:300])
                return


async def _accepted(port: int) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    m = ACCEPTED.search(text)
    return float(m.group(1)) if m else 0.0


async def _inject(stub, md, inj: Injection, n: int) -> None:
    from towerco.telemetry.v1 import telemetry_pb2 as pb

    req = pb.IngestRequest(batch_id=f"latency-{inj.site}-{n}")
    s = req.samples.add(site_id=inj.site, metric="mains_present", value=0.0)
    s.time.FromNanoseconds(time.time_ns() - 1_000_000)  # never in the future
    inj.sent = time.time()
    reply = await stub.Ingest(req, metadata=md, timeout=30)
    inj.acked = time.time()
    if reply.accepted != 1:
        raise RuntimeError(f"fault sample for {inj.site} not accepted: {reply}")


async def _phase(name: str, sites: list[tuple[str, str]], stub, md, w: Watchers, args) -> list[Injection]:
    out = []
    for i, (site, region) in enumerate(sites):
        inj = Injection(site, region)
        w.pending[site] = inj
        await _inject(stub, md, inj, i)
        out.append(inj)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(inj.done.wait(), args.timeout)
        await asyncio.sleep(max(0.0, args.every - (time.time() - inj.sent)))
    # late arrivals of the last ones
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(x.done.wait() for x in out)), args.timeout)
    return out


def _stats(injs: list[Injection]) -> dict:
    inc = [max(0.0, x.incident - x.acked) for x in injs if x.incident is not None]
    an = [max(0.0, x.anomaly - x.acked) for x in injs if x.anomaly is not None]
    ack = [x.acked - x.sent for x in injs]
    # the NOC's share: from the anomaly on the AIOps feed to the incident on the NOC feed
    noc = [x.incident - x.anomaly for x in injs if x.incident is not None and x.anomaly is not None]
    r = {"faults": len(injs), "incidents_seen": len(inc), "anomalies_seen": len(an)}
    for key, vals in (("incident", inc), ("anomaly", an), ("anomaly_to_incident", noc), ("ingest_ack", ack)):
        r[f"{key}_p50_ms"] = round(pct(vals, 50) * 1000, 1) if vals else None
        r[f"{key}_p99_ms"] = round(pct(vals, 99) * 1000, 1) if vals else None
        r[f"{key}_max_ms"] = round(max(vals) * 1000, 1) if vals else None
    if inc:
        r["incident_mean_ms"] = round(statistics.fmean(inc) * 1000, 1)
    return r


async def orchestrate(args) -> dict:
    import grpc
    from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
    from towerco.telemetry.v1 import telemetry_pb2_grpc

    from mesh.auth import mint_token, service_token
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port

    names = ["sites", "telemetry", "ingestor", "aiops", "aiops_engine", "gateway", "simulator"]
    modules = {n: _module(n) for n in names + ([] if args.without_noc else ["noc"])}
    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-latency-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    nats = EmbeddedNats(tmp / "nats").start()
    procs: list[Proc] = []
    sim: Proc | None = None
    readers: list[asyncio.Task] = []
    try:
        ports = {n: free_port() for n in ("sites", "telemetry", "aiops", "noc", "kpi", "bi", "files",
                                          "notifications")}
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
        env.update(DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_HOME=str(tmp / "home"),
                   TOWERCO_LOG_LEVEL="warning", TOWERCO_GATEWAY_PORT=str(free_port()),
                   TOWERCO_GATEWAY_RATE_LIMIT="0", TOWERCO_INGESTOR_METRICS_PORT=str(free_port()),
                   TOWERCO_AIOPS_ENGINE_METRICS_PORT=str(free_port()), PYTHONUNBUFFERED="1")
        for n, p in ports.items():
            env[f"TOWERCO_{n.upper()}_PORT"] = str(p)
            env[f"TOWERCO_{n.upper()}_TARGET"] = f"127.0.0.1:{p}"
        gw_port = int(env["TOWERCO_GATEWAY_PORT"])
        procs.append(Proc("sites", modules["sites"], env, tmp))
        await wait_grpc(f"127.0.0.1:{ports['sites']}")
        seed = await asyncio.create_subprocess_exec(sys.executable, "-m", "cli.main", "seed", "--sites",
                                                    str(args.sites), cwd=ROOT, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        seed_out, _ = await seed.communicate()
        if seed.returncode:
            raise RuntimeError(f"seed failed: {seed_out.decode()[-2000:]}")
        procs.append(Proc("telemetry", modules["telemetry"], env, tmp))
        procs.extend(Proc(f"ingestor{i}", modules["ingestor"], dict(
            env, TOWERCO_INGESTOR_METRICS_PORT=str(free_port())), tmp) for i in range(args.ingestors))
        procs.append(Proc("aiops", modules["aiops"], env, tmp))
        parts = 16
        for r in range(args.engines):
            mine = [p for p in range(parts) if p % args.engines == r]
            procs.append(Proc(f"aiops_engine{r}", modules["aiops_engine"], dict(
                env, TOWERCO_AIOPS_PARTITIONS=",".join(map(str, mine)), TOWERCO_AIOPS_REPLICA=f"r{r}",
                TOWERCO_AIOPS_ENGINE_METRICS_PORT=str(free_port())), tmp))
        if not args.without_noc:
            procs.append(Proc("noc", modules["noc"], env, tmp))
        procs.append(Proc("gateway", modules["gateway"], env, tmp))
        for n in ("telemetry", "aiops") + (() if args.without_noc else ("noc",)):
            await wait_grpc(f"127.0.0.1:{ports[n]}", timeout_s=120)
        await _wait_http(f"http://127.0.0.1:{gw_port}/health")
        await asyncio.sleep(3.0)  # the telemetry service and the engine list the register at start

        md = (("authorization", f"Bearer {service_token('bench')}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['sites']}") as ch:
            stub = sites_pb2_grpc.SitesServiceStub(ch)
            sites, token_ = [], ""
            while True:
                reply = await stub.ListSites(sites_pb2.ListSitesRequest(page={"size": 1000, "token": token_}),
                                             metadata=md)
                sites.extend(reply.sites)
                token_ = reply.page.next_token
                if not token_:
                    break
        candidates = [(s.id, s.region) for s in sites if s.region != BACKGROUND_REGION
                      and s.power.grid not in (sites_pb2.GRID_CONNECTION_UNSPECIFIED, sites_pb2.GRID_CONNECTION_NONE)]
        background = sum(1 for s in sites if s.region == BACKGROUND_REGION)
        if len(candidates) < 2 * args.faults:
            raise RuntimeError(f"only {len(candidates)} grid sites outside {BACKGROUND_REGION}; raise --sites")
        # spread over regions: round-robin by region
        by_region: dict[str, list] = {}
        for c in candidates:
            by_region.setdefault(c[1], []).append(c)
        spread = []
        while any(by_region.values()):
            for lst in by_region.values():
                if lst:
                    spread.append(lst.pop(0))
        idle_sites, loaded_sites = spread[:args.faults], spread[args.faults:2 * args.faults]

        viewer = mint_token(subject="bench-latency", tenant="*", roles=["viewer"])
        w = Watchers(anomaly_is_enough=args.without_noc)
        base = f"ws://127.0.0.1:{gw_port}"
        ready = [asyncio.Event(), asyncio.Event()]
        readers = [
            asyncio.create_task(_ws_reader(f"{base}/api/v1/incidents:watch?live_only=true", viewer, w.on_incident,
                                           w, ready[0])),
            asyncio.create_task(_ws_reader(f"{base}/api/v1/anomalies:watch", viewer, w.on_anomaly, w, ready[1])),
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 30)
        await asyncio.sleep(1.0)

        tel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['telemetry']}")
        tstub = telemetry_pb2_grpc.TelemetryServiceStub(tel)
        pids = {"platform": [p.p.pid for p in procs], "postgres": [pg_postmaster(pg.data_dir)],
                "nats": [nats.process.pid]}
        results: dict = {"sites": len(sites), "background_sites": background, "logs": str(tmp)}

        c0 = cpu_seconds(pids)
        t0 = time.monotonic()
        idle = await _phase("idle", idle_sites, tstub, md, w, args)
        results["idle"] = _stats(idle)
        results["idle"]["cpu_cores"] = _cores(c0, cpu_seconds(pids), time.monotonic() - t0)

        sim = Proc("simulator", modules["simulator"], env, tmp, extra=[
            "--region", BACKGROUND_REGION, "--interval", "15", "--speed", "0", "--faults", "none",
            f"--start=-{args.backfill:g}h", "--seed", "3", "--rate", f"{args.rate:g}"])
        tport = ports["telemetry"] + 2000
        a0, m0 = await _accepted(tport), time.monotonic()
        while time.monotonic() - m0 < args.warmup:
            await asyncio.sleep(0.5)
            if sim.p.poll() is not None:
                raise RuntimeError(f"the simulator exited ({sim.p.returncode}): see {tmp / 'simulator.log'}")
        a1, m1 = await _accepted(tport), time.monotonic()
        c1 = cpu_seconds(pids)
        loaded = await _phase("loaded", loaded_sites, tstub, md, w, args)
        a2, m2 = await _accepted(tport), time.monotonic()
        c2 = cpu_seconds(pids)
        if sim.p.poll() is not None:
            results["simulator_exited"] = sim.p.returncode
        results["loaded"] = _stats(loaded)
        results["loaded"]["cpu_cores"] = _cores(c1, c2, m2 - m1)
        results["warmup_sps"] = round((a1 - a0) / (m1 - m0))
        results["background_sps"] = round((a2 - a1) / (m2 - m1))
        results["frames"] = dict(w.frames)
        results["ws_errors"] = w.errors
        results["changes"] = sorted({x.incident_change for x in idle + loaded if x.incident_change})
        await tel.close()
        return results
    finally:
        for t in readers:
            t.cancel()
        if sim is not None:
            sim.stop()
        for p in reversed(procs):
            p.stop()
        nats.stop()
        pg.stop()
        for data in ("pg", "nats"):
            shutil.rmtree(tmp / data, ignore_errors=True)


def _cores(before: dict, after: dict, seconds: float) -> dict:
    return {k: round((after[k] - before[k]) / seconds, 2) for k in before} if seconds > 0 else {}


async def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    import httpx

    end = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as c:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(url)).status_code == 200:
                    return
            if time.monotonic() > end:
                raise TimeoutError(f"{url} not healthy")
            await asyncio.sleep(0.2)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.incident_latency", description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=600)
    ap.add_argument("--faults", type=int, default=100)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--ingestors", type=int, default=2)
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--backfill", type=float, default=48.0)
    ap.add_argument("--rate", type=float, default=24_000.0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--without-noc", action="store_true", help=argparse.SUPPRESS)  # diagnostic: anomaly path only
    args = ap.parse_args()
    r = asyncio.run(orchestrate(args))
    i, lo = r["idle"], r["loaded"]
    print(f"fault -> WebSocket latency: {args.faults} faults per phase, one every {args.every:g} s; "
          f"{r['sites']} sites, background simulator on {r['background_sites']} ({BACKGROUND_REGION}); "
          f"logs in {r['logs']}")
    print(f"{'phase':<8}{'background sps':>16}{'seen':>7}{'incident p50':>14}{'p99':>8}{'max':>8}"
          f"{'anomaly p50':>13}{'p99':>8}{'noc+feed p50':>14}{'p99':>8}{'ack p50':>9}")
    for name, x, sps in (("idle", i, 0), ("loaded", lo, r["background_sps"])):
        print(f"{name:<8}{sps:>16,}{x['incidents_seen']:>4}/{x['faults']:<2}{_ms(x['incident_p50_ms']):>12}ms"
              f"{_ms(x['incident_p99_ms']):>6}ms{_ms(x['incident_max_ms']):>6}ms{_ms(x['anomaly_p50_ms']):>11}ms"
              f"{_ms(x['anomaly_p99_ms']):>6}ms{_ms(x['anomaly_to_incident_p50_ms']):>12}ms"
              f"{_ms(x['anomaly_to_incident_p99_ms']):>6}ms{_ms(x['ingest_ack_p50_ms']):>7}ms")
    ratio = (lo["incident_p99_ms"] / i["incident_p99_ms"]) if lo["incident_p99_ms"] and i["incident_p99_ms"] else None
    ok_p99 = bool(lo["incident_p99_ms"] is not None and lo["incident_p99_ms"] <= TARGET_P99_S * 1000
                  and lo["incidents_seen"] == lo["faults"])
    ok_load = r["background_sps"] >= TARGET_BACKGROUND_SPS
    print(f"loaded/idle incident p99: {ratio:.2f}x" if ratio else "loaded/idle incident p99: -")
    print(f"target p99 <= {TARGET_P99_S:g} s under >= {TARGET_BACKGROUND_SPS:,} samples/s: "
          f"p99 {'met' if ok_p99 else 'NOT met'}, background {'met' if ok_load else 'NOT met'} "
          f"({r['background_sps']:,} samples/s)")
    if r.get("ws_errors"):
        print(f"WebSocket errors: {r['ws_errors']}")
    figures = {"bench": "incident_latency", "faults_per_phase": args.faults, "sites": r["sites"],
               "background_sps": r["background_sps"], "warmup_sps": r["warmup_sps"],
               "idle": i, "loaded": lo, "loaded_vs_idle_p99": round(ratio, 2) if ratio else None,
               "target_p99_ms": TARGET_P99_S * 1000, "p99_target_met": ok_p99,
               "background_target_met": ok_load, "changes": r["changes"], "frames": r["frames"]}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
