"""BiService handlers: check the caller and the request, gather figures from the KPI and Sites
services over gRPC (with the caller's own token, so they scope it too), let the domain compute,
keep rule sets and closed months in the bi schema (store), map to protobuf."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh.auth import Identity, require_role
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.bi import domain, store

SCHEMA = "bi"
READ_ROLES = ("viewer", "tenant_viewer")
WRITE_ROLES = ("admin",)
PAGE = 1000
SITE_CONCURRENCY = 16
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


def _scope(identity: Identity, tenant_id: str, what: str) -> str | None:
    """None for staff; the caller's own tenant otherwise. Another tenant's data does not exist."""
    if identity.is_staff:
        return None
    if tenant_id != identity.tenant:
        raise NotFound(f"{what} of tenant {tenant_id} not found", what, tenant_id)
    return identity.tenant


def _month(month: str, field: str = "month") -> tuple[int, int]:
    try:
        return domain.month_span(month)
    except ValueError as exc:
        raise InvalidArgument("invalid month", [FieldViolation(field, str(exc))]) from None


def _ts(minute: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromSeconds(minute * 60)
    return t


def _range(lo: int, hi: int) -> common_pb2.TimeRange:
    return common_pb2.TimeRange(start_time=_ts(lo), end_time=_ts(hi))


async def _upstream(what: str, call: Awaitable[T]) -> T:
    """Await a call to another service; its NOT_FOUND / PERMISSION_DENIED become our NOT_FOUND.
    UNAVAILABLE and DEADLINE_EXCEEDED are mapped by the mesh's exception interceptor."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            raise NotFound(f"{what} not found", what.split(" ")[0], "") from None
        raise


def rules_of(row: dict[str, Any] | None) -> domain.RuleSet:
    if row is None:
        return domain.NO_RULES
    return domain.RuleSet(
        bands=tuple(domain.Band(float(b["from_points"]), float(b["to_points"]), float(b["penalty_percent"]))
                    for b in row["bands"]),
        cap_percent=float(row["cap_percent"]), incident_min_minutes=int(row["incident_min_minutes"]),
        incident_percent=float(row["incident_percent"]), version=int(row["version"]))


def rule_set_pb(row: dict[str, Any]) -> bi_pb2.PenaltyRuleSet:
    rs = bi_pb2.PenaltyRuleSet(
        tenant_id=row["tenant_id"], version=row["version"], effective_month=row["effective_month"],
        bands=[bi_pb2.PenaltyBand(from_points=b["from_points"], to_points=b["to_points"],
                                  penalty_percent=b["penalty_percent"]) for b in row["bands"]],
        cap_percent=row["cap_percent"], incident_min_minutes=row["incident_min_minutes"],
        incident_penalty_percent=row["incident_percent"], description=row["description"])
    rs.create_time.FromDatetime(row["create_time"])
    return rs


# --------------------------------------------------------------------------- gathering


@dataclass(frozen=True)
class Tenancy:
    id: str
    site_id: str
    sla_target: float
    fee_minor: int
    currency: str
    start_s: float


async def list_tenancies(sites: sites_pb2_grpc.SitesServiceStub, tenant_id: str) -> list[Tenancy]:
    out: list[Tenancy] = []
    token = ""
    while True:
        resp = await _upstream("tenancies", sites.ListTenancies(sites_pb2.ListTenanciesRequest(
            tenant_id=tenant_id, page=common_pb2.PageRequest(size=PAGE, token=token))))
        for t in resp.tenancies:
            if t.tenant_id != tenant_id:
                continue
            start = t.create_time.seconds + t.create_time.nanos / 1e9 if t.HasField("create_time") else 0.0
            out.append(Tenancy(t.id, t.site_id, t.sla_availability_target, t.monthly_fee_minor,
                               t.currency_code, start))
        token = resp.page.next_token
        if not token:
            return out


async def tenant_availability(kpi: kpi_pb2_grpc.KpiServiceStub, tenant_id: str, lo: int, hi: int,
                              skip_outages: bool) -> dict[str, kpi_pb2.TenancyAvailability]:
    """site -> the tenant's tenancy availability over [lo, hi), every page."""
    out: dict[str, kpi_pb2.TenancyAvailability] = {}
    token = ""
    while True:
        resp = await _upstream("availability", kpi.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
            tenant_id=tenant_id, range=_range(lo, hi), skip_outages=skip_outages,
            page=common_pb2.PageRequest(size=PAGE, token=token))))
        for t in resp.tenancies:
            if t.tenant_id == tenant_id:
                out[t.site_id] = t
        token = resp.page.next_token
        if not token:
            return out


# --------------------------------------------------------------------------- the servicer


class BiServicer(bi_pb2_grpc.BiServiceServicer):
    def __init__(self, pool: asyncpg.Pool, *, kpi: kpi_pb2_grpc.KpiServiceStub,
                 sites: sites_pb2_grpc.SitesServiceStub, tariff: domain.Tariff,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.kpi = kpi
        self.sites = sites
        self.tariff = tariff
        self.clock = clock

    # -- penalty rule sets

    async def CreatePenaltyRuleSet(self, request, context):
        identity = require_role(*WRITE_ROLES)
        rs = request.rule_set
        if not rs.tenant_id:
            raise InvalidArgument("invalid rule set", [FieldViolation("rule_set.tenant_id", "is required")])
        _scope(identity, rs.tenant_id, "tenant")
        rules = domain.RuleSet(
            bands=tuple(domain.Band(b.from_points, b.to_points, b.penalty_percent) for b in rs.bands),
            cap_percent=rs.cap_percent, incident_min_minutes=rs.incident_min_minutes,
            incident_percent=rs.incident_penalty_percent)
        problems = domain.validate_rule_set(rules, rs.effective_month)
        if problems:
            raise InvalidArgument("invalid rule set", [FieldViolation(f"rule_set.{f}", d) for f, d in problems])
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.insert_rule_set(
                conn, tenant_id=rs.tenant_id, effective_month=rs.effective_month,
                bands=[{"from_points": b.from_points, "to_points": b.to_points, "penalty_percent": b.percent}
                       for b in rules.bands],
                cap_percent=rules.cap_percent, incident_min_minutes=rules.incident_min_minutes,
                incident_percent=rules.incident_percent, description=rs.description,
                created_by=identity.subject)
        return bi_pb2.CreatePenaltyRuleSetResponse(rule_set=rule_set_pb(row))

    async def GetPenaltyRuleSet(self, request, context):
        identity = require_role(*READ_ROLES)
        scope = _scope(identity, request.tenant_id, "penalty rule set")
        async with self.pool.acquire() as conn:
            row = await store.get_rule_set(conn, tenant_id=request.tenant_id, version=request.version, tenant=scope)
        if row is None:
            name = f"{request.tenant_id}/{request.version or 'latest'}"
            raise NotFound(f"penalty rule set {name} not found", "penalty rule set", name)
        return bi_pb2.GetPenaltyRuleSetResponse(rule_set=rule_set_pb(row))

    async def ListPenaltyRuleSets(self, request, context):
        identity = require_role(*READ_ROLES)
        if not identity.is_staff and request.tenant_id != identity.tenant:
            return bi_pb2.ListPenaltyRuleSetsResponse()  # lists omit what the caller may not see
        async with self.pool.acquire() as conn:
            rows = await store.list_rule_sets(conn, tenant_id=request.tenant_id,
                                              tenant=None if identity.is_staff else identity.tenant)
        return bi_pb2.ListPenaltyRuleSetsResponse(rule_sets=[rule_set_pb(r) for r in rows])

    # -- statements

    async def compute_statement(self, tenant_id: str, month: str, *, skip_outages: bool) -> bi_pb2.SlaStatement:
        """The month's statement computed from today's figures."""
        lo, hi = _month(month)
        async with self.pool.acquire() as conn:
            rows = await store.list_rule_sets(conn, tenant_id=tenant_id, tenant=None)
        rules = domain.pick_rule_set(((r["effective_month"], rules_of(r)) for r in rows), month)
        tenancies = await list_tenancies(self.sites, tenant_id)
        spans: dict[tuple[int, int], list[Tenancy]] = defaultdict(list)
        for t in tenancies:
            span = domain.measured_span(lo, hi, t.start_s)
            if span is not None:
                spans[span].append(t)
        # one KPI query per distinct measured span (a fleet seeded together shares one)
        figures = dict(zip(spans, await asyncio.gather(*(
            tenant_availability(self.kpi, tenant_id, a, b, skip_outages) for a, b in spans)), strict=True))
        st = bi_pb2.SlaStatement(tenant_id=tenant_id, month=month, range=_range(lo, hi),
                                 status=bi_pb2.STATEMENT_STATUS_OPEN, rule_set_version=rules.version)
        st.compute_time.FromSeconds(int(self.clock()))
        lines = []
        for span, group in spans.items():
            for t in group:
                lines.append(self._line(t, span, hi - lo, figures[span].get(t.site_id), rules))
        lines.sort(key=lambda x: (x.site_id, x.tenancy_id))
        st.tenancies.extend(lines)
        st.tenancies_below_sla = sum(1 for x in lines if not x.sla_met)
        for cur, tot in domain.totals_by_currency((x.currency_code, x.prorated_fee_minor, x.penalty_minor)
                                                  for x in lines).items():
            st.totals.add(currency_code=cur, fee_minor=tot.fee_minor, penalty_minor=tot.penalty_minor)
        return st

    @staticmethod
    def _line(t: Tenancy, span: tuple[int, int], month_minutes: int, fig: kpi_pb2.TenancyAvailability | None,
              rules: domain.RuleSet) -> bi_pb2.TenancyStatement:
        lo, hi = span
        if fig is None:  # the KPI side has no figures at all for the tenancy: every minute unknown
            breakdown = kpi_pb2.Availability(
                availability=1.0, defined=False, period_minutes=hi - lo, unknown_minutes=hi - lo,
                excluded=kpi_pb2.ExcludedMinutes(total=hi - lo, unknown=hi - lo), sla_target=t.sla_target,
                sla_met=True)
            outages: list[kpi_pb2.OutageInterval] = []
            region = ""
        else:
            breakdown, outages, region = fig.availability, list(fig.outages), fig.region
        p = domain.penalty(domain.TenancyInput(
            site_id=t.site_id, sla_target=t.sla_target, period_minutes=breakdown.period_minutes,
            outage_minutes=breakdown.outage.total, excluded_minutes=breakdown.excluded.total,
            outage_interval_minutes=tuple(o.minutes for o in outages), monthly_fee_minor=t.fee_minor,
            span_minutes=hi - lo, month_minutes=month_minutes), rules)
        return bi_pb2.TenancyStatement(
            site_id=t.site_id, region=region, tenancy_id=t.id, measured_range=_range(lo, hi),
            sla_target=t.sla_target, availability=p.availability, defined=p.defined, sla_met=p.sla_met,
            shortfall_points=p.shortfall_points, breakdown=breakdown, outages=outages,
            monthly_fee_minor=t.fee_minor, prorated_fee_minor=p.prorated_fee_minor, currency_code=t.currency,
            band=p.band, band_percent=p.band_percent, band_penalty_minor=p.band_penalty_minor,
            incidents=p.incidents, incident_penalty_minor=p.incident_penalty_minor, capped=p.capped,
            penalty_minor=p.penalty_minor)

    async def statement(self, tenant_id: str, month: str, *, skip_outages: bool = False) -> bi_pb2.SlaStatement:
        """The statement as callers see it: live while open; frozen plus adjustments once closed."""
        _month(month)
        async with self.pool.acquire() as conn:
            closed = await store.closed_month(conn, tenant_id=tenant_id, month=month)
        live = await self.compute_statement(tenant_id, month, skip_outages=skip_outages)
        if closed is None:
            return live
        frozen = bi_pb2.SlaStatement.FromString(closed["statement"])
        if skip_outages:
            for line in frozen.tenancies:
                del line.outages[:]
        adj = domain.adjustments(_figures(frozen), _figures(live))
        frozen.adjustments.extend(bi_pb2.Adjustment(
            site_id=a.site_id, availability_delta=a.availability_delta, penalty_delta_minor=a.penalty_delta_minor,
            currency_code=a.currency_code, reason=a.reason) for a in adj)
        return frozen

    async def GetSlaStatement(self, request, context):
        identity = require_role(*READ_ROLES)
        _scope(identity, request.tenant_id, "statement")
        st = await self.statement(request.tenant_id, request.month, skip_outages=request.skip_outages)
        return bi_pb2.GetSlaStatementResponse(statement=st)

    async def CloseMonth(self, request, context):
        identity = require_role(*WRITE_ROLES)
        _scope(identity, request.tenant_id, "statement")
        _month(request.month)
        now = self.clock()
        if not domain.month_ended(request.month, now):
            raise FailedPrecondition(f"month {request.month} has not ended", "MONTH_NOT_ENDED")
        st = await self.compute_statement(request.tenant_id, request.month, skip_outages=False)
        st.status = bi_pb2.STATEMENT_STATUS_CLOSED
        st.close_time.FromSeconds(int(now))
        st.closed_by = identity.subject
        async with self.pool.acquire() as conn:
            row = await store.insert_closed_month(conn, tenant_id=request.tenant_id, month=request.month,
                                                  statement=st.SerializeToString(), closed_by=identity.subject)
        if row is None:
            raise FailedPrecondition(f"month {request.month} is already closed", "MONTH_CLOSED")
        return bi_pb2.CloseMonthResponse(statement=st)

    # -- energy

    async def GetEnergyReport(self, request, context):
        require_role(*READ_ROLES)
        lo, hi = _month(request.month)
        rng = _range(lo, hi)
        report = bi_pb2.EnergyReport(month=request.month, range=rng, tariff=bi_pb2.EnergyTariff(
            grid_price_minor_per_kwh=self.tariff.grid_price_minor_per_kwh,
            fuel_price_minor_per_l=self.tariff.fuel_price_minor_per_l, currency_code=self.tariff.currency_code,
            grid_kg_co2e_per_kwh=self.tariff.grid_kg_co2e_per_kwh,
            diesel_kg_co2e_per_l=self.tariff.diesel_kg_co2e_per_l))
        total = domain.EnergyFigures()
        if request.site_id or request.region:
            sites = await self._sites(request.site_id, request.region)
            sem = asyncio.Semaphore(SITE_CONCURRENCY)

            async def one(site: sites_pb2.Site) -> tuple[sites_pb2.Site, kpi_pb2.SiteKpis | None]:
                async with sem:
                    try:
                        r = await self.kpi.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=site.id, range=rng))
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.NOT_FOUND:  # no figures yet
                            return site, None
                        raise
                    return site, r.kpis

            by_region: dict[str, domain.EnergyFigures] = defaultdict(domain.EnergyFigures)
            for site, k in await asyncio.gather(*(one(s) for s in sites)):
                f = _site_figures(site, k)
                report.sites.append(self._energy_line(site.id, site.region, f))
                by_region[site.region].add(f)
                total.add(f)
            for region in sorted(by_region):
                report.regions.append(self._energy_line(region, region, by_region[region]))
        else:
            fleet = await _upstream("fleet", self.kpi.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(range=rng)))
            for g in fleet.regions:
                f = domain.EnergyFigures(
                    sites=g.sites, energy_grid_kwh=g.energy_grid_kwh, energy_dg_kwh=g.energy_dg_kwh,
                    energy_battery_kwh=g.energy_battery_kwh, dg_run_hours=g.dg_run_hours,
                    fuel_consumed_l=g.fuel_consumed_l, fuel_expected_l=g.fuel_expected_l)
                report.regions.append(self._energy_line(g.key, g.key, f))
                total.add(f)
        report.total.CopyFrom(self._energy_line("total", "", total))
        return bi_pb2.GetEnergyReportResponse(report=report)

    async def _sites(self, site_id: str, region: str) -> list[sites_pb2.Site]:
        if site_id:
            resp = await _upstream(f"site {site_id}", self.sites.GetSite(sites_pb2.GetSiteRequest(site_id=site_id)))
            if region and resp.site.region != region:
                return []
            return [resp.site]
        out: list[sites_pb2.Site] = []
        token = ""
        while True:
            resp = await _upstream("sites", self.sites.ListSites(sites_pb2.ListSitesRequest(
                region=region, page=common_pb2.PageRequest(size=PAGE, token=token))))
            out.extend(resp.sites)
            token = resp.page.next_token
            if not token:
                return sorted(out, key=lambda s: s.id)

    def _energy_line(self, key: str, region: str, f: domain.EnergyFigures) -> bi_pb2.EnergyLine:
        c = domain.energy_cost(f, self.tariff)
        return bi_pb2.EnergyLine(
            key=key, region=region, sites=f.sites, energy_grid_kwh=f.energy_grid_kwh, energy_dg_kwh=f.energy_dg_kwh,
            energy_battery_kwh=f.energy_battery_kwh, dg_run_hours=f.dg_run_hours, dg_starts=f.dg_starts,
            fuel_consumed_l=f.fuel_consumed_l, fuel_expected_l=f.fuel_expected_l, fuel_excess_l=c.fuel_excess_l,
            fuel_drop_dg_off_l=f.fuel_drop_dg_off_l, refuel_l=f.refuel_l, refuels=f.refuels,
            grid_cost_minor=c.grid_cost_minor, fuel_cost_minor=c.fuel_cost_minor, cost_minor=c.cost_minor,
            carbon_kg_co2e=c.carbon_kg_co2e, solar_kwp=f.solar_kwp)


def _site_figures(site: sites_pb2.Site, k: kpi_pb2.SiteKpis | None) -> domain.EnergyFigures:
    if k is None:
        return domain.EnergyFigures(sites=1, solar_kwp=site.power.solar_kwp)
    return domain.EnergyFigures(
        sites=1, energy_grid_kwh=k.energy_grid_kwh, energy_dg_kwh=k.energy_dg_kwh,
        energy_battery_kwh=k.energy_battery_kwh, dg_run_hours=k.dg_run_hours, dg_starts=k.dg_starts,
        fuel_consumed_l=k.fuel_consumed_l, fuel_expected_l=k.fuel_expected_l,
        fuel_drop_dg_off_l=k.fuel_drop_dg_off_l, refuel_l=k.refuel_l, refuels=k.refuels,
        solar_kwp=site.power.solar_kwp)


def _figures(st: bi_pb2.SlaStatement) -> list[domain.LineFigures]:
    return [domain.LineFigures(x.site_id, x.availability, x.penalty_minor, x.currency_code) for x in st.tenancies]
