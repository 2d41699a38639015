"""The penalty engine on hand-computed cases: every band edge, the cap, incidents, exclusions,
partial months, tenancies started mid-month; rule validation; adjustments; energy cost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.bi import domain as d

# the contract of these tests: 5 % of the fee for a shortfall up to 0.5 points, 10 % up to
# 1 point, 20 % beyond; 2 % per outage of an hour or more; at most 25 % in all
RULES = d.RuleSet(bands=(d.Band(0, 0.5, 5), d.Band(0.5, 1.0, 10), d.Band(1.0, 0, 20)), cap_percent=25,
                  incident_min_minutes=60, incident_percent=2, version=1)
FEE = 1_000_000  # minor units
T = 100_000  # minutes in the measured span (a round number keeps the arithmetic exact by hand)


def run(outage: int, *, excluded: int = 0, target: float = 0.999, intervals: tuple[int, ...] = (),
        rules: d.RuleSet = RULES, fee: int = FEE, span: int = T, month: int = T, period: int = T):
    return d.penalty(d.TenancyInput(site_id="S-1", sla_target=target, period_minutes=period, outage_minutes=outage,
                                    excluded_minutes=excluded, outage_interval_minutes=intervals,
                                    monthly_fee_minor=fee, span_minutes=span, month_minutes=month), rules)


def epoch_min(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) // 60


# --------------------------------------------------------------------------- band edges


def test_target_met_exactly_costs_nothing():
    p = run(100)  # A = 99900/100000 = 0.999 = target
    assert p.availability == pytest.approx(0.999)
    assert p.sla_met and p.shortfall_points == 0 and p.band == 0 and p.penalty_minor == 0


def test_one_minute_below_target_is_the_first_band():
    p = run(101)  # A = 0.99899: shortfall 0.001 points
    assert not p.sla_met
    assert p.shortfall_points == pytest.approx(0.001)
    assert (p.band, p.band_percent, p.band_penalty_minor, p.penalty_minor) == (1, 5, 50_000, 50_000)


def test_upper_edge_of_a_band_belongs_to_that_band():
    p = run(600)  # A = 0.994: shortfall exactly 0.5 points (float noise removed by the rounding)
    assert p.shortfall_points == 0.5
    assert (p.band, p.penalty_minor) == (1, 50_000)


def test_just_above_an_edge_is_the_next_band():
    p = run(601)  # A = 0.99399: shortfall 0.501
    assert p.shortfall_points == pytest.approx(0.501)
    assert (p.band, p.penalty_minor) == (2, 100_000)


def test_second_edge_and_the_open_last_band():
    assert (run(1100).band, run(1100).penalty_minor) == (2, 100_000)  # shortfall exactly 1.0
    p = run(1101)  # shortfall 1.001
    assert (p.band, p.penalty_minor) == (3, 200_000)
    assert run(50_000).band == 3  # A = 0.5: far below, still the open band


def test_a_shortfall_in_a_gap_between_bands_costs_nothing():
    rules = d.RuleSet(bands=(d.Band(0, 0.5, 5), d.Band(1.0, 2.0, 10)), version=1)
    p = run(800, rules=rules)  # shortfall 0.7: between 0.5 and 1.0
    assert p.shortfall_points == pytest.approx(0.7)
    assert p.band == 0 and p.penalty_minor == 0
    assert run(2101, rules=rules).band == 0  # beyond the last closed band


# --------------------------------------------------------------------------- incidents and cap


def test_incidents_count_only_outages_at_least_the_minimum():
    p = run(130, intervals=(59, 60, 11))  # shortfall 0.03 → band 1 (5 %); one incident (60 min) → 2 %
    assert p.incidents == 1
    assert p.incident_penalty_minor == 20_000
    assert p.penalty_minor == 70_000 and not p.capped


def test_incidents_apply_when_the_target_is_met():
    p = run(90, intervals=(90,))
    assert p.sla_met and p.band == 0
    assert (p.incidents, p.penalty_minor) == (1, 20_000)


def test_cap_cuts_band_plus_incidents():
    p = run(5000, intervals=(60, 120, 4820))  # band 3: 20 %, three incidents: 6 % → 26 % > 25 %
    assert p.band_penalty_minor == 200_000 and p.incident_penalty_minor == 60_000
    assert p.capped and p.penalty_minor == 250_000


def test_cap_exactly_reached_is_not_capped():
    p = run(5000, intervals=(60, 61))  # 20 % + 4 % = 24 % ≤ 25 %
    assert not p.capped and p.penalty_minor == 240_000
    rules = d.RuleSet(bands=RULES.bands, cap_percent=20, version=1)
    p = run(5000, rules=rules)  # exactly the cap
    assert not p.capped and p.penalty_minor == 200_000


def test_no_cap_set_means_the_whole_fee():
    rules = d.RuleSet(bands=(d.Band(0, 0, 60),), incident_min_minutes=1, incident_percent=30, version=1)
    p = run(5000, intervals=(10, 10), rules=rules)  # 60 % + 60 % → the fee at most
    assert p.capped and p.penalty_minor == FEE


def test_no_rules_no_penalty():
    p = run(50_000, intervals=(50_000,), rules=d.NO_RULES)
    assert not p.sla_met and p.shortfall_points > 0
    assert p.penalty_minor == 0 and p.band == 0 and p.incidents == 0


# --------------------------------------------------------------------------- exclusions


def test_excused_minutes_are_excluded_not_outage():
    # a 1,200-minute outage, 700 of it inside a planned-maintenance window: the KPI service counts
    # 500 outage and 700 excluded minutes. A = (100000 − 500 − 700) / (100000 − 700) = 98800/99300
    p = run(500, excluded=700)
    assert p.availability == pytest.approx(98800 / 99300)
    assert p.shortfall_points == pytest.approx(0.403525, abs=1e-6)
    assert p.band == 1 and p.penalty_minor == 50_000
    unexcused = run(1200)  # the same outage without the window: shortfall 1.1 → band 3
    assert unexcused.band == 3 and unexcused.penalty_minor == 200_000


def test_every_minute_excluded_is_undefined_and_costs_nothing():
    p = run(0, excluded=T, intervals=(600,), rules=d.RuleSet(bands=RULES.bands, version=1))
    assert not p.defined and p.sla_met and p.availability == 1.0 and p.penalty_minor == 0


# --------------------------------------------------------------------------- partial months


def test_month_spans():
    assert d.month_span("2026-11") == (epoch_min(2026, 11, 1), epoch_min(2026, 12, 1))
    lo, hi = d.month_span("2026-12")
    assert hi == epoch_min(2027, 1, 1) and hi - lo == 31 * 1440
    assert d.month_span("2026-02")[1] - d.month_span("2026-02")[0] == 28 * 1440
    assert d.month_span("2024-02")[1] - d.month_span("2024-02")[0] == 29 * 1440
    for bad in ("2026-13", "2026-1", "26-01", "", "1969-12"):
        with pytest.raises(ValueError):
            d.month_span(bad)


def test_tenancy_started_mid_month_is_measured_and_billed_from_its_start_day():
    lo, hi = d.month_span("2026-11")
    started = datetime(2026, 11, 16, 10, 30, tzinfo=UTC).timestamp()
    span = d.measured_span(lo, hi, started)
    assert span == (epoch_min(2026, 11, 16), hi)
    minutes = span[1] - span[0]
    assert minutes == 15 * 1440
    # half the month: half the fee, and the penalty percent applies to that half
    p = run(22, span=minutes, month=hi - lo, period=minutes)  # A = 1 − 22/21600 = 0.998981...: 0.0018 pts
    assert p.prorated_fee_minor == 500_000
    assert p.band == 1 and p.penalty_minor == 25_000


def test_tenancy_started_before_or_after_the_month():
    lo, hi = d.month_span("2026-11")
    assert d.measured_span(lo, hi, datetime(2025, 3, 1, tzinfo=UTC).timestamp()) == (lo, hi)
    assert d.measured_span(lo, hi, 0) == (lo, hi)
    assert d.measured_span(lo, hi, datetime(2026, 12, 1, tzinfo=UTC).timestamp()) is None
    last_day = datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp()
    assert d.measured_span(lo, hi, last_day) == (hi - 1440, hi)


def test_rounding_half_up():
    assert d.prorate(1001, 1, 2) == 501  # 500.5
    assert d.prorate(1000, 10, 10) == 1000 and d.prorate(1000, 20, 10) == 1000
    assert d.money_percent(333, 5) == 17  # 16.65
    assert d.money_percent(330, 5) == 17  # 16.5
    assert d.money_percent(329, 5) == 16  # 16.45
    assert d.money_percent(1000, 0.1) == 1


# --------------------------------------------------------------------------- rule validation


def fields(rules: d.RuleSet, month: str = "2026-01") -> list[str]:
    return [f for f, _ in d.validate_rule_set(rules, month)]


def test_valid_rules_pass():
    assert fields(RULES) == []
    assert fields(d.RuleSet()) == []  # no bands: no band penalties, still a valid contract


def test_overlapping_bands_are_refused_whatever_their_order():
    assert fields(d.RuleSet(bands=(d.Band(0, 1, 5), d.Band(0.5, 2, 10)))) == ["bands[1]"]
    assert fields(d.RuleSet(bands=(d.Band(0.5, 2, 10), d.Band(0, 1, 5)))) == ["bands[0]"]
    # an open band must be the last one
    assert fields(d.RuleSet(bands=(d.Band(0, 0, 5), d.Band(1, 2, 10)))) == ["bands[1]"]
    # touching edges do not overlap (upper edge inclusive, lower exclusive)
    assert fields(d.RuleSet(bands=(d.Band(0.5, 1, 10), d.Band(0, 0.5, 5)))) == []


def test_bad_edges_and_percentages_are_refused():
    assert fields(d.RuleSet(bands=(d.Band(1, 1, 5),))) == ["bands[0].to_points"]
    assert fields(d.RuleSet(bands=(d.Band(2, 1, 5),))) == ["bands[0].to_points"]
    assert fields(d.RuleSet(bands=(d.Band(0, 1, 120),))) == ["bands[0].penalty_percent"]
    assert fields(d.RuleSet(bands=(d.Band(0, 1, float("nan")),))) == ["bands[0].penalty_percent"]
    assert fields(d.RuleSet(bands=(d.Band(-1, 1, 5),))) == ["bands[0].from_points"]
    assert fields(d.RuleSet(cap_percent=101)) == ["cap_percent"]
    assert fields(d.RuleSet(incident_percent=-1, incident_min_minutes=5)) == ["incident_penalty_percent"]
    assert fields(d.RuleSet(incident_percent=3)) == ["incident_min_minutes"]
    assert fields(d.RuleSet(), "2026-13") == ["effective_month"]
    assert fields(d.RuleSet(bands=tuple(d.Band(i, i + 1, 1) for i in range(21)))) == ["bands"]


def test_the_newest_version_effective_by_the_month_applies():
    v1 = d.RuleSet(version=1, cap_percent=10)
    v2 = d.RuleSet(version=2, cap_percent=20)
    versions = [("2026-01", v1), ("2026-12", v2)]
    assert d.pick_rule_set(versions, "2026-11") is v1
    assert d.pick_rule_set(versions, "2026-12") is v2
    assert d.pick_rule_set(versions, "2027-03") is v2
    assert d.pick_rule_set(versions, "2025-12") is d.NO_RULES


# --------------------------------------------------------------------------- adjustments


def test_adjustments_show_what_changed_since_closing():
    frozen = [d.LineFigures("A", 0.999, 0, "KES"), d.LineFigures("B", 0.99, 50_000, "KES"),
              d.LineFigures("C", 1.0, 0, "KES")]
    now = [d.LineFigures("A", 0.999, 0, "KES"), d.LineFigures("B", 0.985, 100_000, "KES"),
           d.LineFigures("D", 1.0, 0, "KES")]
    adj = d.adjustments(frozen, now)
    assert [(a.site_id, a.reason, a.penalty_delta_minor) for a in adj] == [
        ("B", "late data", 50_000), ("C", "tenancy gone", 0), ("D", "new tenancy", 0)]
    assert adj[0].availability_delta == pytest.approx(-0.005)
    assert d.adjustments(frozen, frozen) == []


def test_totals_per_currency():
    t = d.totals_by_currency([("KES", 100, 5), ("EUR", 7, 1), ("KES", 50, 0)])
    assert list(t) == ["EUR", "KES"]
    assert (t["KES"].fee_minor, t["KES"].penalty_minor) == (150, 5)


# --------------------------------------------------------------------------- energy


def test_energy_cost_and_carbon():
    tariff = d.Tariff(grid_price_minor_per_kwh=25, fuel_price_minor_per_l=150, grid_kg_co2e_per_kwh=0.5,
                      diesel_kg_co2e_per_l=2.68)
    f = d.EnergyFigures(sites=1, energy_grid_kwh=100.0, fuel_consumed_l=10.5, fuel_expected_l=8.0)
    c = d.energy_cost(f, tariff)
    assert c.grid_cost_minor == 2500  # 100 kWh × 25
    assert c.fuel_cost_minor == 1575  # 10.5 l × 150
    assert c.cost_minor == 4075
    assert c.carbon_kg_co2e == pytest.approx(100 * 0.5 + 10.5 * 2.68)  # 78.14
    assert c.fuel_excess_l == pytest.approx(2.5)


def test_energy_figures_add_up():
    a = d.EnergyFigures(sites=1, energy_grid_kwh=1, dg_starts=2, refuels=1)
    a.add(d.EnergyFigures(sites=2, energy_grid_kwh=2.5, dg_starts=1))
    assert (a.sites, a.energy_grid_kwh, a.dg_starts, a.refuels) == (3, 3.5, 3, 1)
