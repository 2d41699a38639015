"""Pure business-intelligence logic: months, penalty rules and their validation, the penalty
engine, closed-month adjustments, energy cost and carbon. No I/O; every formula is in docs/bi.md.

Time is in whole minutes since the epoch (UTC), like the KPI service; money in integer minor
units (cents), rounded half up only where a figure is produced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
SHORTFALL_DECIMALS = 6  # points are rounded to 1e-6 so a band edge is not missed by float noise
MAX_BANDS = 20


# --------------------------------------------------------------------------- months


def parse_month(month: str) -> tuple[int, int]:
    """(year, month) of "YYYY-MM"; ValueError when it is not one."""
    m = MONTH_RE.match(month or "")
    if not m:
        raise ValueError("must be a month YYYY-MM")
    year, mon = int(m.group(1)), int(m.group(2))
    if year < 1970:
        raise ValueError("must be a month from 1970-01")
    return year, mon


def month_span(month: str) -> tuple[int, int]:
    """[first minute of the month, first minute of the next month) in epoch minutes (UTC)."""
    year, mon = parse_month(month)
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) // 60, int(end.timestamp()) // 60


def month_of(epoch_s: float) -> str:
    d = datetime.fromtimestamp(epoch_s, UTC)
    return f"{d.year:04d}-{d.month:02d}"


def month_ended(month: str, now_s: float) -> bool:
    return month_span(month)[1] * 60 <= now_s


def measured_span(month_lo: int, month_hi: int, tenancy_start_s: float | None) -> tuple[int, int] | None:
    """The part of the month a tenancy is measured and billed over: from the start of the UTC day
    the tenancy started (when that is inside the month), to the month's end. None when the
    tenancy started after the month. An unknown start (None or 0) means the whole month."""
    if not tenancy_start_s:
        return month_lo, month_hi
    start_day = int(tenancy_start_s // 86400) * 1440
    lo = max(month_lo, start_day)
    if lo >= month_hi:
        return None
    return lo, month_hi


# --------------------------------------------------------------------------- penalty rules


@dataclass(frozen=True)
class Band:
    from_points: float
    to_points: float  # 0 on the last band: no upper edge
    percent: float

    @property
    def upper(self) -> float:
        return math.inf if self.to_points == 0 else self.to_points

    def contains(self, shortfall: float) -> bool:
        return self.from_points < shortfall <= self.upper


@dataclass(frozen=True)
class RuleSet:
    bands: tuple[Band, ...] = ()
    cap_percent: float = 0.0  # 0 means 100
    incident_min_minutes: int = 0
    incident_percent: float = 0.0
    version: int = 0

    @property
    def cap(self) -> float:
        return self.cap_percent or 100.0


NO_RULES = RuleSet()


def _percent_ok(v: float) -> bool:
    return math.isfinite(v) and 0.0 <= v <= 100.0


def validate_rule_set(rules: RuleSet, effective_month: str) -> list[tuple[str, str]]:
    """Field violations (path under rule_set, description) of a rule set; empty when valid."""
    out: list[tuple[str, str]] = []
    try:
        parse_month(effective_month)
    except ValueError as exc:
        out.append(("effective_month", str(exc)))
    if len(rules.bands) > MAX_BANDS:
        out.append(("bands", f"at most {MAX_BANDS} bands"))
    for i, b in enumerate(rules.bands):
        for name, v in (("from_points", b.from_points), ("to_points", b.to_points)):
            if not (math.isfinite(v) and 0.0 <= v <= 100.0):
                out.append((f"bands[{i}].{name}", "must be between 0 and 100 points"))
        if not _percent_ok(b.percent):
            out.append((f"bands[{i}].penalty_percent", "must be between 0 and 100"))
        if b.to_points != 0 and b.to_points <= b.from_points:
            out.append((f"bands[{i}].to_points", "must be above from_points (or 0 for no upper edge)"))
    order = sorted(range(len(rules.bands)), key=lambda i: rules.bands[i].from_points)
    for lower, upper in zip(order, order[1:], strict=False):
        if rules.bands[lower].upper > rules.bands[upper].from_points:
            out.append((f"bands[{upper}]", f"overlaps bands[{lower}]"))
    if not _percent_ok(rules.cap_percent):
        out.append(("cap_percent", "must be between 0 and 100"))
    if not _percent_ok(rules.incident_percent):
        out.append(("incident_penalty_percent", "must be between 0 and 100"))
    if rules.incident_min_minutes < 0:
        out.append(("incident_min_minutes", "must not be negative"))
    if rules.incident_percent > 0 and rules.incident_min_minutes == 0:
        out.append(("incident_min_minutes", "must be set when incident_penalty_percent is"))
    return out


def pick_rule_set(versions: Iterable[tuple[str, RuleSet]], month: str) -> RuleSet:
    """The newest version whose effective month is not after `month` (NO_RULES when none)."""
    best = NO_RULES
    for effective, rules in versions:
        if effective <= month and rules.version > best.version:
            best = rules
    return best


# --------------------------------------------------------------------------- the penalty engine


def money_percent(amount_minor: int, percent: float) -> int:
    """amount × percent / 100, rounded half up to a minor unit."""
    v = Decimal(amount_minor) * Decimal(repr(float(percent))) / Decimal(100)
    return int(v.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def prorate(fee_minor: int, span_minutes: int, month_minutes: int) -> int:
    """fee × span / month, rounded half up (the whole fee for the whole month)."""
    if month_minutes <= 0 or span_minutes >= month_minutes:
        return fee_minor
    v = Decimal(fee_minor) * Decimal(span_minutes) / Decimal(month_minutes)
    return int(v.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def availability_of(period: int, outage: int, excluded: int) -> tuple[float, bool]:
    """A = (T − D_unplanned − D_excluded) / (T − D_excluded); (1, False) when nothing counts."""
    counted = period - excluded
    if counted <= 0:
        return 1.0, False
    return (counted - outage) / counted, True


def shortfall_points(target: float, availability: float) -> float:
    """(target − A) × 100 in percentage points, rounded to 1e-6; 0 when the target is met."""
    s = round((target - availability) * 100.0, SHORTFALL_DECIMALS)
    return s if s > 0 else 0.0


def band_of(bands: Sequence[Band], shortfall: float) -> int:
    """1-based index of the band holding the shortfall; 0 for none (no shortfall, or a gap)."""
    if shortfall <= 0:
        return 0
    for i, b in enumerate(bands, 1):
        if b.contains(shortfall):
            return i
    return 0


@dataclass(frozen=True)
class TenancyInput:
    """What the engine needs of one tenancy over its measured span."""

    site_id: str
    sla_target: float
    period_minutes: int  # T of the span
    outage_minutes: int  # D_unplanned
    excluded_minutes: int  # D_excluded
    outage_interval_minutes: tuple[int, ...]  # length of each outage interval, for incidents
    monthly_fee_minor: int
    span_minutes: int
    month_minutes: int


@dataclass(frozen=True)
class TenancyPenalty:
    availability: float
    defined: bool
    sla_met: bool
    shortfall_points: float
    prorated_fee_minor: int
    band: int
    band_percent: float
    band_penalty_minor: int
    incidents: int
    incident_penalty_minor: int
    capped: bool
    penalty_minor: int


def penalty(t: TenancyInput, rules: RuleSet) -> TenancyPenalty:
    """One tenancy's penalty for a month (docs/bi.md, "The penalty engine")."""
    a, defined = availability_of(t.period_minutes, t.outage_minutes, t.excluded_minutes)
    met = not defined or a >= t.sla_target
    s = shortfall_points(t.sla_target, a) if defined else 0.0
    fee = prorate(t.monthly_fee_minor, t.span_minutes, t.month_minutes)
    band = band_of(rules.bands, s)
    band_pct = rules.bands[band - 1].percent if band else 0.0
    band_pen = money_percent(fee, band_pct) if band else 0
    incidents = 0
    if rules.incident_min_minutes > 0 and rules.incident_percent > 0:
        incidents = sum(1 for m in t.outage_interval_minutes if m >= rules.incident_min_minutes)
    inc_pen = money_percent(fee, rules.incident_percent * incidents) if incidents else 0
    total = band_pen + inc_pen
    cap = money_percent(fee, rules.cap) if total else 0  # nothing owed: nothing to cap (most lines)
    capped = total > cap
    return TenancyPenalty(
        availability=a, defined=defined, sla_met=met, shortfall_points=s, prorated_fee_minor=fee,
        band=band, band_percent=band_pct, band_penalty_minor=band_pen, incidents=incidents,
        incident_penalty_minor=inc_pen, capped=capped, penalty_minor=min(total, cap))


@dataclass
class Totals:
    fee_minor: int = 0
    penalty_minor: int = 0


def totals_by_currency(lines: Iterable[tuple[str, int, int]]) -> dict[str, Totals]:
    """(currency, prorated fee, penalty) lines summed per currency, ordered by code."""
    out: dict[str, Totals] = {}
    for cur, fee, pen in lines:
        t = out.setdefault(cur, Totals())
        t.fee_minor += fee
        t.penalty_minor += pen
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- closed months


@dataclass(frozen=True)
class LineFigures:
    site_id: str
    availability: float
    penalty_minor: int
    currency_code: str


@dataclass(frozen=True)
class AdjustmentFigures:
    site_id: str
    availability_delta: float
    penalty_delta_minor: int
    currency_code: str
    reason: str


AVAILABILITY_EPSILON = 1e-12


def adjustments(frozen: Iterable[LineFigures], now: Iterable[LineFigures]) -> list[AdjustmentFigures]:
    """Lines of a closed month whose figures differ today from when it was closed, by site."""
    before = {f.site_id: f for f in frozen}
    after = {f.site_id: f for f in now}
    out = []
    for site in sorted(before.keys() | after.keys()):
        b, a = before.get(site), after.get(site)
        if b is None and a is not None:
            out.append(AdjustmentFigures(site, a.availability, a.penalty_minor, a.currency_code, "new tenancy"))
        elif a is None and b is not None:
            out.append(AdjustmentFigures(site, -b.availability, -b.penalty_minor, b.currency_code, "tenancy gone"))
        elif a is not None and b is not None:
            dav = a.availability - b.availability
            dpen = a.penalty_minor - b.penalty_minor
            if abs(dav) > AVAILABILITY_EPSILON or dpen:
                out.append(AdjustmentFigures(site, dav, dpen, a.currency_code, "late data"))
    return out


# --------------------------------------------------------------------------- energy and fuel


@dataclass(frozen=True)
class Tariff:
    grid_price_minor_per_kwh: float = 20.0
    fuel_price_minor_per_l: float = 180.0
    currency_code: str = "USD"
    grid_kg_co2e_per_kwh: float = 0.45  # a typical grid mix; configure per market
    diesel_kg_co2e_per_l: float = 2.68  # combustion of diesel, per litre


@dataclass
class EnergyFigures:
    sites: int = 0
    energy_grid_kwh: float = 0.0
    energy_dg_kwh: float = 0.0
    energy_battery_kwh: float = 0.0
    dg_run_hours: float = 0.0
    dg_starts: int = 0
    fuel_consumed_l: float = 0.0
    fuel_expected_l: float = 0.0
    fuel_drop_dg_off_l: float = 0.0
    refuel_l: float = 0.0
    refuels: int = 0
    solar_kwp: float = 0.0
    suspected_theft_l: float = 0.0
    theft_anomalies: int = 0

    def add(self, other: EnergyFigures, sign: int = 1) -> None:
        """Add `other` (sign −1: take it away, e.g. a region less its sites with their own tariff)."""
        for f in _ENERGY_FIELDS:
            setattr(self, f, getattr(self, f) + sign * getattr(other, f))



_ENERGY_FIELDS = tuple(f for f in EnergyFigures.__dataclass_fields__)


@dataclass(frozen=True)
class EnergyCost:
    fuel_excess_l: float = 0.0
    grid_cost_minor: int = 0
    fuel_cost_minor: int = 0
    cost_minor: int = 0
    carbon_kg_co2e: float = 0.0
    theft_cost_minor: int = 0

    def __add__(self, o: EnergyCost) -> EnergyCost:
        return EnergyCost(self.fuel_excess_l + o.fuel_excess_l, self.grid_cost_minor + o.grid_cost_minor,
                          self.fuel_cost_minor + o.fuel_cost_minor, self.cost_minor + o.cost_minor,
                          self.carbon_kg_co2e + o.carbon_kg_co2e, self.theft_cost_minor + o.theft_cost_minor)


def _half_up(v: float) -> int:
    return int(Decimal(repr(v)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def energy_cost(f: EnergyFigures, tariff: Tariff) -> EnergyCost:
    grid = _half_up(f.energy_grid_kwh * tariff.grid_price_minor_per_kwh)
    fuel = _half_up(f.fuel_consumed_l * tariff.fuel_price_minor_per_l)
    carbon = f.energy_grid_kwh * tariff.grid_kg_co2e_per_kwh + f.fuel_consumed_l * tariff.diesel_kg_co2e_per_l
    theft = _half_up(f.suspected_theft_l * tariff.fuel_price_minor_per_l)
    return EnergyCost(fuel_excess_l=f.fuel_consumed_l - f.fuel_expected_l, grid_cost_minor=grid,
                      fuel_cost_minor=fuel, cost_minor=grid + fuel, carbon_kg_co2e=carbon, theft_cost_minor=theft)


def priced(groups: Iterable[tuple[EnergyFigures, Tariff]]) -> EnergyCost:
    """The cost of a line made of groups of sites, each group with one tariff: each group is priced
    and rounded on its own, the line's cost is their sum (docs/bi.md, "Tariffs")."""
    total = EnergyCost()
    for f, t in groups:
        total = total + energy_cost(f, t)
    return total


def group_by_tariff(parts: Iterable[tuple[EnergyFigures, Tariff]]) -> list[tuple[EnergyFigures, Tariff]]:
    """Sum the figures of the parts that share a tariff (so a region priced site by site and the
    same region priced from its total less its overridden sites round alike)."""
    out: dict[Tariff, EnergyFigures] = {}
    for f, t in parts:
        out.setdefault(t, EnergyFigures()).add(f)
    return [(f, t) for t, f in out.items()]


# --------------------------------------------------------------------------- tariffs per region and site


@dataclass(frozen=True)
class TariffOverride:
    """A region's or a site's prices; None: the next level's (site → region → default)."""

    grid_price_minor_per_kwh: float | None = None
    fuel_price_minor_per_l: float | None = None
    grid_kg_co2e_per_kwh: float | None = None


MAX_PRICE = 1_000_000.0
MAX_GRID_FACTOR = 10.0


def apply_override(base: Tariff, o: TariffOverride | None) -> Tariff:
    if o is None:
        return base
    return replace(
        base,
        grid_price_minor_per_kwh=base.grid_price_minor_per_kwh if o.grid_price_minor_per_kwh is None
        else o.grid_price_minor_per_kwh,
        fuel_price_minor_per_l=base.fuel_price_minor_per_l if o.fuel_price_minor_per_l is None
        else o.fuel_price_minor_per_l,
        grid_kg_co2e_per_kwh=base.grid_kg_co2e_per_kwh if o.grid_kg_co2e_per_kwh is None
        else o.grid_kg_co2e_per_kwh)


def resolve_tariff(default: Tariff, region: TariffOverride | None, site: TariffOverride | None) -> Tariff:
    """The prices of a site: its own override, else its region's, else the default, field by field."""
    return apply_override(apply_override(default, region), site)


def validate_override(region: str, site_id: str, o: TariffOverride) -> list[tuple[str, str]]:
    """Field violations (path under tariff) of an override; empty when valid."""
    out: list[tuple[str, str]] = []
    if bool(region) == bool(site_id):
        out.append(("region" if not region else "site_id", "exactly one of region and site_id must be set"))
    values = (("grid_price_minor_per_kwh", o.grid_price_minor_per_kwh, MAX_PRICE),
              ("fuel_price_minor_per_l", o.fuel_price_minor_per_l, MAX_PRICE),
              ("grid_kg_co2e_per_kwh", o.grid_kg_co2e_per_kwh, MAX_GRID_FACTOR))
    if all(v is None for _, v, _ in values):
        out.append(("grid_price_minor_per_kwh", "set at least one price or factor"))
    for name, v, top in values:
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= top):
            out.append((name, f"must be a finite number between 0 and {top:g}"))
    return out


# --------------------------------------------------------------------------- suspected fuel theft (AIOps)


THEFT_DETECTOR = "stat.fuel_theft"
THEFT_FEATURE = "fuel_drop_l"  # observed: litres the level fell in the window; expected: the burn
DISMISSED_FEEDBACK = (2, 3)  # towerco.aiops.v1.FeedbackKind FALSE_POSITIVE, EXPECTED_BEHAVIOUR


def theft_litres(features: Iterable[tuple[str, float, float]], feedback: int) -> float | None:
    """Litres an AIOps fuel-theft anomaly attributes to theft: the drop it measured beyond the
    burn the load explains, max(0, observed − expected) of its `fuel_drop_l` feature. None when
    the anomaly does not count: dismissed by an operator, or without that feature."""
    if feedback in DISMISSED_FEEDBACK:
        return None
    for name, observed, expected in features:
        if name == THEFT_FEATURE and math.isfinite(observed) and math.isfinite(expected):
            return max(0.0, observed - expected)
    return None
