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
outside every fault of its site, any detector); per prediction kind (battery depletion, fuel
run-out, site down) the LVD events predicted and their lead times, and the outcomes (right / wrong
/ averted / pending); precursors (rule.battery_near_lvd before an LVD: events warned, lead, share
of warnings followed by one); CPU microseconds per sample of each detector (this process,
time.process_time around its calls).

Phase 1b, the real path (skipped with --no-real-path): a representative part of phase 1 (--rp-sites
sites, --rp-fault-free of them fault-free, same days, interval and fault rates, its own seed)
through the real processes: the Sites service holds the register (power configuration and
tenancies of each site, created over gRPC), the samples go to the telemetry service's Ingest RPC
in time order (10,000 a request, one request at a time), it publishes them to JetStream, --replicas
aiops_engine worker processes (partitions split between them, the model layer off:
TOWERCO_AIOPS_RETRAIN_S=0) consume them and write anomalies and predictions to PostgreSQL, which
are read back once every consumer has drained. The same samples go through phase 1's engine loop
in this process (without the model layer); both are scored against the same truth, and their
anomaly and prediction ids (derived from site, detector key and onset) are compared. The
ingestors (samples -> the telemetry tables) are not started: detection does not read them.

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


KINDS = {domain.BATTERY_DEPLETION: "battery_depletion", domain.FUEL_RUNOUT: "fuel_runout",
         domain.SITE_DOWN: "site_down"}


def forecast_figures(events, forecasts) -> dict:
    """Per prediction kind: the LVD lead times (evaluate.forecast_leads) and the outcomes."""
    fs = list(forecasts)
    return {name: evaluate.forecast_leads(events, [evaluate.Forecast(f[0], f[1], f[2], f[3], f[5])
                                                   for f in fs if f[4] == kind])
            for kind, name in KINDS.items()}


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
    forecasts: dict[str, list] = {}  # prediction id -> [site, made, expected, resolved, kind, outcome]
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
                    forecasts[p.id] = [sid, p.predict_time, p.expected_time, None, p.pkind, domain.PENDING]
                elif p.id in forecasts:
                    forecasts[p.id][3:] = [p.time, p.pkind, p.outcome]
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
        "forecast": forecast_figures(events, forecasts.values()),
        "precursors": {typ: evaluate.precursor(events, det, typ, dets, run_end=run_end)
                       for typ, dets in evaluate.PRECURSORS.items()},
        "cpu_us_per_sample": {k: round(v / n_samples * 1e6, 2) for k, v in cpu.items()},
        "models": {cls: {"version": m.version, "samples": m.samples} for cls, m in layer.active.items()},
    }
    out["cpu_us_per_sample"]["engine_total"] = round(out["cpu_us_per_sample"]["engine"]
                                                     + out["cpu_us_per_sample"]["models"], 2)
    return out


# --------------------------------------------------------------------------- phase 1b: the real path


def simulate_inprocess(args, specs, start: float, truth: list, sample_sink=None) -> dict:
    """Phase 1's engine loop (rules, statistics, forecasts; no model layer) over a fleet, handing
    every step's samples to `sample_sink` too. Returns anomalies and predictions by id."""
    clean, faulty = specs[:args.rp_fault_free], specs[args.rp_fault_free:]
    fleets = [fleet_model.Fleet(faulty, seed=args.seed + 100, start=start, rates=fleet_model.parse_faults(args.faults),
                                on_fault=truth.append)]
    if clean:
        fleets.append(fleet_model.Fleet(clean, seed=args.seed + 101, start=start,
                                        rates=fleet_model.parse_faults("none"), on_fault=truth.append))
    cfgs = {s.site_id: site_cfg(s) for s in specs}
    states = {s.site_id: domain.SiteState() for s in specs}
    eng = domain.Engine()
    anomalies: dict[str, evaluate.Detection] = {}
    preds: dict[str, list] = {}
    steps = int(args.days * 86400 / args.interval)
    batch_every = max(1, int(300 / args.interval))
    n = 0
    for i in range(steps):
        samples = [x for f in fleets for x in f.step(args.interval)]
        n += len(samples)
        if sample_sink is not None:
            sample_sink(samples)
        by: dict[str, list] = defaultdict(list)
        for sid, m, ten, t, v in samples:
            by[sid].append((t, m, ten, v))
        for sid, ss in by.items():
            tr, pr = eng.process(states[sid], cfgs[sid], ss)
            for x in tr:
                if x.kind == "open":
                    anomalies[x.id] = evaluate.Detection(sid, x.detector, x.time, x.start, x.metrics)
            for pc in pr:
                if pc.kind == "open":
                    preds[pc.id] = [sid, pc.predict_time, pc.expected_time, None, pc.pkind, domain.PENDING]
                elif pc.id in preds:
                    preds[pc.id][3:] = [pc.time, pc.pkind, pc.outcome]
        if i % batch_every == 0:
            now = start + (i + 1) * args.interval
            for sid in states:
                for x in eng.tick(states[sid], cfgs[sid], now):
                    if x.kind == "open":
                        anomalies[x.id] = evaluate.Detection(sid, x.detector, x.time, x.start, x.metrics)
    for f in fleets:
        f.close()
    return {"anomalies": anomalies, "predictions": preds, "samples": n, "run_end": start + steps * args.interval}


async def phase_realpath(args) -> dict:
    """A representative part of phase 1 through the real processes: the Sites service holds the
    register (each site's power configuration and tenancies), the simulator's samples go to the
    telemetry service's Ingest RPC in time order, it publishes them to JetStream, two aiops_engine
    worker processes consume them and write anomalies and predictions to PostgreSQL. The same
    samples go, in this process, through the engine's code as phase 1 does; both are scored
    against the same ground truth and their anomaly ids (site, detector key, onset) compared."""
    import grpc
    from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
    from towerco.telemetry.v1 import telemetry_pb2

    from bench.ingest import Proc
    from bench.procs import wait_grpc
    from mesh import db, events
    from mesh.auth import service_token
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port
    from mesh.migrate import migrate

    ids = [f"R-{i:04d}" for i in range(args.rp_sites)]
    specs = fleet_model.demo_specs(ids, seed=args.seed + 100, tenants={s: ("acme", "beta") for s in ids})
    # the data ends an hour ago (inside the telemetry retention; never "live" to the engine)
    start = float(int((time.time() - args.days * 86400 - 3600) // 3600) * 3600)
    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-detect-real-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    nats = EmbeddedNats(tmp / "nats").start()
    procs: list[Proc] = []
    try:
        await migrate(pg.url, components=["sites", "telemetry", "aiops"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
        sites_port, tel_port = free_port(), free_port()
        env.update(DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_SITES_PORT=str(sites_port),
                   TOWERCO_TELEMETRY_PORT=str(tel_port), TOWERCO_SITES_TARGET=f"127.0.0.1:{sites_port}",
                   TOWERCO_TELEMETRY_TARGET=f"127.0.0.1:{tel_port}", TOWERCO_LOG_LEVEL="warning",
                   TOWERCO_MAX_MESSAGE_BYTES=str(16 << 20), TOWERCO_AIOPS_RETRAIN_S="0")
        procs.append(Proc("sites", "services.sites.server", env, tmp))
        await wait_grpc(f"127.0.0.1:{sites_port}")
        md = (("authorization", f"Bearer {service_token('bench')}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sites_port}") as ch:
            stub = sites_pb2_grpc.SitesServiceStub(ch)
            for ten in ("acme", "beta"):
                await stub.CreateTenant(sites_pb2.CreateTenantRequest(tenant=sites_pb2.Tenant(id=ten, name=ten)),
                                        metadata=md)
            for sp in specs:
                power = sites_pb2.PowerConfig(
                    grid=sites_pb2.GRID_CONNECTION_THREE_PHASE if sp.has_grid else sites_pb2.GRID_CONNECTION_NONE,
                    dg_capacity_kva=15.0 if sp.has_dg else 0.0, dg_start_delay_s=sp.dg_start_delay_s,
                    battery_bank_ah=sp.battery_ah, fuel_tank_l=sp.tank_l, battery_voltage_v=48.0)
                await stub.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                    id=sp.site_id, name=sp.site_id, region=sp.region, location={"latitude": 0, "longitude": 0},
                    power=power)), metadata=md)
                for ten in sp.tenants:
                    await stub.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                        site_id=sp.site_id, tenant_id=ten, sla_availability_target=0.999, monthly_fee_minor=1,
                        currency_code="KES")), metadata=md)
        procs.append(Proc("telemetry", "services.telemetry.server", env, tmp))
        await wait_grpc(f"127.0.0.1:{tel_port}")
        parts = 16
        for r in range(args.replicas):
            mine = [p for p in range(parts) if p % args.replicas == r]
            procs.append(Proc(f"engine{r}", "workers.aiops_engine.worker",
                              dict(env, TOWERCO_AIOPS_PARTITIONS=",".join(map(str, mine)),
                                   TOWERCO_AIOPS_REPLICA=f"r{r}"), tmp))
        pool = await db.create_pool(pg.url, min_size=1, max_size=2)
        deadline = time.monotonic() + 120
        while True:  # every replica has its copy of the register (one table, filled by each sync)
            async with pool.acquire() as conn:
                n_sites = await conn.fetchval("SELECT count(*) FROM aiops.site")
            if n_sites >= len(specs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the aiops_engine did not sync the register")
            await asyncio.sleep(0.5)
        await asyncio.sleep(3.0)  # the telemetry service's and each replica's site lists

        # the samples, simulated once: to the in-process engine and queued for the Ingest RPC
        batches: list[list] = [[]]
        per = 10_000

        def sink(samples: list) -> None:
            if len(batches[-1]) + len(samples) > per:
                batches.append([])
            batches[-1].extend(samples)
        truth: list[fleet_model.Fault] = []
        c0 = time.monotonic()
        local = simulate_inprocess(args, specs, start, truth, sink)
        inproc_s = time.monotonic() - c0
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{tel_port}", options=[("grpc.max_send_message_length", 64 << 20)])
        ingest = ch.unary_unary("/towerco.telemetry.v1.TelemetryService/Ingest",
                                request_serializer=lambda b: b,
                                response_deserializer=telemetry_pb2.IngestResponse.FromString)
        t0 = time.monotonic()
        accepted = rejected = 0
        for k, batch in enumerate(batches):  # one at a time: each site's samples reach the engine in order
            req = telemetry_pb2.IngestRequest(batch_id=f"real-{k}")
            for sid, m, ten, t, v in batch:
                smp = req.samples.add(site_id=sid, metric=m, tenant_id=ten, value=v)
                smp.time.FromNanoseconds(int(round(t * 1e9)))
            reply = await ingest(req.SerializeToString(), metadata=md, timeout=120)
            accepted += reply.accepted
            rejected += reply.rejected
            if reply.rejected and k == 0:
                raise RuntimeError(f"the ingest refused samples: {reply.rejections[:3]}")
        ingest_s = time.monotonic() - t0
        await ch.close()
        nc = await events.connect(nats.url, name="bench-detect-real")
        js = nc.jetstream()
        while True:
            await asyncio.sleep(1.0)
            pending = 0
            for p in range(parts):
                info = await js.consumer_info("TELEMETRY", f"aiops-engine-{p}")
                pending += info.num_pending + info.num_ack_pending
            if pending == 0:
                break
            if time.monotonic() - t0 > args.tp_timeout:
                raise RuntimeError("the engine did not work off the real-path samples in time")
        drain_s = time.monotonic() - t0
        await nc.close()
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT id::text, site_id, detector, metrics, "
                                    "extract(epoch FROM start_time) AS s, extract(epoch FROM detect_time) AS d "
                                    "FROM aiops.anomaly")
            prows = await conn.fetch("SELECT id::text, site_id, kind, extract(epoch FROM predict_time) AS p, "
                                     "extract(epoch FROM expected_time) AS e, outcome, "
                                     "extract(epoch FROM outcome_time) AS o FROM aiops.prediction")
        await pool.close()
    finally:
        for p in reversed(procs):
            p.stop()
        nats.stop()
        pg.stop(mode="immediate")
        for data in ("pg", "nats"):
            shutil.rmtree(tmp / data, ignore_errors=True)
    real = {r["id"]: evaluate.Detection(r["site_id"], r["detector"], float(r["d"]), float(r["s"]),
                                        tuple(r["metrics"])) for r in rows}
    rpreds = {r["id"]: [r["site_id"], float(r["p"]), float(r["e"]), None if r["o"] is None else float(r["o"]),
                        int(r["kind"]), int(r["outcome"])] for r in prows}
    events_ = [evaluate.Event(f.type, f.site_id, f.start, f.end) for f in truth]
    site_days = args.rp_sites * args.days
    lid, rid = set(local["anomalies"]), set(real)
    lp, rp = set(local["predictions"]), set(rpreds)
    same_outcome = sum(1 for k in lp & rp if local["predictions"][k][5] == rpreds[k][5])
    return {
        "sites": args.rp_sites, "fault_free_sites": args.rp_fault_free, "days": args.days,
        "samples": local["samples"], "ingest_accepted": accepted, "ingest_rejected": rejected,
        "truth_events": sum(1 for e in events_ if e.type not in evaluate.NOT_FAULTS),
        "ingest_s": round(ingest_s, 1), "ingest_to_drained_s": round(drain_s, 1),
        "inprocess_s": round(inproc_s, 1), "replicas": args.replicas,
        "anomalies": {"real": len(rid), "inprocess": len(lid), "same": len(lid & rid),
                      "only_real": len(rid - lid), "only_inprocess": len(lid - rid),
                      "only_examples": [{"where": "real", **vars_(real[k])} for k in sorted(rid - lid)[:5]]
                      + [{"where": "inprocess", **vars_(local["anomalies"][k])} for k in sorted(lid - rid)[:5]]},
        "predictions": {"real": len(rp), "inprocess": len(lp), "same": len(lp & rp), "same_outcome": same_outcome},
        "real": evaluate.score(events_, list(real.values()), site_days=site_days, run_end=local["run_end"]),
        "inprocess": evaluate.score(events_, list(local["anomalies"].values()), site_days=site_days,
                                    run_end=local["run_end"]),
        "forecast_real": forecast_figures(events_, rpreds.values()),
    }


def vars_(d: evaluate.Detection) -> dict:
    return {"site_id": d.site_id, "detector": d.detector, "metrics": list(d.metrics), "start": d.start,
            "time": d.time}


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
    ap.add_argument("--no-real-path", action="store_true", help="skip phase 1b (the real processes)")
    ap.add_argument("--rp-sites", type=int, default=40, help="sites of phase 1b (the real path)")
    ap.add_argument("--rp-fault-free", type=int, default=4)
    args = ap.parse_args()
    f = phase_quality(args) if not args.no_quality else {}
    if not args.no_real_path:
        f["real_path"] = asyncio.run(phase_realpath(args))
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
    for name, fc in f["forecast"].items():
        target = f", target {TARGETS['lvd_share_30min']}" if name == "battery_depletion" else ""
        print(f"forecast {name}: {fc['predictions']} predictions ({fc['outcomes']}); of {fc['lvd_events']} LVD "
              f"events {fc['predicted']} predicted, {fc['predicted_30min_ahead']} >= 30 min ahead (share "
              f"{_fmt(fc['share_30min_ahead'])}{target}), median lead {_fmt(fc['median_lead_s'])} s, shortest "
              f"{_fmt(fc['min_lead_s'])} s")
    for typ, pc in f["precursors"].items():
        print(f"precursor {'+'.join(pc['detectors'])} of {typ}: warned {pc['warned']} of {pc['events']} events "
              f"(median lead {_fmt(pc['median_lead_s'])} s); {pc['warnings']} warnings, share followed by "
              f"{typ} {_fmt(pc['share_followed'])}")
    cu = f["cpu_us_per_sample"]
    print(f"CPU us/sample: engine {cu['engine']} + models {cu['models']} = {cu['engine_total']} (target <= "
          f"{TARGETS['cpu_us']}); static {cu['static']}; iforest {cu['iforest']}")
    print(f"false anomalies by engine detector: {f['engine']['false_by_detector']}")
    if "real_path" in f:
        rp = f["real_path"]
        print(f"real path (Ingest RPC -> JetStream -> {rp['replicas']} aiops_engine processes -> PostgreSQL): "
              f"{rp['sites']} sites ({rp['fault_free_sites']} fault-free) x {rp['days']} days, {rp['samples']} "
              f"samples ({rp['ingest_accepted']} accepted, {rp['ingest_rejected']} refused), {rp['truth_events']} "
              f"faults; ingest {rp['ingest_s']} s, drained {rp['ingest_to_drained_s']} s after the first send")
        hdr = ("fault type", "events", "real P", "R", "F1", "in-process P", "R", "F1")
        rrows = []
        for typ in evaluate.FAULT_DETECTORS:
            a, b = rp["real"]["types"][typ], rp["inprocess"]["types"][typ]
            rrows.append((typ, str(a["events"]), _fmt(a["precision"]), _fmt(a["recall"]), _fmt(a["f1"]),
                          _fmt(b["precision"]), _fmt(b["recall"]), _fmt(b["f1"])))
        rrows.append(("false anomalies / site-day", "", _fmt(rp["real"]["false_per_site_day"]), "", "",
                      _fmt(rp["inprocess"]["false_per_site_day"]), "", ""))
        ws = [max(len(r[k]) for r in [hdr, *rrows]) for k in range(len(hdr))]
        for r in [hdr, *rrows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, ws, strict=True)))
        an, pr = rp["anomalies"], rp["predictions"]
        print(f"  anomalies: {an['real']} in PostgreSQL, {an['inprocess']} in process, {an['same']} the same ids "
              f"(only real {an['only_real']}, only in process {an['only_inprocess']}); predictions: {pr['real']} / "
              f"{pr['inprocess']}, {pr['same']} the same, {pr['same_outcome']} with the same outcome")
    if "engine_sps" in f:
        print(f"keeping up: ingest {f.get('ingest_sps', f['rate_sps'])} samples/s (this run); engine "
              f"{f['engine_sps']} samples/s with {f['replicas']} replica(s) ({f['engine_vs_ingest']} x), CPU "
              f"{f['engine_cpu_us_per_sample']} us/sample: keeps up {'yes' if f['keeps_up'] else 'NO'}")
    print(json.dumps({"bench": "detect", **f}))


if __name__ == "__main__":
    main()
