"""A physically plausible fleet of tower sites, stepped in simulated time. Pure and seeded: the same
sites, seed, start and interval give the same samples and the same ground truth.

Per site and step (dt seconds):
- load_a follows a diurnal curve (evening peak) with noise;
- grid outages, some regional (every site of a region goes down together, most of them at once);
- when mains drop the DG auto-starts after a delay, unless it fails to start or the tank is dry;
- the DG burns fuel following the load (plus battery recharge); the tank is refuelled when low;
- fuel theft drains the tank while the DG is off;
- on battery the state of charge falls with the load down to the low-voltage disconnect (LVD),
  after which the site is dark (no DC, tenant links down); power back recharges it at ~C/10;
- cabinet temperature follows the ambient daily cycle; a cooling failure drives it up;
- door openings, rectifier module alarms, tenant link drops;
- telemetry link loss: the site is silent (no samples at all), never zeros.

Every injected fault is recorded as ground truth (type, site, start, end).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

FLOAT_V = 53.5  # rectifier float voltage (-48 V system, magnitude)
BOOST_V = 54.5  # while recharging the battery
LVD_SOC = 12.0  # low-voltage disconnect threshold (% state of charge)
DAY = 86_400.0

# Fault types written to the ground truth (docs/telemetry.md explains each).
GRID_OUTAGE = "grid_outage"
REGIONAL_OUTAGE = "regional_outage"
DG_FAIL_TO_START = "dg_fail_to_start"
FUEL_THEFT = "fuel_theft"
COOLING_FAILURE = "cooling_failure"
DOOR_OPEN = "door_open"
RECTIFIER_FAULT = "rectifier_fault"
LINK_LOSS = "telemetry_link_loss"
TENANT_LINK_DOWN = "tenant_link_down"
LVD = "battery_lvd"
REFUEL = "refuel"  # not a fault, recorded so fuel-theft detection can be scored fairly

# Default rates: expected occurrences per site per day (regional: per region per day).
DEFAULT_RATES: dict[str, float] = {
    GRID_OUTAGE: 0.6,
    REGIONAL_OUTAGE: 0.15,
    DG_FAIL_TO_START: 0.1,  # probability that the DG fails to start on an outage
    FUEL_THEFT: 0.03,
    COOLING_FAILURE: 0.03,
    DOOR_OPEN: 0.4,
    RECTIFIER_FAULT: 0.02,
    LINK_LOSS: 0.05,
    TENANT_LINK_DOWN: 0.05,
}
# (min, max) durations in seconds.
DURATIONS: dict[str, tuple[float, float]] = {
    GRID_OUTAGE: (600, 4 * 3600),
    REGIONAL_OUTAGE: (1800, 6 * 3600),
    FUEL_THEFT: (600, 1800),
    COOLING_FAILURE: (2 * 3600, 12 * 3600),
    DOOR_OPEN: (300, 2400),
    RECTIFIER_FAULT: (1800, 8 * 3600),
    LINK_LOSS: (600, 3 * 3600),
    TENANT_LINK_DOWN: (300, 2 * 3600),
}


class FaultSpecError(ValueError):
    pass


def parse_faults(spec: str | None) -> dict[str, float]:
    """`--faults` syntax: comma-separated `type=rate` (per site per day; dg_fail_to_start is a
    probability per outage), `none` to disable all, or `xN` to scale every default rate.
    Example: "grid_outage=2,fuel_theft=0.5,x1.5"."""
    rates = dict(DEFAULT_RATES)
    if not spec:
        return rates
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item == "none":
            rates = dict.fromkeys(rates, 0.0)
            continue
        if item.startswith("x"):
            try:
                factor = float(item[1:])
            except ValueError as exc:
                raise FaultSpecError(f"bad scale {item!r}: use xN, e.g. x2") from exc
            rates = {k: (min(v * factor, 1.0) if k == DG_FAIL_TO_START else v * factor) for k, v in rates.items()}
            continue
        name, sep, value = item.partition("=")
        if not sep or name not in rates:
            raise FaultSpecError(f"bad fault {item!r}: use type=rate with type in {', '.join(sorted(rates))}")
        try:
            rate = float(value)
        except ValueError as exc:
            raise FaultSpecError(f"bad rate in {item!r}") from exc
        if not math.isfinite(rate) or rate < 0 or (name == DG_FAIL_TO_START and rate > 1):
            raise FaultSpecError(f"rate out of range in {item!r}")
        rates[name] = rate
    return rates


@dataclass(frozen=True)
class SiteSpec:
    site_id: str
    region: str = "default"
    tenants: tuple[str, ...] = ()
    has_grid: bool = True
    has_dg: bool = True
    tank_l: float = 1000.0
    battery_ah: float = 600.0
    base_load_a: float = 40.0
    dg_start_delay_s: float = 120.0
    ambient_offset_c: float = 0.0


@dataclass
class Fault:
    type: str
    site_id: str
    start: float
    end: float | None = None
    detail: dict = field(default_factory=dict)

    def record(self) -> dict:
        out = {"type": self.type, "site_id": self.site_id, "start": self.start, "end": self.end}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class SiteState:
    spec: SiteSpec
    rng: random.Random
    mains: bool = True
    dg_running: bool = False
    dg_failed: bool = False  # this outage: the DG will not start
    mains_lost_at: float | None = None
    fuel_l: float = 0.0
    soc: float = 100.0
    cabinet_c: float = 30.0
    lvd: bool = False
    door_until: float = 0.0
    rectifier_until: float = 0.0
    cooling_until: float = 0.0
    silent_until: float = 0.0
    outage_until: float = 0.0
    theft_until: float = 0.0
    theft_rate_lps: float = 0.0
    refuel_at: float | None = None
    tenant_down_until: dict[str, float] = field(default_factory=dict)
    open: dict[str, Fault] = field(default_factory=dict)


Sample = tuple[str, str, str, float, float]  # site_id, metric, tenant_id, unix time, value


def ambient_c(t: float, offset: float) -> float:
    """Outdoor temperature: 27 °C mean, ±7 °C daily swing peaking at 15:00 UTC."""
    hour = (t % DAY) / 3600.0
    return 27.0 + offset + 7.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)


def diurnal_load(t: float, base: float) -> float:
    """Traffic-driven DC load: lowest around 04:00, peak around 20:00 UTC."""
    hour = (t % DAY) / 3600.0
    return base * (1.0 + 0.2 * math.sin(2 * math.pi * (hour - 14.0) / 24.0) + 0.08 * math.sin(2 * math.pi * (hour - 8.0) / 12.0))


def _duration(rng: random.Random, kind: str) -> float:
    lo, hi = DURATIONS[kind]
    return rng.uniform(lo, hi)


class Fleet:
    """The simulated fleet. Call step(t, dt) with increasing times; it returns the samples of every
    site that is reporting, and `on_fault` receives each fault when it ends (and `close()` flushes
    the ones still open)."""

    def __init__(self, sites: list[SiteSpec], *, seed: int, start: float,
                 rates: dict[str, float] | None = None,
                 on_fault: Callable[[Fault], None] | None = None) -> None:
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.on_fault = on_fault or (lambda f: None)
        self.rng = random.Random(seed)
        self.t = start
        self.states: list[SiteState] = []
        for i, spec in enumerate(sites):
            rng = random.Random(f"{seed}:{i}:{spec.site_id}")
            st = SiteState(spec=spec, rng=rng, mains=spec.has_grid)
            st.fuel_l = spec.tank_l * rng.uniform(0.45, 0.95)
            st.soc = rng.uniform(92.0, 100.0)
            st.cabinet_c = ambient_c(start, spec.ambient_offset_c) + 5.0
            self.states.append(st)
        self.regions: dict[str, list[SiteState]] = {}
        for st in self.states:
            self.regions.setdefault(st.spec.region, []).append(st)
        self.region_outage_until: dict[str, float] = {}
        self.faults_seen = 0

    # -- fault bookkeeping -------------------------------------------------------------------
    def _open(self, st: SiteState, key: str, kind: str, t: float, **detail) -> None:
        if key in st.open:
            return
        st.open[key] = Fault(kind, st.spec.site_id, t, None, detail)
        self.faults_seen += 1

    def _close(self, st: SiteState, key: str, t: float) -> None:
        fault = st.open.pop(key, None)
        if fault is not None:
            fault.end = t
            self.on_fault(fault)

    def close(self) -> None:
        """Flush every fault still open (end = None: it outlasted the run)."""
        for st in self.states:
            for key in list(st.open):
                fault = st.open.pop(key)
                self.on_fault(fault)

    def _chance(self, rng: random.Random, kind: str, dt: float) -> bool:
        rate = self.rates.get(kind, 0.0)
        return rate > 0 and rng.random() < rate * dt / DAY

    # -- the step ----------------------------------------------------------------------------
    def step(self, dt: float) -> list[Sample]:
        self.t += dt
        t = self.t
        for region, members in self.regions.items():
            if self.region_outage_until.get(region, 0.0) <= t and self._chance(self.rng, REGIONAL_OUTAGE, dt):
                until = t + _duration(self.rng, REGIONAL_OUTAGE)
                self.region_outage_until[region] = until
                for st in members:
                    if st.spec.has_grid and self.rng.random() < 0.85:
                        # most sites drop at once; stragglers a few minutes later, all come back ~together
                        st.outage_until = max(st.outage_until, until + self.rng.uniform(-300, 300))
                        self._open(st, "outage", REGIONAL_OUTAGE, t, region=region)
        out: list[Sample] = []
        for st in self.states:
            self._site_step(st, t, dt, out)
        return out

    def _site_step(self, st: SiteState, t: float, dt: float, out: list[Sample]) -> None:
        """One step of one site: each subsystem in turn (the order is part of the seeded
        determinism: every random draw happens in the same sequence), then its samples."""
        mains = self._grid(st, t, dt)
        self._generator(st, t, mains)
        power = self._power(st, t, dt, mains)
        self._fuel(st, t, dt, power)
        cabinet = self._cabinet(st, t, dt, power.powered)
        self._door(st, t, dt)
        self._tenant_links(st, t, dt)
        if self._link_silent(st, t, dt):
            return
        self._samples(st, t, mains, power, cabinet, out)

    def _grid(self, st: SiteState, t: float, dt: float) -> bool:
        """Grid outages; whether mains are present now."""
        spec, rng = st.spec, st.rng
        if spec.has_grid and st.outage_until <= t and self._chance(rng, GRID_OUTAGE, dt):
            st.outage_until = t + _duration(rng, GRID_OUTAGE)
            self._open(st, "outage", GRID_OUTAGE, t)
        mains = spec.has_grid and st.outage_until <= t
        if not mains and st.mains:
            st.mains_lost_at = t
            st.dg_failed = spec.has_dg and rng.random() < self.rates.get(DG_FAIL_TO_START, 0.0)
        if mains and not st.mains:
            self._close(st, "outage", t)
            self._close(st, "dg_fail", t)
            st.mains_lost_at = None
            st.dg_failed = False
        st.mains = mains
        return mains

    def _generator(self, st: SiteState, t: float, mains: bool) -> None:
        """Auto-start after the delay, stop when mains return or the tank is dry."""
        spec = st.spec
        if not spec.has_dg:
            st.dg_running = False
            return
        want_dg = not mains and st.mains_lost_at is not None and t - st.mains_lost_at >= spec.dg_start_delay_s
        if not spec.has_grid:  # off-grid sites run the DG when the battery needs it
            want_dg = st.dg_running or st.soc < 40.0
            if st.dg_running and st.soc >= 98.0:
                want_dg = False
        if want_dg and st.dg_failed and not st.dg_running:
            self._open(st, "dg_fail", DG_FAIL_TO_START, t)
            want_dg = False
        st.dg_running = want_dg and st.fuel_l > 1.0

    def _power(self, st: SiteState, t: float, dt: float, mains: bool) -> _Power:
        """Load and power balance: battery charge or discharge, low-voltage disconnect, the DC bus
        and rectifier faults."""
        spec, rng = st.spec, st.rng
        load = max(0.0, diurnal_load(t, spec.base_load_a) + rng.gauss(0, spec.base_load_a * 0.02))
        powered = mains or st.dg_running
        if powered:
            if st.lvd:
                st.lvd = False
                self._close(st, "lvd", t)
            charge_a = 0.1 * spec.battery_ah if st.soc < 99.5 else 0.0
            st.soc = min(100.0, st.soc + charge_a * dt / 3600.0 / spec.battery_ah * 100.0)
            bus = (BOOST_V if charge_a else FLOAT_V) + rng.gauss(0, 0.05)
            battery_v = bus - 0.1
        else:
            charge_a = 0.0
            if not st.lvd:
                st.soc = max(0.0, st.soc - load * dt / 3600.0 / spec.battery_ah * 100.0)
                if st.soc <= LVD_SOC:
                    st.lvd = True
                    self._open(st, "lvd", LVD, t)
            if st.lvd:
                bus = 0.0
                load = 0.0
                battery_v = 44.0 + st.soc * 0.05
            else:
                bus = 45.0 + 7.5 * st.soc / 100.0 + rng.gauss(0, 0.05)
                battery_v = bus
        if st.rectifier_until > t and powered:
            bus -= 1.5
            battery_v -= 1.5
        elif st.rectifier_until and st.rectifier_until <= t:
            st.rectifier_until = 0.0
            self._close(st, "rectifier", t)
        if powered and st.rectifier_until <= t and self._chance(rng, RECTIFIER_FAULT, dt):
            st.rectifier_until = t + _duration(rng, RECTIFIER_FAULT)
            self._open(st, "rectifier", RECTIFIER_FAULT, t)
        return _Power(load, charge_a, bus, battery_v, powered)

    def _fuel(self, st: SiteState, t: float, dt: float, power: _Power) -> None:
        """Burn follows load (+ recharge), refuel when low, theft only with the DG off."""
        spec, rng, sid = st.spec, st.rng, st.spec.site_id
        if not spec.has_dg:
            return
        if st.dg_running:
            kw = (power.load + power.charge_a) * power.bus / 1000.0 / 0.9
            st.fuel_l = max(0.0, st.fuel_l - (0.9 + 0.28 * kw) * dt / 3600.0)
        if st.refuel_at is None and st.fuel_l < 0.25 * spec.tank_l:
            st.refuel_at = t + rng.uniform(2 * 3600, 24 * 3600)
        if st.refuel_at is not None and t >= st.refuel_at:
            added = 0.95 * spec.tank_l - st.fuel_l
            if added > 0:
                self.on_fault(Fault(REFUEL, sid, t, t, {"litres": round(added, 1)}))
                st.fuel_l += added
            st.refuel_at = None
        if st.theft_until > t:
            if st.dg_running:
                st.theft_until = t  # thieves leave when the DG starts
            else:
                st.fuel_l = max(0.0, st.fuel_l - st.theft_rate_lps * dt)
        if st.theft_until and st.theft_until <= t:
            st.theft_until = 0.0
            self._close(st, "theft", t)
        if not st.dg_running and st.theft_until == 0.0 and st.fuel_l > 0.3 * spec.tank_l \
                and self._chance(rng, FUEL_THEFT, dt):
            duration = _duration(rng, FUEL_THEFT)
            litres = st.fuel_l * rng.uniform(0.15, 0.45)
            st.theft_until = t + duration
            st.theft_rate_lps = litres / duration
            self._open(st, "theft", FUEL_THEFT, t, litres=round(litres, 1))

    def _cabinet(self, st: SiteState, t: float, dt: float, powered: bool) -> float:
        """Cabinet temperature: first-order lag towards ambient + 5 (cooling on) or + 22 (failed);
        returns the reading."""
        spec, rng = st.spec, st.rng
        if st.cooling_until and st.cooling_until <= t:
            st.cooling_until = 0.0
            self._close(st, "cooling", t)
        if st.cooling_until == 0.0 and self._chance(rng, COOLING_FAILURE, dt):
            st.cooling_until = t + _duration(rng, COOLING_FAILURE)
            self._open(st, "cooling", COOLING_FAILURE, t)
        heat = 5.0 if (st.cooling_until == 0.0 and powered) else 22.0
        if not powered and st.lvd:
            heat = 2.0
        target = ambient_c(t, spec.ambient_offset_c) + heat
        st.cabinet_c += (target - st.cabinet_c) * (1.0 - math.exp(-dt / 1800.0))
        return min(85.0, max(-35.0, st.cabinet_c + rng.gauss(0, 0.1)))

    def _door(self, st: SiteState, t: float, dt: float) -> None:
        if st.door_until and st.door_until <= t:
            st.door_until = 0.0
            self._close(st, "door", t)
        if st.door_until == 0.0 and self._chance(st.rng, DOOR_OPEN, dt):
            st.door_until = t + _duration(st.rng, DOOR_OPEN)
            self._open(st, "door", DOOR_OPEN, t)

    def _tenant_links(self, st: SiteState, t: float, dt: float) -> None:
        for tenant in st.spec.tenants:
            until = st.tenant_down_until.get(tenant, 0.0)
            if until and until <= t:
                st.tenant_down_until[tenant] = 0.0
                self._close(st, f"tenant:{tenant}", t)
            elif not until and self._chance(st.rng, TENANT_LINK_DOWN, dt):
                st.tenant_down_until[tenant] = t + _duration(st.rng, TENANT_LINK_DOWN)
                self._open(st, f"tenant:{tenant}", TENANT_LINK_DOWN, t, tenant_id=tenant)

    def _link_silent(self, st: SiteState, t: float, dt: float) -> bool:
        """Telemetry link losses: a silent site sends nothing (silence, not zeros)."""
        if st.silent_until and st.silent_until <= t:
            st.silent_until = 0.0
            self._close(st, "link", t)
        if st.silent_until == 0.0 and self._chance(st.rng, LINK_LOSS, dt):
            st.silent_until = t + _duration(st.rng, LINK_LOSS)
            self._open(st, "link", LINK_LOSS, t)
        return st.silent_until > t

    def _samples(self, st: SiteState, t: float, mains: bool, power: _Power, cabinet: float,
                 out: list[Sample]) -> None:
        spec, rng, sid = st.spec, st.rng, st.spec.site_id
        bus = power.bus
        out.append((sid, "mains_present", "", t, 1.0 if mains else 0.0))
        out.append((sid, "dg_running", "", t, 1.0 if st.dg_running else 0.0))
        if spec.has_dg:
            out.append((sid, "fuel_level_l", "", t, round(max(0.0, st.fuel_l + rng.gauss(0, 0.5)), 1)))
        out.append((sid, "dc_bus_v", "", t, round(max(0.0, bus), 2)))
        out.append((sid, "load_a", "", t, round(power.load, 2)))
        out.append((sid, "battery_soc_pct", "", t, round(st.soc, 2)))
        out.append((sid, "battery_v", "", t, round(max(0.0, power.battery_v), 2)))
        out.append((sid, "cabinet_temp_c", "", t, round(cabinet, 2)))
        out.append((sid, "door_open", "", t, 1.0 if st.door_until > t else 0.0))
        out.append((sid, "rectifier_fault", "", t, 1.0 if st.rectifier_until > t else 0.0))
        for tenant in spec.tenants:
            up = bus > 0 and st.tenant_down_until.get(tenant, 0.0) <= t
            out.append((sid, "tenant_link_up", tenant, t, 1.0 if up else 0.0))


class _Power(NamedTuple):
    """A step's electrical state, from `_power`."""

    load: float
    charge_a: float
    bus: float
    battery_v: float
    powered: bool


BATTERY_ONLY_SHARE = 0.2  # grid sites without a DG
AUTONOMY_H_DG = (2.0, 4.0)  # battery design autonomy (hours at the site's load) with a DG behind it
AUTONOMY_H_BATTERY_ONLY = (3.0, 6.0)  # ... and without one
BANK_SIZES_AH = (150.0, 200.0, 300.0, 400.0, 600.0, 800.0, 1000.0)


def demo_specs(site_ids: list[str], *, seed: int, regions: dict[str, str] | None = None,
               tenants: dict[str, tuple[str, ...]] | None = None) -> list[SiteSpec]:
    """Plausible equipment for each site id, drawn from the seed (region and tenants as given)."""
    rng = random.Random(f"specs:{seed}")
    specs = []
    for sid in site_ids:
        has_grid = rng.random() > 0.05
        # a share of grid sites have no DG: the battery alone bridges an outage (urban sites)
        has_dg = not has_grid or rng.random() > BATTERY_ONLY_SHARE
        tank_l = rng.choice([500.0, 800.0, 1000.0, 1500.0])
        load = rng.uniform(20.0, 70.0)
        # the bank is sized for a design autonomy at the site's load (shorter where a DG backs it
        # up), rounded up to a standard size
        hours = rng.uniform(*(AUTONOMY_H_DG if has_dg else AUTONOMY_H_BATTERY_ONLY))
        battery_ah = next((a for a in BANK_SIZES_AH if a >= load * hours), BANK_SIZES_AH[-1])
        specs.append(SiteSpec(
            site_id=sid,
            region=(regions or {}).get(sid) or f"region-{len(specs) % 4}",
            tenants=(tenants or {}).get(sid, ()),
            has_grid=has_grid,
            has_dg=has_dg,
            tank_l=tank_l if has_dg else 0.0,
            battery_ah=battery_ah,
            base_load_a=load,
            dg_start_delay_s=rng.choice([60.0, 120.0, 180.0]),
            ambient_offset_c=rng.uniform(-4.0, 4.0),
        ))
    return specs
