"""`towerco seed`: a deterministic demo fleet, written through the Sites gRPC API (never by SQL).

The fleet is Kenyan: six operations regions (nairobi, mombasa, kisumu, nakuru, eldoret and the
largely off-grid garissa), site ids like NBO-0042, three tenants (safaricom, airtel, telkom).
Power chains follow the site type:
  greenfield    grid (three-phase, single-phase or none), 15-30 kVA DG, 500-1000 l tank,
                400-800 Ah @ 48 V, solar on off-grid sites and on some others
  rooftop       grid + batteries (200-400 Ah); a small DG on about a third
  streetworks   single-phase grid + 100-200 Ah, no DG
  in-building   three-phase grid + 100-300 Ah, no DG
Every on-air site has one to three tenancies (SLA 0.995-0.9995, DC band 43-60 V, monthly fee in
KES), and about one site in twenty has a calendar window (planned maintenance or force majeure).

Each site is drawn from its own random stream (seed, site id), so the same --seed always gives
the same fleet and a larger --sites adds sites without changing the first ones. Re-running is
safe: existing sites and tenants (ALREADY_EXISTS) are skipped, tenancies are matched by
(site, tenant) and windows by their ticket reference in the description.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from towerco.common.v1 import common_pb2
from towerco.sites.v1 import sites_pb2

HELP = "create the demo fleet through the Sites API (idempotent)"


@dataclass(frozen=True)
class Region:
    name: str
    code: str
    lat: float
    lon: float
    spread_deg: float
    weight: float
    urban: float  # share of rooftop / streetworks / in-building sites
    offgrid: float  # share of greenfield sites without grid
    places: tuple[str, ...]


REGIONS: tuple[Region, ...] = (
    Region("nairobi", "NBO", -1.2864, 36.8172, 0.12, 0.30, 0.65, 0.02,
           ("Westlands", "Kilimani", "Karen", "Embakasi", "Kasarani", "Eastleigh", "Langata", "Ruaka",
            "Kitengela", "Thika Road")),
    Region("mombasa", "MSA", -4.0435, 39.6682, 0.12, 0.18, 0.45, 0.05,
           ("Nyali", "Likoni", "Changamwe", "Bamburi", "Mtwapa", "Kisauni", "Shanzu", "Diani")),
    Region("kisumu", "KSM", -0.0917, 34.7680, 0.15, 0.14, 0.30, 0.10,
           ("Milimani", "Kondele", "Nyalenda", "Mamboleo", "Ahero", "Maseno", "Kisian")),
    Region("nakuru", "NKR", -0.3031, 36.0800, 0.20, 0.14, 0.25, 0.08,
           ("Milimani", "Lanet", "Njoro", "Naivasha", "Gilgil", "Molo", "Bahati")),
    Region("eldoret", "ELD", 0.5143, 35.2698, 0.20, 0.14, 0.25, 0.10,
           ("Kapsoya", "Langas", "Huruma", "Moiben", "Turbo", "Burnt Forest", "Ziwa")),
    Region("garissa", "GRS", -0.4532, 39.6461, 0.60, 0.10, 0.05, 0.70,
           ("Township", "Madogo", "Dadaab", "Bura", "Modogashe", "Ijara", "Balambala")),
)


@dataclass(frozen=True)
class TenantSpec:
    id: str
    name: str
    anchor_weight: float
    dc_min_v: float
    dc_max_v: float


TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec("safaricom", "Safaricom PLC", 0.65, 45.0, 57.0),
    TenantSpec("airtel", "Airtel Networks Kenya", 0.25, 44.0, 58.0),
    TenantSpec("telkom", "Telkom Kenya", 0.10, 43.0, 60.0),
)

# Monthly fee range per tenancy in KES by site type (stored in cents).
FEES_KES = {
    sites_pb2.SITE_TYPE_GREENFIELD: (120_000, 180_000),
    sites_pb2.SITE_TYPE_ROOFTOP: (80_000, 120_000),
    sites_pb2.SITE_TYPE_STREETWORKS: (35_000, 55_000),
    sites_pb2.SITE_TYPE_IN_BUILDING: (60_000, 90_000),
}
SLA_TARGETS = (0.995, 0.998, 0.999, 0.9995)


@dataclass
class Fleet:
    tenants: list[sites_pb2.Tenant]
    sites: list[sites_pb2.Site]
    tenancies: list[sites_pb2.Tenancy]
    windows: list[sites_pb2.CalendarWindow]


def _counts(total: int) -> list[int]:
    """Split `total` sites over the regions by weight (largest remainder), deterministically."""
    weight_sum = sum(r.weight for r in REGIONS)
    raw = [total * r.weight / weight_sum for r in REGIONS]
    counts = [int(x) for x in raw]
    order = sorted(range(len(REGIONS)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _step(rng: random.Random, low: float, high: float, step: float) -> float:
    return low + step * rng.randint(0, int(round((high - low) / step)))


def _power(rng: random.Random, site_type: int, region: Region) -> sites_pb2.PowerConfig:
    p = sites_pb2.PowerConfig(battery_voltage_v=48.0)
    if site_type == sites_pb2.SITE_TYPE_GREENFIELD:
        offgrid = rng.random() < region.offgrid
        p.grid = sites_pb2.GRID_CONNECTION_NONE if offgrid else rng.choice(
            [sites_pb2.GRID_CONNECTION_THREE_PHASE] * 3 + [sites_pb2.GRID_CONNECTION_SINGLE_PHASE])
        p.dg_capacity_kva = rng.choice([15.0, 20.0, 25.0, 30.0])
        p.fuel_tank_l = _step(rng, 500, 1000, 50)
        p.battery_bank_ah = _step(rng, 400, 800, 100)
        if offgrid:
            p.solar_kwp = _step(rng, 6, 12, 0.5)
        elif rng.random() < 0.25:
            p.solar_kwp = _step(rng, 3, 6, 0.5)
        p.rectifier_capacity_kw = _step(rng, 6, 12, 1)
        p.dg_start_delay_s = 0.0 if offgrid else _step(rng, 30, 120, 15)
    elif site_type == sites_pb2.SITE_TYPE_ROOFTOP:
        p.grid = rng.choice([sites_pb2.GRID_CONNECTION_THREE_PHASE, sites_pb2.GRID_CONNECTION_SINGLE_PHASE])
        if rng.random() < 0.3:
            p.dg_capacity_kva = rng.choice([10.0, 12.0, 15.0])
            p.fuel_tank_l = _step(rng, 200, 400, 50)
            p.dg_start_delay_s = _step(rng, 60, 300, 30)
        p.battery_bank_ah = _step(rng, 200, 400, 50)
        p.rectifier_capacity_kw = _step(rng, 4, 8, 1)
    elif site_type == sites_pb2.SITE_TYPE_STREETWORKS:
        p.grid = sites_pb2.GRID_CONNECTION_SINGLE_PHASE
        p.battery_bank_ah = _step(rng, 100, 200, 50)
        p.rectifier_capacity_kw = _step(rng, 2, 3, 0.5)
    else:
        p.grid = sites_pb2.GRID_CONNECTION_THREE_PHASE
        p.battery_bank_ah = _step(rng, 100, 300, 50)
        p.rectifier_capacity_kw = _step(rng, 3, 6, 1)
    return p


def _site_type(rng: random.Random, region: Region) -> int:
    if rng.random() >= region.urban:
        return sites_pb2.SITE_TYPE_GREENFIELD
    return rng.choices(
        [sites_pb2.SITE_TYPE_ROOFTOP, sites_pb2.SITE_TYPE_STREETWORKS, sites_pb2.SITE_TYPE_IN_BUILDING],
        weights=[0.6, 0.25, 0.15])[0]


def _tenants_for(rng: random.Random) -> list[TenantSpec]:
    anchor = rng.choices(TENANTS, weights=[t.anchor_weight for t in TENANTS])[0]
    chosen = [anchor]
    others = [t for t in TENANTS if t is not anchor]
    rng.shuffle(others)
    if rng.random() < 0.45:
        chosen.append(others[0])
        if rng.random() < 0.35:
            chosen.append(others[1])
    return chosen


def build_fleet(sites: int = 300, seed: int = 1, *, now: datetime | None = None) -> Fleet:
    """The demo fleet as API messages (pure: no I/O). `now` anchors the calendar windows."""
    if sites < 0:
        raise ValueError("sites must be >= 0")
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    fleet = Fleet(tenants=[sites_pb2.Tenant(id=t.id, name=t.name) for t in TENANTS], sites=[], tenancies=[],
                  windows=[])
    for region, count in zip(REGIONS, _counts(sites), strict=True):
        for n in range(1, count + 1):
            site_id = f"{region.code}-{n:04d}"
            rng = random.Random(f"{seed}:{site_id}")
            site_type = _site_type(rng, region)
            spread = region.spread_deg * (0.5 if site_type != sites_pb2.SITE_TYPE_GREENFIELD else 1.0)
            roll = rng.random()
            status = (sites_pb2.SITE_STATUS_ACTIVE if roll < 0.95 else
                      sites_pb2.SITE_STATUS_PLANNED if roll < 0.98 else sites_pb2.SITE_STATUS_SUSPENDED)
            site = sites_pb2.Site(
                id=site_id,
                name=f"{rng.choice(region.places)} {n}",
                region=region.name,
                location=common_pb2.GeoPoint(
                    latitude=round(region.lat + rng.uniform(-spread, spread), 5),
                    longitude=round(region.lon + rng.uniform(-spread, spread), 5)),
                type=site_type,
                status=status,
                power=_power(rng, site_type, region),
            )
            fleet.sites.append(site)
            if status == sites_pb2.SITE_STATUS_PLANNED:
                continue
            low, high = FEES_KES[site_type]
            for tenant in _tenants_for(rng):
                fleet.tenancies.append(sites_pb2.Tenancy(
                    site_id=site_id, tenant_id=tenant.id,
                    sla_availability_target=rng.choice(SLA_TARGETS),
                    dc_voltage_min_v=tenant.dc_min_v, dc_voltage_max_v=tenant.dc_max_v,
                    monthly_fee_minor=int(_step(rng, low, high, 5_000)) * 100, currency_code="KES"))
            if rng.random() < 0.05:
                fleet.windows.append(_window(rng, site_id, now))
    return fleet


def _window(rng: random.Random, site_id: str, now: datetime) -> sites_pb2.CalendarWindow:
    window = sites_pb2.CalendarWindow(site_id=site_id)
    if rng.random() < 0.7:
        start = now + timedelta(days=rng.randint(1, 14), hours=rng.choice([-now.hour + 9, -now.hour + 22]))
        end = start + timedelta(hours=rng.choice([2, 4, 6]))
        window.category = sites_pb2.WINDOW_CATEGORY_PLANNED_MAINTENANCE
        window.description = f"[{window_ref(site_id)}] generator service and battery health check"
    else:
        start = now - timedelta(days=rng.randint(2, 20), hours=rng.randint(0, 23))
        end = start + timedelta(hours=rng.randint(6, 48))
        window.category = sites_pb2.WINDOW_CATEGORY_FORCE_MAJEURE
        window.description = f"[{window_ref(site_id)}] flooding cut road access"
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    return window


def window_ref(site_id: str) -> str:
    return f"SEED-{site_id}"


# ---------------------------------------------------------------------------------- writing


@dataclass
class SeedReport:
    sites_created: int = 0
    sites_existing: int = 0
    tenants_created: int = 0
    tenants_existing: int = 0
    tenancies_created: int = 0
    tenancies_existing: int = 0
    windows_created: int = 0
    windows_existing: int = 0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"sites {self.sites_created} new / {self.sites_existing} existing, "
                f"tenants {self.tenants_created} new / {self.tenants_existing} existing, "
                f"tenancies {self.tenancies_created} new / {self.tenancies_existing} existing, "
                f"windows {self.windows_created} new / {self.windows_existing} existing"
                + (f", {len(self.failures)} failed" if self.failures else ""))


async def _bounded(limit: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def _pages(call: Callable[..., Awaitable[Any]], request: Any, items: str) -> list[Any]:
    out: list[Any] = []
    request.page.size = 1000
    while True:
        reply = await call(request, timeout=30)
        out.extend(getattr(reply, items))
        if not reply.page.next_token:
            return out
        request.page.token = reply.page.next_token


async def seed_fleet(target: str, *, token: str, sites: int = 300, seed: int = 1, concurrency: int = 16,
                     rpc_timeout_s: float = 10.0) -> SeedReport:
    """Create the fleet through the Sites API at `target`, skipping what already exists."""
    import grpc

    import sdk

    fleet = build_fleet(sites, seed)
    report = SeedReport()
    exists = grpc.StatusCode.ALREADY_EXISTS

    async with sdk.Client(target, token=token, breaker=False) as client:
        stub = client.sites

        for tenant in fleet.tenants:
            try:
                await stub.CreateTenant(sites_pb2.CreateTenantRequest(tenant=tenant), timeout=rpc_timeout_s)
                report.tenants_created += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != exists:
                    raise
                report.tenants_existing += 1

        async def create_site(site: sites_pb2.Site) -> None:
            try:
                await stub.CreateSite(sites_pb2.CreateSiteRequest(site=site), timeout=rpc_timeout_s)
                report.sites_created += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != exists:
                    report.failures.append(f"site {site.id}: {exc.code().name} {exc.details()}")
                    return
                report.sites_existing += 1

        await _bounded(concurrency, [lambda s=s: create_site(s) for s in fleet.sites])
        if report.failures:
            raise RuntimeError(f"{len(report.failures)} site(s) failed, first: {report.failures[0]}")

        have: set[tuple[str, str]] = set()
        for tenant in fleet.tenants:
            for t in await _pages(stub.ListTenancies, sites_pb2.ListTenanciesRequest(tenant_id=tenant.id),
                                  "tenancies"):
                have.add((t.site_id, t.tenant_id))

        async def create_tenancy(tenancy: sites_pb2.Tenancy) -> None:
            if (tenancy.site_id, tenancy.tenant_id) in have:
                report.tenancies_existing += 1
                return
            try:
                await stub.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=tenancy), timeout=rpc_timeout_s)
                report.tenancies_created += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != exists:
                    report.failures.append(
                        f"tenancy {tenancy.site_id}/{tenancy.tenant_id}: {exc.code().name} {exc.details()}")
                    return
                report.tenancies_existing += 1

        await _bounded(concurrency, [lambda t=t: create_tenancy(t) for t in fleet.tenancies])

        async def create_window(window: sites_pb2.CalendarWindow) -> None:
            existing = await _pages(stub.ListWindows, sites_pb2.ListWindowsRequest(site_id=window.site_id),
                                    "windows")
            if any(f"[{window_ref(window.site_id)}]" in w.description for w in existing):
                report.windows_existing += 1
                return
            try:
                await stub.CreateWindow(sites_pb2.CreateWindowRequest(window=window), timeout=rpc_timeout_s)
                report.windows_created += 1
            except grpc.aio.AioRpcError as exc:
                report.failures.append(f"window {window.site_id}: {exc.code().name} {exc.details()}")

        await _bounded(concurrency, [lambda w=w: create_window(w) for w in fleet.windows])
    if report.failures:
        raise RuntimeError(f"{len(report.failures)} write(s) failed, first: {report.failures[0]}")
    return report


# The demo contracts' penalty rules (docs/bi.md): shortfall bands in points below the target ->
# percent of the monthly fee, a per-incident charge for outages of 4 hours or more, a 30 % cap.
DEMO_PENALTY_BANDS = ((0.0, 0.5, 2.0), (0.5, 1.0, 5.0), (1.0, 0.0, 10.0))


async def seed_penalty_rules(target: str, *, token: str, tenants: tuple[str, ...] | None = None,
                             effective_month: str = "2020-01", rpc_timeout_s: float = 10.0) -> int:
    """Give every demo tenant without penalty rules the demo rule set (BI API at `target`);
    returns how many were created."""
    from towerco.bi.v1 import bi_pb2, bi_pb2_grpc

    import sdk

    created = 0
    async with sdk.Client(target, token=token, breaker=False) as client:
        bi = client.stub(bi_pb2_grpc.BiServiceStub)
        for tenant in tenants or tuple(t.id for t in TENANTS):
            have = await bi.ListPenaltyRuleSets(bi_pb2.ListPenaltyRuleSetsRequest(tenant_id=tenant),
                                                timeout=rpc_timeout_s)
            if have.rule_sets:
                continue
            await bi.CreatePenaltyRuleSet(bi_pb2.CreatePenaltyRuleSetRequest(rule_set=bi_pb2.PenaltyRuleSet(
                tenant_id=tenant, effective_month=effective_month, cap_percent=30, incident_min_minutes=240,
                incident_penalty_percent=1, description="demo master service agreement, schedule 3",
                bands=[bi_pb2.PenaltyBand(from_points=a, to_points=b, penalty_percent=p)
                       for a, b, p in DEMO_PENALTY_BANDS])), timeout=rpc_timeout_s)
            created += 1
    return created


async def seed_notifications(target: str, *, token: str, rpc_timeout_s: float = 10.0) -> int:
    """The demo notification set-up, once (Notifications API at `target`): a signed webhook to the
    local sink and an email to its SMTP server, a route of every MAJOR or worse incident to both
    (grouped by region), and an escalation policy paging the NOC mailbox, then the webhook, while
    nobody acknowledges. Returns how many channels were created (0 when they exist)."""
    from towerco.noc.v1 import noc_pb2
    from towerco.notifications.v1 import notifications_pb2 as npb
    from towerco.notifications.v1 import notifications_pb2_grpc

    import sdk
    from mesh import config

    sink = config.load(config.SinkSettings)
    async with sdk.Client(target, token=token, breaker=False) as client:
        api = client.stub(notifications_pb2_grpc.NotificationsServiceStub)
        have = await api.ListChannels(npb.ListChannelsRequest(), timeout=rpc_timeout_s)
        if any(c.name.startswith("demo ") for c in have.channels):
            return 0
        hook = (await api.CreateChannel(npb.CreateChannelRequest(channel=npb.Channel(
            name="demo webhook (local sink)", kind=npb.CHANNEL_KIND_WEBHOOK,
            webhook_url=f"http://127.0.0.1:{sink.http_port}/hooks/noc", signing_secret=sink.secret)),
            timeout=rpc_timeout_s)).channel
        mail = (await api.CreateChannel(npb.CreateChannelRequest(channel=npb.Channel(
            name="demo NOC mailbox (local sink)", kind=npb.CHANNEL_KIND_EMAIL, email_address="noc@towerco.local")),
            timeout=rpc_timeout_s)).channel
        policy = (await api.CreateEscalationPolicy(npb.CreateEscalationPolicyRequest(policy=npb.EscalationPolicy(
            name="demo NOC paging", repeat=1, steps=[
                npb.EscalationStep(channel_ids=[mail.id], escalate_after_seconds=300),
                npb.EscalationStep(channel_ids=[hook.id], escalate_after_seconds=600)])),
            timeout=rpc_timeout_s)).policy
        await api.CreateRoute(npb.CreateRouteRequest(route=npb.Route(
            name="demo: major incidents to the NOC", position=100, channel_ids=[hook.id, mail.id],
            match=npb.IncidentMatcher(min_severity=noc_pb2.INCIDENT_SEVERITY_MAJOR), group_by=["region"],
            group_wait_seconds=30, group_interval_seconds=300, repeat_interval_seconds=4 * 3600, send_resolved=True,
            escalation_policy_id=policy.id)), timeout=rpc_timeout_s)
    return 2


def _running_sites_target(settings: Any) -> str:
    """The Sites endpoint of the running `towerco up` of this home, unless the environment names one."""
    from cli import state

    if settings.is_set("TOWERCO_SITES_TARGET") or settings.is_set("TOWERCO_SITES_PORT"):
        return ""
    root = state.home(settings)
    recorded = state.read_stack(root) or {}
    if recorded.get("state") != "ready" or not state.supervisor_pid(root):
        return ""
    return ((recorded.get("processes") or {}).get("sites") or {}).get("endpoint") or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", type=int, default=300, help="number of sites (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: same seed, same fleet (default 1)")
    parser.add_argument("--target", default="",
                        help="Sites gRPC target (default: TOWERCO_SITES_TARGET/PORT, else the running stack's)")
    parser.add_argument("--token", default="", help="bearer token (default: a dev admin token)")


def run(args: argparse.Namespace) -> int:
    from cli.errors import CliError
    from mesh.config import get_settings

    if args.sites < 0:
        raise CliError("--sites must be >= 0", code=2)
    settings = get_settings()
    target = args.target or _running_sites_target(settings) or settings.target("sites")
    token = args.token
    if not token:
        from mesh.auth import mint_token

        token = mint_token(subject="towerco-seed", tenant="*", roles=["admin"], ttl_s=3600, settings=settings)
    try:
        report = asyncio.run(seed_fleet(target, token=token, sites=args.sites, seed=args.seed))
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.aio.AioRpcError):
            raise CliError(f"Sites API at {target}: {exc.code().name}: {exc.details()}") from exc
        raise CliError(f"{type(exc).__name__}: {exc}") from exc
    print(f"seeded through {target}: {report.summary()}")
    return 0
