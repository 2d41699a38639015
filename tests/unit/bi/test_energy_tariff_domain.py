"""Tariffs per region and site, pricing by tariff group, suspected theft litres from AIOps
anomalies, and the bi_engine's export plan (pure functions, hand-computed)."""

from __future__ import annotations

import math
from datetime import date

from services.bi import domain as d
from workers.bi_engine import domain as e

DEFAULT = d.Tariff(grid_price_minor_per_kwh=20.0, fuel_price_minor_per_l=180.0, currency_code="KES",
                   grid_kg_co2e_per_kwh=0.45, diesel_kg_co2e_per_l=2.68)


def test_resolution_is_field_by_field_site_over_region_over_default():
    region = d.TariffOverride(fuel_price_minor_per_l=250.0, grid_kg_co2e_per_kwh=0.2)
    site = d.TariffOverride(grid_price_minor_per_kwh=7.5, fuel_price_minor_per_l=300.0)
    t = d.resolve_tariff(DEFAULT, region, site)
    assert (t.grid_price_minor_per_kwh, t.fuel_price_minor_per_l, t.grid_kg_co2e_per_kwh, t.diesel_kg_co2e_per_l) \
        == (7.5, 300.0, 0.2, 2.68)
    assert d.resolve_tariff(DEFAULT, region, None).fuel_price_minor_per_l == 250.0
    assert d.resolve_tariff(DEFAULT, None, None) == DEFAULT
    assert d.resolve_tariff(DEFAULT, None, d.TariffOverride(grid_price_minor_per_kwh=0.0)).grid_price_minor_per_kwh == 0.0


def test_override_validation():
    ok = d.TariffOverride(fuel_price_minor_per_l=1.0)
    assert d.validate_override("north", "", ok) == []
    assert d.validate_override("", "S1", ok) == []
    assert [f for f, _ in d.validate_override("", "", ok)] == ["region"]
    assert [f for f, _ in d.validate_override("north", "S1", ok)] == ["site_id"]
    assert [f for f, _ in d.validate_override("north", "", d.TariffOverride())] == ["grid_price_minor_per_kwh"]
    bad = d.TariffOverride(grid_price_minor_per_kwh=-1.0, fuel_price_minor_per_l=math.inf, grid_kg_co2e_per_kwh=11.0)
    assert [f for f, _ in d.validate_override("north", "", bad)] == [
        "grid_price_minor_per_kwh", "fuel_price_minor_per_l", "grid_kg_co2e_per_kwh"]
    assert d.validate_override("north", "", d.TariffOverride(fuel_price_minor_per_l=d.MAX_PRICE)) == []


def test_a_line_is_priced_per_tariff_group_and_rounded_per_group():
    cheap = d.resolve_tariff(DEFAULT, None, d.TariffOverride(grid_price_minor_per_kwh=10.0))
    a = d.EnergyFigures(sites=1, energy_grid_kwh=1.25, fuel_consumed_l=2.0, fuel_expected_l=1.5, suspected_theft_l=3.0)
    b = d.EnergyFigures(sites=1, energy_grid_kwh=1.25)
    c = d.EnergyFigures(sites=1, energy_grid_kwh=0.05)
    groups = d.group_by_tariff([(a, DEFAULT), (b, cheap), (c, DEFAULT)])
    assert len(groups) == 2
    cost = d.priced(groups)
    # DEFAULT group: 1.30 kWh x 20 = 26; fuel 2 l x 180 = 360; theft 3 l x 180 = 540. cheap: 12.5 -> 13
    assert (cost.grid_cost_minor, cost.fuel_cost_minor, cost.theft_cost_minor) == (26 + 13, 360, 540)
    assert cost.cost_minor == 26 + 13 + 360 and cost.fuel_excess_l == 0.5
    assert cost.carbon_kg_co2e == (1.30 * 0.45 + 2.0 * 2.68) + 1.25 * 0.45
    rest = d.EnergyFigures()
    rest.add(a)
    rest.add(b)
    rest.add(b, -1)  # a region less a site priced apart
    assert rest == a


def test_theft_litres_from_an_anomaly():
    assert d.theft_litres([("fuel_drop_l_per_min", 1.0, 0.0), ("fuel_drop_l", 40.0, 0.0)], 0) == 40.0
    assert d.theft_litres([("fuel_drop_l", 25.0, 5.0)], 1) == 20.0  # DG on: beyond the burn; confirmed counts
    assert d.theft_litres([("fuel_drop_l", 3.0, 5.0)], 0) == 0.0
    assert d.theft_litres([("fuel_drop_l", 40.0, 0.0)], 2) is None  # false positive
    assert d.theft_litres([("fuel_drop_l", 40.0, 0.0)], 3) is None  # expected behaviour
    assert d.theft_litres([("fuel_drop_l_per_min", 1.0, 0.0)], 0) is None
    assert d.theft_litres([("fuel_drop_l", math.nan, 0.0)], 0) is None


def test_export_plan_and_last_complete_month():
    assert e.last_complete_month(date(2026, 12, 2)) == "2026-11"
    assert e.last_complete_month(date(2026, 1, 31)) == "2025-12"
    plan = e.export_plan(["b", "a", "a"], "2026-11", done={("statement", "a", "pdf")})
    assert [(r, t, f) for r, t, f, _ in plan] == [
        ("statement", "a", "csv"), ("statement", "a", "xlsx"), ("statement", "b", "csv"), ("statement", "b", "xlsx"),
        ("statement", "b", "pdf"), ("energy", "towerco", "csv"), ("energy", "towerco", "xlsx"),
        ("energy", "towerco", "pdf")]
    assert plan[0][3] == "bi-engine/statement/a/2026-11/csv"
    full = {(r, t, f) for r, t, f, _ in plan} | {("statement", "a", "pdf")}
    assert e.export_plan(["a", "b"], "2026-11", done=full) == []
