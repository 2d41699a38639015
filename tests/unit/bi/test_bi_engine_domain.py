"""The bi_engine's rules on hand-computed cases: DG on grid, battery health, refuel runs, penalty
hotspots."""

from __future__ import annotations

from datetime import date

import pytest

from workers.bi_engine import domain as d


def test_dg_grid_overlap_is_an_inclusion_exclusion_lower_bound():
    # (grid present, known, dg run) per hour
    assert d.dg_grid_overlap_minutes([(60, 60, 20)]) == 20  # mains all hour: every DG minute overlaps
    assert d.dg_grid_overlap_minutes([(30, 60, 30)]) == 0  # could be disjoint
    assert d.dg_grid_overlap_minutes([(50, 60, 30)]) == 20  # at least 50 + 30 − 60
    assert d.dg_grid_overlap_minutes([(60, 60, 20), (50, 60, 30), (0, 0, 0)]) == 40


def test_dg_on_grid_saving():
    site = d.SiteEnergy("S1", "north", dg_run_hours=10.0, fuel_consumed_l=30.0, energy_dg_kwh=50.0)
    # 2 h on grid in a 7-day window; 3 l/h at 180 = 540 per h; 5 kWh/h at 20 = 100 per h → 440 per h
    rec = d.dg_on_grid(site, 120, 7.0, fuel_price_minor_per_l=180, grid_price_minor_per_kwh=20, currency="KES")
    assert rec is not None and rec.kind == d.DG_ON_GRID
    assert rec.saving_minor == round(2 * 440 * 30 / 7)  # 3771
    assert dict(rec.evidence)["dg_on_grid_hours"] == "2.00"
    assert d.dg_on_grid(site, 59, 7.0, fuel_price_minor_per_l=180, grid_price_minor_per_kwh=20,
                        currency="KES") is None  # under the 1 h threshold
    unknown = d.SiteEnergy("S2", "north", dg_run_hours=0.0, fuel_consumed_l=0.0, energy_dg_kwh=0.0)
    rec = d.dg_on_grid(unknown, 60, 30.0, fuel_price_minor_per_l=100, grid_price_minor_per_kwh=20, currency="KES")
    assert rec.saving_minor == round(1 * d.DEFAULT_DG_L_PER_H * 100)  # a month's window: no scaling


def test_battery_health():
    assert d.state_of_health(2.0, False, 4.0) == 0.5
    assert d.state_of_health(5.0, False, 4.0) == 1.0  # capped
    assert d.state_of_health(2.0, True, 4.0) is None  # the run ended before the bus dropped: a lower bound
    assert d.state_of_health(0.0, False, 4.0) is None
    assert d.state_of_health(0.1, False, 0.2) is None
    rec = d.battery_degraded("S1", "north", 2.0, False, 4.0, 12_000, "KES")
    assert rec.kind == d.BATTERY_DEGRADED and rec.saving_minor == 12_000
    assert dict(rec.evidence)["state_of_health"] == "0.500"
    assert d.battery_degraded("S1", "north", 2.5, False, 4.0, 0, "KES") is None  # 0.625 ≥ 0.6


def test_need_date_and_refuel_runs():
    today = date(2026, 11, 20)
    # reserve 15 % of 1000 = 150; (450 − 150) / 100 = 3 days
    a = d.Tank("A", "north", 450.0, 1000.0, 100.0)
    assert d.need_date(a, today) == date(2026, 11, 23)
    assert d.need_date(d.Tank("Z", "north", 100.0, 1000.0, 10.0), today) == today  # already below reserve
    assert d.need_date(d.Tank("Z", "north", 500.0, 1000.0, 0.0), today) is None
    b = d.Tank("B", "north", 800.0, 1000.0, 100.0)  # 6.5 → day 26: within 3 days of the 23rd
    c = d.Tank("C", "north", 1000.0, 1000.0, 50.0)  # 17 days: beyond the 14-day horizon
    e = d.Tank("E", "north", 1000.0, 1000.0, 100.0)  # 8.5 → day 28: a second run
    s = d.Tank("S", "south", 300.0, 1000.0, 100.0)  # 1.5 → day 21
    runs = d.refuel_runs([a, b, c, e, s], today)
    assert [(r.name, [t.site_id for t, _, _ in r.sites]) for r in runs] == [
        ("north/2026-11-23", ["A", "B"]), ("north/2026-11-28", ["E"]), ("south/2026-11-21", ["S"])]
    # litres: filled to the tank as predicted on the run day: A 450 − 3×100 = 150 → 850; B 800 − 300 → 500
    assert [litres for _, _, litres in runs[0].sites] == [850.0, 500.0]
    recs = d.refuel_recs(runs)
    assert [(r.site_id, r.due_date, r.run) for r in recs][:2] == [
        ("A", "2026-11-23", "north/2026-11-23"), ("B", "2026-11-26", "north/2026-11-23")]


def test_penalty_hotspots_and_the_battery_share():
    lines = [d.PenaltyLine("A", "n", "t1", 300, "KES", 100, 50), d.PenaltyLine("A", "n", "t2", 200, "KES", 10, 10),
             d.PenaltyLine("B", "n", "t1", 400, "KES", 40, 0), d.PenaltyLine("C", "n", "t1", 0, "KES", 5, 5)]
    recs = d.penalty_hotspots(lines)
    assert [(r.site_id, r.saving_minor) for r in recs] == [("A", 500), ("B", 400)]
    assert dict(recs[0].evidence)["tenants"] == "t1,t2"
    assert d.dc_low_penalty(lines) == {"A": 150 + 200, "B": 0}
    assert len(d.penalty_hotspots(lines, top=1)) == 1


@pytest.mark.parametrize("level,expected", [(150.0, 0), (249.0, 0), (250.0, 1)])
def test_need_date_edges(level, expected):
    today = date(2026, 1, 1)
    got = d.need_date(d.Tank("A", "r", level, 1000.0, 100.0), today)
    assert (got - today).days == expected
