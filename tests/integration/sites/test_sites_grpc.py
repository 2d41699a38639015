"""The Sites service over real gRPC (full interceptor chain, real PostgreSQL): CRUD of every
entity, PATCH masks, list filters and pages, the role matrix, rich errors, WatchChanges."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from sites_support import detail, fails, fields, new_site, ts
from towerco.sites.v1 import sites_pb2 as pb

from mesh.errors import violations_of


class World:
    """A small register of our own: region R with sites S1..S3, tenants A (on S1, S2) and B (on S2)."""

    def __init__(self, sites, uniq: str):
        self.s = sites
        self.u = uniq
        self.region = f"reg-{uniq.lower()}"
        self.a, self.b = f"ta-{uniq.lower()}", f"tb-{uniq.lower()}"
        self.s1, self.s2, self.s3 = f"S1-{uniq}", f"S2-{uniq}", f"S3-{uniq}"
        self.admin = sites.md("admin")
        self.tenancies: dict[tuple[str, str], str] = {}

    async def build(self) -> World:
        st = self.s.stub
        for t in (self.a, self.b):
            await st.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(id=t, name=t.upper())), metadata=self.admin)
        await st.CreateSite(pb.CreateSiteRequest(site=new_site(self.s1, self.region)), metadata=self.admin)
        await st.CreateSite(pb.CreateSiteRequest(site=new_site(self.s2, self.region, lat=-4.05, lon=39.66)),
                            metadata=self.admin)
        await st.CreateSite(pb.CreateSiteRequest(site=new_site(self.s3, self.region, status=pb.SITE_STATUS_PLANNED)),
                            metadata=self.admin)
        for site, tenant in ((self.s1, self.a), (self.s2, self.a), (self.s2, self.b)):
            r = await st.CreateTenancy(pb.CreateTenancyRequest(tenancy=pb.Tenancy(
                site_id=site, tenant_id=tenant, sla_availability_target=0.999, dc_voltage_min_v=43,
                dc_voltage_max_v=60, monthly_fee_minor=100_000, currency_code="KES")), metadata=self.admin)
            self.tenancies[(site, tenant)] = r.tenancy.id
        return self


@pytest.fixture
async def world(sites, uniq) -> World:
    return await World(sites, uniq).build()


# --------------------------------------------------------------------------------------------
# sites CRUD, masks, validation


async def test_site_crud_and_patch_masks(sites, uniq):
    st, admin = sites.stub, sites.md("admin")
    sid = f"CRUD-{uniq}"
    created = (await st.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=admin)).site
    assert created.status == pb.SITE_STATUS_ACTIVE  # default on create
    assert created.power.dg_capacity_kva == 20 and created.create_time.seconds > 0
    got = (await st.GetSite(pb.GetSiteRequest(site_id=sid), metadata=sites.md("viewer"))).site
    assert got == created

    # mask: only the named fields change, even though others are in the message
    patch = pb.Site(id=sid, name="Renamed", region="ignored", power=pb.PowerConfig(solar_kwp=5))
    mask = field_mask_pb2.FieldMask(paths=["name", "power.solar_kwp"])
    upd = (await st.UpdateSite(pb.UpdateSiteRequest(site=patch, update_mask=mask), metadata=admin)).site
    assert (upd.name, upd.region, upd.power.solar_kwp, upd.power.dg_capacity_kva) == ("Renamed", "nairobi", 5, 20)
    assert upd.update_time.ToDatetime() >= created.update_time.ToDatetime()

    # no mask: every non-default field of the message changes (here location.latitude and status)
    patch = pb.Site(id=sid, location={"latitude": 1.5}, status=pb.SITE_STATUS_SUSPENDED)
    upd = (await st.UpdateSite(pb.UpdateSiteRequest(site=patch), metadata=admin)).site
    assert (upd.location.latitude, upd.location.longitude, upd.status) == (1.5, 36.82, pb.SITE_STATUS_SUSPENDED)
    assert upd.name == "Renamed"

    # bad paths: id, output-only and unknown paths are each named
    bad = field_mask_pb2.FieldMask(paths=["name", "id", "create_time", "colour"])
    status = await fails(st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid, name="x"), update_mask=bad),
                                       metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["update_mask.paths[1]", "update_mask.paths[2]", "update_mask.paths[3]"]
    assert "'colour'" in violations_of(status)[2].description
    # a mask that would blank the name
    status = await fails(st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid), update_mask=field_mask_pb2.FieldMask(
        paths=["name"])), metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site.name"]
    # nothing to change
    status = await fails(st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid)), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["update_mask"]

    status = await fails(st.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=admin),
                         grpc.StatusCode.ALREADY_EXISTS)
    assert detail(status, error_details_pb2.ResourceInfo).resource_name == sid

    await st.DeleteSite(pb.DeleteSiteRequest(site_id=sid), metadata=admin)
    status = await fails(st.GetSite(pb.GetSiteRequest(site_id=sid), metadata=admin), grpc.StatusCode.NOT_FOUND)
    info = detail(status, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("towerco.sites.v1.Site", sid)
    await fails(st.DeleteSite(pb.DeleteSiteRequest(site_id=sid), metadata=admin), grpc.StatusCode.NOT_FOUND)
    await fails(st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid, name="x")), metadata=admin),
                grpc.StatusCode.NOT_FOUND)


async def test_invalid_sites_name_every_bad_field(sites, uniq):
    st, admin = sites.stub, sites.md("admin")
    bad = new_site("lower-case!", lat=91.0)
    bad.power.dg_capacity_kva = -1
    status = await fails(st.CreateSite(pb.CreateSiteRequest(site=bad), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert set(fields(status)) == {"site.id", "site.location.latitude", "site.power.dg_capacity_kva"}
    missing = pb.Site(id=f"MISS-{uniq}", location={"latitude": 0, "longitude": 0})
    status = await fails(st.CreateSite(pb.CreateSiteRequest(site=missing), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site.name", "site.region"]
    status = await fails(st.CreateSite(pb.CreateSiteRequest(site=pb.Site(name="n", region="r")), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site.id"]
    status = await fails(st.CreateSite(pb.CreateSiteRequest(), metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site"]
    status = await fails(st.GetSite(pb.GetSiteRequest(), metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site_id"]
    # NUL characters cannot be stored in PostgreSQL text: a clear error, never INTERNAL
    nul = new_site(f"NUL-{uniq}")
    nul.name = "bad\x00name"
    status = await fails(st.CreateSite(pb.CreateSiteRequest(site=nul), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site.name"]
    status = await fails(st.GetSite(pb.GetSiteRequest(site_id="A\x00B"), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["site_id"]
    status = await fails(st.ListSites(pb.ListSitesRequest(query="\x00"), metadata=admin),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["query"]


# --------------------------------------------------------------------------------------------
# tenants, tenancies, windows


async def test_tenants_and_tenancies(sites, world):
    st, admin, w = sites.stub, world.admin, world
    t = (await st.GetTenant(pb.GetTenantRequest(tenant_id=w.a), metadata=sites.md("viewer"))).tenant
    assert t.name == w.a.upper()
    upd = (await st.UpdateTenant(pb.UpdateTenantRequest(tenant=pb.Tenant(id=w.a, name="Operator A")),
                                 metadata=admin)).tenant
    assert upd.name == "Operator A"
    await fails(st.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(id=w.a, name="dup")), metadata=admin),
                grpc.StatusCode.ALREADY_EXISTS)
    status = await fails(st.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(id="Bad Id", name="")),
                                         metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["tenant.id"]

    # tenancies: get, patch, duplicates, unknown site/tenant, inverted voltage band
    tid = w.tenancies[(w.s2, w.b)]
    got = (await st.GetTenancy(pb.GetTenancyRequest(tenancy_id=tid), metadata=admin)).tenancy
    assert (got.site_id, got.tenant_id, got.currency_code) == (w.s2, w.b, "KES")
    upd = (await st.UpdateTenancy(pb.UpdateTenancyRequest(
        tenancy=pb.Tenancy(id=tid, monthly_fee_minor=7), update_mask={"paths": ["monthly_fee_minor"]}),
        metadata=admin)).tenancy
    assert upd.monthly_fee_minor == 7 and upd.sla_availability_target == 0.999
    status = await fails(st.UpdateTenancy(pb.UpdateTenancyRequest(
        tenancy=pb.Tenancy(id=tid, site_id=w.s1), update_mask={"paths": ["site_id"]}), metadata=admin),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["update_mask.paths[0]"]
    status = await fails(st.UpdateTenancy(pb.UpdateTenancyRequest(
        tenancy=pb.Tenancy(id=tid, dc_voltage_min_v=70), update_mask={"paths": ["dc_voltage_min_v"]}),
        metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["tenancy.dc_voltage_max_v"]
    await fails(st.CreateTenancy(pb.CreateTenancyRequest(tenancy=pb.Tenancy(site_id=w.s2, tenant_id=w.b)),
                                 metadata=admin), grpc.StatusCode.ALREADY_EXISTS)
    status = await fails(st.CreateTenancy(pb.CreateTenancyRequest(tenancy=pb.Tenancy(site_id=w.s3, tenant_id="ghost")),
                                          metadata=admin), grpc.StatusCode.NOT_FOUND)
    assert detail(status, error_details_pb2.ResourceInfo).resource_type == "towerco.sites.v1.Tenant"
    status = await fails(st.CreateTenancy(pb.CreateTenancyRequest(tenancy=pb.Tenancy(site_id="NOPE-X", tenant_id=w.a)),
                                          metadata=admin), grpc.StatusCode.NOT_FOUND)
    assert detail(status, error_details_pb2.ResourceInfo).resource_type == "towerco.sites.v1.Site"
    await fails(st.GetTenancy(pb.GetTenancyRequest(tenancy_id="not-a-uuid"), metadata=admin),
                grpc.StatusCode.NOT_FOUND)

    listed = (await st.ListTenancies(pb.ListTenanciesRequest(site_id=w.s2), metadata=admin)).tenancies
    assert [(x.site_id, x.tenant_id) for x in listed] == [(w.s2, w.a), (w.s2, w.b)]
    by_tenant = (await st.ListTenancies(pb.ListTenanciesRequest(tenant_id=w.a), metadata=admin)).tenancies
    assert [x.site_id for x in by_tenant] == [w.s1, w.s2]

    # a tenant with tenancies cannot go; after its last tenancy ends it can
    status = await fails(st.DeleteTenant(pb.DeleteTenantRequest(tenant_id=w.b), metadata=admin),
                         grpc.StatusCode.FAILED_PRECONDITION)
    assert detail(status, error_details_pb2.ErrorInfo).reason == "TENANT_HAS_TENANCIES"
    await st.DeleteTenancy(pb.DeleteTenancyRequest(tenancy_id=tid), metadata=admin)
    await fails(st.GetTenancy(pb.GetTenancyRequest(tenancy_id=tid), metadata=admin), grpc.StatusCode.NOT_FOUND)
    await st.DeleteTenant(pb.DeleteTenantRequest(tenant_id=w.b), metadata=admin)
    await fails(st.GetTenant(pb.GetTenantRequest(tenant_id=w.b), metadata=admin), grpc.StatusCode.NOT_FOUND)
    site = (await st.GetSite(pb.GetSiteRequest(site_id=w.s2), metadata=admin)).site
    assert list(site.tenant_ids) == [w.a]


async def test_calendar_windows(sites, world):
    st, w = sites.stub, world
    noc = sites.md("noc_operator", subject="noc-jane")
    t0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
    win = pb.CalendarWindow(site_id=w.s2, start_time=ts(t0), end_time=ts(t0 + timedelta(hours=4)),
                            category=pb.WINDOW_CATEGORY_PLANNED_MAINTENANCE, tenant_ids=[w.b],
                            description="CHG-1001 rectifier swap")
    created = (await st.CreateWindow(pb.CreateWindowRequest(window=win), metadata=noc)).window
    assert created.id and created.created_by == "noc-jane" and list(created.tenant_ids) == [w.b]
    got = (await st.GetWindow(pb.GetWindowRequest(window_id=created.id), metadata=sites.md("viewer"))).window
    assert got == created

    upd = (await st.UpdateWindow(pb.UpdateWindowRequest(
        window=pb.CalendarWindow(id=created.id, end_time=ts(t0 + timedelta(hours=6)), tenant_ids=[]),
        update_mask={"paths": ["end_time", "tenant_ids"]}), metadata=noc)).window
    assert upd.end_time.ToDatetime(tzinfo=UTC) == t0 + timedelta(hours=6) and list(upd.tenant_ids) == []

    # end before start; a tenant that is not on the site; missing required fields
    bad = pb.CalendarWindow(site_id=w.s2, start_time=ts(t0), end_time=ts(t0),
                            category=pb.WINDOW_CATEGORY_FORCE_MAJEURE)
    status = await fails(st.CreateWindow(pb.CreateWindowRequest(window=bad), metadata=noc),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["window.end_time"]
    status = await fails(st.UpdateWindow(pb.UpdateWindowRequest(
        window=pb.CalendarWindow(id=created.id, end_time=ts(t0 - timedelta(hours=1))),
        update_mask={"paths": ["end_time"]}), metadata=noc), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["window.end_time"]
    stranger = pb.CalendarWindow(site_id=w.s1, start_time=ts(t0), end_time=ts(t0 + timedelta(hours=1)),
                                 category=pb.WINDOW_CATEGORY_ACCESS_DENIED, tenant_ids=[w.b])
    status = await fails(st.CreateWindow(pb.CreateWindowRequest(window=stranger), metadata=noc),
                         grpc.StatusCode.FAILED_PRECONDITION)
    assert detail(status, error_details_pb2.ErrorInfo).reason == "TENANT_NOT_ON_SITE"
    status = await fails(st.CreateWindow(pb.CreateWindowRequest(window=pb.CalendarWindow(site_id=w.s1)),
                                         metadata=noc), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["window.start_time", "window.end_time", "window.category"]
    missing_site = pb.CalendarWindow(site_id="NOPE-1", start_time=ts(t0), end_time=ts(t0 + timedelta(hours=1)),
                                     category=pb.WINDOW_CATEGORY_ACCESS_DENIED)
    await fails(st.CreateWindow(pb.CreateWindowRequest(window=missing_site), metadata=noc), grpc.StatusCode.NOT_FOUND)

    # list by site and overlapping range, category filter
    second = (await st.CreateWindow(pb.CreateWindowRequest(window=pb.CalendarWindow(
        site_id=w.s2, start_time=ts(t0 + timedelta(days=1)), end_time=ts(t0 + timedelta(days=2)),
        category=pb.WINDOW_CATEGORY_FORCE_MAJEURE)), metadata=noc)).window
    listed = (await st.ListWindows(pb.ListWindowsRequest(site_id=w.s2), metadata=noc)).windows
    assert [x.id for x in listed] == [created.id, second.id]
    page1 = await st.ListWindows(pb.ListWindowsRequest(site_id=w.s2, page={"size": 1}), metadata=noc)
    page2 = await st.ListWindows(pb.ListWindowsRequest(site_id=w.s2, page={"size": 1, "token": page1.page.next_token}),
                                 metadata=noc)
    assert [x.id for x in [*page1.windows, *page2.windows]] == [created.id, second.id]
    assert not page2.page.next_token
    in_range = (await st.ListWindows(pb.ListWindowsRequest(site_id=w.s2, range={
        "start_time": ts(t0 + timedelta(hours=7)), "end_time": ts(t0 + timedelta(days=3))}), metadata=noc)).windows
    assert [x.id for x in in_range] == [second.id]
    fm = (await st.ListWindows(pb.ListWindowsRequest(site_id=w.s2, category=pb.WINDOW_CATEGORY_FORCE_MAJEURE),
                               metadata=noc)).windows
    assert [x.id for x in fm] == [second.id]
    status = await fails(st.ListWindows(pb.ListWindowsRequest(range={"start_time": ts(t0), "end_time": ts(t0)}),
                                        metadata=noc), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["range.end_time"]

    await st.DeleteWindow(pb.DeleteWindowRequest(window_id=second.id), metadata=noc)
    await fails(st.GetWindow(pb.GetWindowRequest(window_id=second.id), metadata=noc), grpc.StatusCode.NOT_FOUND)


# --------------------------------------------------------------------------------------------
# lists and pages


async def test_list_filters_and_pagination(sites, world, uniq):
    st, admin, w = sites.stub, world.admin, world
    viewer = sites.md("viewer")

    async def ids(**kw) -> list[str]:
        resp = await st.ListSites(pb.ListSitesRequest(region=w.region, **kw), metadata=viewer)
        return [s.id for s in resp.sites]

    assert await ids() == [w.s1, w.s2, w.s3]
    assert await ids(status=pb.SITE_STATUS_PLANNED) == [w.s3]
    assert await ids(tenant_id=w.b) == [w.s2]
    assert await ids(query=f"s2-{uniq.lower()}") == [w.s2]
    assert await ids(bbox={"south_west": {"latitude": -5, "longitude": 39},
                           "north_east": {"latitude": -4, "longitude": 40}}) == [w.s2]
    status = await fails(st.ListSites(pb.ListSitesRequest(bbox={"south_west": {"latitude": 5, "longitude": 0},
                                                                "north_east": {"latitude": -5, "longitude": 1}}),
                                      metadata=viewer), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["bbox.north_east.latitude"]

    # 23 more sites, walked 5 at a time: every one exactly once, in id order
    region = f"pages-{uniq.lower()}"
    want = sorted(f"P{i:02d}-{uniq}" for i in range(23))
    await asyncio.gather(*(st.CreateSite(pb.CreateSiteRequest(site=new_site(sid, region)), metadata=admin)
                           for sid in want))
    for size, expected_pages in ((5, 5), (1, 23), (7, 4), (22, 2), (23, 1), (24, 1)):
        seen, token, pages = [], "", 0
        while True:
            resp = await st.ListSites(pb.ListSitesRequest(region=region, page={"size": size, "token": token}),
                                      metadata=viewer)
            seen += [s.id for s in resp.sites]
            pages += 1
            token = resp.page.next_token
            if not token:
                break
        assert seen == want and pages == expected_pages, size
    # a row added behind the cursor mid-walk is not repeated; one ahead of it shows up
    first = await st.ListSites(pb.ListSitesRequest(region=region, page={"size": 10}), metadata=viewer)
    await st.CreateSite(pb.CreateSiteRequest(site=new_site(f"P00A-{uniq}", region)), metadata=admin)
    await st.CreateSite(pb.CreateSiteRequest(site=new_site(f"P99-{uniq}", region)), metadata=admin)
    rest, token = [], first.page.next_token
    while token:
        resp = await st.ListSites(pb.ListSitesRequest(region=region, page={"size": 10, "token": token}),
                                  metadata=viewer)
        rest += [s.id for s in resp.sites]
        token = resp.page.next_token
    assert [s.id for s in first.sites] + rest == [*want, f"P99-{uniq}"]
    await st.DeleteSite(pb.DeleteSiteRequest(site_id=f"P00A-{uniq}"), metadata=admin)
    await st.DeleteSite(pb.DeleteSiteRequest(site_id=f"P99-{uniq}"), metadata=admin)
    # size 0 -> default 50 (one page here); above 1000 is refused, not clamped
    resp = await st.ListSites(pb.ListSitesRequest(region=region), metadata=viewer)
    assert len(resp.sites) == 23 and not resp.page.next_token
    status = await fails(st.ListSites(pb.ListSitesRequest(page={"size": 1001}), metadata=viewer),
                         grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(status) == ["page.size"]
    # a token is bound to its query and tamper-evident
    first = await st.ListSites(pb.ListSitesRequest(region=region, page={"size": 5}), metadata=viewer)
    for bad_req in (pb.ListSitesRequest(region=w.region, page={"token": first.page.next_token}),
                    pb.ListSitesRequest(region=region, page={"token": first.page.next_token[:-2] + "AA"}),
                    pb.ListSitesRequest(region=region, page={"token": "garbage"})):
        status = await fails(st.ListSites(bad_req, metadata=viewer), grpc.StatusCode.INVALID_ARGUMENT)
        assert fields(status) == ["page.token"]
    # tenants and tenancies page the same way
    tenants, token = [], ""
    while True:
        resp = await st.ListTenants(pb.ListTenantsRequest(page={"size": 1, "token": token}), metadata=viewer)
        tenants += [t.id for t in resp.tenants]
        token = resp.page.next_token
        if not token:
            break
    assert len(tenants) == len(set(tenants)) and {w.a, w.b} <= set(tenants)
    first_tn = await st.ListTenancies(pb.ListTenanciesRequest(site_id=w.s2, page={"size": 1}), metadata=viewer)
    rest_tn = await st.ListTenancies(pb.ListTenanciesRequest(
        site_id=w.s2, page={"size": 1, "token": first_tn.page.next_token}), metadata=viewer)
    assert [t.tenant_id for t in [*first_tn.tenancies, *rest_tn.tenancies]] == [w.a, w.b]


# --------------------------------------------------------------------------------------------
# the role matrix


async def test_role_matrix(sites, world):
    st, w = sites.stub, world
    viewer, noc = sites.md("viewer"), sites.md("noc_operator")
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    window = pb.CalendarWindow(site_id=w.s1, start_time=ts(t0), end_time=ts(t0 + timedelta(hours=1)),
                               category=pb.WINDOW_CATEGORY_FORCE_MAJEURE)
    # no token at all
    await fails(st.GetSite(pb.GetSiteRequest(site_id=w.s1)), grpc.StatusCode.UNAUTHENTICATED)
    # viewer reads, writes nothing
    await st.GetSite(pb.GetSiteRequest(site_id=w.s1), metadata=viewer)
    for call in (st.CreateSite(pb.CreateSiteRequest(site=new_site(f"V-{w.u}")), metadata=viewer),
                 st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s1, name="x")), metadata=viewer),
                 st.DeleteSite(pb.DeleteSiteRequest(site_id=w.s1), metadata=viewer),
                 st.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(id="zz", name="z")), metadata=viewer),
                 st.CreateWindow(pb.CreateWindowRequest(window=window), metadata=viewer)):
        await fails(call, grpc.StatusCode.PERMISSION_DENIED)
    # noc writes windows only
    created = (await st.CreateWindow(pb.CreateWindowRequest(window=window), metadata=noc)).window
    await fails(st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s1, name="x")), metadata=noc),
                grpc.StatusCode.PERMISSION_DENIED)
    await fails(st.CreateTenancy(pb.CreateTenancyRequest(tenancy=pb.Tenancy(site_id=w.s3, tenant_id=w.a)),
                                 metadata=noc), grpc.StatusCode.PERMISSION_DENIED)

    # tenant viewer of B: only S2, only its own tenancy, only windows that concern it
    tv = sites.md("tenant_viewer", tenant=w.b)
    listed = await st.ListSites(pb.ListSitesRequest(region=w.region), metadata=tv)
    assert [s.id for s in listed.sites] == [w.s2]
    assert list(listed.sites[0].tenant_ids) == [w.b]  # A's tenancy is not disclosed
    # asking where another operator is answers nothing (not even the shared site S2)
    assert [s.id for s in (await st.ListSites(pb.ListSitesRequest(region=w.region, tenant_id=w.a),
                                              metadata=tv)).sites] == []
    assert [s.id for s in (await st.ListSites(pb.ListSitesRequest(region=w.region, tenant_id=w.b),
                                              metadata=tv)).sites] == [w.s2]
    for call in (st.GetSite(pb.GetSiteRequest(site_id=w.s1), metadata=tv),
                 st.GetSite(pb.GetSiteRequest(site_id=f"NEVER-{w.u}"), metadata=tv),
                 st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s1, name="x")), metadata=tv),
                 st.DeleteSite(pb.DeleteSiteRequest(site_id=w.s1), metadata=tv),
                 st.GetTenant(pb.GetTenantRequest(tenant_id=w.a), metadata=tv),
                 st.GetTenancy(pb.GetTenancyRequest(tenancy_id=w.tenancies[(w.s2, w.a)]), metadata=tv),
                 st.DeleteTenancy(pb.DeleteTenancyRequest(tenancy_id=w.tenancies[(w.s2, w.a)]), metadata=tv),
                 st.GetWindow(pb.GetWindowRequest(window_id=created.id), metadata=tv),
                 st.DeleteWindow(pb.DeleteWindowRequest(window_id=created.id), metadata=tv),
                 st.CreateWindow(pb.CreateWindowRequest(window=window), metadata=tv)):
        await fails(call, grpc.StatusCode.NOT_FOUND)
    # what it can see, it still cannot change
    for call in (st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s2, name="x")), metadata=tv),
                 st.DeleteSite(pb.DeleteSiteRequest(site_id=w.s2), metadata=tv),
                 st.DeleteTenancy(pb.DeleteTenancyRequest(tenancy_id=w.tenancies[(w.s2, w.b)]), metadata=tv)):
        await fails(call, grpc.StatusCode.PERMISSION_DENIED)
    assert (await st.GetSite(pb.GetSiteRequest(site_id=w.s2), metadata=tv)).site.id == w.s2
    assert [t.id for t in (await st.ListTenants(pb.ListTenantsRequest(), metadata=tv)).tenants] == [w.b]
    mine = (await st.ListTenancies(pb.ListTenanciesRequest(site_id=w.s2), metadata=tv)).tenancies
    assert [t.tenant_id for t in mine] == [w.b]
    # windows on S2: one for everybody, one for A only, one for B only -> B sees two
    t1 = t0 + timedelta(days=1)
    ids = {}
    for name, tenants in (("all", []), ("a", [w.a]), ("b", [w.b])):
        ids[name] = (await st.CreateWindow(pb.CreateWindowRequest(window=pb.CalendarWindow(
            site_id=w.s2, start_time=ts(t1), end_time=ts(t1 + timedelta(hours=1)),
            category=pb.WINDOW_CATEGORY_TENANT_CAUSED, tenant_ids=tenants)), metadata=noc)).window.id
    seen = (await st.ListWindows(pb.ListWindowsRequest(site_id=w.s2), metadata=tv)).windows
    assert {x.id for x in seen} == {ids["all"], ids["b"]}
    await fails(st.GetWindow(pb.GetWindowRequest(window_id=ids["a"]), metadata=tv), grpc.StatusCode.NOT_FOUND)
    everything = (await st.ListWindows(pb.ListWindowsRequest(), metadata=tv)).windows
    assert {x.site_id for x in everything} <= {w.s2}


# --------------------------------------------------------------------------------------------
# the change feed


async def test_watch_changes_replays_then_follows_and_is_tenant_scoped(sites, uniq, conn):
    before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM sites.outbox")
    w = await World(sites, uniq).build()
    st = sites.stub
    resume_after = before

    staff = st.WatchChanges(pb.WatchChangesRequest(after_sequence=resume_after), metadata=w.admin)
    tenant_b = st.WatchChanges(pb.WatchChangesRequest(after_sequence=resume_after),
                               metadata=sites.md("tenant_viewer", tenant=w.b))
    # everything already in the outbox after resume_after, then a live change
    await st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s2, name="Live change")), metadata=w.admin)
    await st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s1, name="A only")), metadata=w.admin)

    got_staff = []
    while True:
        r = await asyncio.wait_for(staff.read(), timeout=10)
        got_staff.append(r)
        if r.change.HasField("site") and r.change.site.name == "A only":
            break
    # caught up: the next change arrives live on the same stream
    await asyncio.sleep(0.2)
    await st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=w.s3, name="Later")), metadata=w.admin)
    live_next = await asyncio.wait_for(staff.read(), timeout=10)
    assert live_next.change.site.name == "Later" and live_next.sequence > got_staff[-1].sequence
    staff.cancel()
    seqs = [r.sequence for r in got_staff]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > resume_after
    kinds = {(r.change.WhichOneof("entity"), r.change.kind) for r in got_staff}
    assert ("tenancy", pb.CHANGE_KIND_CREATED) in kinds and ("site", pb.CHANGE_KIND_UPDATED) in kinds
    live = [r for r in got_staff if r.change.site.name == "Live change"][0]
    assert sorted(live.change.site.tenant_ids) == sorted([w.a, w.b])

    got_b = []
    async for r in tenant_b:
        got_b.append(r)
        if r.change.HasField("site") and r.change.site.name == "Live change":
            break
    tenant_b.cancel()
    # B sees its tenant, its tenancy and the S2 update - never A's tenancies, nor the S1 update
    assert all(r.change.WhichOneof("entity") != "tenancy" or r.change.tenancy.tenant_id == w.b for r in got_b)
    assert all(not (r.change.HasField("tenant") and r.change.tenant.id == w.a) for r in got_b)
    assert list(got_b[-1].change.site.tenant_ids) == [w.b]
