"""The bi_engine's decisions: which sites get which recommendation, with what evidence and what
estimated monthly saving. Pure; every rule and threshold is in docs/bi.md ("Recommendations")."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

DG_ON_GRID = 1
BATTERY_DEGRADED = 2
REFUEL = 3
PENALTY_HOTSPOT = 4

MONTH_DAYS = 30.0
DEFAULT_DG_L_PER_H = 2.5  # when a site's own burn rate is unknown (no run hours in the window)
MIN_DG_ON_GRID_H = 1.0  # below this, not worth a visit
SOH_DEGRADED = 0.6  # observed / promised autonomy below this: the bank has lost 40 % or more
MIN_THEORETICAL_H = 0.5  # autonomy figures below this are too small to judge
REFUEL_RESERVE = 0.15  # refuel before the tank falls below 15 % of its size
REFUEL_HORIZON_DAYS = 14
RUN_WINDOW_DAYS = 3  # sites needing fuel within 3 days of a run's first site join that run
TOP_PENALTIES = 20


@dataclass(frozen=True)
class Rec:
    kind: int
    site_id: str
    region: str
    title: str
    evidence: tuple[tuple[str, str], ...]
    saving_minor: int = 0
    currency: str = ""
    due_date: str = ""
    run: str = ""


def _r(v: float, nd: int = 2) -> str:
    return f"{v:.{nd}f}"


# --------------------------------------------------------------------------- DG while grid present


def dg_grid_overlap_minutes(hours: Iterable[tuple[int, int, int]]) -> int:
    """Minutes the generator certainly ran while mains was present, from hourly figures
    (grid present minutes, known minutes, DG run minutes): per hour max(0, g + d − k), a lower
    bound by inclusion–exclusion (exact when mains was present all hour)."""
    return sum(max(0, g + d - k) for g, k, d in hours)


@dataclass(frozen=True)
class SiteEnergy:
    site_id: str
    region: str
    dg_run_hours: float
    fuel_consumed_l: float
    energy_dg_kwh: float


def dg_on_grid(site: SiteEnergy, overlap_minutes: int, window_days: float, *, fuel_price_minor_per_l: float,
               grid_price_minor_per_kwh: float, currency: str) -> Rec | None:
    """Saving: the diesel those hours burnt, less the grid energy that would have replaced it,
    scaled from the window to a month."""
    hours = overlap_minutes / 60.0
    if hours < MIN_DG_ON_GRID_H or window_days <= 0:
        return None
    run = site.dg_run_hours
    l_per_h = site.fuel_consumed_l / run if run > 0 and site.fuel_consumed_l > 0 else DEFAULT_DG_L_PER_H
    kwh_per_h = site.energy_dg_kwh / run if run > 0 else 0.0
    per_window = hours * (l_per_h * fuel_price_minor_per_l - kwh_per_h * grid_price_minor_per_kwh)
    saving = max(0, round(per_window * MONTH_DAYS / window_days))
    return Rec(DG_ON_GRID, site.site_id, site.region,
               f"Generator ran {hours:.1f} h with the grid present: check the ATS / DG controller",
               (("dg_on_grid_hours", _r(hours)), ("window_days", _r(window_days, 1)),
                ("dg_run_hours", _r(run)), ("fuel_l_per_h", _r(l_per_h)), ("dg_kwh_per_h", _r(kwh_per_h))),
               saving, currency)


# --------------------------------------------------------------------------- battery health


def state_of_health(observed_h: float, lower_bound: bool, theoretical_h: float) -> float | None:
    """Observed autonomy on the last battery-only run over the autonomy the bank's capacity
    promises at its state of charge and load; None when it cannot be judged (no complete run,
    or figures too small)."""
    if lower_bound or observed_h <= 0 or theoretical_h < MIN_THEORETICAL_H:
        return None
    return min(1.0, observed_h / theoretical_h)


def battery_degraded(site_id: str, region: str, observed_h: float, lower_bound: bool, theoretical_h: float,
                     penalty_risk_minor: int, currency: str) -> Rec | None:
    soh = state_of_health(observed_h, lower_bound, theoretical_h)
    if soh is None or soh >= SOH_DEGRADED:
        return None
    return Rec(BATTERY_DEGRADED, site_id, region,
               f"Battery bank at about {soh * 100:.0f} % of its capacity: test and replace",
               (("state_of_health", _r(soh, 3)), ("observed_autonomy_h", _r(observed_h)),
                ("capacity_autonomy_h", _r(theoretical_h)), ("dc_low_penalties_minor", str(penalty_risk_minor))),
               penalty_risk_minor, currency)


# --------------------------------------------------------------------------- refuel planning


@dataclass(frozen=True)
class Tank:
    site_id: str
    region: str
    level_l: float
    tank_l: float
    use_l_per_day: float


def need_date(t: Tank, today: date) -> date | None:
    """The day the level reaches the reserve at the site's daily use; None when it never does
    (no use) or the tank size is unknown."""
    if t.tank_l <= 0 or t.use_l_per_day <= 0:
        return None
    reserve = REFUEL_RESERVE * t.tank_l
    days = (t.level_l - reserve) / t.use_l_per_day
    return today + timedelta(days=max(0, math.floor(days)))


@dataclass
class Run:
    region: str
    day: date
    sites: list[tuple[Tank, date, float]] = field(default_factory=list)  # tank, need date, litres

    @property
    def name(self) -> str:
        return f"{self.region}/{self.day.isoformat()}"


def refuel_runs(tanks: Sequence[Tank], today: date, *, horizon_days: int = REFUEL_HORIZON_DAYS) -> list[Run]:
    """Per region, the sites needing fuel within the horizon, grouped into runs: a run is dated
    the earliest need of its sites and takes every site needing fuel within RUN_WINDOW_DAYS of
    it; each site is filled to its tank size as predicted for the run day."""
    by_region: dict[str, list[tuple[Tank, date]]] = defaultdict(list)
    for t in tanks:
        d = need_date(t, today)
        if d is not None and d <= today + timedelta(days=horizon_days):
            by_region[t.region].append((t, d))
    runs = []
    for region in sorted(by_region):
        pending = sorted(by_region[region], key=lambda x: (x[1], x[0].site_id))
        while pending:
            first = pending[0][1]
            run = Run(region, first)
            rest = []
            for t, d in pending:
                if d <= first + timedelta(days=RUN_WINDOW_DAYS):
                    level_then = max(0.0, t.level_l - t.use_l_per_day * (first - today).days)
                    run.sites.append((t, d, round(t.tank_l - level_then, 1)))
                else:
                    rest.append((t, d))
            runs.append(run)
            pending = rest
    return runs


def refuel_recs(runs: Iterable[Run]) -> list[Rec]:
    out = []
    for run in runs:
        for t, d, litres in run.sites:
            out.append(Rec(REFUEL, t.site_id, t.region, f"Refuel {litres:.0f} l on the {run.name} run",
                           (("level_l", _r(t.level_l, 1)), ("tank_l", _r(t.tank_l, 1)),
                            ("use_l_per_day", _r(t.use_l_per_day)), ("litres", _r(litres, 1)),
                            ("sites_in_run", str(len(run.sites)))),
                           due_date=d.isoformat(), run=run.name))
    return out


# --------------------------------------------------------------------------- penalties


@dataclass(frozen=True)
class PenaltyLine:
    site_id: str
    region: str
    tenant_id: str
    penalty_minor: int
    currency: str
    outage_minutes: int
    dc_low_minutes: int


def penalty_hotspots(lines: Iterable[PenaltyLine], *, top: int = TOP_PENALTIES) -> list[Rec]:
    """The sites with the most penalties this month (summed over tenants, per currency)."""
    per: dict[tuple[str, str], list[PenaltyLine]] = defaultdict(list)
    for x in lines:
        if x.penalty_minor > 0:
            per[(x.site_id, x.currency)].append(x)
    ranked = sorted(per.items(), key=lambda kv: (-sum(x.penalty_minor for x in kv[1]), kv[0]))[:top]
    out = []
    for (site, cur), xs in ranked:
        total = sum(x.penalty_minor for x in xs)
        out.append(Rec(PENALTY_HOTSPOT, site, xs[0].region,
                       f"{len(xs)} tenant(s) owed {total / 100:,.2f} {cur} in penalties this month: fix the worst outage cause",
                       (("tenants", ",".join(sorted(x.tenant_id for x in xs))),
                        ("outage_minutes", str(sum(x.outage_minutes for x in xs))),
                        ("dc_low_minutes", str(sum(x.dc_low_minutes for x in xs))), ("penalty_minor", str(total))),
                       total, cur))
    return out


def dc_low_penalty(lines: Iterable[PenaltyLine]) -> dict[str, int]:
    """Per site: the part of its penalties due to DC-low minutes (the battery's share)."""
    out: dict[str, int] = defaultdict(int)
    for x in lines:
        if x.penalty_minor > 0 and x.outage_minutes > 0:
            out[x.site_id] += round(x.penalty_minor * x.dc_low_minutes / x.outage_minutes)
    return dict(out)


# --------------------------------------------------------------------------- scheduled exports

EXPORT_FORMATS = ("csv", "xlsx", "pdf")
FLEET_TENANT = "towerco"  # where the BI service files staff's fleet-wide exports


def last_complete_month(now: date) -> str:
    """The calendar month before the one `now` is in, "YYYY-MM"."""
    first = now.replace(day=1)
    prev = first - timedelta(days=1)
    return f"{prev.year:04d}-{prev.month:02d}"


def export_plan(tenants: Iterable[str], month: str, done: set[tuple[str, str, str]]
                ) -> list[tuple[str, str, str, str]]:
    """(report, tenant, format, idempotency key) of the month's exports still to file: each
    tenant's statement and the fleet energy report, in every format, minus those filed already."""
    wanted = [("statement", t, f) for t in sorted(set(tenants)) for f in EXPORT_FORMATS]
    wanted += [("energy", FLEET_TENANT, f) for f in EXPORT_FORMATS]
    return [(r, t, f, f"bi-engine/{r}/{t}/{month}/{f}") for r, t, f in wanted if (r, t, f) not in done]
