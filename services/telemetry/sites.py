"""The known-sites cache of the telemetry service.

The Sites service owns the register; telemetry never reads its tables. At start the whole list is
fetched over gRPC (ListSites), then kept fresh from the towerco.sites.* events (a core NATS
subscription on the EVENTS subjects) and re-listed every `refresh_s` to heal anything missed while
disconnected. A site id the cache does not know is looked up once with GetSite before a sample is
refused (so a site created a moment ago is not refused while its event is in flight); misses are
remembered for `negative_ttl_s` so a flood of unknown ids costs one lookup each, not one per sample.

The cache holds plain values; the servicer converts protobuf to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from mesh.subjects import partition_of

log = logging.getLogger("towerco.telemetry.sites")

SiteInfo = tuple[str, frozenset[str]]  # site id, tenant ids on the site
FetchAll = Callable[[], Awaitable[list[SiteInfo]]]
FetchOne = Callable[[str], Awaitable[SiteInfo | None]]


class SiteDirectoryUnavailable(Exception):
    """The register cannot be asked right now (Sites service down)."""


class SiteDirectory:
    def __init__(self, *, partitions: int, fetch_all: FetchAll, fetch_one: FetchOne,
                 refresh_s: float = 300.0, negative_ttl_s: float = 10.0, max_lookups: int = 1000,
                 lookup_concurrency: int = 16) -> None:
        self.partitions_count = partitions
        self.partitions: dict[str, int] = {}  # site id -> partition: the hot-path lookup
        self.tenants: dict[str, frozenset[str]] = {}
        self._fetch_all = fetch_all
        self._fetch_one = fetch_one
        self.refresh_s = refresh_s
        self.negative_ttl_s = negative_ttl_s
        self.max_lookups = max_lookups
        self._lookups = asyncio.Semaphore(lookup_concurrency)
        self._misses: dict[str, float] = {}
        self.loaded = asyncio.Event()
        self.last_refresh = 0.0

    # -- changes

    def put(self, site_id: str, tenants: Iterable[str] = ()) -> None:
        self.partitions[site_id] = partition_of(site_id, self.partitions_count)
        self.tenants[site_id] = frozenset(tenants)
        self._misses.pop(site_id, None)

    def remove(self, site_id: str) -> None:
        self.partitions.pop(site_id, None)
        self.tenants.pop(site_id, None)

    def add_tenant(self, site_id: str, tenant_id: str) -> None:
        if site_id in self.partitions:
            self.tenants[site_id] = self.tenants.get(site_id, frozenset()) | {tenant_id}

    def remove_tenant(self, site_id: str, tenant_id: str) -> None:
        if site_id in self.tenants:
            self.tenants[site_id] = self.tenants[site_id] - {tenant_id}

    def replace_all(self, sites: list[SiteInfo]) -> None:
        self.partitions = {sid: partition_of(sid, self.partitions_count) for sid, _ in sites}
        self.tenants = {sid: tenants for sid, tenants in sites}
        self._misses.clear()
        self.last_refresh = time.monotonic()
        self.loaded.set()

    # -- queries

    def partition(self, site_id: str) -> int:
        """The partition of any site id (known or not), e.g. for live tail."""
        part = self.partitions.get(site_id)
        return part if part is not None else partition_of(site_id, self.partitions_count)

    def visible_to(self, site_id: str, tenant: str | None) -> bool:
        """Whether a caller of `tenant` (None = towerco staff) may see the site."""
        if site_id not in self.partitions:
            return False
        return tenant is None or tenant in self.tenants.get(site_id, frozenset())

    async def resolve(self, site_ids: Iterable[str]) -> None:
        """Look up the given ids that the cache does not know (at most max_lookups per call,
        lookup_concurrency at a time). Raises SiteDirectoryUnavailable when the register cannot
        be asked."""
        now = time.monotonic()
        todo = []
        for sid in set(site_ids):
            if sid in self.partitions or not sid or len(sid) > 32:
                continue
            until = self._misses.get(sid)
            if until is not None and until > now:
                continue
            todo.append(sid)
        if not todo:
            return
        todo = todo[: self.max_lookups]
        async def one(sid: str) -> SiteInfo | None:
            async with self._lookups:
                return await self._fetch_one(sid)

        results = await asyncio.gather(*(one(sid) for sid in todo), return_exceptions=True)
        for sid, res in zip(todo, results, strict=True):
            if isinstance(res, BaseException):
                raise SiteDirectoryUnavailable(str(res)) from res
            if res is None:
                self._misses[sid] = now + self.negative_ttl_s
            else:
                self.put(res[0], res[1])
        if len(self._misses) > 100_000:
            self._misses = {k: v for k, v in self._misses.items() if v > now}

    async def refresh(self) -> None:
        self.replace_all(await self._fetch_all())
        log.info("site directory loaded: %d sites", len(self.partitions))

    async def keep_fresh(self) -> None:
        """Load now (retrying until the Sites service answers), then re-list every refresh_s."""
        delay = 0.5
        while True:
            try:
                await self.refresh()
                delay = 0.5
                await asyncio.sleep(self.refresh_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Sites down: keep the cache, try again
                log.warning("cannot list sites (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
