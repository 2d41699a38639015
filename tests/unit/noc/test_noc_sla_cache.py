"""SlaCache: only a tenant never asked before waits for the KPI answer; an expired entry is
served while one background refresh per tenant replaces it; `warm` fills the cache at start."""

import asyncio

from services.noc import domain
from services.noc.facts import NEGATIVE_TTL_S, SlaCache


def _facts(site: str, *tenants: str) -> domain.SiteFacts:
    return domain.SiteFacts(site_id=site, region="r", tenancies=tuple(
        domain.Tenancy(tenancy_id=f"{site}-{t}", tenant_id=t, sla_target=0.999) for t in tenants))


class Kpi:
    """A fetcher answering availability `value` per (site, tenant), counting calls; `gate` holds calls."""

    def __init__(self) -> None:
        self.value = 0.99
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def __call__(self, tenant: str, now: float) -> dict[str, domain.Sla]:
        self.calls.append(tenant)
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("kpi down")
        return {f"s1/{tenant}": domain.Sla(self.value, 43200, True), f"s2/{tenant}": domain.Sla(self.value, 43200, True)}


async def _refreshed(cache: SlaCache) -> None:
    """Wait for the background refreshes in flight (a deadline: they must end)."""
    await asyncio.wait_for(asyncio.gather(*cache._refreshing.values()), 10.0)


async def test_first_ask_waits_then_cached() -> None:
    kpi, now = Kpi(), [1000.0]
    cache = SlaCache(kpi, ttl_s=300, clock=lambda: now[0])
    out = await cache.for_sites([_facts("s1", "t1")])
    assert out["s1-t1"].availability == 0.99 and kpi.calls == ["t1"]
    await cache.for_sites([_facts("s2", "t1")])
    assert kpi.calls == ["t1"]


async def test_expired_entry_is_served_stale_and_refreshed_once_in_background() -> None:
    kpi, now = Kpi(), [1000.0]
    cache = SlaCache(kpi, ttl_s=300, clock=lambda: now[0])
    await cache.for_sites([_facts("s1", "t1")])
    kpi.value, now[0] = 0.5, 1400.0  # past the TTL
    kpi.gate.clear()  # the KPI service is slow now: the correlation path must not wait for it
    out = await asyncio.wait_for(cache.for_sites([_facts("s1", "t1")]), 1.0)
    assert out["s1-t1"].availability == 0.99  # the stale answer
    again = await asyncio.wait_for(cache.for_sites([_facts("s1", "t1")]), 1.0)
    assert again["s1-t1"].availability == 0.99
    assert kpi.calls == ["t1", "t1"]  # one refresh in flight, not one per alarm
    kpi.gate.set()
    await _refreshed(cache)
    assert (await cache.for_sites([_facts("s1", "t1")]))["s1-t1"].availability == 0.5


async def test_unknown_exposure_is_retried_in_background_after_the_negative_ttl() -> None:
    kpi, now = Kpi(), [1000.0]
    kpi.fail = True
    cache = SlaCache(kpi, ttl_s=300, clock=lambda: now[0])
    assert await cache.for_sites([_facts("s1", "t1")]) == {}
    kpi.fail, now[0] = False, 1000.0 + NEGATIVE_TTL_S + 1
    assert await cache.for_sites([_facts("s1", "t1")]) == {}  # still unknown for this alarm
    await _refreshed(cache)
    assert (await cache.for_sites([_facts("s1", "t1")]))["s1-t1"].availability == 0.99


async def test_warm_asks_every_tenant_once() -> None:
    kpi = Kpi()
    cache = SlaCache(kpi, ttl_s=300, clock=lambda: 1000.0)
    await cache.warm([_facts("s1", "t1", "t2"), _facts("s2", "t2")])
    assert sorted(kpi.calls) == ["t1", "t2"]
    out = await cache.for_sites([_facts("s2", "t1", "t2")])
    assert set(out) == {"s2-t1", "s2-t2"} and sorted(kpi.calls) == ["t1", "t2"]
    await cache.warm([_facts("s1", "t1")])
    assert sorted(kpi.calls) == ["t1", "t2"]
