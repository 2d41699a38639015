"""NOC correlation benchmark (`make bench-noc`, `python -m bench.noc`).

Own embedded PostgreSQL (fsync on, as in production) on a free port, the noc schema migrated.
The correlator (services/noc/correlator.py) runs in this process exactly as the NOC's anomaly
consumer runs it: batches of at most TOWERCO_NOC_BATCH (500) signals, one transaction each (site
and region advisory locks, working sets read, decisions written, sources recorded, incident
events written to the noc outbox). Site facts are in the facts cache (they are in steady state:
the register is listed at start); SLA exposure is "unknown" (the KPI answers are cached per
tenant for TOWERCO_NOC_SLA_TTL_S, outside the transaction, so they cost nothing per alarm).

The storm (--sites 500 sites in 10 regions, one minute of event time, every source re-sending
its alarm every --resend seconds while it lasts, as NMS and rule engines do):
  * regional: every site of 2 regions loses mains within two minutes (the DG fails to start
    on a fifth of them), then battery low, DC low and every tenant's link down: 2 true regional
    outages (the site incidents are their children);
  * single-site faults on --faulty other sites: a door that flaps (open/close six times), fuel
    theft, a rectifier failure, telemetry lost, or a power outage without a regional pattern
    (at most two per region): one true incident each.
A raw alarm is one signal (a raise, a repeat or a clear). Quality: incidents (top level), noise
reduction = 1 - incidents / raw alarms, every true incident present with its kind and root
cause, nothing else. Baseline (same storm): dedup only (one incident per distinct dedup key, what
a plain alarm list gives).

Speed, through PostgreSQL:
  burst    the whole storm handed over as fast as possible, --repeat (3) times on a clean slate:
           correlation throughput (alarms/s; the best run, and the median) and per-alarm decision
           latency (from the batch's start to its commit) p50 / p99 of the best run
  paced    the storm at its real rate (arrival times of its minute): decision latency from the
           alarm's arrival to its commit, p50 / p99, batches formed of what has arrived
  baseline the same raw alarms only INSERTed into a scratch table, same batches, one transaction
           each: the cost of storing them at all (correlation throughput / this = the ratio)
  CPU      the correlator's CPU (this process) and PostgreSQL's (its server processes) per
           alarm during the burst, and alarms per CPU-second of both together: the rate one core
           sustains, whatever else the machine is running (wall-clock rates are not, on a shared box)
Targets: noise reduction >= 95 % with every true incident present; >= 5,000 alarms/s.
The table goes to stdout, then ONE JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.procs import cpu_seconds, pg_postmaster
from mesh import db
from mesh.embedded import EmbeddedPostgres
from mesh.migrate import migrate
from services.noc import domain
from services.noc.correlator import Correlator
from services.noc.facts import SiteFactsCache, SlaCache

LANES = 2  # TOWERCO_NOC_LANES, as the consumer runs it
TARGET_NOISE = 0.95
TARGET_RATE = 5000.0
FAULTS = ("door_flap", "fuel_theft", "rectifier", "unreachable", "power")
EXPECT = {"door_flap": (domain.ENVIRONMENT, "enclosure_door_open"), "fuel_theft": (domain.FUEL, "fuel_theft"),
          "rectifier": (domain.POWER, "rectifier_failure"), "unreachable": (domain.UNREACHABLE, "site_unreachable"),
          "power": (domain.POWER, "mains_failure")}


def storm(sites: int, faulty: int, resend: float, t0: float, seed: int
          ) -> tuple[list[domain.Signal], dict[str, domain.SiteFacts], list[tuple[str, str, int, str]]]:
    """(signals in arrival order, facts, true incidents as (what, site or region, kind, root code))."""
    rng = random.Random(seed)
    regions = [f"region-{r}" for r in range(10)]
    facts: dict[str, domain.SiteFacts] = {}
    for k in range(sites):
        sid = f"BN-{k:04d}"
        tenants = ("acme", "beta") if k % 3 else ("acme", "beta", "gamma")
        facts[sid] = domain.SiteFacts(sid, regions[k % 10], tuple(domain.Tenancy(f"{sid}/{t}", t, 0.999)
                                                                  for t in tenants))
    sigs: list[tuple[float, domain.Signal]] = []
    n = 0

    def emit(site: str, detector: str, start: float, end: float | None, tenant: str = "", flap: int = 0) -> None:
        nonlocal n
        n += 1
        aid = f"{seed}-{n}"
        last = t0 + 60.0
        t = start
        i = 0
        stop = min(end, last) if end is not None else last
        while t <= stop:  # the source re-sends while the alarm lasts
            sigs.append((t, domain.signal_from_anomaly(anomaly_id=f"{aid}-r{i}", site_id=site, detector=detector,
                                                       metrics=(), tenant_id=tenant, severity=3, time=t, summary="",
                                                       cleared=False)))
            t += resend
            i += 1
        if end is not None and end <= last:
            sigs.append((end, domain.signal_from_anomaly(anomaly_id=aid, site_id=site, detector=detector, metrics=(),
                                                         tenant_id=tenant, severity=3, time=end, summary="",
                                                         cleared=True)))

    truth: list[tuple[str, str, int, str]] = []
    storm_regions = regions[:2]
    for sid, f in facts.items():
        if f.region not in storm_regions:
            continue
        at = t0 + rng.uniform(0, 30)
        emit(sid, "rule.mains_lost", at, None)
        if rng.random() < 0.2:
            emit(sid, "rule.dg_fail_to_start", at + 10, None)
        emit(sid, "rule.battery_near_lvd", at + 15, None)
        emit(sid, "rule.dc_bus_low", at + 25, None)
        for ten in f.tenancies:
            emit(sid, "rule.tenant_link_down", at + 28, None, ten.tenant_id)
    truth += [("regional", r, domain.REGIONAL, "regional_grid_outage") for r in storm_regions]
    others = [sid for sid, f in facts.items() if f.region not in storm_regions]
    rng.shuffle(others)
    power_per_region: dict[str, int] = {}
    for k, sid in enumerate(others[:faulty]):
        what = FAULTS[k % len(FAULTS)]
        if what == "power":
            region = facts[sid].region
            if power_per_region.get(region, 0) >= 2:
                what = "rectifier"
            power_per_region[region] = power_per_region.get(region, 0) + (what == "power")
        at = t0 + rng.uniform(0, 20)
        if what == "door_flap":
            for j in range(6):
                emit(sid, "rule.door_open", at + j * 6, at + j * 6 + 3)
        elif what == "fuel_theft":
            emit(sid, "stat.fuel_theft", at, None)
        elif what == "rectifier":
            emit(sid, "rule.rectifier_fault", at, None)
        elif what == "unreachable":
            emit(sid, "stat.telemetry_gap", at, None)
        else:
            emit(sid, "rule.mains_lost", at, None)
            emit(sid, "rule.battery_near_lvd", at + 10, None)
            emit(sid, "rule.dc_bus_low", at + 20, None)
        kind, code = EXPECT[what]
        truth.append((what, sid, kind, code))
    sigs.sort(key=lambda x: x[0])
    return [s for _, s in sigs], facts, truth


async def reset(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE noc.alarm, noc.alarm_source, noc.incident, noc.incident_alarm, noc.timeline, "
                           "noc.outbox")


def correlator(pool: asyncpg.Pool, facts: dict[str, domain.SiteFacts]) -> Correlator:
    cache = SiteFactsCache(None, refresh_s=3600)  # type: ignore[arg-type] - prefilled: never asks Sites
    cache.facts = dict(facts)
    return Correlator(pool, facts=cache, sla=SlaCache(None), params=domain.Params())


async def burst(pool: asyncpg.Pool, corr: Correlator, sigs: list[domain.Signal], batch: int
                ) -> tuple[float, list[float]]:
    lat: list[float] = []
    started = time.perf_counter()
    for k in range(0, len(sigs), batch):
        chunk = sigs[k:k + batch]
        b0 = time.perf_counter()
        await corr.process(chunk, lanes=LANES)
        lat += [time.perf_counter() - b0] * len(chunk)
    return time.perf_counter() - started, lat


async def paced(corr: Correlator, sigs: list[domain.Signal], batch: int,
                t0: float) -> list[float]:
    """The storm at its real rate: each signal arrives at its event time (relative to t0)."""
    lat: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < len(sigs):
        now = time.perf_counter() - start
        due = sigs[i].time - t0
        if due > now:
            await asyncio.sleep(min(due - now, 0.05))
            continue
        j = i
        while j < len(sigs) and j - i < batch and sigs[j].time - t0 <= now:
            j += 1
        chunk = sigs[i:j]
        await corr.process(chunk, lanes=LANES)
        done = time.perf_counter() - start
        lat += [done - (s.time - t0) for s in chunk]
        i = j
    return lat


async def raw_insert(pool: asyncpg.Pool, sigs: list[domain.Signal], batch: int) -> float:
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS public.bench_raw_alarm")
        await conn.execute("CREATE TABLE public.bench_raw_alarm (id bigserial PRIMARY KEY, source text, "
                           "source_alarm_id text, site_id text, probable_cause text, severity int, t timestamptz)")
    started = time.perf_counter()
    for k in range(0, len(sigs), batch):
        chunk = sigs[k:k + batch]
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO public.bench_raw_alarm (source, source_alarm_id, site_id, probable_cause, severity, t) "
                "VALUES ($1, $2, $3, $4, $5, to_timestamp($6))",
                [(s.source, s.source_alarm_id, s.site_id, s.probable_cause, s.severity, s.time) for s in chunk])
    return time.perf_counter() - started


async def judge(pool: asyncpg.Pool, truth: list[tuple[str, str, int, str]]) -> tuple[int, list[str], list[str], int]:
    """(top-level incidents, true incidents missing, extra incidents, flapping incidents)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, kind, site_id, region, root_code, chain, flapping, "
                                "(SELECT count(*) FROM noc.incident c WHERE c.parent_id = i.id) AS children "
                                "FROM noc.incident i WHERE parent_id IS NULL AND merged_into IS NULL")
    missing, used = [], set()
    for what, where, kind, code in truth:
        if kind == domain.REGIONAL:
            hit = [r for r in rows if r["kind"] == kind and r["region"] == where and r["children"] >= 40]
        else:
            hit = [r for r in rows if r["site_id"] == where and r["kind"] == kind
                   and set(code.split("+")) <= set(r["root_code"].split("+"))]
        if not hit:
            missing.append(f"{what}@{where}")
        used |= {str(r["id"]) for r in hit}
    extra = [f"{r['kind']}@{r['site_id'] or r['region']}:{r['root_code']}" for r in rows if str(r["id"]) not in used]
    return len(rows), missing, extra, sum(1 for r in rows if r["flapping"])


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-noc-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    try:
        await migrate(pg.url, components=["noc"])
        pool = await db.create_pool(pg.url, min_size=1, max_size=4)
        t0 = time.time() - 120.0
        sigs, facts, truth = storm(args.sites, args.faulty, args.resend, t0, args.seed)
        dedup_keys = len({(s.site_id, s.dedup_key) for s in sigs})
        corr = correlator(pool, facts)
        # warm-up (plans, caches) on a small separate storm, then a clean slate
        warm, wfacts, _ = storm(50, 10, args.resend, t0 - 7200, args.seed + 1)
        await correlator(pool, wfacts).process(warm[:500])
        pids = {"pg": [pg_postmaster(pg.data_dir)]}
        runs = []
        for _ in range(max(1, args.repeat)):  # the machine is shared: the best of a few runs
            await reset(pool)
            pg0, me0 = cpu_seconds(pids)["pg"], time.process_time()
            run_s, run_lat = await burst(pool, corr, sigs, args.batch)
            runs.append((run_s, run_lat, cpu_seconds(pids)["pg"] - pg0, time.process_time() - me0))
            incidents, missing, extra, flapping = await judge(pool, truth)
            if missing or extra:
                break
        elapsed, burst_lat, pg_cpu, my_cpu = min(runs, key=lambda r: r[0])
        median_s = statistics.median(r[0] for r in runs)
        await reset(pool)
        paced_lat = await paced(corr, sigs, args.batch, t0) if not args.no_paced else []
        p_incidents, p_missing, p_extra, _ = await judge(pool, truth) if paced_lat else (incidents, missing, extra, 0)
        raw_s = await raw_insert(pool, sigs, args.batch)
        await pool.close()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(sigs)
    rate = n / elapsed
    raw_rate = n / raw_s
    noise = 1.0 - incidents / n
    return {
        "sites": args.sites, "raw_alarms": n, "true_incidents": len(truth), "incidents": incidents,
        "missing": missing, "extra": extra, "flapping_incidents": flapping,
        "noise_reduction": round(noise, 4), "baseline_dedup_incidents": dedup_keys,
        "baseline_dedup_noise_reduction": round(1.0 - dedup_keys / n, 4),
        "alarms_per_s": round(rate, 1), "alarms_per_s_median": round(n / median_s, 1), "runs": len(runs),
        "cpu_us_per_alarm_correlator": round(my_cpu / n * 1e6, 1),
        "cpu_us_per_alarm_postgres": round(pg_cpu / n * 1e6, 1),
        "alarms_per_cpu_s": round(n / max(1e-9, my_cpu + pg_cpu), 1), "baseline_insert_alarms_per_s": round(raw_rate, 1),
        "ratio_to_insert": round(rate / raw_rate, 3),
        "burst_latency_ms_p50": round(pct(burst_lat, 0.5) * 1000, 1),
        "burst_latency_ms_p99": round(pct(burst_lat, 0.99) * 1000, 1),
        "paced_latency_ms_p50": round(pct(paced_lat, 0.5) * 1000, 1),
        "paced_latency_ms_p99": round(pct(paced_lat, 0.99) * 1000, 1),
        "paced_same_incidents": p_incidents == incidents and not p_missing and not p_extra,
        "batch": args.batch,
        "noise_target_met": noise >= TARGET_NOISE and not missing and not extra,
        "rate_target_met": rate >= TARGET_RATE,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=500)
    ap.add_argument("--faulty", type=int, default=150, help="sites with a single-site fault (default 150)")
    ap.add_argument("--resend", type=float, default=5.0, help="seconds between re-sends of an alarm (5)")
    ap.add_argument("--batch", type=int, default=500, help="signals per transaction (TOWERCO_NOC_BATCH, 500)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3, help="burst runs (the best and the median are reported)")
    ap.add_argument("--no-paced", action="store_true", help="skip the paced (one real minute) run")
    args = ap.parse_args()
    r = asyncio.run(main_async(args))
    rows = [
        ("raw alarms in the storm (1 minute)", f"{r['raw_alarms']:,}", ">= 5,000"),
        ("true incidents", r["true_incidents"], ""),
        ("incidents (top level)", r["incidents"], "= true incidents"),
        ("true incidents missing / extra", f"{len(r['missing'])} / {len(r['extra'])}", "0 / 0"),  # type: ignore[arg-type]
        ("flapping incidents", r["flapping_incidents"], ""),
        ("noise reduction", f"{r['noise_reduction']:.2%}", ">= 95%"),
        ("baseline dedup-only: incidents / noise reduction",
         f"{r['baseline_dedup_incidents']} / {r['baseline_dedup_noise_reduction']:.2%}", ""),
        (f"correlation throughput (alarms/s, burst, best of {r['runs']})", f"{r['alarms_per_s']:,.0f}", ">= 5,000"),
        ("correlation throughput (alarms/s, median of the runs)", f"{r['alarms_per_s_median']:,.0f}", ""),
        ("CPU per alarm: correlator / PostgreSQL (us)",
         f"{r['cpu_us_per_alarm_correlator']} / {r['cpu_us_per_alarm_postgres']}", ""),
        ("alarms per CPU-second (correlator + PostgreSQL)", f"{r['alarms_per_cpu_s']:,.0f}", ">= 5,000"),
        ("baseline: plain INSERT of the alarms (alarms/s)", f"{r['baseline_insert_alarms_per_s']:,.0f}", ""),
        ("ratio correlation / insert", r["ratio_to_insert"], ""),
        ("decision latency burst p50 / p99 (ms)", f"{r['burst_latency_ms_p50']} / {r['burst_latency_ms_p99']}", ""),
        ("decision latency paced p50 / p99 (ms)", f"{r['paced_latency_ms_p50']} / {r['paced_latency_ms_p99']}", ""),
        ("paced run gives the same incidents", r["paced_same_incidents"], "True"),
    ]
    w = max(len(str(a)) for a, _, _ in rows)
    print(f"{'NOC correlation benchmark':<{w}}  {'value':>18}  target")
    for a, b, c in rows:
        print(f"{a:<{w}}  {b!s:>18}  {c}")
    if r["missing"] or r["extra"]:
        print("missing:", r["missing"][:20], "extra:", r["extra"][:20])  # type: ignore[index]
    print(json.dumps(r))


if __name__ == "__main__":
    main()
