"""The fleet simulator's physics: seeded, plausible, and honest about the faults it injects."""

from __future__ import annotations

import pytest

from cli.fleet import model
from services.telemetry import domain

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


def run(specs, *, seed=1, rates=None, steps=60, dt=60.0):
    faults: list[model.Fault] = []
    fleet = model.Fleet(specs, seed=seed, start=T0, rates=rates, on_fault=faults.append)
    samples = []
    for _ in range(steps):
        samples.extend(fleet.step(dt))
    return fleet, samples, faults


def series(samples, site, metric):
    return [(t, v) for s, m, _, t, v in samples if s == site and m == metric]


def test_same_seed_same_samples_and_truth():
    specs = model.demo_specs([f"S-{i:03d}" for i in range(20)], seed=3)
    a = run(specs, seed=7, rates=model.parse_faults("x20"), steps=120)
    b = run(specs, seed=7, rates=model.parse_faults("x20"), steps=120)
    assert a[1] == b[1]
    assert [f.record() for f in a[2]] == [f.record() for f in b[2]]
    c = run(specs, seed=8, rates=model.parse_faults("x20"), steps=120)
    assert a[1] != c[1]


def test_every_sample_passes_ingest_validation():
    specs = model.demo_specs([f"S-{i:03d}" for i in range(30)], seed=1,
                             tenants={f"S-{i:03d}": ("opco-a", "opco-b") for i in range(30)})
    fleet, samples, _ = run(specs, rates=model.parse_faults("x30"), steps=24 * 6, dt=600.0)
    assert samples
    now = fleet.t
    for site, metric, tenant, t, value in samples:
        assert domain.check_sample(site, metric, tenant, t, value, known_site=True, now=now,
                                   oldest=now - 90 * 86400) is None, (site, metric, tenant, value)


def test_outage_starts_dg_after_delay_and_mains_return_stops_it():
    spec = model.SiteSpec("S-1", dg_start_delay_s=120)
    rates = model.parse_faults("none")
    fleet = model.Fleet([spec], seed=1, start=T0, rates=rates)
    st = fleet.states[0]
    st.outage_until = T0 + 1800
    out = []
    for _ in range(40):
        out.extend(fleet.step(60))
    mains = series(out, "S-1", "mains_present")
    dg = series(out, "S-1", "dg_running")
    first_off = next(t for t, v in mains if v == 0)
    first_dg = next(t for t, v in dg if v == 1)
    assert first_dg - first_off == pytest.approx(120, abs=61)
    back = next(t for t, v in mains if t > first_off and v == 1)
    assert all(v == 0 for t, v in dg if t >= back)
    fuel = [v for t, v in series(out, "S-1", "fuel_level_l") if first_dg <= t < back]
    assert fuel[-1] < fuel[0]  # the DG burnt fuel


def test_dg_fail_to_start_discharges_battery_to_lvd_then_recharges():
    spec = model.SiteSpec("S-1", battery_ah=100, base_load_a=50)
    rates = model.parse_faults("none,dg_fail_to_start=1")
    faults: list[model.Fault] = []
    fleet = model.Fleet([spec], seed=1, start=T0, rates=rates, on_fault=faults.append)
    fleet.states[0].outage_until = T0 + 4 * 3600
    out = []
    for _ in range(6 * 60):
        out.extend(fleet.step(60))
    soc = series(out, "S-1", "battery_soc_pct")
    bus = series(out, "S-1", "dc_bus_v")
    assert min(v for _, v in soc) <= model.LVD_SOC
    assert any(v == 0 for _, v in bus)  # dark after LVD
    assert soc[-1][1] > 20  # recharging after mains return
    kinds = {f.type for f in faults}
    assert {model.DG_FAIL_TO_START, model.LVD} <= kinds
    assert all(f.end is not None and f.end >= f.start for f in faults)


def test_fuel_theft_drops_level_with_dg_off_and_is_recorded():
    spec = model.SiteSpec("S-1", tank_l=1000, has_grid=True)
    fleet_faults: list[model.Fault] = []
    fleet = model.Fleet([spec], seed=2, start=T0, rates=model.parse_faults("none,fuel_theft=500"),
                        on_fault=fleet_faults.append)
    out = []
    for _ in range(120):
        out.extend(fleet.step(60))
    fleet.close()
    thefts = [f for f in fleet_faults if f.type == model.FUEL_THEFT]
    assert thefts
    f = thefts[0]
    fuel = series(out, "S-1", "fuel_level_l")
    before = max(v for t, v in fuel if t <= f.start)
    after = [v for t, v in fuel if f.end is not None and t >= f.end][0]
    assert before - after > 0.8 * f.detail["litres"] - 5
    assert all(v == 0 for t, v in series(out, "S-1", "dg_running"))


def test_link_loss_is_silence_not_zeros():
    spec = model.SiteSpec("S-1")
    faults: list[model.Fault] = []
    fleet = model.Fleet([spec], seed=5, start=T0, rates=model.parse_faults("none,telemetry_link_loss=200"),
                        on_fault=faults.append)
    out = []
    for _ in range(240):
        out.extend(fleet.step(60))
    losses = [f for f in faults if f.type == model.LINK_LOSS]
    assert losses
    f = losses[0]
    assert not [s for s in out if f.start <= s[3] < f.end]
    assert [s for s in out if s[3] >= f.end]


def test_regional_outage_hits_sites_of_one_region_together():
    specs = [model.SiteSpec(f"S-{i}", region="north" if i < 10 else "south") for i in range(20)]
    faults: list[model.Fault] = []
    fleet = model.Fleet(specs, seed=4, start=T0, rates=model.parse_faults("none,regional_outage=300"),
                        on_fault=faults.append)
    for _ in range(60):
        fleet.step(60)
    fleet.close()
    regional = [f for f in faults if f.type == model.REGIONAL_OUTAGE]
    assert regional
    first = min(f.start for f in regional)
    together = [f for f in regional if f.start == first]
    assert len(together) >= 5
    assert len({f.detail["region"] for f in together}) == 1


def test_cooling_failure_heats_the_cabinet():
    spec = model.SiteSpec("S-1")
    base = run([spec], rates=model.parse_faults("none"), steps=180)[1]
    fleet = model.Fleet([spec], seed=1, start=T0, rates=model.parse_faults("none"))
    fleet.states[0].cooling_until = T0 + 10 * 3600
    hot = []
    for _ in range(180):
        hot.extend(fleet.step(60))
    assert series(hot, "S-1", "cabinet_temp_c")[-1][1] > series(base, "S-1", "cabinet_temp_c")[-1][1] + 10


def test_diurnal_load_peaks_in_the_evening():
    assert model.diurnal_load(T0 - T0 % 86400 + 20 * 3600, 40) > model.diurnal_load(T0 - T0 % 86400 + 4 * 3600, 40)


@pytest.mark.parametrize("spec", ["bogus=1", "grid_outage=-1", "grid_outage=abc", "xq", "dg_fail_to_start=2"])
def test_bad_fault_spec_is_refused(spec):
    with pytest.raises(model.FaultSpecError):
        model.parse_faults(spec)


def test_fault_spec_scales_and_overrides():
    rates = model.parse_faults("x2,fuel_theft=1")
    assert rates[model.GRID_OUTAGE] == 2 * model.DEFAULT_RATES[model.GRID_OUTAGE]
    assert rates[model.FUEL_THEFT] == 1
    assert set(model.parse_faults("none").values()) == {0.0}
