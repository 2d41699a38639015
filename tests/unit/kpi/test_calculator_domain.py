"""Hand-computed KPI scenarios for the calculator's pure domain: exact minutes, litres, counts."""

from __future__ import annotations

import pytest

from workers.kpi_calculator import domain as d

H = 29_000_000 - 29_000_000 % 60  # an hour start, as a minute index
SITE = "NBO-0001"
BASE = {"mains_present": 1.0, "dg_running": 0.0, "dc_bus_v": 53.5, "load_a": 40.0,
        "fuel_level_l": 500.0, "battery_soc_pct": 100.0}


def build(overrides: dict[int, dict[str, float]], *, minutes=range(0, 60), gaps=(), links=None):
    """Samples at second 30 of each minute H+m: BASE values, overridden per minute; `gaps` are
    minutes without any sample; links: tenant -> set of minutes the link is down."""
    samples = []
    for m in minutes:
        if m in gaps:
            continue
        values = dict(BASE)
        values.update(overrides.get(m, {}))
        t = (H + m) * 60 + 30
        for metric, v in values.items():
            samples.append((SITE, metric, "", float(t), v))
        for tenant, down in (links or {}).items():
            samples.append((SITE, "tenant_link_up", tenant, float(t), 0.0 if m in down else 1.0))
    return samples


def states_of(samples):
    return {m: d.minute_state(aggs) for (_, m), aggs in d.fold(samples).items()}


def run(samples, site: d.SiteCfg, hours=(H,)):
    return d.evaluate_hours(site, hours, states_of(samples))


def tenancy(tenant="acme", lo=43.0, hi=60.0, min_outage=0):
    return d.TenancyCfg(tenant, lo, hi, min_outage)


def window(a, b, category=1, tenants=()):
    return d.WindowCfg(H + a, H + b, category, frozenset(tenants))


def low(minutes):
    return {m: {"dc_bus_v": 41.0} for m in minutes}


def test_outage_inside_maintenance_window_is_excused():
    site = d.SiteCfg(SITE, tenancies=(tenancy(),), windows=(window(5, 30),))
    _, [row] = run(build(low(range(10, 20))), site)
    assert row.minutes == "U" * 10 + "P" * 10 + "U" * 40
    assert row.minutes.count("P") == 10 and row.minutes.count("L") == 0


def test_outage_straddling_window_edge_splits_exactly():
    site = d.SiteCfg(SITE, tenancies=(tenancy(),), windows=(window(30, 60, category=4),))
    _, [row] = run(build(low(range(25, 45))), site)
    assert row.minutes[25:30] == "LLLLL"
    assert row.minutes[30:45] == "A" * 15
    assert row.minutes.count("U") == 40


def test_window_for_another_tenant_does_not_excuse():
    site = d.SiteCfg(SITE, tenancies=(tenancy("acme"), tenancy("beta")),
                     windows=(window(0, 60, category=3, tenants=["beta"]),))
    _, rows = run(build(low(range(10, 20))), site)
    by = {r.tenant_id: r.minutes for r in rows}
    assert by["acme"].count("L") == 10
    assert by["beta"].count("T") == 10


def test_telemetry_gap_during_outage_is_unknown_not_outage():
    site = d.SiteCfg(SITE, tenancies=(tenancy(),))
    _, [row] = run(build(low(range(10, 30)), gaps=range(15, 20)), site)
    assert row.minutes == "U" * 10 + "L" * 5 + "?" * 5 + "L" * 10 + "U" * 30


def test_unknown_inside_window_gets_window_code():
    site = d.SiteCfg(SITE, tenancies=(tenancy(),), windows=(window(0, 20, category=2),))
    _, [row] = run(build({}, gaps=range(10, 30)), site)
    assert row.minutes == "U" * 10 + "f" * 10 + "?" * 10 + "U" * 30


def test_high_voltage_and_link_down_causes():
    site = d.SiteCfg(SITE, tenancies=(tenancy(hi=56.0),))
    over = {m: {"dc_bus_v": 57.0} for m in range(0, 3)}
    _, [row] = run(build(over, links={"acme": {5, 6}}), site)
    assert row.minutes[:8] == "HHHUUNNU"


def test_minimum_outage_length_ignores_short_runs_even_across_the_hour():
    site = d.SiteCfg(SITE, tenancies=(tenancy(min_outage=5),))
    samples = build(low([10, 11, 12, 58, 59, 60, 61]) | low(range(30, 36)), minutes=range(0, 120))
    _, rows = run(samples, site, hours=(H, H + 60))
    first, second = rows
    assert first.minutes[10:13] == "uuu" and first.minutes[30:36] == "LLLLLL"
    assert first.minutes[58:60] == "uu" and second.minutes[0:2] == "uu"
    site3 = d.SiteCfg(SITE, tenancies=(tenancy(min_outage=3),))
    _, rows = run(samples, site3, hours=(H, H + 60))
    assert rows[0].minutes[58:60] == "LL" and rows[1].minutes[0:2] == "LL"
    assert rows[0].minutes[10:13] == "LLL"


def test_generator_that_starts_late_is_a_fail_to_start():
    site = d.SiteCfg(SITE, dg_capacity_kva=20.0, dg_start_delay_s=120.0, tenancies=(tenancy(),))
    over = {m: {"mains_present": 0.0, "dg_running": 1.0 if m >= 16 else 0.0} for m in range(10, 60)}
    [row], _ = run(build(over), site)
    assert row.dg_fail_to_start == 1
    assert row.dg_starts == 1
    assert row.dg_map.count("1") == 44
    assert row.grid_map.count("1") == 10
    assert row.source_map == "G" * 10 + "B" * 6 + "D" * 44
    # on time: running in minute 12, inside the delay (120 s) plus one minute of grace
    over_ok = {m: {"mains_present": 0.0, "dg_running": 1.0 if m >= 12 else 0.0} for m in range(10, 60)}
    [row], _ = run(build(over_ok), site)
    assert row.dg_fail_to_start == 0 and row.dg_starts == 1


def test_fail_to_start_needs_a_generator():
    site = d.SiteCfg(SITE, dg_capacity_kva=0.0, tenancies=(tenancy(),))
    over = {m: {"mains_present": 0.0} for m in range(10, 60)}
    [row], _ = run(build(over), site)
    assert row.dg_fail_to_start == 0


def test_refuel_during_theft():
    levels = {}
    for m in range(10, 20):
        levels[m] = 500.0 - 2 * (m - 9)  # 498 .. 480
    levels[20] = 480.0 - 2 + 100  # refuel of 100 l while 2 l are being siphoned
    for m in range(21, 30):
        levels[m] = 578.0 - 2 * (m - 20)  # 576 .. 560
    for m in range(30, 60):
        levels[m] = 560.0
    site = d.SiteCfg(SITE, dg_capacity_kva=20.0)
    [row], _ = run(build({m: {"fuel_level_l": v} for m, v in levels.items()}), site)
    assert row.fuel_consumed_l == pytest.approx(38.0)
    assert row.fuel_drop_dg_off_l == pytest.approx(38.0)
    assert row.refuel_l == pytest.approx(98.0)
    assert row.refuels == 1
    assert row.fuel_expected_l == 0.0


def test_fuel_expected_and_energy_by_source():
    site = d.SiteCfg(SITE, dg_capacity_kva=20.0)
    # 30 minutes of grid, 20 of DG, 10 of battery; 50 V x 40 A = 2 kW
    over = {m: {"dc_bus_v": 50.0} for m in range(60)}
    for m in range(30, 50):
        over[m].update({"mains_present": 0.0, "dg_running": 1.0})
    for m in range(50, 60):
        over[m].update({"mains_present": 0.0})
    [row], _ = run(build(over), site)
    assert row.energy_grid_kwh == pytest.approx(2.0 * 30 / 60)
    assert row.energy_dg_kwh == pytest.approx(2.0 * 20 / 60)
    assert row.energy_battery_kwh == pytest.approx(2.0 * 10 / 60)
    rated = 20.0 * 0.8
    assert row.fuel_expected_l == pytest.approx(20 * (0.08415 * rated + 0.246 * 2.0) / 60)
    assert row.soc_pct == 100.0 and row.load_a == 40.0


def test_late_samples_after_the_hour_closed_are_merged_and_recomputed():
    site = d.SiteCfg(SITE, tenancies=(tenancy(),))
    on_time = build({}, gaps=range(40, 50))
    folded = d.fold(on_time)
    states = {m: d.minute_state(a) for (_, m), a in folded.items()}
    _, [before] = d.evaluate_hours(site, [H], states)
    assert before.minutes.count("?") == 10
    late = build(low(range(40, 50)), minutes=range(40, 50))
    late_folded = d.fold(late)
    for key, aggs in late_folded.items():
        d.merge(folded.setdefault(key, {}), aggs)
    touched = {m for (_, m) in late_folded}
    assert d.affected_hours(touched, site.pad_minutes) >= {H}
    states = {m: d.minute_state(a) for (_, m), a in folded.items()}
    _, [after] = d.evaluate_hours(site, [H], states)
    assert after.minutes == "U" * 40 + "L" * 10 + "U" * 10


def test_out_of_order_samples_fold_to_the_same_state():
    samples = build(low([3]), minutes=range(0, 5))
    a = d.fold(samples)
    b = d.fold(list(reversed(samples)))
    assert {k: d.aggs_to_json(v) for k, v in a.items()} == {k: d.aggs_to_json(v) for k, v in b.items()}


def test_aggregates_roundtrip_json_and_skip_bad_samples():
    folded = d.fold([(SITE, "dc_bus_v", "", 60.0, 50.0), (SITE, "dc_bus_v", "", 61.0, float("nan")),
                     (SITE, "bogus", "", 61.0, 1.0), (SITE, "tenant_link_up", "", 61.0, 1.0),
                     (SITE, "cabinet_temp_c", "", 62.0, 31.0)])  # a catalogue metric no KPI reads
    [(key, aggs)] = folded.items()
    assert key == (SITE, 1) and list(aggs) == ["dc_bus_v"]
    again = d.aggs_from_json(d.aggs_to_json(aggs))
    assert again["dc_bus_v"].to_list() == aggs["dc_bus_v"].to_list()


def test_hours_without_samples_give_no_rows_and_site_band_is_tightest():
    site = d.SiteCfg(SITE, tenancies=(tenancy("a", 44, 58), tenancy("b", 45, 60)))
    assert site.band == (45, 58)
    assert d.evaluate_hours(site, [H], {}) == ([], [])
    assert d.SiteCfg(SITE).band == d.DEFAULT_BAND


def test_fuel_sensor_noise_does_not_add_up_and_hours_telescope():
    import random

    rng = random.Random(3)
    samples = []
    for m in range(120):  # DG running, burning 0.05 l/min, four noisy readings a minute
        for k in range(4):
            t = float((H + m) * 60 + k * 15)
            level = 400.0 - 0.05 * (m + k / 4) + rng.gauss(0, 0.5)
            samples += [(SITE, "fuel_level_l", "", t, level), (SITE, "dg_running", "", t, 1.0),
                        (SITE, "mains_present", "", t, 0.0)]
    site = d.SiteCfg(SITE, dg_capacity_kva=20.0)
    rows, _ = run(samples, site, hours=(H, H + 60))
    total = sum(r.fuel_consumed_l for r in rows)
    assert total == pytest.approx(0.05 * 119, abs=1.0)  # first to last minute mean, noise < 1 l
    assert all(r.refuels == 0 and r.fuel_drop_dg_off_l == 0.0 for r in rows)
    # the same noise with the DG stopped and nothing taken: next to nothing "consumed"
    idle = [(s, m, tn, t, 400.0 + rng.gauss(0, 0.5) if m == "fuel_level_l" else 0.0)
            for s, m, tn, t, v in samples]
    [row], _ = run(idle, site)
    assert row.fuel_consumed_l < 1.0 and row.fuel_drop_dg_off_l < 1.0


def test_fold_messages_matches_fold_and_counts_what_it_skips():
    from towerco.telemetry.v1 import telemetry_pb2

    raw = build({5: {"dc_bus_v": 40.0}}, minutes=range(0, 10), links={"acme": {3}})
    raw += [(SITE, "cabinet_temp_c", "", float((H + 1) * 60 + 31), 35.0),  # no KPI reads it
            (SITE, "dc_bus_v", "", float((H + 2) * 60 + 40), float("inf")),  # never finite
            (SITE, "dc_bus_v", "", float((H - 600) * 60), 10.0)]  # older than `oldest`
    batch = telemetry_pb2.TelemetryBatch()
    for site_id, metric, tenant, t, v in raw:
        smp = batch.samples.add(site_id=site_id, metric=metric, tenant_id=tenant, value=v)
        smp.time.FromSeconds(int(t))
    folded, taken, late = d.fold_messages([batch.samples], oldest=float((H - 60) * 60))
    assert late == 1 and taken == len(raw) - 1
    expected = d.fold([s for s in raw if s[3] >= (H - 60) * 60])
    assert {k: d.aggs_to_json(v) for k, v in expected.items()} == folded
    assert all("cabinet_temp_c" not in aggs for aggs in folded.values())
    assert folded[(SITE, H + 5)]["dc_bus_v"][:4] == [1, 40.0, 40.0, 40.0]
    assert folded[(SITE, H + 3)]["tenant_link_up:acme"][2] == 0.0
