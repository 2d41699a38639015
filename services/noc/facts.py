"""What the NOC needs to know of a site, from the services that own it: the Sites register
(region, tenancies with their SLA targets, calendar windows) and the KPI service (each
tenancy's availability so far this month, for the SLA exposure of an impact).

SiteFacts: the whole register is listed at start (ListSites, ListTenancies, ListWindows with the
NOC's service token), kept fresh from towerco.sites.> events (a change drops the site's entry;
the next use fetches it again with GetSite + ListTenancies + ListWindows) and re-listed every
TOWERCO_NOC_FACTS_REFRESH_S. An unknown site is looked up once; a miss is remembered briefly.

SlaCache: asking the KPI service for every alarm would cost a call per alarm, so the month-to-
date availability is cached per tenant for TOWERCO_NOC_SLA_TTL_S (300 s): one
GetTenantAvailability per tenant and TTL gives every tenancy of that tenant. An impact's
`availability_percent` and `budget_remaining_minutes` are therefore up to the TTL old. When the
KPI service cannot answer, the exposure is "unknown" (availability 0, the whole month's budget)
for a short negative TTL, and correlation goes on. Only a tenant never asked before waits for the
KPI service: an expired entry is served while it is refreshed in the background, and every
tenant of the register is asked for at start (`warm`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC

import grpc
from google.protobuf import timestamp_pb2
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2
from towerco.sites.v1 import sites_pb2

from sdk import Client
from services.noc import domain

log = logging.getLogger("towerco.noc.facts")
NEGATIVE_TTL_S = 10.0


def facts_from(site: sites_pb2.Site, tenancies: Iterable[sites_pb2.Tenancy],
               windows: Iterable[sites_pb2.CalendarWindow]) -> domain.SiteFacts:
    return domain.SiteFacts(
        site_id=site.id, region=site.region,
        tenancies=tuple(sorted((domain.Tenancy(t.id, t.tenant_id, t.sla_availability_target) for t in tenancies),
                               key=lambda x: (x.tenant_id, x.tenancy_id))),
        windows=tuple(sorted((w.start_time.ToDatetime(tzinfo=UTC).timestamp(),
                              w.end_time.ToDatetime(tzinfo=UTC).timestamp()) for w in windows)))


class SiteFactsCache:
    def __init__(self, client: Client, *, refresh_s: float = 600.0) -> None:
        self.client = client
        self.refresh_s = refresh_s
        self.facts: dict[str, domain.SiteFacts] = {}
        self._misses: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self.loaded = asyncio.Event()

    async def load_all(self) -> None:
        sites = [s async for s in self.client.sites.list_all(sites_pb2.ListSitesRequest(), page_size=1000,
                                                             timeout=30)]
        tenancies: dict[str, list[sites_pb2.Tenancy]] = {}
        async for t in self.client.sites.list_all(sites_pb2.ListTenanciesRequest(), page_size=1000, timeout=30):
            tenancies.setdefault(t.site_id, []).append(t)
        windows: dict[str, list[sites_pb2.CalendarWindow]] = {}
        async for w in self.client.sites.list_all(sites_pb2.ListWindowsRequest(), page_size=1000, timeout=30):
            windows.setdefault(w.site_id, []).append(w)
        self.facts = {s.id: facts_from(s, tenancies.get(s.id, ()), windows.get(s.id, ())) for s in sites}
        self._misses.clear()
        self.loaded.set()
        log.info("noc site facts loaded: %d sites", len(self.facts))

    async def fetch(self, site_id: str) -> domain.SiteFacts | None:
        try:
            site = (await self.client.sites.GetSite(sites_pb2.GetSiteRequest(site_id=site_id), timeout=10)).site
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise
        tenancies = [t async for t in self.client.sites.list_all(
            sites_pb2.ListTenanciesRequest(site_id=site_id), page_size=1000, timeout=10)]
        windows = [w async for w in self.client.sites.list_all(
            sites_pb2.ListWindowsRequest(site_id=site_id), page_size=1000, timeout=10)]
        return facts_from(site, tenancies, windows)

    async def get_many(self, site_ids: Iterable[str]) -> dict[str, domain.SiteFacts]:
        """The facts of these sites (unknown sites are left out). Raises when Sites cannot answer
        for a site the cache does not hold."""
        now = time.monotonic()
        out: dict[str, domain.SiteFacts] = {}
        todo: list[str] = []
        for sid in set(site_ids):
            hit = self.facts.get(sid)
            if hit is not None:
                out[sid] = hit
            elif self._misses.get(sid, 0.0) <= now:
                todo.append(sid)
        if todo:
            sem = asyncio.Semaphore(16)

            async def one(sid: str) -> domain.SiteFacts | None:
                async with sem:
                    return await self.fetch(sid)

            for sid, got in zip(todo, await asyncio.gather(*(one(s) for s in todo)), strict=True):
                if got is None:
                    self._misses[sid] = now + NEGATIVE_TTL_S
                else:
                    self.facts[sid] = got
                    out[sid] = got
        return out

    async def get(self, site_id: str) -> domain.SiteFacts | None:
        return (await self.get_many([site_id])).get(site_id)

    def invalidate(self, change: sites_pb2.SitesChange) -> None:
        """A register change: forget the site it concerns (fetched again on its next use)."""
        which = change.WhichOneof("entity")
        sid = ""
        if which == "site":
            sid = change.site.id
        elif which == "tenancy":
            sid = change.tenancy.site_id
        elif which == "window":
            sid = change.window.site_id
        if sid:
            self.facts.pop(sid, None)
            self._misses.pop(sid, None)

    async def keep_fresh(self) -> None:
        """Load now (retrying while Sites is down), then re-list every refresh_s."""
        delay = 0.5
        while True:
            try:
                await self.load_all()
                delay = 0.5
                await asyncio.sleep(self.refresh_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Sites down: keep what we have, try again
                log.warning("noc: cannot list the register (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


Fetcher = Callable[[str, float], Awaitable[dict[str, domain.Sla]]]


def kpi_fetcher(client: Client) -> Fetcher:
    """GetTenantAvailability of a tenant, month to date: tenancy id -> Sla (by site + tenant)."""

    async def fetch(tenant_id: str, now: float) -> dict[str, domain.Sla]:
        start = domain.month_start(now)
        end = max(start + 60, now // 60 * 60)
        req = kpi_pb2.GetTenantAvailabilityRequest(tenant_id=tenant_id, skip_outages=True, range=common_pb2.TimeRange(
            start_time=timestamp_pb2.Timestamp(seconds=int(start)), end_time=timestamp_pb2.Timestamp(seconds=int(end))))
        out: dict[str, domain.Sla] = {}
        token = ""
        while True:
            req.page.token = token
            resp = await client.kpi.GetTenantAvailability(req, timeout=10)
            for t in resp.tenancies:
                a = t.availability
                out[f"{t.site_id}/{t.tenant_id}"] = domain.Sla(a.availability, int(a.period_minutes), bool(a.defined))
            token = resp.page.next_token
            if not token:
                return out

    return fetch


class SlaCache:
    """Month-to-date availability per tenancy, cached per tenant (see the module doc).

    Only a tenant never asked before waits for the KPI service on the correlation path; an
    expired entry (answer or "unknown") is served as it is while one refresh per tenant runs in
    the background, so a TTL expiry never holds an alarm up. `warm` asks for every tenant of
    the register at start, before the first alarm needs it."""

    def __init__(self, fetch: Fetcher | None, *, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.clock = clock
        self._by_tenant: dict[str, tuple[float, dict[str, domain.Sla]]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def _load(self, tenants: Iterable[str]) -> None:
        if self.fetch is None:
            return
        todo = list(tenants)
        now = self.clock()
        fetch = self.fetch
        results = await asyncio.gather(*(fetch(t, now) for t in todo), return_exceptions=True)
        for tenant, res in zip(todo, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("noc: no availability for %s (%s); exposure unknown", tenant, res)
                self._by_tenant[tenant] = (now + NEGATIVE_TTL_S, {})
            else:
                self._by_tenant[tenant] = (now + self.ttl_s, res)

    def _refresh(self, tenant: str) -> None:
        if tenant in self._refreshing:
            return
        task = asyncio.get_running_loop().create_task(self._load([tenant]), name=f"noc-sla-{tenant}")
        self._refreshing[tenant] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(tenant, None))

    async def warm(self, facts: Iterable[domain.SiteFacts]) -> None:
        """Ask for every tenant of these sites not cached yet (the register, at start)."""
        tenants = {t.tenant_id for f in facts for t in f.tenancies}
        await self._load(sorted(t for t in tenants if t not in self._by_tenant))

    async def for_sites(self, facts: Iterable[domain.SiteFacts]) -> dict[str, domain.Sla]:
        """tenancy id -> Sla for every tenancy of these sites (unknown ones left out)."""
        facts = list(facts)
        tenants = {t.tenant_id for f in facts for t in f.tenancies}
        if self.fetch is not None:
            now = self.clock()
            missing = sorted(t for t in tenants if t not in self._by_tenant)
            for t in sorted(tenants):
                if t in self._by_tenant and self._by_tenant[t][0] <= now:
                    self._refresh(t)  # stale: served as it is, refreshed in the background
            if missing:
                await self._load(missing)
        out: dict[str, domain.Sla] = {}
        for f in facts:
            for ten in f.tenancies:
                hit = self._by_tenant.get(ten.tenant_id, (0.0, {}))[1].get(f"{f.site_id}/{ten.tenant_id}")
                if hit is not None:
                    out[ten.tenancy_id] = hit
        return out
