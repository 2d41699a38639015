"""The typed clients of sdk.Client / sdk.BlockingClient against the real Sites, Telemetry and KPI
services: one attribute per service, pagination, typed errors from google.rpc details."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from platform_support import Platform
from towerco.kpi.v1 import kpi_pb2
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

import sdk
from sdk import errors
from sdk.generated import SERVICES


def test_every_service_in_the_contracts_has_a_client():
    from sdk.retry import default_services

    expected = {s.full_name for s in default_services() if not s.full_name.startswith("towerco.testing.")}
    assert {cls.SERVICE for cls, _ in SERVICES.values()} == expected
    assert {"sites", "telemetry", "kpi"} <= set(SERVICES)


async def test_async_clients_call_each_service(plat: Platform):
    token = plat.token("admin")
    async with sdk.Client(plat.targets["sites"], token=token) as c:
        got = await c.sites.GetSite(sites_pb2.GetSiteRequest(site_id=plat.site_ids[0]), timeout=5)
        assert isinstance(got, sites_pb2.GetSiteResponse) and got.site.region == plat.region
    async with sdk.Client(plat.targets["telemetry"], token=token) as c:
        snap = await c.telemetry.LatestSnapshot(telemetry_pb2.LatestSnapshotRequest(site_id=plat.site_ids[0]),
                                                timeout=5)
        assert isinstance(snap, telemetry_pb2.LatestSnapshotResponse)
    async with sdk.Client(plat.targets["kpi"], token=token) as c:
        policy = await c.kpi.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id="sdkco"),
                                                   timeout=5)
        assert isinstance(policy, kpi_pb2.GetAvailabilityPolicyResponse)


async def test_list_all_walks_every_page(plat: Platform):
    async with sdk.Client(plat.targets["sites"], token=plat.token("viewer")) as c:
        ids = [s.id async for s in c.sites.list_all(sites_pb2.ListSitesRequest(region=plat.region), page_size=2)]
        assert ids == sorted(plat.site_ids)  # 5 sites in 3 pages
        one_page = await c.sites.ListSites(sites_pb2.ListSitesRequest(region=plat.region, page={"size": 2}))
        assert len(one_page.sites) == 2 and one_page.page.next_token
        with pytest.raises(TypeError, match="no paginated RPC"):
            _ = [s async for s in c.sites.list_all(sites_pb2.GetSiteRequest())]  # type: ignore[call-overload]


async def test_typed_errors_carry_the_details(plat: Platform):
    async with sdk.Client(plat.targets["sites"], token=plat.token("admin")) as c:
        with pytest.raises(errors.NotFound) as nf:
            await c.sites.GetSite(sites_pb2.GetSiteRequest(site_id="SDK-NOPE-1"), timeout=5)
        assert nf.value.code() == grpc.StatusCode.NOT_FOUND
        assert isinstance(nf.value, grpc.aio.AioRpcError)  # old `except AioRpcError` still catches it
        assert nf.value.reason == "NOT_FOUND" and nf.value.error_info.domain == "towerco.io"
        assert nf.value.resource is not None and nf.value.resource.resource_name == "SDK-NOPE-1"

        with pytest.raises(errors.InvalidArgument) as bad:
            await c.sites.ListSites(sites_pb2.ListSitesRequest(page={"size": 5000}), timeout=5)
        assert [v.field for v in bad.value.violations] == ["page.size"]

        with pytest.raises(errors.AlreadyExists):
            await c.sites.CreateSite(sites_pb2.CreateSiteRequest(site=(await c.sites.GetSite(
                sites_pb2.GetSiteRequest(site_id=plat.site_ids[0]))).site), timeout=5)
    async with sdk.Client(plat.targets["kpi"]) as anonymous:
        with pytest.raises(errors.Unauthenticated):
            await anonymous.kpi.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id="x"), timeout=5)


async def test_server_stream_is_typed_and_stops_when_the_consumer_does(plat: Platform):
    async with sdk.Client(plat.targets["sites"], token=plat.token("admin")) as c:
        seen = []
        async for change in c.sites.WatchChanges(sites_pb2.WatchChangesRequest(), timeout=10):
            seen.append(change)
            if len(seen) == 2:
                break
        assert all(isinstance(x, sites_pb2.WatchChangesResponse) for x in seen) and len(seen) == 2
        with pytest.raises(errors.InvalidArgument):
            async for _ in c.sites.WatchChanges(sites_pb2.WatchChangesRequest(after_sequence=-1), timeout=5):
                pass


async def test_blocking_client_same_calls_without_an_event_loop(plat: Platform):
    def work() -> tuple[str, list[str], str, int]:
        with sdk.BlockingClient(plat.targets["sites"], token=plat.token("admin")) as c:
            site = c.sites.GetSite(sites_pb2.GetSiteRequest(site_id=plat.site_ids[1]), timeout=5).site.id
            ids = [s.id for s in c.sites.list_all(sites_pb2.ListSitesRequest(region=plat.region), page_size=3)]
            try:
                c.sites.GetSite(sites_pb2.GetSiteRequest(site_id="SDK-NOPE-2"), timeout=5)
            except errors.NotFound as exc:
                missing = exc.resource.resource_name
            first_two = 0
            for _ in c.sites.WatchChanges(sites_pb2.WatchChangesRequest(), timeout=10):
                first_two += 1
                if first_two == 2:
                    break
        return site, ids, missing, first_two

    # the servers run on this test's loop: the blocking client must wait on another thread
    site, ids, missing, streamed = await asyncio.to_thread(work)
    assert site == plat.site_ids[1] and ids == sorted(plat.site_ids)
    assert missing == "SDK-NOPE-2" and streamed == 2


async def test_blocking_client_carries_the_callers_context(plat: Platform):
    from sdk import context

    def work() -> str:
        with sdk.BlockingClient(plat.targets["kpi"]) as c, context.bind(token=plat.token("viewer")):
            return c.kpi.GetAvailabilityPolicy(kpi_pb2.GetAvailabilityPolicyRequest(tenant_id="sdkco"),
                                               timeout=5).policy.tenant_id

    assert await asyncio.to_thread(work) == "sdkco"
