"""KpiService handlers: check the caller and the request, read the kpi schema (store), compute the
figures (domain), map them to protobuf."""

from __future__ import annotations

import base64
import binascii
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh import outbox, subjects
from mesh.auth import Identity, can_see, require_role, tenant_scope
from mesh.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from services.kpi import domain, store

SCHEMA = "kpi"
POLICY_SUBJECT = subjects.KPI_POLICY_UPDATED
READ_ROLES = ("viewer", "tenant_viewer")
DEFAULT_PAGE = 1000
DEFAULT_WORST = 10


# --------------------------------------------------------------------------- request helpers


def _minute_range(rng: common_pb2.TimeRange, *, unit_min: int = 1, field: str = "range") -> tuple[int, int]:
    problems: list[FieldViolation] = []
    if not rng.HasField("start_time"):
        problems.append(FieldViolation(f"{field}.start_time", "is required"))
    if not rng.HasField("end_time"):
        problems.append(FieldViolation(f"{field}.end_time", "is required"))
    if problems:
        raise InvalidArgument("invalid time range", problems)
    start, end = rng.start_time.seconds, rng.end_time.seconds
    issues = domain.check_range(start, end, unit_min=unit_min)
    if rng.start_time.nanos or rng.end_time.nanos:
        issues.append("must fall on whole minutes")
    if issues:
        raise InvalidArgument("invalid time range", [FieldViolation(field, p) for p in issues])
    return start // 60, end // 60


def _reader() -> Identity:
    return require_role(*READ_ROLES)


_scope = tenant_scope  # the tenant a query is limited to (None: staff asking about everyone)


def _ts(minute: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=minute * 60)


def _time_range(lo: int, hi: int) -> common_pb2.TimeRange:
    return common_pb2.TimeRange(start_time=_ts(lo), end_time=_ts(hi))


def _encode_token(site_id: str) -> str:
    return base64.urlsafe_b64encode(b"s:" + site_id.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("invalid page token", [FieldViolation("page.token", "is not a token of this list")]) from exc
    if not raw.startswith(b"s:"):
        raise InvalidArgument("invalid page token", [FieldViolation("page.token", "is not a token of this list")])
    return raw[2:].decode(errors="replace")


def fill_availability(a: kpi_pb2.Availability, f: domain.AvailabilityFigures) -> None:
    """`availability_pb` written into an existing message (a page's 1,000 tenancies are not built
    apart and copied in)."""
    a.availability, a.defined, a.unknown_policy = f.availability, f.defined, f.unknown_policy
    a.min_outage_minutes, a.period_minutes, a.up_minutes = f.min_outage_minutes, f.period_minutes, f.up_minutes
    a.unknown_minutes, a.sla_target, a.sla_met = f.unknown_minutes, f.sla_target, f.sla_met
    o = a.outage
    o.total, o.dc_low, o.dc_high, o.link_down = f.outage_total, f.outage_dc_low, f.outage_dc_high, f.outage_link_down
    o.ignored_short, o.unknown_as_down = f.outage_ignored_short, f.outage_unknown_as_down
    e = a.excluded
    e.total, e.planned_maintenance, e.force_majeure = (f.excluded_total, f.excluded_planned_maintenance,
                                                       f.excluded_force_majeure)
    e.tenant_caused, e.access_denied, e.unknown = (f.excluded_tenant_caused, f.excluded_access_denied,
                                                   f.excluded_unknown)


def availability_pb(f: domain.AvailabilityFigures) -> kpi_pb2.Availability:
    return kpi_pb2.Availability(
        availability=f.availability, defined=f.defined, unknown_policy=f.unknown_policy,
        min_outage_minutes=f.min_outage_minutes, period_minutes=f.period_minutes, up_minutes=f.up_minutes,
        unknown_minutes=f.unknown_minutes,
        outage=kpi_pb2.OutageMinutes(
            total=f.outage_total, dc_low=f.outage_dc_low, dc_high=f.outage_dc_high,
            link_down=f.outage_link_down, ignored_short=f.outage_ignored_short,
            unknown_as_down=f.outage_unknown_as_down),
        excluded=kpi_pb2.ExcludedMinutes(
            total=f.excluded_total, planned_maintenance=f.excluded_planned_maintenance,
            force_majeure=f.excluded_force_majeure, tenant_caused=f.excluded_tenant_caused,
            access_denied=f.excluded_access_denied, unknown=f.excluded_unknown),
        sla_target=f.sla_target, sla_met=f.sla_met)


def intervals_pb(ivs: Iterable[domain.Interval]) -> list[kpi_pb2.OutageInterval]:
    return [kpi_pb2.OutageInterval(start_time=_ts(i.start), end_time=_ts(i.end), cause=i.cause, minutes=i.minutes)
            for i in ivs]


def policy_pb(tenant_id: str, row: asyncpg.Record | None) -> kpi_pb2.AvailabilityPolicy:
    p = kpi_pb2.AvailabilityPolicy(tenant_id=tenant_id, unknown_policy=kpi_pb2.UNKNOWN_POLICY_EXCLUDED)
    if row is not None:
        p.unknown_policy = row["unknown_policy"]
        p.min_outage_minutes = row["min_outage_minutes"]
        p.update_time.FromDatetime(row["update_time"])
    return p


# --------------------------------------------------------------------------- shared computations


async def tenancy_counts(conn: asyncpg.Connection, *, lo: int, hi: int, tenant_id: str | None,
                         site_ids: Sequence[str] | None = None) -> dict[tuple[str, str], Counter[str]]:
    """Minute-code counts of every tenancy in [lo, hi): whole hours summed in SQL, edges sliced."""
    first, last = domain.split_edges(lo, hi)
    d1, d2 = domain.split_days(first, last)
    rows = await store.tenancy_day_sums(conn, first_day=d1, last_day=d2, tenant_id=tenant_id, site_ids=site_ids)
    for a, b in ((first, d1), (d2, last)) if d2 > d1 else ((first, last),):
        rows += await store.tenancy_sums(conn, first_hour=a, last_hour=b, tenant_id=tenant_id, site_ids=site_ids)
    # summed as plain lists, one Counter per tenancy at the end (a month of a large tenant is
    # thousands of rows: a Counter per row and Counter.update were most of the call)
    sums: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        key, values = store.counts_row(r)
        cur = sums.get(key)
        if cur is None:
            sums[key] = values
        else:
            for i, v in enumerate(values):
                cur[i] += v
    codes = store.CODES
    out: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for key, values in sums.items():
        out[key] = Counter({c: v for c, v in zip(codes, values, strict=True) if v})
    edges = domain.edge_hours(lo, hi, first, last)
    for r in await store.tenancy_maps(conn, hours=edges, tenant_id=tenant_id, site_ids=site_ids):
        out[(r["tenant_id"], r["site_id"])].update(
            domain.slice_map(store.minute_index(r["hour"]), r["minutes"], lo, hi))
    return out


async def resolved_policies(conn: asyncpg.Connection, tenant_ids: Iterable[str], override: int
                            ) -> dict[str, tuple[int, int]]:
    """tenant -> (unknown policy, min outage minutes), the request's override winning."""
    ids = sorted(set(tenant_ids))
    rows = await store.policies(conn, tenant_ids=ids)
    return {t: domain.resolve_policy((rows[t]["unknown_policy"], rows[t]["min_outage_minutes"]) if t in rows else None,
                                     override) for t in ids}


async def tenancy_figures(conn: asyncpg.Connection, tenancies: Sequence[asyncpg.Record], *, lo: int, hi: int,
                          tenant_id: str | None, override: int, site_ids: Sequence[str] | None = None
                          ) -> dict[tuple[str, str], domain.AvailabilityFigures]:
    counts = await tenancy_counts(conn, lo=lo, hi=hi, tenant_id=tenant_id, site_ids=site_ids)
    return await figures_of(conn, tenancies, counts, lo=lo, hi=hi, override=override)


async def tenancies_and_figures(conn: asyncpg.Connection, *, lo: int, hi: int, tenant_id: str | None, override: int
                                ) -> tuple[list[Mapping[str, Any]], dict[tuple[str, str], domain.AvailabilityFigures]]:
    """`store.tenancies` and `tenancy_figures` of [lo, hi) in one pass over the figures: the
    register's tenancies, plus those that have figures in the range but have left the register
    (found among the counts' keys instead of by a second scan of the month's daily rows; SLA
    target 0, as store.tenancies gives them), ordered by site then tenant."""
    register = list(await store.register_tenancies(conn, tenant_id=tenant_id))
    counts = await tenancy_counts(conn, lo=lo, hi=hi, tenant_id=tenant_id)
    known = {(r["tenant_id"], r["site_id"]) for r in register}
    gone = [k for k in counts if k not in known]
    tenancies: list[Mapping[str, Any]] = register
    if gone:
        regions = await store.site_regions(conn, site_ids=sorted({s for _, s in gone}))
        tenancies = sorted([*register, *({"site_id": s, "tenant_id": t, "sla_target": 0.0,
                                          "region": regions.get(s, "")} for t, s in gone)],
                           key=lambda r: (r["site_id"], r["tenant_id"]))
    return tenancies, await figures_of(conn, tenancies, counts, lo=lo, hi=hi, override=override)


async def figures_of(conn: asyncpg.Connection, tenancies: Sequence[Mapping[str, Any]],
                     counts: Mapping[tuple[str, str], Counter[str]], *, lo: int, hi: int, override: int
                     ) -> dict[tuple[str, str], domain.AvailabilityFigures]:
    pols = await resolved_policies(conn, (t["tenant_id"] for t in tenancies), override)
    out = {}
    for t in tenancies:
        key = (t["tenant_id"], t["site_id"])
        pol, minimum = pols[t["tenant_id"]]
        out[key] = domain.availability(counts.get(key, Counter()), hi - lo, policy=pol,
                                       min_outage_minutes=minimum, sla_target=float(t["sla_target"]))
    return out


async def site_totals(conn: asyncpg.Connection, *, lo: int, hi: int, site_ids: Sequence[str] | None
                      ) -> dict[str, domain.SiteTotals]:
    """Per site: minute-exact map counts; additive figures of the hours starting in [lo, hi).
    Whole UTC days come from the daily rollup (kpi.site_day), the whole hours around them from
    kpi.site_hour's sums, the partial hours at the edges minute by minute."""
    first, last = domain.split_edges(lo, hi)
    d1, d2 = domain.split_days(first, last)
    out: dict[str, domain.SiteTotals] = defaultdict(domain.SiteTotals)
    rows = await store.site_day_sums(conn, first_day=d1, last_day=d2, site_ids=site_ids)
    for a, b in ((first, d1), (d2, last)) if d2 > d1 else ((first, last),):
        rows += await store.site_sums(conn, first_hour=a, last_hour=b, site_ids=site_ids)
    for r in rows:
        add_site_counts(out[r["site_id"]], r)
    for r in await store.site_edge_rows(conn, hours=domain.edge_hours(lo, hi, first, last), site_ids=site_ids):
        add_site_row(out[r["site_id"]], r, lo, hi)
    return out


def add_site_counts(t: domain.SiteTotals, r: asyncpg.Record) -> None:
    """Add a whole hour (or a sum of whole hours) from its count columns."""
    t.power_known += int(r["power_known"])
    t.power_ok += int(r["power_ok"])
    t.grid_known += int(r["grid_known"])
    t.grid_present += int(r["grid_present"])
    t.dg_run_minutes += int(r["dg_run_minutes"])
    t.add_numbers(r)


def add_site_row(t: domain.SiteTotals, r: asyncpg.Record, lo: int, hi: int) -> None:
    h = store.minute_index(r["hour"])
    t.add_maps(domain.slice_map(h, r["grid_map"], lo, hi), domain.slice_map(h, r["power_map"], lo, hi),
               domain.slice_map(h, r["dg_map"], lo, hi))
    if lo <= h < hi:
        t.add_numbers(r)


# --------------------------------------------------------------------------- the servicer


class KpiServicer(kpi_pb2_grpc.KpiServiceServicer):
    def __init__(self, pool: asyncpg.Pool, sites: sites_pb2_grpc.SitesServiceStub | None = None) -> None:
        self.pool = pool
        self.sites = sites  # the tenant register is the Sites service's: asked, never read
        self.snapshots = domain.Snapshots()  # GetTenantAvailability's figures for its next pages

    async def GetSiteKpis(self, request, context):
        identity = _reader()
        lo, hi = _minute_range(request.range)
        tenant = _scope(identity)
        async with self.pool.acquire() as conn:
            site = await store.site(conn, site_id=request.site_id)
            tenancies = await store.tenancies(conn, lo=lo, hi=hi, site_id=request.site_id, tenant_id=tenant)
            if (site is None and not await store.site_has_data(conn, site_id=request.site_id)) or (
                    tenant is not None and not tenancies):
                raise NotFound(f"site {request.site_id} not found", "site", request.site_id)
            rows = await store.site_hours(conn, site_id=request.site_id, lo=lo, hi=hi)
            figs = await tenancy_figures(conn, tenancies, lo=lo, hi=hi, tenant_id=tenant,
                                         override=request.unknown_policy, site_ids=[request.site_id])
            maps = await store.tenancy_hour_rows(conn, site_id=request.site_id, tenant_id=tenant, lo=lo, hi=hi)
        totals = domain.SiteTotals()
        for r in rows:
            add_site_row(totals, r, lo, hi)
        region = site["region"] if site else ""
        k = kpi_pb2.SiteKpis(site_id=request.site_id, region=region, range=_time_range(lo, hi),
                             period_minutes=hi - lo)
        _fill_site(k, totals)
        latest = next((r for r in reversed(rows) if r["soc_pct"] is not None and r["soc_time"] is not None
                       and lo * 60 <= r["soc_time"].timestamp() < hi * 60), None)
        if latest is not None:
            k.battery_autonomy_h = domain.battery_autonomy_h(latest["soc_pct"], latest["load_a"],
                                                             float(site["battery_bank_ah"]) if site else 0.0)
            k.battery_autonomy_time.FromDatetime(latest["soc_time"])
        obs = domain.observed_autonomy(
            ((store.minute_index(r["hour"]), r["source_map"], r["power_map"]) for r in rows), lo, hi)
        if obs.start is not None:
            k.observed_autonomy_h = obs.minutes / 60.0
            k.observed_autonomy_lower_bound = obs.lower_bound
            k.last_outage_start_time.CopyFrom(_ts(obs.start))
        by_tenant: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for m in maps:
            by_tenant[m["tenant_id"]].append((store.minute_index(m["hour"]), m["minutes"]))
        for t in tenancies:
            fig = figs[(t["tenant_id"], t["site_id"])]
            k.tenancies.add(site_id=t["site_id"], tenant_id=t["tenant_id"], region=region,
                            availability=availability_pb(fig),
                            outages=intervals_pb(domain.outage_intervals(by_tenant[t["tenant_id"]], lo, hi)))
        return kpi_pb2.GetSiteKpisResponse(kpis=k)

    async def GetKpiSeries(self, request, context):
        identity = _reader()
        lo, hi = _minute_range(request.range, unit_min=60)
        step_s = request.step.seconds
        if step_s <= 0 or step_s % 3600 or request.step.nanos:
            raise InvalidArgument("invalid step", [FieldViolation("step", "must be a whole number of hours")])
        step = step_s // 60
        tenant = _scope(identity)
        kpis = list(dict.fromkeys(request.kpis)) or [k for k in kpi_pb2.Kpi.values() if k]
        async with self.pool.acquire() as conn:
            tenancies = await store.tenancies(conn, lo=lo, hi=hi, site_id=request.site_id, tenant_id=tenant)
            site = await store.site(conn, site_id=request.site_id)
            if (site is None and not await store.site_has_data(conn, site_id=request.site_id)) or (
                    tenant is not None and not tenancies):
                raise NotFound(f"site {request.site_id} not found", "site", request.site_id)
            sums = await store.site_hour_buckets(conn, site_id=request.site_id, lo=lo, hi=hi, step=step)
            counts: dict[tuple[str, int], tuple[int, int, int, int, int]] = {}
            pols = {}
            if kpi_pb2.KPI_TENANT_AVAILABILITY in kpis:
                counts = await store.tenancy_hour_buckets(conn, site_id=request.site_id, tenant_id=tenant,
                                                          lo=lo, hi=hi, step=step)
                pols = await resolved_policies(conn, (t["tenant_id"] for t in tenancies), request.unknown_policy)
        # every series has the same point times and, for sums, the same minutes: built once, copied,
        # then only the values filled in (much cheaper than building each point field by field)
        buckets = domain.series_buckets(lo, hi, step)
        lengths = [min(step, hi - b) for b in buckets]
        template = kpi_pb2.KpiSeries()
        for b, n in zip(buckets, lengths, strict=True):
            point = template.points.add()
            point.time.seconds = b * 60
            point.known_minutes = n
        rows = [sums.get(b) for b in buckets]
        resp = kpi_pb2.GetKpiSeriesResponse()
        for kpi in kpis:
            if kpi == kpi_pb2.KPI_TENANT_AVAILABILITY:
                continue
            series = resp.series.add()
            series.CopyFrom(template)
            series.kpi = kpi
            if kpi in _SERIES_SHARES:  # a share of the known minutes: 1 when none was known
                num, den = _SERIES_SHARES[kpi]
                for p, r in zip(series.points, rows, strict=True):
                    known = (r[den] or 0) if r is not None else 0
                    p.value = (r[num] or 0) / known if known else 1.0
                    p.known_minutes = known
            else:  # a sum over the step (an empty step is 0, the default)
                column, scale = _SERIES_SUMS[kpi]
                points = series.points
                for i, r in enumerate(rows):
                    if r is not None and (v := r[column]):
                        points[i].value = v * scale
        for t in tenancies if kpi_pb2.KPI_TENANT_AVAILABILITY in kpis else ():
            tid = t["tenant_id"]
            pol, _minimum = pols[tid]
            series = resp.series.add()
            series.CopyFrom(template)
            series.kpi = kpi_pb2.KPI_TENANT_AVAILABILITY
            series.tenant_id = tid
            for p, b, n in zip(series.points, buckets, lengths, strict=True):
                p.value, p.known_minutes = domain.availability_value_of_groups(
                    *counts.get((tid, b), _NO_COUNTS), n, pol)
        return resp

    async def GetTenantAvailability(self, request, context):
        identity = _reader()
        lo, hi = _minute_range(request.range)
        tenant = _scope(identity, request.tenant_id)
        size = request.page.size or DEFAULT_PAGE
        after = _decode_token(request.page.token)
        key = (tenant, request.tenant_id, lo, hi, request.unknown_policy)
        now = time.monotonic()
        async with self.pool.acquire() as conn:
            snap = self.snapshots.get(key, now) if after else None  # a continuation: page 1's figures
            if snap is None:
                tenancies, figs = await tenancies_and_figures(conn, lo=lo, hi=hi, tenant_id=tenant,
                                                              override=request.unknown_policy)
                all_figs = list(figs.values())
                rolled = domain.combine(all_figs) if all_figs else domain.availability(Counter(), 0)
                below = sum(1 for f in all_figs if not f.sla_met)
                self.snapshots.put(key, (tenancies, figs, rolled, below), now)
            else:  # the rollup too is page 1's: computed once per snapshot, not once per page
                tenancies, figs, rolled, below = snap
            page = [t for t in tenancies if t["site_id"] > after][:size]
            outages: dict[str, list[tuple[int, str]]] = defaultdict(list)
            if page and not request.skip_outages:
                for m in await store.outage_maps(conn, lo=lo, hi=hi, tenant_id=tenant,
                                                 site_ids=[t["site_id"] for t in page]):
                    outages[m["site_id"]].append((store.minute_index(m["hour"]), m["minutes"]))
        resp = kpi_pb2.GetTenantAvailabilityResponse(
            tenant_id=request.tenant_id, range=_time_range(lo, hi), sites=len(tenancies), sites_below_sla=below)
        resp.availability.CopyFrom(availability_pb(rolled))
        for t in page:
            maps = outages.get(t["site_id"])
            x = resp.tenancies.add(site_id=t["site_id"], tenant_id=t["tenant_id"], region=t["region"])
            fill_availability(x.availability, figs[(t["tenant_id"], t["site_id"])])
            if maps:
                x.outages.extend(intervals_pb(domain.outage_intervals(maps, lo, hi)))
        if len(page) == size and page[-1]["site_id"] != tenancies[-1]["site_id"]:
            resp.page.next_token = _encode_token(page[-1]["site_id"])
        return resp

    async def GetFleetSummary(self, request, context):
        identity = _reader()
        lo, hi = _minute_range(request.range)
        tenant = _scope(identity)
        async with self.pool.acquire() as conn:
            tenancies = await store.tenancies(conn, lo=lo, hi=hi, tenant_id=tenant)
            figs = {} if request.skip_availability else await tenancy_figures(
                conn, tenancies, lo=lo, hi=hi, tenant_id=tenant, override=request.unknown_policy)
            regions = await store.regions(conn)
            site_ids = None if tenant is None else sorted({t["site_id"] for t in tenancies})
            totals = await site_totals(conn, lo=lo, hi=hi, site_ids=site_ids)
        resp = kpi_pb2.GetFleetSummaryResponse(range=_time_range(lo, hi))
        region_sites: dict[str, set[str]] = defaultdict(set)
        for sid in totals:
            region_sites[regions.get(sid, "")].add(sid)
        tenant_sites: dict[str, set[str]] = defaultdict(set)
        region_figs: dict[str, list] = defaultdict(list)
        tenant_figs: dict[str, list] = defaultdict(list)
        for (tid, sid), f in figs.items():
            tenant_sites[tid].add(sid)
            tenant_figs[tid].append(f)
            region_figs[regions.get(sid, "")].append(f)
            region_sites[regions.get(sid, "")].add(sid)
        for key in sorted(region_sites):
            resp.regions.append(_group(key, region_sites[key], region_figs[key], totals))
        for key in sorted(tenant_sites):
            resp.tenants.append(_group(key, tenant_sites[key], tenant_figs[key], totals))
        return resp

    async def ListWorstSites(self, request, context):
        identity = _reader()
        lo, hi = _minute_range(request.range)
        if request.tenant_id and not can_see(identity, [request.tenant_id]):
            return kpi_pb2.ListWorstSitesResponse()  # a list filter on another tenant matches nothing
        tenant = _scope(identity, request.tenant_id)
        limit = request.limit or DEFAULT_WORST
        rank_by = request.rank_by or kpi_pb2.RANK_BY_TENANT_AVAILABILITY
        region = request.region or None
        async with self.pool.acquire() as conn:
            tenancies = await store.tenancies(conn, lo=lo, hi=hi, tenant_id=tenant, region=region)
            regions = await store.regions(conn)
            resp = kpi_pb2.ListWorstSitesResponse()
            if rank_by == kpi_pb2.RANK_BY_TENANT_AVAILABILITY:
                figs = await tenancy_figures(conn, tenancies, lo=lo, hi=hi, tenant_id=tenant,
                                             override=request.unknown_policy)
                ranked = domain.rank(((s, t, f.availability) for (t, s), f in figs.items() if f.defined),
                                     lowest_first=True, limit=limit)
                for i, r in enumerate(ranked, 1):
                    resp.sites.add(rank=i, site_id=r.site_id, region=regions.get(r.site_id, ""),
                                   tenant_id=r.tenant_id, value=r.value,
                                   availability=availability_pb(figs[(r.tenant_id, r.site_id)]))
                return resp
            site_ids = None
            if tenant is not None or region is not None:
                site_ids = sorted({t["site_id"] for t in tenancies})
                if region is not None and tenant is None:
                    site_ids = sorted(set(site_ids) | {s for s, r in regions.items() if r == region})
            totals = await site_totals(conn, lo=lo, hi=hi, site_ids=site_ids)
        if rank_by == kpi_pb2.RANK_BY_POWER_AVAILABILITY:
            entries = [(s, "", t.power_availability) for s, t in totals.items() if t.power_known]
            ranked = domain.rank(entries, lowest_first=True, limit=limit)
        elif rank_by == kpi_pb2.RANK_BY_GRID_AVAILABILITY:
            entries = [(s, "", t.grid_availability) for s, t in totals.items() if t.grid_known]
            ranked = domain.rank(entries, lowest_first=True, limit=limit)
        else:
            entries = [(s, "", float(t.dg_fail_to_start)) for s, t in totals.items() if t.dg_fail_to_start]
            ranked = domain.rank(entries, lowest_first=False, limit=limit)
        for i, r in enumerate(ranked, 1):
            resp.sites.add(rank=i, site_id=r.site_id, region=regions.get(r.site_id, ""), value=r.value)
        return resp

    async def _existing_tenant(self, tenant_id: str) -> None:
        """NotFound unless the tenant exists in the Sites register and the caller may see it.

        Sites owns tenants: it is asked over gRPC with the caller's own token (propagated by the
        sdk channel), so its scoping rule answers for a tenant viewer naming another tenant."""
        if self.sites is None:
            raise Unavailable("the sites service is not configured")
        try:
            await self.sites.GetTenant(sites_pb2.GetTenantRequest(tenant_id=tenant_id), timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"tenant {tenant_id!r} not found", resource_type="towerco.sites.v1.Tenant",
                               resource_name=f"tenants/{tenant_id}") from None
            raise Unavailable("the sites service could not confirm the tenant") from None

    async def GetAvailabilityPolicy(self, request, context):
        identity = _reader()
        _scope(identity, request.tenant_id)
        await self._existing_tenant(request.tenant_id)
        async with self.pool.acquire() as conn:
            rows = await store.policies(conn, tenant_ids=[request.tenant_id])
        return kpi_pb2.GetAvailabilityPolicyResponse(policy=policy_pb(request.tenant_id, rows.get(request.tenant_id)))

    async def UpdateAvailabilityPolicy(self, request, context):
        require_role("admin")
        p = request.policy
        await self._existing_tenant(p.tenant_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.upsert_policy(conn, tenant_id=p.tenant_id,
                                            unknown_policy=p.unknown_policy or domain.EXCLUDED,
                                            min_outage_minutes=p.min_outage_minutes)
            stored = policy_pb(p.tenant_id, row)
            await self._announce(conn, stored)
        return kpi_pb2.UpdateAvailabilityPolicyResponse(policy=stored)

    async def DeleteAvailabilityPolicy(self, request, context):
        require_role("admin")
        await self._existing_tenant(request.tenant_id)
        default = policy_pb(request.tenant_id, None)
        async with self.pool.acquire() as conn, conn.transaction():
            if await store.delete_policy(conn, tenant_id=request.tenant_id):
                await self._announce(conn, default)
        return kpi_pb2.DeleteAvailabilityPolicyResponse(policy=default)

    async def _announce(self, conn: asyncpg.Connection, policy: kpi_pb2.AvailabilityPolicy) -> None:
        await outbox.enqueue(conn, schema=SCHEMA, subject=POLICY_SUBJECT, event_type=POLICY_SUBJECT,
                             source="kpi", payload=kpi_pb2.PolicyUpdated(policy=policy),
                             tenant_ids=[policy.tenant_id])


def _fill_site(k: kpi_pb2.SiteKpis, t: domain.SiteTotals) -> None:
    k.power_availability = t.power_availability
    k.power_known_minutes = t.power_known
    k.power_ok_minutes = t.power_ok
    k.grid_availability = t.grid_availability
    k.grid_known_minutes = t.grid_known
    k.grid_present_minutes = t.grid_present
    k.dg_run_hours = t.dg_run_hours
    k.dg_starts = t.dg_starts
    k.dg_fail_to_start = t.dg_fail_to_start
    k.fuel_consumed_l = t.fuel_consumed_l
    k.fuel_expected_l = t.fuel_expected_l
    k.fuel_drop_dg_off_l = t.fuel_drop_dg_off_l
    k.refuel_l = t.refuel_l
    k.refuels = t.refuels
    k.energy_grid_kwh = t.energy_grid_kwh
    k.energy_dg_kwh = t.energy_dg_kwh
    k.energy_battery_kwh = t.energy_battery_kwh


_SERIES_SHARES = {  # KPI -> (minutes in the state, minutes known)
    kpi_pb2.KPI_POWER_AVAILABILITY: ("power_ok", "power_known"),
    kpi_pb2.KPI_GRID_AVAILABILITY: ("grid_present", "grid_known"),
}
_SERIES_SUMS = {  # KPI -> (summed column, scale)
    kpi_pb2.KPI_DG_RUN_HOURS: ("dg_run_minutes", 1 / 60.0),
    kpi_pb2.KPI_DG_STARTS: ("dg_starts", 1.0),
    kpi_pb2.KPI_FUEL_CONSUMED_L: ("fuel_consumed_l", 1.0),
    kpi_pb2.KPI_FUEL_EXPECTED_L: ("fuel_expected_l", 1.0),
    kpi_pb2.KPI_REFUEL_L: ("refuel_l", 1.0),
    kpi_pb2.KPI_ENERGY_GRID_KWH: ("energy_grid_kwh", 1.0),
    kpi_pb2.KPI_ENERGY_DG_KWH: ("energy_dg_kwh", 1.0),
    kpi_pb2.KPI_ENERGY_BATTERY_KWH: ("energy_battery_kwh", 1.0),
}
_NO_COUNTS = (0, 0, 0, 0, 0)


def _group(key: str, sites: set[str], figs: list, totals: dict[str, domain.SiteTotals]) -> kpi_pb2.GroupSummary:
    t = domain.SiteTotals()
    for sid in sites:
        if sid in totals:
            t.merge(totals[sid])
    g = kpi_pb2.GroupSummary(
        key=key, sites=len(sites), tenancies_below_sla=sum(1 for f in figs if not f.sla_met),
        power_availability=t.power_availability, grid_availability=t.grid_availability,
        dg_run_hours=t.dg_run_hours, dg_fail_to_start=t.dg_fail_to_start, fuel_consumed_l=t.fuel_consumed_l,
        fuel_expected_l=t.fuel_expected_l, energy_grid_kwh=t.energy_grid_kwh, energy_dg_kwh=t.energy_dg_kwh,
        energy_battery_kwh=t.energy_battery_kwh)
    if figs:
        g.availability.CopyFrom(availability_pb(domain.combine(figs)))
    return g
