"""The demo fleet: deterministic, realistic, and valid under the API's own field rules."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from towerco.sites.v1 import sites_pb2

from cli.seed import REGIONS, TENANTS, build_fleet, window_ref
from mesh.validation import violations

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_same_seed_same_fleet_and_a_different_seed_differs() -> None:
    a, b = build_fleet(300, 7, now=NOW), build_fleet(300, 7, now=NOW)
    assert [s.SerializeToString() for s in a.sites] == [s.SerializeToString() for s in b.sites]
    assert [t.SerializeToString() for t in a.tenancies] == [t.SerializeToString() for t in b.tenancies]
    c = build_fleet(300, 8, now=NOW)
    assert [s.SerializeToString() for s in a.sites] != [s.SerializeToString() for s in c.sites]


def test_a_bigger_fleet_keeps_the_smaller_ones_sites() -> None:
    small = {s.id: s for s in build_fleet(30, 1, now=NOW).sites}
    big = {s.id: s for s in build_fleet(300, 1, now=NOW).sites}
    assert len(small) == 30 and len(big) == 300
    assert all(big[i] == site for i, site in small.items())


def test_every_message_passes_the_api_validation_rules() -> None:
    fleet = build_fleet(300, 1, now=NOW)
    for msg in [*fleet.tenants, *fleet.sites, *fleet.tenancies, *fleet.windows]:
        assert violations(msg) == [], msg
    for site in fleet.sites:
        assert violations(sites_pb2.CreateSiteRequest(site=site)) == []


def test_regions_tenants_and_coordinates_are_kenyan() -> None:
    fleet = build_fleet(300, 1, now=NOW)
    by_region = Counter(s.region for s in fleet.sites)
    assert set(by_region) == {r.name for r in REGIONS} and min(by_region.values()) >= 20
    assert {t.id for t in fleet.tenants} == {t.id for t in TENANTS} == {"safaricom", "airtel", "telkom"}
    for site in fleet.sites:
        assert -5.0 < site.location.latitude < 5.0 and 33.5 < site.location.longitude < 42.0
        region = next(r for r in REGIONS if r.name == site.region)
        assert site.id.startswith(region.code + "-")
    assert len({s.id for s in fleet.sites}) == 300


def test_power_configs_follow_the_site_type() -> None:
    fleet = build_fleet(300, 1, now=NOW)
    types = Counter(s.type for s in fleet.sites)
    assert types[sites_pb2.SITE_TYPE_GREENFIELD] > 100 and types[sites_pb2.SITE_TYPE_ROOFTOP] > 20
    for site in fleet.sites:
        p = site.power
        assert p.battery_voltage_v == 48.0
        if site.type == sites_pb2.SITE_TYPE_GREENFIELD:
            assert 15 <= p.dg_capacity_kva <= 30 and 500 <= p.fuel_tank_l <= 1000
            assert 400 <= p.battery_bank_ah <= 800
            if p.grid == sites_pb2.GRID_CONNECTION_NONE:
                assert p.solar_kwp >= 6
        elif site.type == sites_pb2.SITE_TYPE_ROOFTOP:
            assert p.grid != sites_pb2.GRID_CONNECTION_NONE and 200 <= p.battery_bank_ah <= 400
            assert (p.dg_capacity_kva == 0) == (p.fuel_tank_l == 0)
        else:
            assert p.dg_capacity_kva == 0 and p.fuel_tank_l == 0 and p.grid != sites_pb2.GRID_CONNECTION_NONE
    offgrid = [s for s in fleet.sites if s.power.grid == sites_pb2.GRID_CONNECTION_NONE]
    assert offgrid and Counter(s.region for s in offgrid).most_common(1)[0][0] == "garissa"
    assert any(s.power.solar_kwp > 0 and s.power.grid != sites_pb2.GRID_CONNECTION_NONE for s in fleet.sites)


def test_tenancies_and_windows() -> None:
    fleet = build_fleet(300, 1, now=NOW)
    status = {s.id: s.status for s in fleet.sites}
    per_site = Counter(t.site_id for t in fleet.tenancies)
    assert all(status[s] != sites_pb2.SITE_STATUS_PLANNED for s in per_site)
    assert max(per_site.values()) == 3 and Counter(per_site.values())[2] > 20
    assert len({(t.site_id, t.tenant_id) for t in fleet.tenancies}) == len(fleet.tenancies)
    for t in fleet.tenancies:
        assert 0.995 <= t.sla_availability_target <= 0.9995
        assert 43 <= t.dc_voltage_min_v < t.dc_voltage_max_v <= 60
        assert t.currency_code == "KES" and t.monthly_fee_minor >= 3_500_000
    assert 5 <= len(fleet.windows) <= 40
    for w in fleet.windows:
        assert w.end_time.ToDatetime() > w.start_time.ToDatetime()
        assert w.description.startswith(f"[{window_ref(w.site_id)}]")
    assert {w.category for w in fleet.windows} == {sites_pb2.WINDOW_CATEGORY_PLANNED_MAINTENANCE,
                                                   sites_pb2.WINDOW_CATEGORY_FORCE_MAJEURE}


def test_an_empty_fleet_still_has_the_tenants() -> None:
    fleet = build_fleet(0, 1, now=NOW)
    assert fleet.sites == [] and len(fleet.tenants) == 3
