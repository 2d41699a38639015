"""Detection quality benchmark (`make bench-detect`, `python -m bench.detect`).

Phase 1, quality. The fleet simulator (cli/fleet/model.py) generates --sites sites x --days
simulated days at --interval s: --fault-free of them with every fault switched off, the others
with the default fault rates (every type: grid and regional outages, DG fail-to-start, battery
LVD, fuel theft, cooling failure, door open, rectifier fault, tenant link down, telemetry link
loss) and its ground truth. The samples are replayed, in time order, through three detectors in
the same run:
  engine    the aiops_engine's layers (workers/aiops_engine/domain.py rules, statistics and
            forecasts; models.py's ECOD per site class, retrained every simulated day on the
            normal minutes seen so far, scoring each batch as the worker does), each site's
            configuration as the Sites register gives it to the worker
  static    baseline 1: fixed thresholds on raw metrics, no site configuration, no time
            (mains 0; mains 0 and DG 0; SoC < 30 %; fuel down > 5 l since the last sample;
            cabinet > 45 C; door; rectifier alarm; a tenant link 0); it cannot see silence
  iforest   baseline 2: plain pyod IForest on the raw metric vector of each snapshot, trained
            on the first simulated day, an anomaly while the score is above the training
            scores' 99.5th percentile (closed after 5 normal snapshots); it does not say what
            it found, so each of its anomalies counts for every fault type
and scored against the ground truth (workers/aiops_engine/evaluate.py): per fault type events,
recall, precision, event-level F1, median time to detect; false anomalies per site-day (fired
outside every fault of its site, any detector); battery-depletion forecast lead times; CPU
microseconds per sample of each detector (this process, time.process_time around its calls).

Phase 2, keeping up (skipped with --no-throughput): bench.ingest's unary phase (ingest API ->
JetStream -> ingestors -> PostgreSQL, its own servers and processes) measures the ingest rate on
this machine in this run; then a backlog of --tp-sites x --tp-minutes simulated minutes at 15 s
(every metric) is published to TELEMETRY as the ingest API cuts it, and --replicas aiops_engine
processes (`python -m workers.aiops_engine.worker`, partitions split between them) work it off:
engine_sps = samples / (start -> every consumer drained), its CPU per sample, keeps_up =
engine_sps >= ingest_sps.

The table goes to stdout, then ONE JSON line with the figures.
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
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

from cli.fleet import model as fleet_model
from workers.aiops_engine import domain, evaluate, models

START = 1_767_225_600.0  # 2026-01-01T00:00Z
TARGETS = {"f1": 0.9, "false_per_site_day": 0.05, "theft_ttd_s": 900, "lvd_share_30min": 0.8, "cpu_us": 50.0}
STATIC_DETECTORS = {
    "grid_outage": ("static.mains",), "regional_outage": ("static.mains",),
    "dg_fail_to_start": ("static.dg_off",), "battery_lvd": ("static.soc",), "fuel_theft": ("static.fuel",),
    "cooling_failure": ("static.temp",), "door_open": ("static.door",), "rectifier_fault": ("static.rectifier",),
    "tenant_link_down": ("static.link",), "telemetry_link_loss": (),
}
RAW = ("mains_present", "dg_running", "fuel_level_l", "dc_bus_v", "load_a", "battery_soc_pct", "battery_v",
       "cabinet_temp_c", "door_open", "rectifier_fault")


class Static:
    """Baseline 1: fixed thresholds, one anomaly per (site, rule) while the condition holds."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], float] = {}
        self.last_fuel: dict[str, float] = {}
        self.detections: list[evaluate.Detection] = []

    def snapshot(self, sid: str, t: float, v: dict[str, float], links: list[float]) -> None:
        fuel = v.get("fuel_level_l")
        prev = self.last_fuel.get(sid)
        if fuel is not None:
            self.last_fuel[sid] = fuel
        conds = {
            "static.mains": v.get("mains_present", 1) < 0.5,
            "static.dg_off": v.get("mains_present", 1) < 0.5 and v.get("dg_running", 1) < 0.5,
            "static.soc": v.get("battery_soc_pct", 100) < 30,
            "static.fuel": fuel is not None and prev is not None and prev - fuel > 5.0,
            "static.temp": v.get("cabinet_temp_c", 0) > 45,
            "static.door": v.get("door_open", 0) > 0.5,
            "static.rectifier": v.get("rectifier_fault", 0) > 0.5,
            "static.link": any(x < 0.5 for x in links),
        }
        for name, on in conds.items():
            key = (sid, name)
            if on and key not in self.open:
                self.open[key] = t
                self.detections.append(evaluate.Detection(sid, name, t, t))
            elif not on and key in self.open:
                del self.open[key]


class IForestBaseline:
    """Baseline 2: pyod IForest on raw snapshot vectors."""

    def __init__(self, train_until: float) -> None:
        self.train_until = train_until
        self.train: list[list[float]] = []
        self.model = None
        self.threshold = 0.0
        self.pending: list[tuple[str, float, list[float]]] = []
        self.state: dict[str, list] = {}  # site -> [open, normal count]
        self.detections: list[evaluate.Detection] = []
        self.rng = np.random.default_rng(1)

    def snapshot(self, sid: str, t: float, v: dict[str, float], links: list[float]) -> None:
        x = [v.get(m, 0.0) for m in RAW] + [min(links) if links else 1.0]
        if t < self.train_until:
            if self.rng.random() < 0.1:
                self.train.append(x)
            return
        self.pending.append((sid, t, x))
        if len(self.pending) >= 5000:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.model is None:
            from pyod.models.iforest import IForest

            self.model = IForest(n_estimators=100, random_state=1)
            self.model.fit(np.array(self.train))
            self.threshold = float(np.percentile(self.model.decision_scores_, 99.5))
        scores = self.model.decision_function(np.array([x for *_, x in self.pending]))
        for (sid, t, _), s in zip(self.pending, scores, strict=True):
            st = self.state.setdefault(sid, [False, 0])
            if s > self.threshold:
                st[1] = 0
                if not st[0]:
                    st[0] = True
                    self.detections.append(evaluate.Detection(sid, "iforest", t, t))
            elif st[0]:
                st[1] += 1
                if st[1] >= 5:
                    st[0] = False
        self.pending.clear()


def site_cfg(spec: fleet_model.SiteSpec) -> domain.SiteCfg:
    """What the worker gets from the register for a simulated site (as `towerco simulate` maps a
    register entry onto the simulator's site)."""
    return domain.SiteCfg(spec.site_id, spec.region, spec.tenants, has_grid=spec.has_grid, has_dg=spec.has_dg,
                          dg_capacity_kva=15.0 if spec.has_dg else 0.0, dg_start_delay_s=spec.dg_start_delay_s,
                          battery_bank_ah=spec.battery_ah, fuel_tank_l=spec.tank_l)


def phase_quality(args) -> dict:
    ids = [f"B-{i:04d}" for i in range(args.sites)]
    specs = fleet_model.demo_specs(ids, seed=args.seed, tenants={s: ("acme", "beta") for s in ids})
    truth: list[fleet_model.Fault] = []
    clean = specs[:args.fault_free]
    faulty = specs[args.fault_free:]
    fleets = [fleet_model.Fleet(faulty, seed=args.seed, start=START, rates=fleet_model.parse_faults(args.faults),
                                on_fault=truth.append)]
    if clean:
        fleets.append(fleet_model.Fleet(clean, seed=args.seed + 1, start=START,
                                        rates=fleet_model.parse_faults("none"), on_fault=truth.append))
    cfgs = {s.site_id: site_cfg(s) for s in specs}
    eng = domain.Engine()
    layer = models.ModelLayer(min_train=2000)
    states = {s: domain.SiteState() for s in ids}
    static = Static()
    iforest = IForestBaseline(START + 86400)
    det: list[evaluate.Detection] = []
    forecasts: dict[str, list[list]] = defaultdict(list)
    cpu = {"engine": 0.0, "models": 0.0, "static": 0.0, "iforest": 0.0}
    n_samples = 0
    steps = int(args.days * 86400 / args.interval)
    next_train = START + 86400
    batch_every = max(1, int(300 / args.interval))  # the worker scores what a fetch closed: ~ every 5 min
    dump = None
    if args.dump:  # the samples for `towerco aiops backtest --site-file`
        Path(args.dump).mkdir(parents=True, exist_ok=True)
        dump = open(Path(args.dump) / "samples.csv", "w", encoding="utf-8")  # noqa: SIM115 - closed below
        dump.write("time,site_id,metric,tenant_id,value\n")
    for i in range(steps):
        samples = [x for f in fleets for x in f.step(args.interval)]
        n_samples += len(samples)
        if dump is not None:
            dump.writelines(f"{t:.3f},{sid},{m},{ten},{v}\n" for sid, m, ten, t, v in samples)
        by: dict[str, list] = defaultdict(list)
        for sid, m, ten, t, v in samples:
            by[sid].append((t, m, ten, v))
        now = START + (i + 1) * args.interval
        c0 = time.process_time()
        for sid, ss in by.items():
            tr, pr = eng.process(states[sid], cfgs[sid], ss)
            for x in tr:
                if x.kind == "open":
                    det.append(evaluate.Detection(sid, x.detector, x.time, x.start, x.metrics))
            for p in pr:
                if p.kind == "open":
                    forecasts[sid].append([p.predict_time, p.expected_time, None, p.pkind])
                elif forecasts[sid]:
                    forecasts[sid][-1][2] = p.time
        if i % batch_every == 0:
            for sid in ids:
                for x in eng.tick(states[sid], cfgs[sid], now):
                    if x.kind == "open":
                        det.append(evaluate.Detection(sid, x.detector, x.time, x.start))
        c1 = time.process_time()
        if i % batch_every == 0:
            for sid, x in layer.score_many([(sid, cfgs[sid], states[sid], None) for sid in ids]):
                if x.kind == "open":
                    det.append(evaluate.Detection(sid, x.detector, x.time, x.start))
            if now >= next_train:
                next_train += 86400
                for cls, data in layer.examples.items():
                    if len(data) >= layer.min_train:
                        m = models.fit(cls, np.array(data))
                        m.version = layer.active[cls].version + 1 if cls in layer.active else 1
                        layer.active[cls] = m
        c2 = time.process_time()
        snaps: dict[str, dict] = defaultdict(dict)
        links: dict[str, list] = defaultdict(list)
        for sid, m, _ten, _t, v in samples:
            if m == "tenant_link_up":
                links[sid].append(v)
            else:
                snaps[sid][m] = v
        c3 = time.process_time()
        for sid, v in snaps.items():
            static.snapshot(sid, now, v, links[sid])
        c4 = time.process_time()
        for sid, v in snaps.items():
            iforest.snapshot(sid, now, v, links[sid])
        c5 = time.process_time()
        cpu["engine"] += c1 - c0
        cpu["models"] += c2 - c1
        cpu["static"] += c4 - c3
        cpu["iforest"] += c5 - c4
    c = time.process_time()
    iforest.flush()
    cpu["iforest"] += time.process_time() - c
    for f in fleets:
        f.close()
    if dump is not None:
        dump.close()
        with open(Path(args.dump) / "faults.jsonl", "w", encoding="utf-8") as out:
            for f in truth:
                out.write(json.dumps(f.record()) + "\n")
    run_end = START + steps * args.interval
    events = [evaluate.Event(f.type, f.site_id, f.start, f.end) for f in truth]
    site_days = args.sites * args.days
    out = {
        "sites": args.sites, "fault_free_sites": args.fault_free, "days": args.days, "interval_s": args.interval,
        "samples": n_samples, "truth_events": sum(1 for e in events if e.type not in evaluate.NOT_FAULTS),
        "engine": evaluate.score(events, det, site_days=site_days, run_end=run_end),
        "static": evaluate.score(events, static.detections, site_days=site_days, run_end=run_end,
                                 fault_detectors=STATIC_DETECTORS),
        "iforest": evaluate.score(events, iforest.detections, site_days=site_days, run_end=run_end,
                                  fault_detectors={k: ("iforest",) for k in STATIC_DETECTORS}),
        "forecast": evaluate.forecast_leads(events, [evaluate.Forecast(s, p[0], p[1], p[2])
                                                     for s, ps in forecasts.items() for p in ps if p[3] == 1]),
        "cpu_us_per_sample": {k: round(v / n_samples * 1e6, 2) for k, v in cpu.items()},
        "models": {cls: {"version": m.version, "samples": m.samples} for cls, m in layer.active.items()},
    }
    out["cpu_us_per_sample"]["engine_total"] = round(out["cpu_us_per_sample"]["engine"]
                                                     + out["cpu_us_per_sample"]["models"], 2)
    return out


# --------------------------------------------------------------------------- phase 2: keeping up


async def phase_ingest(args) -> dict:
    from bench import ingest

    spec = argparse.Namespace(samples=args.ingest_samples, batch=5000, sites=1000, concurrency=8, ingestors=2)
    unary = (await ingest.orchestrate(spec, unary_only=True))["unary"]
    return {"ingest_sps": round(unary["sps"]), "ingest_cpu_us_per_sample": unary["cpu_us_per_sample"]}


async def phase_throughput(args, rate: float) -> dict:
    from towerco.telemetry.v1 import telemetry_pb2

    from bench.procs import cpu_seconds, pg_postmaster
    from mesh import db, events, subjects
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres
    from mesh.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-detect-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    nats = EmbeddedNats(tmp / "nats").start()
    procs: list[subprocess.Popen] = []
    try:
        await migrate(pg.url, components=["aiops"])
        nc = await events.connect(nats.url, name="bench-detect")
        js = nc.jetstream()
        await events.ensure_streams(js)
        ids = [f"T-{i:04d}" for i in range(args.tp_sites)]
        fleet = fleet_model.Fleet(fleet_model.demo_specs(ids, seed=5), seed=5, start=time.time() - 86400 * 2)
        parts = 16
        n = 0
        tag = uuid.uuid4().hex[:6]
        msgs = []
        for step in range(int(args.tp_minutes * 4)):
            samples = fleet.step(15.0)
            req: dict[int, list] = defaultdict(list)
            for sid, m, ten, t, v in samples:  # noqa: B007
                s = telemetry_pb2.Sample(site_id=sid, metric=m, tenant_id=ten, value=v)
                s.time.FromNanoseconds(int(t * 1e9))
                req[subjects.partition_of(sid, parts)].append(s)
            for p, items in req.items():
                b = telemetry_pb2.TelemetryBatch(batch_id=f"{tag}-{step}", partition=p, samples=items)
                msgs.append((p, b.SerializeToString(), f"{tag}-{step}:{p}"))
            n += len(samples)
        for p, data, mid in msgs:
            await events.publish(js, subjects.telemetry_subject(p), data, msg_id=mid)
        env = dict(os.environ, DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_LOG_LEVEL="warning",
                   TOWERCO_SITES_TARGET="127.0.0.1:1", TOWERCO_AIOPS_RETRAIN_S="3600")
        started = time.monotonic()
        for r in range(args.replicas):
            mine = [p for p in range(parts) if p % args.replicas == r]
            e = dict(env, TOWERCO_AIOPS_PARTITIONS=",".join(map(str, mine)), TOWERCO_AIOPS_REPLICA=f"r{r}")
            log = open(tmp / f"engine{r}.log", "wb")  # noqa: SIM115, ASYNC230 - closed with the process
            procs.append(subprocess.Popen(  # noqa: ASYNC220 - started once, before the timing
                [sys.executable, "-m", "workers.aiops_engine.worker"], env=e, stdout=log,
                                          stderr=subprocess.STDOUT))
        pids = {"engine": [p.pid for p in procs], "postgres": [pg_postmaster(pg.data_dir)],
                "nats": [nats.process.pid]}
        # the clock starts when the first replica fetches (process start-up is not the engine's rate)
        while True:
            try:
                infos = [await js.consumer_info("TELEMETRY", f"aiops-engine-{p}") for p in range(parts)]
                if sum(i.delivered.consumer_seq for i in infos) > 0:
                    break
            except Exception:  # noqa: BLE001 - consumers not created yet
                pass
            if time.monotonic() - started > 120:
                raise RuntimeError("the engine did not start")
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        before = cpu_seconds(pids)
        while True:
            await asyncio.sleep(0.5)
            pending = 0
            try:
                for p in range(parts):
                    info = await js.consumer_info("TELEMETRY", f"aiops-engine-{p}")
                    pending += info.num_pending + info.num_ack_pending
            except Exception:  # noqa: BLE001 - consumers not created yet
                pending = -1
            if pending == 0:
                break
            if time.monotonic() - t0 > args.tp_timeout:
                raise RuntimeError("the engine did not drain the backlog in time")
        took = time.monotonic() - t0
        after = cpu_seconds(pids)
        pool = await db.create_pool(pg.url, min_size=1, max_size=2)
        async with pool.acquire() as conn:
            folded = await conn.fetchval("SELECT count(*) FROM aiops.consumed")
        await pool.close()
        await nc.close()
        sps = n / took
        return {"tp_samples": n, "tp_messages": len(msgs), "tp_consumed": folded, "engine_sps": round(sps),
                "engine_drain_s": round(took, 2), "replicas": args.replicas,
                "engine_cpu_us_per_sample": {k: round((after[k] - before[k]) / n * 1e6, 2) for k in pids},
                "rate_sps": round(rate), "engine_vs_ingest": round(sps / rate, 2) if rate else None,
                "keeps_up": bool(rate and sps >= rate), "logs": str(tmp)}
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()
        pg.stop(mode="immediate")
        for data in ("pg", "nats"):
            shutil.rmtree(tmp / data, ignore_errors=True)


def _fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--fault-free", type=int, default=20)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--interval", type=float, default=60.0, help="simulated seconds between samples (60)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--faults", default="", help="fault rates of the faulty sites (default rates)")
    ap.add_argument("--no-throughput", action="store_true", help="skip phase 2")
    ap.add_argument("--no-quality", action="store_true", help="skip phase 1")
    ap.add_argument("--dump", default="", help="write phase 1's samples.csv and faults.jsonl to this folder "
                    "(for `towerco aiops backtest --site-file`; large: use few sites and days)")
    ap.add_argument("--rate", type=float, default=0.0, help="the ingest rate to keep up with (default: measured)")
    ap.add_argument("--ingest-samples", type=int, default=360_000)
    ap.add_argument("--tp-sites", type=int, default=500)
    ap.add_argument("--tp-minutes", type=int, default=60)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--tp-timeout", type=float, default=900.0)
    args = ap.parse_args()
    f = phase_quality(args) if not args.no_quality else {}
    if not args.no_throughput:
        rate = args.rate
        if not rate:
            f.update(asyncio.run(phase_ingest(args)))
            rate = f["ingest_sps"]
        f.update(asyncio.run(phase_throughput(args, rate)))
    if args.no_quality:
        print(json.dumps({"bench": "detect", **f}))
        return
    rows = []
    header = ("fault type", "events", "engine P", "R", "F1", "ttd s", "static F1", "iforest F1")
    for typ in evaluate.FAULT_DETECTORS:
        e, s, i = f["engine"]["types"][typ], f["static"]["types"][typ], f["iforest"]["types"][typ]
        rows.append((typ, str(e["events"]), _fmt(e["precision"]), _fmt(e["recall"]), _fmt(e["f1"]),
                     _fmt(e["median_ttd_s"]), _fmt(s["f1"]), _fmt(i["f1"])))
    rows.append(("false anomalies / site-day", "", _fmt(f["engine"]["false_per_site_day"]), "", "", "",
                 _fmt(f["static"]["false_per_site_day"]), _fmt(f["iforest"]["false_per_site_day"])))
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    print(f"detection quality: {f['sites']} sites ({f['fault_free_sites']} fault-free) x {f['days']} days at "
          f"{f['interval_s']:g} s, {f['samples']} samples, {f['truth_events']} faults")
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    fc = f["forecast"]
    print(f"battery depletion: {fc['lvd_events']} LVD events, {fc['predicted']} predicted, "
          f"{fc['predicted_30min_ahead']} >= 30 min ahead (share {_fmt(fc['share_30min_ahead'])}, target "
          f"{TARGETS['lvd_share_30min']}), median lead {_fmt(fc['median_lead_s'])} s")
    cu = f["cpu_us_per_sample"]
    print(f"CPU us/sample: engine {cu['engine']} + models {cu['models']} = {cu['engine_total']} (target <= "
          f"{TARGETS['cpu_us']}); static {cu['static']}; iforest {cu['iforest']}")
    print(f"false anomalies by engine detector: {f['engine']['false_by_detector']}")
    if "engine_sps" in f:
        print(f"keeping up: ingest {f.get('ingest_sps', f['rate_sps'])} samples/s (this run); engine "
              f"{f['engine_sps']} samples/s with {f['replicas']} replica(s) ({f['engine_vs_ingest']} x), CPU "
              f"{f['engine_cpu_us_per_sample']} us/sample: keeps up {'yes' if f['keeps_up'] else 'NO'}")
    print(json.dumps({"bench": "detect", **f}))


if __name__ == "__main__":
    main()
