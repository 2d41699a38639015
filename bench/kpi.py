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

Phase 2, calculator lag: --calc-sites sites report every metric each minute for --calc-minutes
recent minutes; the batches are published to TELEMETRY as the ingest API does, at --rate
samples/s (0 = as fast as possible). Figures: publish_sps, calc_sps (samples folded per second,
first publish -> consumers drained and every marked hour re-evaluated), lag_s (last publish ->
the same).

The table goes to stdout, then ONE JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TENANT = "benchtel"
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
               start + timedelta(hours=h, minutes=59))


SITE_HOUR_COLUMNS = ["site_id", "hour", "grid_map", "power_map", "dg_map", "source_map", "power_known",
                     "power_ok", "grid_known", "grid_present", "dg_run_minutes", "dg_starts",
                     "dg_fail_to_start", "fuel_consumed_l", "fuel_expected_l", "fuel_drop_dg_off_l",
                     "refuel_l", "refuels", "energy_grid_kwh", "energy_dg_kwh", "energy_battery_kwh",
                     "soc_pct", "load_a", "soc_time"]


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def wait_grpc(target: str, timeout_s: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not become healthy")
            await asyncio.sleep(0.2)


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


async def phase_calculator(args, env, pool, js, tmp: Path) -> dict:
    from towerco.telemetry.v1 import telemetry_pb2

    from mesh import events

    sites = [f"BC-{i:05d}" for i in range(args.calc_sites)]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("site", schema_name="kpi", columns=["site_id", "region", "dg_capacity_kva"],
                                         records=[(s, "calc", 20.0) for s in sites])
        await conn.copy_records_to_table(
            "tenancy", schema_name="kpi", columns=["tenancy_id", "site_id", "tenant_id"],
            records=[(f"c-{s}-{t}", s, t) for s in sites for t in ("opa", "opb")])
    worker = spawn("workers.kpi_calculator.worker", env, tmp / "kpi_calculator.log")
    try:
        # pre-build every message: the minutes of the last --calc-minutes, all sites, every metric
        now_min = int(time.time()) // 60
        metrics = {"mains_present": 1.0, "dg_running": 0.0, "fuel_level_l": 400.0, "dc_bus_v": 53.0,
                   "load_a": 35.0, "battery_soc_pct": 99.0, "battery_v": 53.0, "cabinet_temp_c": 31.0,
                   "door_open": 0.0, "rectifier_fault": 0.0}
        by_part: dict[int, list] = {}
        for m in range(now_min - args.calc_minutes, now_min):
            for s in sites:
                part = events.partition_of(s, 16)
                t = telemetry_pb2.Sample(site_id=s, metric="dc_bus_v")
                t.time.FromSeconds(m * 60 + 20)
                items = by_part.setdefault(part, [])
                for name, v in metrics.items():
                    smp = telemetry_pb2.Sample(site_id=s, metric=name, value=v)
                    smp.time.CopyFrom(t.time)
                    items.append(smp)
                for ten in ("opa", "opb"):
                    smp = telemetry_pb2.Sample(site_id=s, metric="tenant_link_up", value=1.0, tenant_id=ten)
                    smp.time.CopyFrom(t.time)
                    items.append(smp)
        messages = []
        for part, items in sorted(by_part.items()):
            for i in range(0, len(items), args.batch):
                b = telemetry_pb2.TelemetryBatch(batch_id=f"calc-{part}-{i}", partition=part,
                                                 samples=items[i:i + args.batch])
                messages.append((part, f"calc-{part}-{i}:{part}", b.SerializeToString(), len(b.samples)))
        messages.sort(key=lambda x: x[1])
        total = sum(m[3] for m in messages)
        await asyncio.sleep(3.0)  # the worker starts and creates its consumers
        t0 = time.perf_counter()
        sent = 0
        for part, mid, data, n in messages:
            await events.publish(js, f"telemetry.samples.{part}", data, msg_id=mid)
            sent += n
            if args.rate:
                ahead = sent / args.rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        t_pub = time.perf_counter()
        max_pending = 0
        while True:
            pending = 0
            for p in range(16):
                try:
                    info = await js.consumer_info("TELEMETRY", f"kpi-calculator-{p}")
                    pending += info.num_pending + info.num_ack_pending
                except Exception:  # noqa: BLE001 - not created yet
                    pending += 1
            max_pending = max(max_pending, pending)
            if pending == 0:
                async with pool.acquire() as conn:  # and every marked hour re-evaluated
                    pending = await conn.fetchval("SELECT count(*) FROM kpi.dirty_hour")
            if pending == 0:
                break
            if time.perf_counter() - t_pub > args.calc_timeout:
                raise RuntimeError(f"calculator not drained after {args.calc_timeout}s ({pending} pending)")
            await asyncio.sleep(0.1)
        t_done = time.perf_counter()
        async with pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM kpi.tenancy_hour WHERE tenant_id = 'opa'")
        return {
            "calc_samples": total, "publish_sps": round(total / (t_pub - t0)),
            "calc_sps": round(total / (t_done - t0)), "lag_s": round(t_done - t_pub, 2),
            "calc_tenancy_hours": rows,
        }
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()


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
        service = spawn("services.kpi.server", env_service, tmp / "kpi.log")
        await wait_grpc(f"127.0.0.1:{port}")
        figures = await phase_queries(args, env, pool, tmp)
        if args.calc_sites:
            figures.update(await phase_calculator(args, env, pool, js, tmp))
        await nc.close()
        await pool.close()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--calc-sites", type=int, default=200)
    ap.add_argument("--calc-minutes", type=int, default=60)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--calc-timeout", type=float, default=600.0)
    args = ap.parse_args()
    f = asyncio.run(main_async(args))
    rows = [
        (f"tenant report, {f['sites']} sites x {f['days']} days (gRPC)", f"{f['report_ms']} ms", "< 1000 ms"),
        ("  bare SQL sum of the hour rows (baseline)", f"{f['bare_report_ms']} ms", f"ratio {f['report_ratio']}"),
        ("site series, 1 h step (gRPC)", f"{f['series_ms']} ms", "< 50 ms"),
        ("  bare SQL select (baseline)", f"{f['bare_series_ms']} ms", f"ratio {f['series_ratio']}"),
        ("fleet summary, every site (gRPC)", f"{f['fleet_ms']} ms", "no target"),
        ("worst 20 tenancies (gRPC)", f"{f['worst_ms']} ms", "no target"),
    ]
    if "calc_sps" in f:
        rows += [
            ("telemetry published", f"{f['publish_sps']} samples/s", f"{f['calc_samples']} samples"),
            ("calculator throughput", f"{f['calc_sps']} samples/s", ""),
            ("calculator lag after last publish", f"{f['lag_s']} s", ""),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")
    print(json.dumps({"bench": "kpi", **f}))


if __name__ == "__main__":
    main()
