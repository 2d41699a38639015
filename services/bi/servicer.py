"""BiService handlers: check the caller and the request, gather figures from the KPI and Sites
services over gRPC (with the caller's own token, so they scope it too), let the domain compute,
keep rule sets and closed months in the bi schema (store), map to protobuf."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from towerco.aiops.v1 import aiops_pb2, aiops_pb2_grpc
from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
from towerco.common.v1 import common_pb2
from towerco.files.v1 import files_pb2, files_pb2_grpc
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.noc.v1 import noc_pb2, noc_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh.auth import Identity, require_role, tenant_scope
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.bi import domain, exports, store

SCHEMA = "bi"
READ_ROLES = ("viewer", "tenant_viewer")
WRITE_ROLES = ("admin",)
PAGE = 1000
SITE_CONCURRENCY = 16
STAFF_FILES_TENANT = "towerco"  # where staff's fleet-wide exports are filed
FORMATS = {bi_pb2.EXPORT_FORMAT_CSV: "csv", bi_pb2.EXPORT_FORMAT_XLSX: "xlsx", bi_pb2.EXPORT_FORMAT_PDF: "pdf"}
CHART_BARS = 60
PDF_EVIDENCE_ROWS = 2000
T = TypeVar("T")
log = logging.getLogger("towerco.bi")
THEFT_PAGE = 1000
THEFT_TIMEOUT_S = 20.0
NOC_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- helpers


def _scope(identity: Identity, tenant_id: str) -> str | None:
    """The tenant a read is limited to (mesh.auth.tenant_scope): another tenant's data is NOT_FOUND."""
    return tenant_scope(identity, tenant_id)


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


async def _upstream(kind: str, name: str, call: Awaitable[T]) -> T:
    """Await a call to another service; its NOT_FOUND / PERMISSION_DENIED become our NOT_FOUND of
    the resource asked about (kind, name). UNAVAILABLE and DEADLINE_EXCEEDED are mapped by the
    mesh's exception interceptor."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            raise NotFound(f"{kind} {name} not found".replace("  ", " "), kind, name) from None
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
        resp = await _upstream("tenant", tenant_id, sites.ListTenancies(sites_pb2.ListTenanciesRequest(
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


async def tenant_availability_pages(kpi: kpi_pb2_grpc.KpiServiceStub, tenant_id: str, lo: int, hi: int,
                                    skip_outages: bool, pages: asyncio.Queue) -> None:
    """Put each page of the tenant's tenancy availability over [lo, hi) on `pages` as it arrives
    (site -> figures, in site order), then None; an error is put as the exception. The next page
    is asked for before this one is used, so the KPI service computes it meanwhile."""
    token = ""
    try:
        while True:
            resp = await _upstream("tenant", tenant_id, kpi.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
                tenant_id=tenant_id, range=_range(lo, hi), skip_outages=skip_outages,
                page=common_pb2.PageRequest(size=PAGE, token=token))))
            await pages.put({t.site_id: t for t in resp.tenancies if t.tenant_id == tenant_id})
            token = resp.page.next_token
            if not token:
                await pages.put(None)
                return
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        await pages.put(exc)


async def tenant_availability(kpi: kpi_pb2_grpc.KpiServiceStub, tenant_id: str, lo: int, hi: int,
                              skip_outages: bool) -> dict[str, kpi_pb2.TenancyAvailability]:
    """site -> the tenant's tenancy availability over [lo, hi), every page."""
    out: dict[str, kpi_pb2.TenancyAvailability] = {}
    token = ""
    while True:
        resp = await _upstream("tenant", tenant_id, kpi.GetTenantAvailability(kpi_pb2.GetTenantAvailabilityRequest(
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
                 sites: sites_pb2_grpc.SitesServiceStub, files: files_pb2_grpc.FilesServiceStub | None = None,
                 aiops: aiops_pb2_grpc.AiopsServiceStub | None = None,
                 noc: noc_pb2_grpc.NocServiceStub | None = None,
                 tariff: domain.Tariff, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.aiops = aiops  # suspected fuel theft, asked with the caller's token
        self.noc = noc  # the statement's NOC figures, asked with the caller's token
        self.files = files  # called as the BI service itself: a tenant's viewer may not upload
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
        _scope(identity, rs.tenant_id)
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
        scope = _scope(identity, request.tenant_id)
        async with self.pool.acquire() as conn:
            row = await store.get_rule_set(conn, tenant_id=request.tenant_id, version=request.version, tenant=scope)
        if row is None:
            name = f"{request.tenant_id}/{request.version or 'latest'}"
            raise NotFound(f"penalty rule set {name} not found", "penalty rule set", name)
        return bi_pb2.GetPenaltyRuleSetResponse(rule_set=rule_set_pb(row))

    async def ListPenaltyRuleSets(self, request, context):
        identity = require_role(*READ_ROLES)
        tenant_scope(identity, request.tenant_id)  # tenants/{other}/penalty-rule-sets: NOT_FOUND
        async with self.pool.acquire() as conn:
            rows = await store.list_rule_sets(conn, tenant_id=request.tenant_id,
                                              tenant=None if identity.is_staff else identity.tenant)
        return bi_pb2.ListPenaltyRuleSetsResponse(rule_sets=[rule_set_pb(r) for r in rows])

    # -- statements

    async def compute_statement(self, tenant_id: str, month: str, *, skip_outages: bool,
                                out: bi_pb2.SlaStatement | None = None) -> bi_pb2.SlaStatement:
        """The month's statement computed from today's figures (built in `out` when given: a
        5,000-line statement is not copied into its response)."""
        lo, hi = _month(month)
        async with self.pool.acquire() as conn:
            rows = await store.list_rule_sets(conn, tenant_id=tenant_id, tenant=None)
        rules = domain.pick_rule_set(((r["effective_month"], rules_of(r)) for r in rows), month)
        # the whole month is asked of the KPI service while the register is read (most tenancies
        # span it), page by page: the lines of a page are built while the KPI service computes
        # the next; then one query per other distinct measured span (a fleet seeded together
        # shares one), asked in full before the lines
        pages: asyncio.Queue = asyncio.Queue()
        whole = asyncio.ensure_future(tenant_availability_pages(self.kpi, tenant_id, lo, hi, skip_outages, pages))
        noc_call = asyncio.ensure_future(self._noc(tenant_id, _range(lo, hi)))
        try:
            st = await self._build_statement(tenant_id, month, lo, hi, rules, pages, skip_outages, out)
            st.noc.CopyFrom(await noc_call)
            return st
        finally:
            whole.cancel()
            noc_call.cancel()

    async def _build_statement(self, tenant_id: str, month: str, lo: int, hi: int, rules: domain.RuleSet,
                               pages: asyncio.Queue, skip_outages: bool, out: bi_pb2.SlaStatement | None
                               ) -> bi_pb2.SlaStatement:
        # a tenant the register does not know has no statement (NOT_FOUND), not an empty one
        await _upstream("tenant", tenant_id, self.sites.GetTenant(sites_pb2.GetTenantRequest(tenant_id=tenant_id)))
        tenancies = await list_tenancies(self.sites, tenant_id)
        measured: list[tuple[Tenancy, tuple[int, int]]] = []
        for t in tenancies:
            span = domain.measured_span(lo, hi, t.start_s)
            if span is not None:
                measured.append((t, span))
        others = sorted({sp for _, sp in measured if sp != (lo, hi)})
        figures = dict(zip(others, await asyncio.gather(*(
            tenant_availability(self.kpi, tenant_id, a, b, skip_outages) for a, b in others)), strict=True))
        whole: dict[str, kpi_pb2.TenancyAvailability] = {}
        figures[(lo, hi)] = whole
        st = out if out is not None else bi_pb2.SlaStatement()
        st.tenant_id, st.month = tenant_id, month
        st.range.CopyFrom(_range(lo, hi))
        st.status = bi_pb2.STATEMENT_STATUS_OPEN
        st.rule_set_version = rules.version
        st.compute_time.FromSeconds(int(self.clock()))
        ranges = {sp: _range(*sp) for sp in figures}  # one TimeRange per span, copied into its lines
        measured.sort(key=lambda x: (x[0].site_id, x[0].id))
        below = 0
        money: list[tuple[str, int, int]] = []
        done = 0
        more = True
        while more:
            page = await pages.get()
            if isinstance(page, BaseException):
                raise page
            if page is None:
                more, bound = False, None
            else:
                whole.update(page)
                bound = max(page) if page else ""
            # the lines the pages so far decide: every site up to the last one received (pages come
            # in site order), all of them once the last page is in
            while done < len(measured) and (bound is None or measured[done][0].site_id <= bound):
                t, span = measured[done]
                x = st.tenancies.add()
                self._line(x, t, span, ranges[span], hi - lo, figures[span].get(t.site_id), rules)
                below += not x.sla_met
                money.append((x.currency_code, x.prorated_fee_minor, x.penalty_minor))
                done += 1
            await asyncio.sleep(0)  # let the next page's request go out before the next batch
        st.tenancies_below_sla = below
        for cur, tot in domain.totals_by_currency(money).items():
            st.totals.add(currency_code=cur, fee_minor=tot.fee_minor, penalty_minor=tot.penalty_minor)
        return st

    @staticmethod
    def _line(x: bi_pb2.TenancyStatement, t: Tenancy, span: tuple[int, int], rng: common_pb2.TimeRange,
              month_minutes: int, fig: kpi_pb2.TenancyAvailability | None, rules: domain.RuleSet) -> None:
        """Fill one tenancy's line `x`."""
        lo, hi = span
        if fig is None:  # the KPI side has no figures at all for the tenancy: every minute unknown
            x.breakdown.CopyFrom(kpi_pb2.Availability(
                availability=1.0, defined=False, period_minutes=hi - lo, unknown_minutes=hi - lo,
                excluded=kpi_pb2.ExcludedMinutes(total=hi - lo, unknown=hi - lo), sla_target=t.sla_target,
                sla_met=True))
            interval_minutes: tuple[int, ...] = ()
        else:
            x.breakdown.CopyFrom(fig.availability)
            x.outages.extend(fig.outages)
            x.region = fig.region
            interval_minutes = tuple(o.minutes for o in fig.outages)
        b = x.breakdown
        p = domain.penalty(domain.TenancyInput(
            site_id=t.site_id, sla_target=t.sla_target, period_minutes=b.period_minutes,
            outage_minutes=b.outage.total, excluded_minutes=b.excluded.total,
            outage_interval_minutes=interval_minutes, monthly_fee_minor=t.fee_minor,
            span_minutes=hi - lo, month_minutes=month_minutes), rules)
        x.site_id, x.tenancy_id = t.site_id, t.id
        x.measured_range.CopyFrom(rng)
        x.sla_target = t.sla_target
        x.availability, x.defined, x.sla_met, x.shortfall_points = p.availability, p.defined, p.sla_met, \
            p.shortfall_points
        x.monthly_fee_minor, x.prorated_fee_minor, x.currency_code = t.fee_minor, p.prorated_fee_minor, t.currency
        x.band, x.band_percent, x.band_penalty_minor = p.band, p.band_percent, p.band_penalty_minor
        x.incidents, x.incident_penalty_minor = p.incidents, p.incident_penalty_minor
        x.capped, x.penalty_minor = p.capped, p.penalty_minor

    async def _noc(self, tenant_id: str, rng: common_pb2.TimeRange) -> bi_pb2.NocSummary:
        """The tenant's NOC figures for the month, asked with the caller's token (so the NOC scopes
        them too). Never fails the statement: when the NOC cannot be asked (down, refusing, slow)
        the summary says the figures are unknown (known = false) instead of zero."""
        if self.noc is None:
            return bi_pb2.NocSummary(known=False)
        try:
            resp = await self.noc.GetNocStats(noc_pb2.GetNocStatsRequest(range=rng, tenant_id=tenant_id),
                                              timeout=NOC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("noc not answering for the statement of %s: %s", tenant_id, exc.code().name)
            return bi_pb2.NocSummary(known=False)
        o = resp.overall
        return bi_pb2.NocSummary(known=True, incidents=o.incidents, acknowledged=o.acknowledged,
                                 resolved=o.resolved, mtta_seconds=o.mtta_seconds, mttr_seconds=o.mttr_seconds)

    async def statement(self, tenant_id: str, month: str, *, skip_outages: bool = False,
                        out: bi_pb2.SlaStatement | None = None) -> bi_pb2.SlaStatement:
        """The statement as callers see it: live while open; frozen plus adjustments once closed
        (built in `out` when given)."""
        _month(month)
        async with self.pool.acquire() as conn:
            closed = await store.closed_month(conn, tenant_id=tenant_id, month=month)
        if closed is None:
            return await self.compute_statement(tenant_id, month, skip_outages=skip_outages, out=out)
        live = await self.compute_statement(tenant_id, month, skip_outages=skip_outages)
        frozen = out if out is not None else bi_pb2.SlaStatement()
        frozen.MergeFromString(closed["statement"])
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
        _scope(identity, request.tenant_id)
        resp = bi_pb2.GetSlaStatementResponse()
        await self.statement(request.tenant_id, request.month, skip_outages=request.skip_outages, out=resp.statement)
        return resp

    async def CloseMonth(self, request, context):
        identity = require_role(*WRITE_ROLES)
        _scope(identity, request.tenant_id)
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

    # -- recommendations

    async def ListRecommendations(self, request, context):
        identity = require_role(*READ_ROLES)
        if not identity.is_staff:  # the towerco's own optimisation work: not a tenant's business
            return bi_pb2.ListRecommendationsResponse()
        async with self.pool.acquire() as conn:
            rows = await store.list_recommendations(conn, kind=request.kind, region=request.region,
                                                    limit=request.limit or 100)
        resp = bi_pb2.ListRecommendationsResponse()
        for r in rows:
            rec = resp.recommendations.add(
                kind=r["kind"], site_id=r["site_id"], region=r["region"], title=r["title"],
                evidence=[bi_pb2.Evidence(name=n, value=v) for n, v in r["evidence"]],
                estimated_monthly_saving_minor=r["saving_minor"], currency_code=r["currency"],
                due_date=r["due_date"], run=r["run"])
            rec.compute_time.FromDatetime(r["compute_time"])
        return resp

    # -- exports

    async def _file(self, tenant_id: str, name: str, fmt: str, content: bytes, ttl: int, key: str = ""
                    ) -> tuple[files_pb2.File, files_pb2.CreateDownloadLinkResponse]:
        if self.files is None:
            raise FailedPrecondition("exports need the Files service, which is not configured", "NO_FILES")
        up = await self.files.UploadFile(files_pb2.UploadFileRequest(
            tenant_id=tenant_id, kind=files_pb2.FILE_KIND_EXPORT, name=name,
            content_type=exports.CONTENT_TYPES[fmt], content=content, idempotency_key=key))
        link = await self.files.CreateDownloadLink(files_pb2.CreateDownloadLinkRequest(
            file_id=up.file.id, ttl_seconds=ttl))
        return up.file, link

    async def ExportSlaStatement(self, request, context):
        identity = require_role(*READ_ROLES)
        _scope(identity, request.tenant_id)
        fmt = FORMATS[request.format]
        st = await self.statement(request.tenant_id, request.month)
        content = await asyncio.to_thread(exports.render, statement_report(st), fmt)
        f, link = await self._file(request.tenant_id, f"statement-{request.tenant_id}-{request.month}.{fmt}", fmt,
                                   content, request.link_ttl_seconds, request.idempotency_key)
        return bi_pb2.ExportSlaStatementResponse(file=f, download_url=link.url, expire_time=link.expire_time)

    async def ExportEnergyReport(self, request, context):
        identity = require_role(*READ_ROLES)
        fmt = FORMATS[request.format]
        rep = (await self.GetEnergyReport(bi_pb2.GetEnergyReportRequest(month=request.month, region=request.region),
                                          context)).report
        content = await asyncio.to_thread(exports.render, energy_report(rep), fmt)
        owner = STAFF_FILES_TENANT if identity.is_staff else identity.tenant
        suffix = f"-{request.region}" if request.region else ""
        f, link = await self._file(owner, f"energy-{request.month}{suffix}.{fmt}", fmt, content,
                                   request.link_ttl_seconds, request.idempotency_key)
        return bi_pb2.ExportEnergyReportResponse(file=f, download_url=link.url, expire_time=link.expire_time)

    # -- energy tariffs

    async def _tariff_book(self) -> tuple[dict[str, domain.TariffOverride], dict[str, domain.TariffOverride],
                                          list[asyncpg.Record]]:
        """(region -> override, site -> override, the rows)."""
        async with self.pool.acquire() as conn:
            rows = await store.list_tariffs(conn)
        regions = {r["name"]: _override(r) for r in rows if r["scope"] == "region"}
        sites = {r["name"]: _override(r) for r in rows if r["scope"] == "site"}
        return regions, sites, rows

    def _default_pb(self) -> bi_pb2.EnergyTariff:
        return _tariff_pb(self.tariff)

    async def SetEnergyTariff(self, request, context):
        identity = require_role(*WRITE_ROLES)
        t = request.tariff
        o = _override_of(t)
        problems = domain.validate_override(t.region, t.site_id, o)
        if problems:
            raise InvalidArgument("invalid tariff", [FieldViolation(f"tariff.{f}", d) for f, d in problems])
        if t.site_id:  # a site's prices need the site: one the register does not know is refused
            try:
                await self.sites.GetSite(sites_pb2.GetSiteRequest(site_id=t.site_id))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                    raise InvalidArgument("invalid tariff", [FieldViolation(
                        "tariff.site_id", f"no site {t.site_id} in the register")]) from None
                raise
        scope, name = ("site", t.site_id) if t.site_id else ("region", t.region)
        async with self.pool.acquire() as conn:
            row = await store.upsert_tariff(
                conn, scope=scope, name=name, grid_price=o.grid_price_minor_per_kwh,
                fuel_price=o.fuel_price_minor_per_l, grid_factor=o.grid_kg_co2e_per_kwh, description=t.description,
                updated_by=identity.subject)
        return bi_pb2.SetEnergyTariffResponse(tariff=_override_pb(row))

    async def ListEnergyTariffs(self, request, context):
        identity = require_role(*READ_ROLES)
        resp = bi_pb2.ListEnergyTariffsResponse(default_tariff=self._default_pb())
        if request.site_id:
            site = (await _upstream("site", request.site_id, self.sites.GetSite(
                sites_pb2.GetSiteRequest(site_id=request.site_id)))).site  # another tenant's site: NOT_FOUND
            async with self.pool.acquire() as conn:
                rows = await store.list_tariffs(conn, regions=[site.region], sites=[site.id])
            by = {(r["scope"], r["name"]): _override(r) for r in rows}
            resp.resolved.CopyFrom(_tariff_pb(domain.resolve_tariff(
                self.tariff, by.get(("region", site.region)), by.get(("site", site.id)))))
        else:
            async with self.pool.acquire() as conn:
                rows = await store.list_tariffs(conn, regions=[request.region] if request.region else None,
                                                sites=[] if request.region else None)
            if not identity.is_staff:  # a tenant: the prices of the sites it leases, not the whole book
                mine = await self._sites("", "")  # the Sites service scopes the forwarded token
                sites, regions = {s.id for s in mine}, {s.region for s in mine}
                rows = [r for r in rows if r["name"] in (sites if r["scope"] == "site" else regions)]
        resp.tariffs.extend(_override_pb(r) for r in rows)
        return resp

    async def DeleteEnergyTariff(self, request, context):
        require_role(*WRITE_ROLES)
        if bool(request.region) == bool(request.site_id):
            raise InvalidArgument("invalid tariff", [FieldViolation(
                "region" if not request.region else "site_id", "exactly one of region and site_id must be set")])
        scope, name = ("site", request.site_id) if request.site_id else ("region", request.region)
        async with self.pool.acquire() as conn:
            gone = await store.delete_tariff(conn, scope=scope, name=name)
        if not gone:
            raise NotFound(f"energy tariff of {scope} {name} not found", "energy tariff", f"{scope}/{name}")
        return bi_pb2.DeleteEnergyTariffResponse()

    # -- suspected fuel theft (AIOps)

    async def _theft(self, rng: common_pb2.TimeRange, *, site_id: str = "", region: str = ""
                     ) -> dict[str, tuple[str, float, int]] | None:
        """site -> (region, suspected theft litres, anomalies) of the AIOps fuel-theft anomalies
        that started in the range, asked with the caller's token (so it scopes them too). None when
        AIOps cannot be asked: the report then says the figures are unknown instead of zero."""
        if self.aiops is None:
            return None
        out: dict[str, tuple[str, float, int]] = {}
        token = ""
        try:
            while True:
                resp = await self.aiops.ListAnomalies(aiops_pb2.ListAnomaliesRequest(
                    site_id=site_id, region=region, detector=domain.THEFT_DETECTOR, range=rng,
                    page=common_pb2.PageRequest(size=THEFT_PAGE, token=token)), timeout=THEFT_TIMEOUT_S)
                for a in resp.anomalies:
                    litres = domain.theft_litres(((f.name, f.observed, f.expected) for f in a.explanation.features),
                                                 a.feedback)
                    if litres is None:
                        continue
                    _, sum_l, n = out.get(a.site_id, (a.region, 0.0, 0))
                    out[a.site_id] = (a.region, sum_l + litres, n + 1)
                token = resp.page.next_token
                if not token:
                    return out
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.UNIMPLEMENTED):
                log.warning("aiops not answering for the energy report: %s", exc.code().name)
                return None
            raise

    # -- energy

    async def GetEnergyReport(self, request, context):
        require_role(*READ_ROLES)
        lo, hi = _month(request.month)
        rng = _range(lo, hi)
        theft_call = asyncio.ensure_future(self._theft(rng, site_id=request.site_id, region=request.region))
        try:
            report = await self._energy_report(request, rng)
            theft = await theft_call
        finally:
            theft_call.cancel()
        return bi_pb2.GetEnergyReportResponse(report=self._finish_energy(report, theft))

    async def _energy_report(self, request: bi_pb2.GetEnergyReportRequest, rng: common_pb2.TimeRange
                             ) -> _EnergyParts:
        region_ov, site_ov, rows = await self._tariff_book()
        parts = _EnergyParts(month=request.month, rng=rng, region_ov=region_ov, site_ov=site_ov, rows=rows)
        if request.site_id or request.region:
            sites = await self._sites(request.site_id, request.region)
            sem = asyncio.Semaphore(SITE_CONCURRENCY)

            async def one(site: sites_pb2.Site) -> tuple[sites_pb2.Site, kpi_pb2.SiteKpis | None]:
                async with sem:
                    return site, await self._site_kpis(site.id, rng)

            for site, k in await asyncio.gather(*(one(s) for s in sites)):
                parts.sites.append((site.id, site.region, _site_figures(site, k)))
        else:
            fleet = await _upstream("fleet", "", self.kpi.GetFleetSummary(kpi_pb2.GetFleetSummaryRequest(
                range=rng, skip_availability=True)))
            for g in fleet.regions:
                parts.regions[g.key] = domain.EnergyFigures(
                    sites=g.sites, energy_grid_kwh=g.energy_grid_kwh, energy_dg_kwh=g.energy_dg_kwh,
                    energy_battery_kwh=g.energy_battery_kwh, dg_run_hours=g.dg_run_hours,
                    fuel_consumed_l=g.fuel_consumed_l, fuel_expected_l=g.fuel_expected_l)
            # the sites with prices of their own: their figures are priced apart from their region's
            overridden = await asyncio.gather(*(self._overridden_site(sid, rng) for sid in sorted(site_ov)))
            parts.overridden = [x for x in overridden if x is not None and x[1] in parts.regions]
        return parts

    async def _site_kpis(self, site_id: str, rng: common_pb2.TimeRange) -> kpi_pb2.SiteKpis | None:
        try:
            return (await self.kpi.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=site_id, range=rng))).kpis
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # no figures yet
                return None
            raise

    async def _overridden_site(self, site_id: str, rng: common_pb2.TimeRange
                               ) -> tuple[str, str, domain.EnergyFigures] | None:
        """(site, region, figures) of a site with its own tariff; None when the caller may not see
        it or it has left the register."""
        try:
            site = (await self.sites.GetSite(sites_pb2.GetSiteRequest(site_id=site_id))).site
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                return None
            raise
        k = await self._site_kpis(site_id, rng)
        if k is None:
            return None
        return site.id, site.region, _site_figures(site, k)

    def _finish_energy(self, parts: _EnergyParts, theft: dict[str, tuple[str, float, int]] | None
                       ) -> bi_pb2.EnergyReport:
        """Lines, costs and totals: each site priced with its own tariff, each region line the sum
        of its tariff groups, the total the sum of the regions (docs/bi.md, "Tariffs")."""
        report = bi_pb2.EnergyReport(month=parts.month, range=parts.rng, tariff=self._default_pb(),
                                     theft_known=theft is not None)
        theft = theft or {}

        def tariff_of(site_id: str, region: str) -> domain.Tariff:
            return domain.resolve_tariff(self.tariff, parts.region_ov.get(region), parts.site_ov.get(site_id))

        def with_theft(f: domain.EnergyFigures, site_id: str) -> domain.EnergyFigures:
            if site_id in theft:
                f.suspected_theft_l += theft[site_id][1]
                f.theft_anomalies += theft[site_id][2]
            return f

        used_regions: set[str] = set()
        used_sites: set[str] = set()
        groups: dict[str, list[tuple[domain.EnergyFigures, domain.Tariff]]] = defaultdict(list)
        figures: dict[str, domain.EnergyFigures] = defaultdict(domain.EnergyFigures)
        if parts.sites:  # per-site lines: each with its tariff; its region's line sums them
            for sid, region, f in parts.sites:
                with_theft(f, sid)
                t = tariff_of(sid, region)
                report.sites.append(self._energy_line(sid, region, f, domain.energy_cost(f, t)))
                groups[region].append((f, t))
                figures[region].add(f)
                used_regions.add(region)
                if sid in parts.site_ov:
                    used_sites.add(sid)
        else:  # the fleet from region totals, less the sites with their own prices, priced apart
            apart: dict[str, list[tuple[str, domain.EnergyFigures]]] = defaultdict(list)
            for sid, region, f in parts.overridden:
                apart[region].append((sid, f))
            region_theft: dict[str, domain.EnergyFigures] = defaultdict(domain.EnergyFigures)
            for sid, (region, litres, n) in theft.items():
                if sid not in parts.site_ov:
                    region_theft[region].suspected_theft_l += litres
                    region_theft[region].theft_anomalies += n
            for region, total in parts.regions.items():
                rest = domain.EnergyFigures()
                rest.add(total)
                rest.add(region_theft.get(region, domain.EnergyFigures()))
                for sid, f in apart.get(region, ()):
                    rest.add(f, -1)
                    with_theft(f, sid)
                    groups[region].append((f, tariff_of(sid, region)))
                    used_sites.add(sid)
                groups[region].append((rest, tariff_of("", region)))
                used_regions.add(region)
                for f, _ in groups[region]:
                    figures[region].add(f)
        total = domain.EnergyFigures()
        total_cost = domain.EnergyCost()
        for region in sorted(groups):
            cost = domain.priced(domain.group_by_tariff(groups[region]))
            report.regions.append(self._energy_line(region, region, figures[region], cost))
            total.add(figures[region])
            total_cost = total_cost + cost
        report.total.CopyFrom(self._energy_line("total", "", total, total_cost))
        for r in parts.rows:
            if (r["scope"] == "region" and r["name"] in used_regions) or (r["scope"] == "site" and r["name"] in used_sites):
                report.tariff_overrides.append(_override_pb(r))
        return report

    async def _sites(self, site_id: str, region: str) -> list[sites_pb2.Site]:
        if site_id:
            resp = await _upstream("site", site_id, self.sites.GetSite(sites_pb2.GetSiteRequest(site_id=site_id)))
            if region and resp.site.region != region:
                return []
            return [resp.site]
        out: list[sites_pb2.Site] = []
        token = ""
        while True:
            resp = await _upstream("region", region, self.sites.ListSites(sites_pb2.ListSitesRequest(
                region=region, page=common_pb2.PageRequest(size=PAGE, token=token))))
            out.extend(resp.sites)
            token = resp.page.next_token
            if not token:
                return sorted(out, key=lambda s: s.id)

    @staticmethod
    def _energy_line(key: str, region: str, f: domain.EnergyFigures, c: domain.EnergyCost) -> bi_pb2.EnergyLine:
        return bi_pb2.EnergyLine(
            key=key, region=region, sites=f.sites, energy_grid_kwh=f.energy_grid_kwh, energy_dg_kwh=f.energy_dg_kwh,
            energy_battery_kwh=f.energy_battery_kwh, dg_run_hours=f.dg_run_hours, dg_starts=f.dg_starts,
            fuel_consumed_l=f.fuel_consumed_l, fuel_expected_l=f.fuel_expected_l, fuel_excess_l=c.fuel_excess_l,
            fuel_drop_dg_off_l=f.fuel_drop_dg_off_l, refuel_l=f.refuel_l, refuels=f.refuels,
            grid_cost_minor=c.grid_cost_minor, fuel_cost_minor=c.fuel_cost_minor, cost_minor=c.cost_minor,
            carbon_kg_co2e=c.carbon_kg_co2e, solar_kwp=f.solar_kwp, suspected_theft_l=f.suspected_theft_l,
            theft_anomalies=f.theft_anomalies, theft_cost_minor=c.theft_cost_minor)


@dataclass
class _EnergyParts:
    """What an energy report is made of before pricing."""

    month: str
    rng: common_pb2.TimeRange
    region_ov: dict[str, domain.TariffOverride]
    site_ov: dict[str, domain.TariffOverride]
    rows: list[asyncpg.Record]
    sites: list[tuple[str, str, domain.EnergyFigures]] = field(default_factory=list)  # per-site request
    regions: dict[str, domain.EnergyFigures] = field(default_factory=dict)  # fleet request: region totals
    overridden: list[tuple[str, str, domain.EnergyFigures]] = field(default_factory=list)  # fleet: own prices


def _override(r: asyncpg.Record) -> domain.TariffOverride:
    return domain.TariffOverride(r["grid_price_minor_per_kwh"], r["fuel_price_minor_per_l"], r["grid_kg_co2e_per_kwh"])


def _override_of(t: bi_pb2.EnergyTariffOverride) -> domain.TariffOverride:
    def opt(name: str) -> float | None:
        return getattr(t, name) if t.HasField(name) else None
    return domain.TariffOverride(opt("grid_price_minor_per_kwh"), opt("fuel_price_minor_per_l"),
                                 opt("grid_kg_co2e_per_kwh"))


def _override_pb(r: asyncpg.Record) -> bi_pb2.EnergyTariffOverride:
    o = bi_pb2.EnergyTariffOverride(region=r["name"] if r["scope"] == "region" else "",
                                    site_id=r["name"] if r["scope"] == "site" else "",
                                    description=r["description"], updated_by=r["updated_by"])
    for name in ("grid_price_minor_per_kwh", "fuel_price_minor_per_l", "grid_kg_co2e_per_kwh"):
        if r[name] is not None:
            setattr(o, name, r[name])
    o.update_time.FromDatetime(r["update_time"])
    return o


def _tariff_pb(t: domain.Tariff) -> bi_pb2.EnergyTariff:
    return bi_pb2.EnergyTariff(
        grid_price_minor_per_kwh=t.grid_price_minor_per_kwh, fuel_price_minor_per_l=t.fuel_price_minor_per_l,
        currency_code=t.currency_code, grid_kg_co2e_per_kwh=t.grid_kg_co2e_per_kwh,
        diesel_kg_co2e_per_l=t.diesel_kg_co2e_per_l)


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


# --------------------------------------------------------------------------- exports


def _day(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M")


def _major(minor: int, currency: str) -> str:
    return f"{currency} {minor / 100:,.2f}"


STATEMENT_COLUMNS = (
    "site_id", "region", "tenancy_id", "measured_from", "measured_to", "sla_target", "availability", "defined",
    "sla_met", "shortfall_points", "period_minutes", "outage_minutes", "excluded_minutes", "unknown_minutes",
    "outage_intervals", "currency", "monthly_fee_minor", "prorated_fee_minor", "band", "band_percent",
    "band_penalty_minor", "incidents", "incident_penalty_minor", "capped", "penalty_minor")
STATEMENT_PDF_COLUMNS = tuple(STATEMENT_COLUMNS.index(c) for c in (
    "site_id", "region", "measured_from", "sla_target", "availability", "shortfall_points", "outage_minutes",
    "excluded_minutes", "currency", "prorated_fee_minor", "band", "band_penalty_minor", "incidents",
    "incident_penalty_minor", "capped", "penalty_minor"))


NOC_COLUMNS = ("noc_known", "noc_incidents", "noc_acknowledged", "noc_resolved", "noc_mtta_seconds",
               "noc_mttr_seconds")


def noc_row(n: bi_pb2.NocSummary) -> tuple:
    """The statement's NOC figures as one row; empty cells when the NOC did not answer."""
    if not n.known:
        return (False, "", "", "", "", "")
    return (True, n.incidents, n.acknowledged, n.resolved, n.mtta_seconds, n.mttr_seconds)


def _duration(s: float) -> str:
    m = round(s / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def statement_report(st: bi_pb2.SlaStatement) -> exports.Report:
    """The statement as tables: every number exactly as the API gives it (fees in minor units)."""
    rows = []
    evidence = []
    for x in st.tenancies:
        a = x.breakdown
        rows.append((
            x.site_id, x.region, x.tenancy_id, _day(x.measured_range.start_time), _day(x.measured_range.end_time),
            x.sla_target, x.availability, x.defined, x.sla_met, x.shortfall_points, a.period_minutes,
            a.outage.total, a.excluded.total, a.unknown_minutes, len(x.outages), x.currency_code,
            x.monthly_fee_minor, x.prorated_fee_minor, x.band, x.band_percent, x.band_penalty_minor, x.incidents,
            x.incident_penalty_minor, x.capped, x.penalty_minor))
        for o in x.outages:
            evidence.append((x.site_id, _day(o.start_time), _day(o.end_time),
                             kpi_pb2.OutageCause.Name(o.cause).removeprefix("OUTAGE_CAUSE_"), o.minutes))
    status = bi_pb2.StatementStatus.Name(st.status).removeprefix("STATEMENT_STATUS_").lower()
    facts = [("Tenant", st.tenant_id), ("Month", st.month), ("Status", status),
             ("Penalty rules", f"version {st.rule_set_version}" if st.rule_set_version else "none"),
             ("Tenancies", str(len(st.tenancies))), ("Below target", str(st.tenancies_below_sla))]
    for t in st.totals:
        facts.append((f"Fees ({t.currency_code})", _major(t.fee_minor, t.currency_code)))
        facts.append((f"Total penalty ({t.currency_code})", _major(t.penalty_minor, t.currency_code)))
    facts.append(("Computed", st.compute_time.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")))
    if st.HasField("close_time"):
        facts.append(("Closed", f"{st.close_time.ToDatetime():%Y-%m-%d %H:%M UTC} by {st.closed_by}"))
    n = st.noc
    facts.append(("NOC incidents", str(n.incidents) if n.known else "unknown (NOC not answering)"))
    if n.known:
        facts.append(("NOC MTTA / MTTR", f"{_duration(n.mtta_seconds)} / {_duration(n.mttr_seconds)}"))
    extra = [exports.Section("Outage evidence", ("site_id", "start", "end", "cause", "minutes"), evidence,
                             pdf_max_rows=PDF_EVIDENCE_ROWS),
             exports.Section("Totals", ("currency", "fee_minor", "penalty_minor"),
                             [(t.currency_code, t.fee_minor, t.penalty_minor) for t in st.totals]),
             exports.Section("NOC", NOC_COLUMNS, [noc_row(n)])]
    if st.adjustments:
        extra.append(exports.Section(
            "Adjustments since closing", ("site_id", "reason", "availability_delta", "penalty_delta_minor", "currency"),
            [(a.site_id, a.reason, a.availability_delta, a.penalty_delta_minor, a.currency_code)
             for a in st.adjustments]))
    lowest = sorted((x for x in st.tenancies if x.defined), key=lambda x: x.availability)[:CHART_BARS]
    chart = exports.Chart(
        title="Availability by tenancy, % (the lowest first; dashed: the lowest target)",
        labels=[x.site_id for x in lowest], values=[x.availability * 100 for x in lowest],
        reference=min((x.sla_target for x in st.tenancies), default=0) * 100 or None)
    return exports.Report(
        title=f"SLA statement: {st.tenant_id}, {st.month}", facts=facts,
        main=exports.Section("Tenancies", STATEMENT_COLUMNS, rows, pdf_columns=STATEMENT_PDF_COLUMNS),
        extra=extra, chart=chart,
        note="Availability = (T − outage − excluded) / (T − excluded) over each tenancy's measured span; "
             "fees and penalties in minor currency units; formulas in docs/bi.md.")


ENERGY_COLUMNS = (
    "key", "region", "sites", "energy_grid_kwh", "energy_dg_kwh", "energy_battery_kwh", "dg_run_hours", "dg_starts",
    "fuel_consumed_l", "fuel_expected_l", "fuel_excess_l", "fuel_drop_dg_off_l", "refuel_l", "refuels",
    "grid_cost_minor", "fuel_cost_minor", "cost_minor", "carbon_kg_co2e", "solar_kwp")


def _energy_row(x: bi_pb2.EnergyLine) -> tuple:
    return tuple(getattr(x, c) for c in ENERGY_COLUMNS)


def energy_report(rep: bi_pb2.EnergyReport) -> exports.Report:
    t = rep.tariff
    lines = list(rep.sites) or list(rep.regions)
    main = exports.Section("Sites" if rep.sites else "Regions", ENERGY_COLUMNS, [_energy_row(x) for x in lines])
    extra = [exports.Section("Regions", ENERGY_COLUMNS, [_energy_row(x) for x in rep.regions])] if rep.sites else []
    extra.append(exports.Section("Total", ENERGY_COLUMNS, [_energy_row(rep.total)]))
    top = sorted(lines, key=lambda x: -x.cost_minor)[:CHART_BARS]
    facts = [("Month", rep.month), ("Sites", str(rep.total.sites)),
             ("Cost", _major(rep.total.cost_minor, t.currency_code)),
             ("Carbon", f"{rep.total.carbon_kg_co2e:,.1f} kg CO2e"),
             ("Grid tariff", f"{t.grid_price_minor_per_kwh:g} minor/kWh"),
             ("Fuel price", f"{t.fuel_price_minor_per_l:g} minor/l"),
             ("Factors", f"grid {t.grid_kg_co2e_per_kwh:g} kg/kWh, diesel {t.diesel_kg_co2e_per_l:g} kg/l")]
    total_cost = max(1, max((x.cost_minor for x in top), default=1))
    chart = exports.Chart(title="Cost, % of the most expensive line", labels=[x.key for x in top],
                          values=[100.0 * x.cost_minor / total_cost for x in top])
    return exports.Report(title=f"Energy and fuel: {rep.month}", facts=facts, main=main, extra=extra, chart=chart)
