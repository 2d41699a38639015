"""BI benchmark (`make bench-bi`, `python -m bench.bi`).

Own embedded PostgreSQL and NATS on free ports; the Sites, KPI, AIOps, Files and BI services run as
their own processes (`python -m services.<name>.server`), as `towerco up` starts them.

The data: --sites sites x --tenants tenancies each (every tenant on every site) over the last
complete calendar month, as the Sites service and the kpi_calculator would have written it,
loaded with COPY: the register (sites.sites / tenants / tenancies, with targets and fees), the
KPI copy of it, one kpi.tenancy_day row per tenancy-day (the daily rollup statements read), the
kpi.tenancy_hour rows of the hours that are not all up (outages, telemetry gaps, maintenance:
the outage evidence comes from these), one kpi.site_hour row per site-hour (energy, fuel) and
their daily rollup kpi.site_day (as the kpi_calculator keeps it), and AIOps stat.fuel_theft
anomalies on one site in ten, three each (the energy report's suspected theft litres).
Each tenant gets a penalty rule set through the BI API.

Timed through gRPC (median of --repeat calls after one warm-up):
  statement_ms     GetSlaStatement of one tenant for the month, every tenancy with its
                   breakdown, penalty and outage intervals
  kpi_pages_ms     baseline: what that statement asks of the KPI service, every page of
                   GetTenantAvailability for the tenant and month (timed from here)
  statements_ms    every tenant's statement, requested together              target <= 2,000 ms
  energy_ms        GetEnergyReport of the fleet (per region, totals, suspected theft from
                   AIOps)                                                    target <= 2,000 ms
  pdf_ms           ExportSlaStatement of one tenant as PDF: statement, typesetting, upload to the
                   Files service, signed link                                 target <= 5,000 ms
  statements_cpu_ms CPU the BI and KPI processes spent per round of the statements
  peak RSS of the BI, KPI and Files processes during the timed calls (psutil, sampled every 20 ms)
  load_avg_1m_*    the machine's 1-minute load average around the timed calls (2 shared cores:
                   above ~2 other work competes with the services)
Checks: each statement's penalties equal the penalty engine applied to the KPI service's own
figures (GetTenantAvailability), so the timed answers are the right ones.

The table goes to stdout, then ONE JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.procs import cpu_seconds, wait_grpc

ROOT = Path(__file__).resolve().parent.parent
CODES = ("up", "ignored", "dc_low", "dc_high", "link_down", "unknown", "ex_pm", "ex_fm", "ex_tc", "ex_ad",
         "un_pm", "un_fm", "un_tc", "un_ad")
CODE_OF = dict(zip(CODES, "UuLHN?PFTApfta", strict=True))
TARGETS = (0.999, 0.998, 0.995)
REGIONS = 8
SERVICES = ("sites", "kpi", "aiops", "files", "bi")
SITE_HOUR_COLUMNS = ["site_id", "hour", "grid_map", "power_map", "dg_map", "source_map", "power_known",
                     "power_ok", "grid_known", "grid_present", "dg_run_minutes", "dg_starts",
                     "dg_fail_to_start", "fuel_consumed_l", "fuel_expected_l", "fuel_drop_dg_off_l",
                     "refuel_l", "refuels", "energy_grid_kwh", "energy_dg_kwh", "energy_battery_kwh",
                     "soc_pct", "load_a", "soc_time", "published_revision"]


def last_month(now: datetime) -> tuple[str, datetime, datetime]:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (first - timedelta(days=1)).replace(day=1)
    return start.strftime("%Y-%m"), start, first


def hour_codes(rng: random.Random, outage_p: float) -> str | None:
    """The minute codes of a tenancy-hour; None for an hour all up (no row needed beyond the day)."""
    r = rng.random()
    if r < outage_p:
        a = rng.randrange(60)
        b = min(60, a + rng.randrange(1, 40))
        return "U" * a + "L" * (b - a) + "U" * (60 - b)
    if r < outage_p * 1.5:
        a = rng.randrange(50)
        return "U" * a + "?" * 10 + "U" * (50 - a)
    if r < outage_p * 1.75:
        return "U" * 20 + "P" * 20 + "U" * 20
    return None


def tenancy_rows(sites: list[str], tenants: list[str], start: datetime, days: int, outage_p: float, seed: int = 7):
    """(tenancy_day rows, tenancy_hour rows) consistent with each other: a day's counts are the sum
    of its 24 hours, the hours not listed being all up."""
    rng = random.Random(seed)
    day_rows, hour_rows = [], []
    for tenant in tenants:
        for sid in sites:
            for d in range(days):
                counts = dict.fromkeys(CODES, 0)
                counts["up"] = 1440
                for h in range(24):
                    codes = hour_codes(rng, outage_p)
                    if codes is None:
                        continue
                    c = [codes.count(CODE_OF[k]) for k in CODES]
                    for k, n in zip(CODES, c, strict=True):
                        counts[k] += n
                    counts["up"] -= 60
                    hour_rows.append((tenant, sid, start + timedelta(days=d, hours=h), codes, *c))
                day_rows.append((tenant, sid, start + timedelta(days=d), *(counts[k] for k in CODES)))
    return day_rows, hour_rows


def site_hour_rows(sites: list[str], start: datetime, hours: int):
    grid_off = "1" * 50 + "0" * 10
    dg_on = "0" * 52 + "1" * 8
    src_off = "".join("G" if g == "1" else ("D" if d == "1" else "B") for g, d in zip(grid_off, dg_on, strict=True))
    full = "1" * 60
    zero = "0" * 60
    src = "G" * 60
    for sid in sites:
        for h in range(hours):
            t = start + timedelta(hours=h)
            if h % 24 == 3:
                yield (sid, t, grid_off, full, dg_on, src_off, 60, 60, 60, 50, 8, 1, 0, 1.5, 1.4, 0.0, 0.0, 0,
                       1.7, 0.3, 0.1, 95.0, 40.0, t + timedelta(minutes=59), 1)
            else:
                yield (sid, t, full, full, zero, src, 60, 60, 60, 60, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0,
                       2.0, 0.0, 0.0, 99.0, 40.0, t + timedelta(minutes=59), 1)


async def load(pool, sites: list[str], tenants: list[str], start: datetime, days: int, outage_p: float) -> dict:
    from workers.kpi_calculator import store as kpi_store

    t0 = time.perf_counter()
    day_rows, hour_rows = tenancy_rows(sites, tenants, start, days, outage_p)
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "sites", schema_name="sites", columns=["id", "name", "region", "latitude", "longitude", "grid",
                                                  "dg_capacity_kva", "fuel_tank_l"],
            records=[(s, s, f"region-{i % REGIONS}", -1.0, 36.0, "three_phase", 20.0, 500.0)
                     for i, s in enumerate(sites)])
        await conn.copy_records_to_table("tenants", schema_name="sites", columns=["id", "name"],
                                         records=[(t, t) for t in tenants])
        await conn.copy_records_to_table(
            "tenancies", schema_name="sites",
            columns=["site_id", "tenant_id", "sla_availability_target", "dc_voltage_min_v", "dc_voltage_max_v",
                     "monthly_fee_minor", "currency_code", "create_time"],
            records=[(s, t, TARGETS[i % len(TARGETS)], 43.0, 60.0, 15_000_000, "KES", datetime(2020, 1, 1, tzinfo=UTC))
                     for i, t in enumerate(tenants) for s in sites])
        await conn.copy_records_to_table("site", schema_name="kpi", columns=["site_id", "region"],
                                         records=[(s, f"region-{i % REGIONS}") for i, s in enumerate(sites)])
        await conn.copy_records_to_table(
            "tenancy", schema_name="kpi", columns=["tenancy_id", "site_id", "tenant_id", "sla_target"],
            records=[(f"{t}-{s}", s, t, TARGETS[i % len(TARGETS)]) for i, t in enumerate(tenants) for s in sites])
        await conn.copy_records_to_table("tenancy_day", schema_name="kpi", columns=["tenant_id", "site_id", "day", *CODES],
                                         records=day_rows)
        await conn.copy_records_to_table("tenancy_hour", schema_name="kpi",
                                         columns=["tenant_id", "site_id", "hour", "minutes", *CODES], records=hour_rows)
        await conn.copy_records_to_table("site_hour", schema_name="kpi", columns=SITE_HOUR_COLUMNS,
                                         records=site_hour_rows(sites, start, days * 24))
        await conn.copy_records_to_table("anomaly", schema_name="aiops", columns=ANOMALY_COLUMNS,
                                         records=theft_rows(sites, tenants, start, days))
        # the daily site rollup, as the kpi_calculator keeps it (store.refresh_days)
        await kpi_store.rebuild_site_days(conn)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    return {"load_s": round(time.perf_counter() - t0, 1), "tenancy_days": len(day_rows),
            "tenancy_hours_not_up": len(hour_rows), "site_hours": len(sites) * days * 24}


ANOMALY_COLUMNS = ["id", "site_id", "region", "tenant_ids", "key", "detector", "detector_version", "layer", "metrics",
                   "score", "severity", "state", "start_time", "detect_time", "end_time", "explanation"]
THEFT_SITES = 10  # one site in THEFT_SITES has a fuel-theft anomaly on each of 3 days


def theft_rows(sites: list[str], tenants: list[str], start: datetime, days: int):
    """AIOps stat.fuel_theft anomalies as the aiops_engine stores them (the energy report sums
    their suspected litres): THEFT_LITRES each."""
    import uuid

    from towerco.aiops.v1 import aiops_pb2

    for i, sid in enumerate(sites):
        if i % THEFT_SITES:
            continue
        for d in (3, days // 2, days - 2):
            t = start + timedelta(days=d, hours=2)
            expl = aiops_pb2.Explanation(summary="fuel falling with the DG off", features=[
                aiops_pb2.Feature(name="fuel_drop_l", observed=THEFT_LITRES, expected=0.0, threshold=4.0,
                                  contribution=0.3)]).SerializeToString()
            aid = uuid.uuid4()
            yield (aid, sid, f"region-{i % REGIONS}", tenants, f"stat.fuel_theft|{aid}", "stat.fuel_theft", "1", 2,
                   ["fuel_level_l", "dg_running"], 0.9, 4, 2, t, t + timedelta(minutes=10), t + timedelta(hours=1),
                   expl)


THEFT_LITRES = 12.5


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


class PeakRss:
    """The peak resident memory of some processes, sampled in the background."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.02):
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.every_s = every_s
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            for name, p in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], p.memory_info().rss)
                except Exception:  # noqa: BLE001 - a process gone is simply not sampled
                    pass
            await asyncio.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def mib(self) -> dict[str, float]:
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}


async def timed(fn, repeat: int) -> tuple[float, object]:
    await fn()  # warm-up
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


async def check_statement(st, kpi, md, rng) -> None:
    """The statement's figures are the engine applied to the KPI service's own answer."""
    from towerco.common.v1 import common_pb2
    from towerco.kpi.v1 import kpi_pb2

    want: dict[str, tuple[int, int]] = {}
    token = ""
    while True:
        r = await kpi.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
            tenant_id=st.tenant_id, range=rng, skip_outages=True, page=common_pb2.PageRequest(size=1000, token=token)),
            metadata=md, timeout=60)
        for t in r.tenancies:
            want[t.site_id] = (t.availability.outage.total, t.availability.excluded.total)
        token = r.page.next_token
        if not token:
            break
    got = {x.site_id: (x.breakdown.outage.total, x.breakdown.excluded.total) for x in st.tenancies}
    assert got == want, "the statement's minutes differ from the KPI service's"
    assert sum(1 for x in st.tenancies if x.penalty_minor > 0) > 0, "no penalty at all: the data is too clean"


async def measure(args, env: dict[str, str], pids: dict[str, int]) -> dict:
    import grpc
    from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
    from towerco.common.v1 import common_pb2
    from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc

    from mesh.auth import mint_token
    from mesh.config import Settings

    settings = Settings.from_env()
    md = (("authorization", "Bearer " + mint_token(subject="bench", tenant="*", roles=["admin"], settings=settings)),)
    tenants = [f"bench-{chr(97 + i)}" for i in range(args.tenants)]
    month, start, end = last_month(datetime.now(UTC))
    out: dict = {}
    async with grpc.aio.insecure_channel(env["TOWERCO_BI_TARGET"], options=[
            ("grpc.max_receive_message_length", 64 * 2**20)]) as ch, \
            grpc.aio.insecure_channel(env["TOWERCO_KPI_TARGET"]) as kch:
        bi = bi_pb2_grpc.BiServiceStub(ch)
        kpi = kpi_pb2_grpc.KpiServiceStub(kch)
        for t in tenants:
            await bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
                tenant_id=t, effective_month="2020-01", cap_percent=30, incident_min_minutes=30,
                incident_penalty_percent=0.5, bands=[
                    bi_pb2.PenaltyBand(from_points=0, to_points=0.5, penalty_percent=2),
                    bi_pb2.PenaltyBand(from_points=0.5, to_points=1, penalty_percent=5),
                    bi_pb2.PenaltyBand(from_points=1, to_points=0, penalty_percent=10)])), metadata=md)

        async def one(t: str):
            return (await bi.GetSlaStatement(bi_pb2.GetSlaStatementRequest(tenant_id=t, month=month),
                                             metadata=md, timeout=120)).statement

        async def every():
            return await asyncio.gather(*(one(t) for t in tenants))

        async def energy():
            return (await bi.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=month), metadata=md,
                                             timeout=120)).report

        async def pdf():
            return await bi.ExportSlaStatement(bi_pb2.ExportSlaStatementRequest(
                tenant_id=tenants[0], month=month, format=bi_pb2.EXPORT_FORMAT_PDF), metadata=md, timeout=120)

        rng = common_pb2.TimeRange()
        rng.start_time.FromDatetime(start)
        rng.end_time.FromDatetime(end)

        async def kpi_pages():  # what a statement asks of the KPI service: every page of the tenant
            token, n = "", 0
            while True:
                r = await kpi.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
                    tenant_id=tenants[0], range=rng, page=common_pb2.PageRequest(size=1000, token=token)),
                    metadata=md, timeout=120)
                n += 1
                token = r.page.next_token
                if not token:
                    return n

        with PeakRss(pids) as rss:
            out["kpi_pages_ms"], out["kpi_pages"] = await timed(kpi_pages, args.repeat)
            out["statement_ms"], st = await timed(lambda: one(tenants[0]), args.repeat)
            cpu0 = cpu_seconds({n: [pids[n]] for n in ("bi", "kpi")})
            out["statements_ms"], sts = await timed(every, args.repeat)
            cpu1 = cpu_seconds({n: [pids[n]] for n in ("bi", "kpi")})
            # CPU the services spent per round of all statements (warm-up included): a figure the
            # machine's other load does not inflate as much as wall time
            out["statements_cpu_ms"] = {n: round((cpu1[n] - cpu0[n]) * 1000 / (args.repeat + 1)) for n in cpu0}
            out["energy_ms"], rep = await timed(energy, args.repeat)
            out["pdf_ms"], exp = await timed(pdf, max(1, args.repeat // 2))
        out["peak_rss_mib"] = rss.mib()
        for k in ("statement_ms", "statements_ms", "energy_ms", "pdf_ms", "kpi_pages_ms"):
            out[k] = round(out[k], 1)
        for s in sts:
            await check_statement(s, kpi, md, rng)
        assert len(st.tenancies) == args.sites and rep.total.sites == args.sites, (len(st.tenancies), rep.total.sites)
        theft_sites = len(range(0, args.sites, THEFT_SITES))
        assert rep.theft_known and rep.total.theft_anomalies == 3 * theft_sites, rep.total
        assert abs(rep.total.suspected_theft_l - 3 * theft_sites * THEFT_LITRES) < 1e-6, rep.total
        out.update(
            month=month, tenancies=sum(len(s.tenancies) for s in sts),
            penalties_minor=sum(t.penalty_minor for s in sts for t in s.totals),
            outage_intervals=sum(len(x.outages) for s in sts for x in s.tenancies),
            below_sla=sum(s.tenancies_below_sla for s in sts), pdf_bytes=exp.file.size_bytes,
            fleet_energy_grid_kwh=round(rep.total.energy_grid_kwh, 1),
            fleet_suspected_theft_l=round(rep.total.suspected_theft_l, 1), theft_anomalies=rep.total.theft_anomalies)
    return out


async def main_async(args) -> dict:
    from mesh import db
    from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port
    from mesh.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-bi-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    nats = EmbeddedNats(tmp / "nats").start()
    procs: dict[str, subprocess.Popen] = {}
    try:
        env = dict(os.environ)
        env.update(DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_LOG_LEVEL="warning", TOWERCO_HOME=str(tmp / "home"))
        for name in SERVICES:
            port = free_port()
            env[f"TOWERCO_{name.upper()}_PORT"] = str(port)
            env[f"TOWERCO_{name.upper()}_TARGET"] = f"127.0.0.1:{port}"
        os.environ.update(DATABASE_URL=pg.url, NATS_URL=nats.url)
        await migrate(pg.url)
        pool = await db.create_pool(pg.url, min_size=1, max_size=4)
        sites = [f"BB-{i:05d}" for i in range(args.sites)]
        tenants = [f"bench-{chr(97 + i)}" for i in range(args.tenants)]
        month, start, end = last_month(datetime.now(UTC))
        days = (end - start).days
        figures = {"sites": args.sites, "tenants": args.tenants, "days": days}
        figures.update(await load(pool, sites, tenants, start, days, args.outage_p))
        await pool.close()
        for name in SERVICES:
            procs[name] = spawn(f"services.{name}.server", env, tmp / f"{name}.log")
        for name in procs:
            await wait_grpc(env[f"TOWERCO_{name.upper()}_TARGET"], timeout_s=120)
        figures["load_avg_1m_before"] = round(os.getloadavg()[0], 1)
        figures.update(await measure(args, env, {n: procs[n].pid for n in ("bi", "kpi", "files")}))
        figures["load_avg_1m_after"] = round(os.getloadavg()[0], 1)
        figures["logs"] = str(tmp)
        return figures
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()
        pg.stop(mode="immediate")
        for data in ("pg", "nats", "home"):
            shutil.rmtree(tmp / data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=5000)
    ap.add_argument("--tenants", type=int, default=3, help="tenancies per site: every tenant on every site")
    ap.add_argument("--outage-p", type=float, default=0.002,
                    help="share of tenancy-hours with an outage (half as many gaps, a quarter maintenance)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    f = asyncio.run(main_async(args))
    rss = f["peak_rss_mib"]
    rows = [
        (f"data: {f['sites']} sites x {f['tenants']} tenancies x {f['days']} days", f"{f['load_s']} s load",
         f"{f['tenancy_days']} tenancy-days, {f['tenancy_hours_not_up']} hour rows, {f['site_hours']} site-hours"),
        ("statement, one tenant (gRPC)", f"{f['statement_ms']:.0f} ms", f"{f['sites']} tenancies with evidence"),
        ("  of which KPI GetTenantAvailability, every page", f"{f['kpi_pages_ms']:.0f} ms",
         f"{f['kpi_pages']} pages of 1,000; each page recomputes the whole tenant"),
        ("statements, every tenant together (gRPC)", f"{f['statements_ms']:.0f} ms", "target <= 2000 ms"),
        ("  CPU per round, bi / kpi", f"{f['statements_cpu_ms']['bi']} / {f['statements_cpu_ms']['kpi']} ms",
         f"machine load avg {f['load_avg_1m_before']} -> {f['load_avg_1m_after']} (2 cores)"),
        ("energy report, the fleet (gRPC)", f"{f['energy_ms']:.0f} ms", "target <= 2000 ms"),
        ("PDF statement, one tenant (export + Files)", f"{f['pdf_ms']:.0f} ms",
         f"target <= 5000 ms; {f['pdf_bytes']} bytes"),
        ("peak RSS bi / kpi / files", f"{rss['bi']} / {rss['kpi']} / {rss['files']} MiB", ""),
        ("checked", f"{f['tenancies']} lines", f"{f['outage_intervals']} outage intervals, {f['below_sla']} below SLA, "
                                               f"penalties {f['penalties_minor'] / 100:,.2f} KES"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>24}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>24}  {note}")
    print(json.dumps({"bench": "bi", **f}))
    print(f"logs: {f.get('logs', '')}", file=sys.stderr)


if __name__ == "__main__":
    main()
