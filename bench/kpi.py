"""KPI benchmark (`make bench-kpi`, `python -m bench.kpi`).

Own embedded PostgreSQL and NATS on free ports; the KPI service and the kpi_calculator run as
their own processes (`python -m services.kpi.server`, `python -m workers.kpi_calculator.worker`),
as `towerco up` starts them.

Phase 1, queries: a fleet of --sites sites x --days days of hourly rows for one tenant (what the
calculator writes: one kpi.tenancy_hour row per tenancy-hour with its minute map, and the
kpi.site_hour rows of one site) is loaded with COPY, then timed through gRPC:
  report_ms     GetTenantAvailability of the tenant for the whole period, every site with its
                breakdown and outage intervals (page of 1,000)            target < 1,000 ms
  series_ms     GetKpiSeries of one site over the period at a 1-hour step, every KPI   target < 50 ms
  fleet_ms / worst_ms   GetFleetSummary and ListWorstSites over the same fleet (no target)
  baseline: the bare SQL the report rests on (the whole-hour SUM ... GROUP BY site) and a bare
  SELECT of the site's hour rows, timed in this process; ratio = gRPC / bare SQL.
Median of --repeat calls after one warm-up.

Baseline of phase 2, the rate to keep up with: bench.ingest's unary phase (--ingest-samples
through the ingest API -> JetStream -> 2 ingestors -> PostgreSQL, with its own servers and
processes) run in this run, just before phase 2, so it sees the same machine (these 2-core
machines have slow spells in which everything runs ~1.5x slower): ingest_sps. --rate N skips it
and uses N instead. bench.ingest's own target, 150,000 samples/s, is shown beside it.

Phase 2, calculator: --calc-sites sites report every metric (10 site metrics + 2 tenant links)
each minute for --calc-minutes recent minutes (1,000 x 60 x 12 = 720,000 samples, about 5 s at the
target rate: shorter runs swing with the machine's noise); the samples are
cut as the ingest API cuts them (requests of --request samples, each split into one TelemetryBatch
per partition, Nats-Msg-Id "<batch>:<partition>") and published to TELEMETRY. --calc-replicas
kpi_calculator processes share the 16 partitions (TOWERCO_KPI_PARTITIONS, round robin). Two runs,
each on its own fresh sites:
  paced     published at the ingest rate while the calculators run: paced_fold_lag_s = last
            publish -> every consumer drained (every sample folded into its minute), paced_lag_s =
            -> every marked hour re-evaluated too
  burst     a backlog: the calculator processes are paused (SIGSTOP) while every message is
            published, then resumed, so their own capacity is measured without the publisher
            competing for the CPU: calc_sps = samples / (resume -> every hour re-evaluated),
            fold_sps = samples / (resume -> consumers drained), lag_s = resume -> every hour
            re-evaluated (the time to work off the backlog)
  calc_cpu_s, calc_sps_per_cpu_s   CPU time of the calculator process(es) during the burst
            (Linux /proc), a figure that depends less on what else the machine runs;
            calc_cpu_us_per_sample: CPU microseconds per sample of the calculators, PostgreSQL,
            NATS and this process (the publisher) over the same window
  keeps_up  calc_sps >= the ingest rate (calc_vs_ingest >= 1), the paced run really published
            at >= 95% of it, and its samples were folded within 1 s of the last publish
Each run checks that every sample was folded in exactly once (sum of the minute aggregates'
counts; samples of catalogue metrics no KPI reads are skipped by design and not expected there).
Phase 1 is skipped with --sites 0, phase 2 with --calc-sites 0.

Profiling: BENCH_PROFILE=<kpi|kpi_calculator0|kpi_calculator1...> runs that process under
pyinstrument; the profile is written next to its log (the log directory is printed on stderr).

The table goes to stdout, then ONE JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.procs import cpu_seconds, pg_postmaster, wait_grpc

ROOT = Path(__file__).resolve().parent.parent
TENANT = "benchtel"
INGEST_TARGET_SPS = 150_000  # bench.ingest's target (samples/s), shown beside the rate measured in the run
CODES = ("up", "ignored", "dc_low", "dc_high", "link_down", "unknown", "ex_pm", "ex_fm", "ex_tc", "ex_ad",
         "un_pm", "un_fm", "un_tc", "un_ad")
CODE_OF = dict(zip(CODES, "UuLHN?PFTApfta", strict=True))


def tenancy_hour_rows(sites: list[str], start: datetime, hours: int, seed: int = 7):
    rng = random.Random(seed)
    for sid in sites:
        for h in range(hours):
            r = rng.random()
            if r < 0.02:  # an outage somewhere in the hour
                a = rng.randrange(60)
                b = min(60, a + rng.randrange(1, 40))
                codes = "U" * a + "L" * (b - a) + "U" * (60 - b)
            elif r < 0.03:  # a telemetry gap
                a = rng.randrange(50)
                codes = "U" * a + "?" * 10 + "U" * (50 - a)
            elif r < 0.035:  # maintenance excusing an outage
                codes = "U" * 20 + "P" * 20 + "U" * 20
            else:
                codes = "U" * 60
            counts = [codes.count(CODE_OF[c]) for c in CODES]
            yield (TENANT, sid, start + timedelta(hours=h), codes, *counts)


def site_hour_rows(site: str, start: datetime, hours: int):
    for h in range(hours):
        grid = "1" * 50 + "0" * 10 if h % 24 == 3 else "1" * 60
        dg = "0" * 52 + "1" * 8 if h % 24 == 3 else "0" * 60
        src = "".join("G" if g == "1" else ("D" if d == "1" else "B") for g, d in zip(grid, dg, strict=True))
        power = "1" * 60
        yield (site, start + timedelta(hours=h), grid, power, dg, src, 60, 60, 60, grid.count("1"), dg.count("1"),
               1 if h % 24 == 3 else 0, 0, 1.5, 1.4, 0.0, 0.0, 0, 2.0, 0.3, 0.1, 95.0, 40.0,
               start + timedelta(hours=h, minutes=59), 1)


SITE_HOUR_COLUMNS = ["site_id", "hour", "grid_map", "power_map", "dg_map", "source_map", "power_known",
                     "power_ok", "grid_known", "grid_present", "dg_run_minutes", "dg_starts",
                     "dg_fail_to_start", "fuel_consumed_l", "fuel_expected_l", "fuel_drop_dg_off_l",
                     "refuel_l", "refuels", "energy_grid_kwh", "energy_dg_kwh", "energy_battery_kwh",
                     "soc_pct", "load_a", "soc_time",
                     "published_revision"]  # announced long ago, as in a running system (else the
                     # calculators would announce all of them during phase 2)


def spawn(module: str, env: dict[str, str], log: Path, *, profile: str = "") -> subprocess.Popen:
    """Start `python -m module`; when BENCH_PROFILE names `profile`, under pyinstrument
    (the profile is written next to the log when the process exits on SIGTERM)."""
    prefix = ["-m", "pyinstrument", "-o", str(log.with_suffix(".profile.txt"))] \
        if profile and os.environ.get("BENCH_PROFILE") == profile else []
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *prefix, "-m", module], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


async def timed(fn, repeat: int) -> tuple[float, object]:
    await fn()  # warm-up
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


async def phase_queries(args, env, pool, tmp: Path) -> dict:
    import grpc
    from google.protobuf import duration_pb2
    from towerco.common.v1 import common_pb2
    from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc

    from mesh.auth import mint_token
    from mesh.config import Settings

    sites = [f"BK-{i:05d}" for i in range(args.sites)]
    hours = args.days * 24
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=hours)
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("site", schema_name="kpi", columns=["site_id", "region"],
                                         records=[(s, f"region-{i % 8}") for i, s in enumerate(sites)])
        await conn.copy_records_to_table(
            "tenancy", schema_name="kpi", columns=["tenancy_id", "site_id", "tenant_id", "sla_target"],
            records=[(f"t-{s}", s, TENANT, 0.999) for s in sites])
        await conn.copy_records_to_table(
            "tenancy_hour", schema_name="kpi", columns=["tenant_id", "site_id", "hour", "minutes", *CODES],
            records=tenancy_hour_rows(sites, start, hours))
        for sid in sites:
            await conn.copy_records_to_table("site_hour", schema_name="kpi", columns=SITE_HOUR_COLUMNS,
                                             records=site_hour_rows(sid, start, hours))
        # the daily rollup, as the worker maintains it (store.refresh_days)
        await conn.execute(
            "INSERT INTO kpi.tenancy_day (tenant_id, site_id, day, " + ", ".join(CODES) + ") "
            "SELECT tenant_id, site_id, date_trunc('day', hour, 'UTC'), " + ", ".join(f"sum({c})" for c in CODES)
            + " FROM kpi.tenancy_hour GROUP BY 1, 2, 3")
        await conn.execute("ANALYZE kpi.tenancy_hour; ANALYZE kpi.tenancy_day; ANALYZE kpi.site_hour")
    load_s = time.perf_counter() - t0

    settings = Settings.from_env()
    token = mint_token(subject="bench", tenant="*", roles=["viewer"], settings=settings)
    md = (("authorization", f"Bearer {token}"),)
    rng = common_pb2.TimeRange()
    rng.start_time.FromDatetime(start)
    rng.end_time.FromDatetime(now)
    async with grpc.aio.insecure_channel(env["TOWERCO_KPI_TARGET"]) as ch:
        stub = kpi_pb2_grpc.KpiServiceStub(ch)

        async def report():
            return await stub.GetTenantAvailability(
                kpi_pb2.GetTenantAvailabilityRequest(tenant_id=TENANT, range=rng), metadata=md, timeout=30)

        async def series():
            return await stub.GetKpiSeries(
                kpi_pb2.GetKpiSeriesRequest(site_id=sites[0], range=rng, step=duration_pb2.Duration(seconds=3600)),
                metadata=md, timeout=30)

        async def fleet():
            return await stub.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(range=rng), metadata=md, timeout=60)

        async def worst():
            return await stub.ListWorstSites(kpi_pb2.ListWorstSitesRequest(range=rng, limit=20), metadata=md,
                                             timeout=60)

        report_ms, rep = await timed(report, args.repeat)
        series_ms, ser = await timed(series, args.repeat)
        fleet_ms, _ = await timed(fleet, max(1, args.repeat // 2))
        worst_ms, _ = await timed(worst, max(1, args.repeat // 2))

    async def bare_report():
        async with pool.acquire() as conn:
            return await conn.fetch(
                "SELECT site_id, " + ", ".join(f"sum({c}) AS sum_{i}" for i, c in enumerate(CODES)) + " FROM kpi.tenancy_hour "
                "WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 GROUP BY site_id", TENANT, start, now)

    async def bare_series():
        async with pool.acquire() as conn:
            return await conn.fetch("SELECT * FROM kpi.site_hour WHERE site_id = $1 AND hour >= $2 AND hour < $3",
                                    sites[0], start, now)

    bare_report_ms, bare = await timed(bare_report, args.repeat)
    # the figure must be exact: outage minutes of the report == the bare sum over every hour row
    outage = sum(r["sum_2"] + r["sum_3"] + r["sum_4"] for r in bare)  # dc_low, dc_high, link_down
    assert rep.availability.outage.total == outage, (rep.availability.outage.total, outage)
    bare_series_ms, _ = await timed(bare_series, args.repeat)
    assert rep.sites == args.sites and len(rep.tenancies) == min(args.sites, 1000)
    assert len(ser.series) >= 10 and len(ser.series[0].points) == hours
    return {
        "sites": args.sites, "days": args.days, "rows": args.sites * hours, "load_s": round(load_s, 1),
        "report_ms": round(report_ms, 1), "bare_report_ms": round(bare_report_ms, 1),
        "report_ratio": round(report_ms / bare_report_ms, 2),
        "report_outages": sum(len(t.outages) for t in rep.tenancies),
        "availability": round(rep.availability.availability, 6),
        "series_ms": round(series_ms, 1), "bare_series_ms": round(bare_series_ms, 2),
        "series_ratio": round(series_ms / bare_series_ms, 2),
        "fleet_ms": round(fleet_ms, 1), "worst_ms": round(worst_ms, 1),
    }


METRIC_VALUES = {"mains_present": 1.0, "dg_running": 0.0, "fuel_level_l": 400.0, "dc_bus_v": 53.0, "load_a": 35.0,
                 "battery_soc_pct": 99.0, "battery_v": 53.0, "cabinet_temp_c": 31.0, "door_open": 0.0,
                 "rectifier_fault": 0.0}
CALC_TENANTS = ("opa", "opb")
PARTITIONS = 16


def calc_messages(sites: list[str], minutes: range, request: int, tag: str) -> list[tuple[int, str, bytes, int]]:
    """Every metric of every site each minute (10 site metrics + one link per tenant), cut as the
    ingest API cuts them: requests of `request` samples, each split into one TelemetryBatch per
    partition (Nats-Msg-Id "<batch_id>:<partition>"). Returns (partition, msg id, bytes, samples)."""
    from towerco.telemetry.v1 import telemetry_pb2

    from mesh import subjects

    part_of = {s: subjects.partition_of(s, PARTITIONS) for s in sites}
    flat = []
    for m in minutes:
        for s in sites:
            for name, v in METRIC_VALUES.items():
                flat.append((m, s, name, v, ""))
            for ten in CALC_TENANTS:
                flat.append((m, s, "tenant_link_up", 1.0, ten))
    out = []
    for r, i in enumerate(range(0, len(flat), request)):
        by_part: dict[int, list] = {}
        for m, s, name, v, ten in flat[i:i + request]:
            smp = telemetry_pb2.Sample(site_id=s, metric=name, value=v, tenant_id=ten)
            smp.time.FromSeconds(m * 60 + 20)
            by_part.setdefault(part_of[s], []).append(smp)
        for part, items in sorted(by_part.items()):
            b = telemetry_pb2.TelemetryBatch(batch_id=f"{tag}-{r}", partition=part, samples=items)
            b.accepted_time.GetCurrentTime()
            out.append((part, f"{tag}-{r}:{part}", b.SerializeToString(), len(items)))
    return out


async def calc_pending(js) -> int:
    """Messages of TELEMETRY the calculator has not acked yet (one request for every consumer;
    1 while a consumer is missing)."""
    infos = {c.name: c for c in await js.consumers_info("TELEMETRY")}
    pending = 0
    for p in range(PARTITIONS):
        info = infos.get(f"kpi-calculator-{p}")
        pending += 1 if info is None else info.num_pending + info.num_ack_pending
    return pending


async def calc_run(args, pool, js, sites: list[str], tag: str, rate: float, pids: dict[str, list[int]],
                   paused: Sequence[subprocess.Popen] = ()) -> dict:
    """Publish the messages of `sites` and time the calculator: consumers drained (every sample
    folded into its minute), then every marked hour re-evaluated. Paced (`rate` samples/s): the
    clock starts at the first publish. Backlog (`paused` = the calculator processes): they are
    stopped (SIGSTOP), everything is published, and the clock starts when they are resumed.
    Checks that every sample was folded in exactly once."""
    from mesh import events, subjects
    from workers.kpi_calculator.domain import SITE_METRICS

    now_min = int(time.time()) // 60
    messages = calc_messages(sites, range(now_min - args.calc_minutes, now_min), args.request, tag)
    total = sum(m[3] for m in messages)

    async def publish_all() -> float:
        start = time.perf_counter()
        sent = 0
        for part, mid, data, n in messages:
            await events.publish(js, subjects.telemetry_subject(part), data, msg_id=mid)
            sent += n
            if rate:
                ahead = sent / rate - (time.perf_counter() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return total / (time.perf_counter() - start)

    if paused:
        for w in paused:
            w.send_signal(signal.SIGSTOP)
        try:
            publish_sps = await publish_all()
        finally:
            cpu0 = cpu_seconds(pids) | {"publisher": time.process_time()}  # this process alone
            t0 = t_pub = time.perf_counter()
            for w in paused:
                w.send_signal(signal.SIGCONT)
    else:
        cpu0 = cpu_seconds(pids) | {"publisher": time.process_time()}
        t0 = time.perf_counter()
        publish_sps = await publish_all()
        t_pub = time.perf_counter()
    t_drained = None
    while True:
        if t_drained is None and await calc_pending(js) == 0:
            t_drained = time.perf_counter()
        if t_drained is not None:
            async with pool.acquire() as conn:  # and every marked hour re-evaluated
                if await conn.fetchval("SELECT count(*) FROM kpi.dirty_hour") == 0:
                    break
        if time.perf_counter() - t_pub > args.calc_timeout:
            raise RuntimeError(f"calculator not done after {args.calc_timeout}s")
        await asyncio.sleep(0.02)
    t_done = time.perf_counter()
    cpu1 = cpu_seconds(pids) | {"publisher": time.process_time()}
    cpu_us = {k: round((cpu1[k] - cpu0[k]) * 1e6 / total, 2) for k in cpu1}
    cpu = cpu1["calculator"] - cpu0["calculator"]
    async with pool.acquire() as conn:
        folded = await conn.fetchval(
            "SELECT sum((a.value->>0)::int8) FROM kpi.site_minute m, jsonb_each(convert_from(m.aggs, 'UTF8')::jsonb) a "
            "WHERE m.site_id LIKE $1", f"{tag}-%")
        rows = await conn.fetchval(
            "SELECT count(*) FROM kpi.tenancy_hour WHERE tenant_id = 'opa' AND site_id LIKE $1", f"{tag}-%")
    # every sample of a metric some KPI reads is in the aggregates, once (the others are skipped)
    kpi_samples = total * (sum(m in SITE_METRICS for m in METRIC_VALUES) + len(CALC_TENANTS)) \
        // (len(METRIC_VALUES) + len(CALC_TENANTS))
    assert folded == kpi_samples, f"{tag}: {folded} samples in the minute aggregates, {kpi_samples} expected"
    return {"samples": total, "messages": len(messages), "publish_sps": round(publish_sps),
            "fold_sps": round(total / (t_drained - t0)), "calc_sps": round(total / (t_done - t0)),
            "fold_lag_s": round(t_drained - t_pub, 2), "lag_s": round(t_done - t_pub, 2), "tenancy_hours": rows,
            "cpu_s": round(cpu, 2), "sps_per_cpu_s": round(total / cpu) if cpu else 0, "cpu_us_per_sample": cpu_us}


async def phase_calculator(args, env, pool, js, tmp: Path, servers: dict[str, list[int]], rate: float) -> dict:
    """Two runs on fresh sites each: `paced` publishes at the ingest target rate (--rate) while the
    calculators run, as the ingest API feeds TELEMETRY; `burst` is a backlog the calculators find
    when resumed, so their own capacity is what is measured (samples / resume -> all done)."""
    runs = {"paced": "BC", "burst": "BD"}
    sites = {tag: [f"{tag}-{i:05d}" for i in range(args.calc_sites)] for tag in runs.values()}
    async with pool.acquire() as conn:
        all_sites = [s for ss in sites.values() for s in ss]
        await conn.copy_records_to_table("site", schema_name="kpi", columns=["site_id", "region", "dg_capacity_kva"],
                                         records=[(s, "calc", 20.0) for s in all_sites])
        await conn.copy_records_to_table(
            "tenancy", schema_name="kpi", columns=["tenancy_id", "site_id", "tenant_id"],
            records=[(f"c-{s}-{t}", s, t) for s in all_sites for t in CALC_TENANTS])
    workers = []
    for r in range(args.calc_replicas):
        wenv = dict(env, TOWERCO_LOG_LEVEL="info")  # its stats line at exit
        if args.calc_replicas > 1:  # the 16 partitions split over the replicas, as in deployment
            wenv["TOWERCO_KPI_PARTITIONS"] = ",".join(
                str(p) for p in range(PARTITIONS) if p % args.calc_replicas == r)
        workers.append(spawn("workers.kpi_calculator.worker", wenv, tmp / f"kpi_calculator{r}.log",
                             profile=f"kpi_calculator{r}"))
    try:
        pids = {"calculator": [w.pid for w in workers], **servers}
        for _ in range(300):  # every consumer created (at most 60 s)
            if not await calc_pending(js):
                break
            await asyncio.sleep(0.2)
        out: dict = {"calc_replicas": args.calc_replicas, "rate_sps": round(rate)}
        for name, tag in runs.items():
            r = await calc_run(args, pool, js, sites[tag], tag, rate if name == "paced" else 0.0,
                               pids, paused=workers if name == "burst" else ())
            if name == "burst":
                out.update(calc_samples=r["samples"], publish_sps=r["publish_sps"], calc_sps=r["calc_sps"],
                           fold_sps=r["fold_sps"], lag_s=r["lag_s"], calc_tenancy_hours=r["tenancy_hours"],
                           calc_cpu_s=r["cpu_s"], calc_sps_per_cpu_s=r["sps_per_cpu_s"],
                           calc_cpu_us_per_sample=r["cpu_us_per_sample"])
            else:
                out.update({f"paced_{k}": v for k, v in r.items() if k != "tenancy_hours"})
        # keeps up: works off a backlog faster than ingest produces it, and fed at the ingest rate
        # folds every sample within a second of its publication
        out["keeps_up"] = bool(out["calc_sps"] >= rate and out["paced_publish_sps"] >= 0.95 * rate
                               and out["paced_fold_lag_s"] <= 1.0)
        out["calc_vs_ingest"] = round(out["calc_sps"] / rate, 2)
        return out
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


async def phase_ingest(args) -> dict:
    """The rate to keep up with: bench.ingest's unary phase (ingest API -> JetStream -> ingestors
    -> PostgreSQL, its own servers and processes), run now so that it sees the same machine."""
    from bench import ingest

    spec = argparse.Namespace(samples=args.ingest_samples, batch=args.request, sites=1000, concurrency=8,
                              ingestors=2)
    unary = (await ingest.orchestrate(spec, unary_only=True))["unary"]
    if unary["rows"] != unary["samples"]:
        raise RuntimeError(f"ingest baseline: {unary['rows']} rows for {unary['samples']} samples")
    return {"ingest_sps": round(unary["sps"]), "ingest_cpu_us_per_sample": unary["cpu_us_per_sample"]}


async def main_async(args) -> dict:
    from mesh import db, events
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port
    from mesh.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-kpi-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    nats = EmbeddedNats(tmp / "nats").start()
    service = None
    try:
        port = free_port()
        env = dict(os.environ)
        env.update(DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_KPI_PORT=str(port),
                   TOWERCO_KPI_TARGET=f"127.0.0.1:{port}", TOWERCO_SITES_TARGET=f"127.0.0.1:{free_port()}",
                   TOWERCO_LOG_LEVEL="warning")
        os.environ.update(DATABASE_URL=pg.url, NATS_URL=nats.url)
        await migrate(pg.url, components=["kpi_calculator"])
        pool = await db.create_pool(pg.url, min_size=1, max_size=4)
        nc = await events.connect(nats.url, name="bench-kpi")
        js = nc.jetstream()
        await events.ensure_streams(js)
        env_service = dict(env)
        env_service["TOWERCO_KPI_PORT"] = str(port)
        service = spawn("services.kpi.server", env_service, tmp / "kpi.log", profile="kpi")
        await wait_grpc(f"127.0.0.1:{port}")
        figures = await phase_queries(args, env, pool, tmp) if args.sites else {}
        if args.calc_sites:
            if args.sites:  # settle what phase 1 loaded, so autovacuum and checkpoints of its
                # 720k rows do not run during the calculator's timing
                async with pool.acquire() as conn:
                    await conn.execute("VACUUM ANALYZE kpi.tenancy_hour, kpi.tenancy_day, kpi.site_hour")
                    await conn.execute("CHECKPOINT")
            rate = args.rate
            if not rate:  # the baseline: the ingest path end to end, now, on this machine
                figures.update(await phase_ingest(args))
                rate = figures["ingest_sps"]
            servers = {"postgres": [pg_postmaster(pg.data_dir)], "nats": [nats.process.pid]}
            figures.update(await phase_calculator(args, env, pool, js, tmp, servers, rate))
        await nc.close()
        await pool.close()
        figures["logs"] = str(tmp)
        return figures
    finally:
        if service is not None:
            service.terminate()
            try:
                service.wait(15)
            except subprocess.TimeoutExpired:
                service.kill()
        nats.stop()
        pg.stop(mode="immediate")
        for data in ("pg", "nats"):  # keep the logs (and profiles), drop the data
            shutil.rmtree(tmp / data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--calc-sites", type=int, default=1000)
    ap.add_argument("--calc-minutes", type=int, default=60)
    ap.add_argument("--request", type=int, default=5000,
                    help="samples per ingest request, each split per partition (5000, as bench.ingest)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="the ingest rate to keep up with, samples/s (default: measured in this run, "
                         "as bench-ingest measures it)")
    ap.add_argument("--ingest-samples", type=int, default=720_000,
                    help="samples of the ingest baseline (as bench-ingest's unary phase)")
    ap.add_argument("--calc-timeout", type=float, default=600.0)
    # two replicas, as bench.ingest runs two ingestors: stateful workers scale by splitting partitions
    ap.add_argument("--calc-replicas", type=int, default=2)
    args = ap.parse_args()
    f = asyncio.run(main_async(args))
    rows = [] if "report_ms" not in f else [
        (f"tenant report, {f['sites']} sites x {f['days']} days (gRPC)", f"{f['report_ms']} ms", "< 1000 ms"),
        ("  bare SQL sum of the hour rows (baseline)", f"{f['bare_report_ms']} ms", f"ratio {f['report_ratio']}"),
        ("site series, 1 h step (gRPC)", f"{f['series_ms']} ms", "< 50 ms"),
        ("  bare SQL select (baseline)", f"{f['bare_series_ms']} ms", f"ratio {f['series_ratio']}"),
        ("fleet summary, every site (gRPC)", f"{f['fleet_ms']} ms", "no target"),
        ("worst 20 tenancies (gRPC)", f"{f['worst_ms']} ms", "no target"),
    ]
    if "calc_sps" in f:
        tgt = f"{f['rate_sps']} samples/s"
        if "ingest_sps" in f:
            rows += [("ingest path end to end, this run (baseline)", f"{f['ingest_sps']} samples/s",
                      f"bench-ingest's unary phase; its target {INGEST_TARGET_SPS} samples/s")]
        rows += [
            (f"calculator: {f['calc_replicas']} replica(s), {f['calc_samples']} samples per run", "", ""),
            ("  paced run: published at", f"{f['paced_publish_sps']} samples/s", f"the ingest rate, {tgt}"),
            ("  paced run: folded (consumers drained)", f"{f['paced_fold_sps']} samples/s",
             f"lag {f['paced_fold_lag_s']} s after last publish"),
            ("  paced run: hours re-evaluated", f"{f['paced_calc_sps']} samples/s",
             f"lag {f['paced_lag_s']} s after last publish"),
            ("  backlog: published (calculators paused) at", f"{f['publish_sps']} samples/s", ""),
            ("  backlog: calculator throughput", f"{f['calc_sps']} samples/s",
             f"{f['calc_vs_ingest']} x ingest; worked off in {f['lag_s']} s (folded at {f['fold_sps']} samples/s)"),
            ("  backlog: calculator CPU (all replicas)", f"{f['calc_cpu_s']} s",
             f"{f['calc_sps_per_cpu_s']} samples per CPU second"),
            ("  backlog: CPU per sample", f"{sum(f['calc_cpu_us_per_sample'].values()):.1f} us",
             ", ".join(f"{k} {v}" for k, v in f["calc_cpu_us_per_sample"].items())),
            ("  keeps up with ingest", "yes" if f["keeps_up"] else "NO", ""),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")
    print(json.dumps({"bench": "kpi", **f}))
    print(f"logs: {f.get('logs', '')}", file=sys.stderr)


if __name__ == "__main__":
    main()
