"""The bi_engine: on a schedule, gather the fleet's figures over gRPC (Sites register, KPI site
figures and hourly series, Telemetry's latest fuel levels, BI statements), let the domain decide
the recommendations, and store them (the BI service lists them); then file the last complete
month's exports (each tenant's statement and the fleet energy report as CSV, XLSX and PDF) in the
Files service through the BI service, once each (bi.monthly_export plus idempotency keys). Every
run rebuilds everything from the services, so a killed engine loses nothing."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2 as tpb
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh.config import BiEngineSettings, BiSettings, load
from workers.bi_engine import domain, store

log = logging.getLogger("towerco.bi_engine")
PAGE = 1000
EXPORT_FORMATS = {"csv": bi_pb2.EXPORT_FORMAT_CSV, "xlsx": bi_pb2.EXPORT_FORMAT_XLSX, "pdf": bi_pb2.EXPORT_FORMAT_PDF}


@dataclass(frozen=True)
class EngineConfig:
    """A run's settings: mesh.config.BiEngineSettings and the BI domain's prices (BiSettings)."""

    interval_s: float = 3600.0
    window_days: int = 7
    concurrency: int = 8
    fuel_price_minor_per_l: float = 180.0
    grid_price_minor_per_kwh: float = 20.0
    currency: str = "USD"
    exports: bool = True

    @classmethod
    def from_env(cls) -> EngineConfig:
        e, prices = load(BiEngineSettings), load(BiSettings)
        return cls(interval_s=e.interval_s, window_days=e.window_days, concurrency=e.concurrency,
                   fuel_price_minor_per_l=prices.fuel_price_minor_per_l,
                   grid_price_minor_per_kwh=prices.grid_price_minor_per_kwh, currency=prices.currency,
                   exports=e.exports)


@dataclass
class Stubs:
    sites: sites_pb2_grpc.SitesServiceStub
    kpi: kpi_pb2_grpc.KpiServiceStub
    telemetry: telemetry_pb2_grpc.TelemetryServiceStub | None
    bi: bi_pb2_grpc.BiServiceStub


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromSeconds(seconds)
    return t


class Engine:
    def __init__(self, pool: asyncpg.Pool, stubs: Stubs, config: EngineConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.stubs = stubs
        self.config = config or EngineConfig()
        self.clock = clock
        self._stop = asyncio.Event()
        self.runs = 0

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                counts = await self.run_once()
                log.info("bi_engine run done: %s", counts)
            except grpc.aio.AioRpcError as exc:  # a service is down: try again next round
                log.warning("bi_engine run failed: %s %s", exc.code().name, exc.details())
            if self.config.exports:
                try:
                    filed = await self.run_exports()
                    if filed:
                        log.info("bi_engine filed %d monthly exports", len(filed))
                except grpc.aio.AioRpcError as exc:  # what was filed is noted; the rest next round
                    log.warning("bi_engine exports failed: %s %s", exc.code().name, exc.details())
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.interval_s)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()

    async def run_once(self) -> dict[int, int]:
        """One full run; returns how many recommendations of each kind were stored."""
        now = self.clock()
        hi = int(now // 3600) * 3600
        lo = hi - self.config.window_days * 86400
        rng = common_pb2.TimeRange(start_time=_ts(lo), end_time=_ts(hi))
        sites = await self._sites()
        month = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
        lines = await self._penalty_lines(month)
        dc_low = domain.dc_low_penalty(lines)
        sem = asyncio.Semaphore(self.config.concurrency)
        cfg = self.config

        async def one(site: sites_pb2.Site) -> list[domain.Rec]:
            async with sem:
                return await self._site_recs(site, rng, lo, hi, dc_low.get(site.id, 0), cfg)

        per_site = await asyncio.gather(*(one(s) for s in sites))
        recs = [r for rs in per_site for r in rs if isinstance(r, domain.Rec)]
        tanks = [t for rs in per_site for t in rs if isinstance(t, domain.Tank)]
        today = datetime.fromtimestamp(now, UTC).date()
        recs += domain.refuel_recs(domain.refuel_runs(tanks, today))
        recs += domain.penalty_hotspots(lines)
        async with self.pool.acquire() as conn:
            counts = await store.replace_recommendations(conn, recs=recs,
                                                         compute_time=datetime.fromtimestamp(now, UTC))
        self.runs += 1
        return counts

    async def run_exports(self) -> list[tuple[str, str, str]]:
        """File the last complete month's exports not filed yet: every tenant's SLA statement and
        the fleet energy report, as CSV, XLSX and PDF, through the BI service (which renders them
        and stores them in the Files service). Each is noted in bi.monthly_export once filed, and
        asked with an idempotency key, so a restart between the upload and the note, or a second
        engine, still files it once. Returns (report, tenant, format) of those filed now."""
        month = domain.last_complete_month(datetime.fromtimestamp(self.clock(), UTC).date())
        tenants = await self._tenants()
        async with self.pool.acquire() as conn:
            done = await store.exported(conn, month=month)
        filed = []
        for report, tenant, fmt, key in domain.export_plan(tenants, month, done):
            if report == "statement":
                r = await self.stubs.bi.ExportSlaStatement(bi_pb2.ExportSlaStatementRequest(
                    tenant_id=tenant, month=month, format=EXPORT_FORMATS[fmt], idempotency_key=key), timeout=300)
            else:
                r = await self.stubs.bi.ExportEnergyReport(bi_pb2.ExportEnergyReportRequest(
                    month=month, format=EXPORT_FORMATS[fmt], idempotency_key=key), timeout=300)
            async with self.pool.acquire() as conn:
                await store.record_export(conn, report=report, tenant_id=tenant, month=month, fmt=fmt,
                                          file_id=r.file.id, sha256=r.file.sha256, size_bytes=r.file.size_bytes)
            filed.append((report, tenant, fmt))
        return filed

    async def _tenants(self) -> list[str]:
        tenants: list[str] = []
        token = ""
        while True:
            r = await self.stubs.sites.ListTenants(sites_pb2.ListTenantsRequest(
                page=common_pb2.PageRequest(size=PAGE, token=token)), timeout=30)
            tenants.extend(t.id for t in r.tenants)
            token = r.page.next_token
            if not token:
                return tenants

    async def _sites(self) -> list[sites_pb2.Site]:
        out: list[sites_pb2.Site] = []
        token = ""
        while True:
            r = await self.stubs.sites.ListSites(sites_pb2.ListSitesRequest(
                page=common_pb2.PageRequest(size=PAGE, token=token)), timeout=30)
            out.extend(r.sites)
            token = r.page.next_token
            if not token:
                return out

    async def _penalty_lines(self, month: str) -> list[domain.PenaltyLine]:
        tenants = await self._tenants()
        out = []
        for tenant in tenants:
            st = (await self.stubs.bi.GetSlaStatement(bi_pb2.GetSlaStatementRequest(
                tenant_id=tenant, month=month, skip_outages=True), timeout=120)).statement
            for x in st.tenancies:
                out.append(domain.PenaltyLine(x.site_id, x.region, tenant, x.penalty_minor, x.currency_code,
                                              x.breakdown.outage.total, x.breakdown.outage.dc_low))
        return out

    async def _site_recs(self, site: sites_pb2.Site, rng: common_pb2.TimeRange, lo: int, hi: int, dc_low_minor: int,
                         cfg: EngineConfig) -> list:
        try:
            k = (await self.stubs.kpi.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=site.id, range=rng),
                                                  timeout=30)).kpis
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # no figures yet
                return []
            raise
        out: list = []
        known_days = k.power_known_minutes / 1440.0
        if k.dg_run_hours > 0 and site.power.grid != sites_pb2.GRID_CONNECTION_NONE:
            series = (await self.stubs.kpi.GetKpiSeries(kpi_pb2.GetKpiSeriesRequest(
                site_id=site.id, range=rng, step=duration_pb2.Duration(seconds=3600),
                kpis=[kpi_pb2.KPI_GRID_AVAILABILITY, kpi_pb2.KPI_DG_RUN_HOURS]), timeout=30)).series
            grid = next((s for s in series if s.kpi == kpi_pb2.KPI_GRID_AVAILABILITY), None)
            dg = next((s for s in series if s.kpi == kpi_pb2.KPI_DG_RUN_HOURS), None)
            if grid is not None and dg is not None:
                hours = [(round(g.value * g.known_minutes), g.known_minutes, round(d.value * 60))
                         for g, d in zip(grid.points, dg.points, strict=True)]
                rec = domain.dg_on_grid(
                    domain.SiteEnergy(site.id, site.region, k.dg_run_hours, k.fuel_consumed_l, k.energy_dg_kwh),
                    domain.dg_grid_overlap_minutes(hours), known_days,
                    fuel_price_minor_per_l=cfg.fuel_price_minor_per_l,
                    grid_price_minor_per_kwh=cfg.grid_price_minor_per_kwh, currency=cfg.currency)
                if rec is not None:
                    out.append(rec)
        rec = domain.battery_degraded(site.id, site.region, k.observed_autonomy_h, k.observed_autonomy_lower_bound,
                                      k.battery_autonomy_h, dc_low_minor, cfg.currency)
        if rec is not None:
            out.append(rec)
        if site.power.fuel_tank_l > 0 and known_days > 0 and self.stubs.telemetry is not None:
            level = await self._fuel_level(site.id)
            if level is not None and math.isfinite(level):
                out.append(domain.Tank(site.id, site.region, level, site.power.fuel_tank_l,
                                       k.fuel_consumed_l / known_days))
        return out

    async def _fuel_level(self, site_id: str) -> float | None:
        try:
            snap = await self.stubs.telemetry.LatestSnapshot(tpb.LatestSnapshotRequest(site_id=site_id), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return next((s.value for s in snap.samples if s.metric == "fuel_level_l"), None)
