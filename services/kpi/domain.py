"""KPI figures at query time, pure: minute-code counts -> availability with its breakdown, outage
intervals, observed battery autonomy, series buckets. No I/O.

The kpi_calculator worker stores, per site-hour and per tenancy-hour, 60-character minute maps
(codes documented in workers/kpi_calculator/domain.py and docs/kpis.md). Every figure here is a
function of code *counts*, which add up across hours, sites and tenancies; that is why splitting
a period and recombining the parts gives exactly the whole-period figure.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MINUTE_S = 60
HOUR_MIN = 60
DAY_MIN = 1440
MAX_RANGE_MIN = 400 * 24 * 60

EXCLUDED = 1
AVAILABLE = 2
DOWN = 3
POLICIES = (EXCLUDED, AVAILABLE, DOWN)

OUTAGE_CAUSES = {"L": 1, "H": 2, "N": 3}  # code -> towerco.kpi.v1.OutageCause number
EXCUSED = "PFTA"
UNKNOWN_EXCUSED = "pfta"


def codes_counter(maps: Iterable[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for m in maps:
        c.update(m)
    return c


@dataclass
class AvailabilityFigures:
    availability: float
    defined: bool
    unknown_policy: int
    min_outage_minutes: int
    period_minutes: int
    up_minutes: int
    unknown_minutes: int
    outage_total: int
    outage_dc_low: int
    outage_dc_high: int
    outage_link_down: int
    outage_ignored_short: int
    outage_unknown_as_down: int
    excluded_total: int
    excluded_planned_maintenance: int
    excluded_force_majeure: int
    excluded_tenant_caused: int
    excluded_access_denied: int
    excluded_unknown: int
    sla_target: float = 0.0
    sla_met: bool = True


def availability(counts: Mapping[str, int], period_minutes: int, *, policy: int = EXCLUDED,
                 min_outage_minutes: int = 0, sla_target: float = 0.0) -> AvailabilityFigures:
    """A = (T - D_unplanned - D_excluded) / (T - D_excluded) from minute-code counts.

    Minutes of the period with no stored code (no telemetry at all in their hour) count as
    unknown: T minus every stored code. Unknown minutes inside a window ('p','f','t','a') count as
    excluded under the EXCLUDED and DOWN policies and as available under AVAILABLE, so adding a
    window never lowers A under any policy."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy}")
    stored = sum(counts.values())
    if stored > period_minutes:
        raise ValueError("more coded minutes than the period holds")
    low, high, link = counts.get("L", 0), counts.get("H", 0), counts.get("N", 0)
    up = counts.get("U", 0) + counts.get("u", 0)
    unknown = counts.get("?", 0) + (period_minutes - stored)
    excused = {c: counts.get(c, 0) for c in EXCUSED}
    unknown_in_window = {c.upper(): counts.get(c, 0) for c in UNKNOWN_EXCUSED}
    down = low + high + link
    excluded = sum(excused.values())
    as_down = 0
    excluded_unknown = 0
    if policy == EXCLUDED:
        excluded_unknown = unknown
        excluded += unknown + sum(unknown_in_window.values())
        by_cat = {c: excused[c] + unknown_in_window[c] for c in EXCUSED}
    elif policy == DOWN:
        as_down = unknown
        down += unknown
        excluded += sum(unknown_in_window.values())
        by_cat = {c: excused[c] + unknown_in_window[c] for c in EXCUSED}
    else:  # AVAILABLE: unknown minutes, in windows or not, count as up
        by_cat = dict(excused)
    counted = period_minutes - excluded
    defined = counted > 0
    a = (counted - down) / counted if defined else 1.0
    a = min(1.0, max(0.0, a))
    return AvailabilityFigures(
        availability=a, defined=defined, unknown_policy=policy, min_outage_minutes=min_outage_minutes,
        period_minutes=period_minutes, up_minutes=up,
        unknown_minutes=unknown, outage_total=down, outage_dc_low=low, outage_dc_high=high,
        outage_link_down=link, outage_ignored_short=counts.get("u", 0), outage_unknown_as_down=as_down,
        excluded_total=excluded, excluded_planned_maintenance=by_cat["P"],
        excluded_force_majeure=by_cat["F"], excluded_tenant_caused=by_cat["T"],
        excluded_access_denied=by_cat["A"], excluded_unknown=excluded_unknown,
        sla_target=sla_target, sla_met=(not defined) or a >= sla_target,
    )


def availability_value(counts: Mapping[str, int], period_minutes: int, policy: int = EXCLUDED) -> tuple[float, int]:
    """Just (A, minutes counted) of `availability` (for long series): same formula, no breakdown."""
    g = counts.get
    return availability_value_of_groups(
        sum(counts.values()), g("?", 0), g("L", 0) + g("H", 0) + g("N", 0),
        g("P", 0) + g("F", 0) + g("T", 0) + g("A", 0), g("p", 0) + g("f", 0) + g("t", 0) + g("a", 0),
        period_minutes, policy)


def availability_value_of_groups(stored: int, unknown_stored: int, down: int, excluded: int, unknown_in_window: int,
                                 period_minutes: int, policy: int = EXCLUDED) -> tuple[float, int]:
    """`availability_value` from the minute counts grouped as it needs them: every stored minute,
    stored unknown (?), outage (L H N), excused (P F T A), unknown inside a window (p f t a)."""
    unknown = unknown_stored + (period_minutes - stored)
    if policy == EXCLUDED:
        excluded += unknown + unknown_in_window
    elif policy == DOWN:
        down += unknown
        excluded += unknown_in_window
    counted = period_minutes - excluded
    if counted <= 0:
        return 1.0, 0
    return min(1.0, max(0.0, (counted - down) / counted)), counted


# --------------------------------------------------------------------------- time slicing


def check_range(start_s: int, end_s: int, *, unit_min: int = 1) -> list[str]:
    """Problems with a [start, end) range in epoch seconds: empty, too long, or not on whole
    `unit_min` minutes."""
    problems = []
    if end_s <= start_s:
        problems.append("end_time must be after start_time")
    unit = unit_min * MINUTE_S
    if start_s % unit or end_s % unit:
        problems.append("must fall on whole hours" if unit_min == HOUR_MIN else "must fall on whole minutes")
    if end_s - start_s > MAX_RANGE_MIN * MINUTE_S:
        problems.append("must span at most 400 days")
    return problems


def slice_map(hour: int, codes: str, lo: int, hi: int) -> str:
    """The part of an hour's map (hour = minute index of its first minute) inside [lo, hi)."""
    a, b = max(lo, hour) - hour, min(hi, hour + HOUR_MIN) - hour
    return codes[a:b] if b > a else ""


def split_days(first: int, last: int) -> tuple[int, int]:
    """The whole UTC days inside the whole hours [first, last) (minute indexes) as [d1, d2)."""
    d1 = -(-first // DAY_MIN) * DAY_MIN
    d2 = (last // DAY_MIN) * DAY_MIN
    return (d1, d2) if d2 > d1 else (first, first)


def split_edges(lo: int, hi: int) -> tuple[int, int]:
    """The whole hours inside [lo, hi) (minute indexes) as [first, last): the rest is edges."""
    first = -(-lo // HOUR_MIN) * HOUR_MIN
    last = (hi // HOUR_MIN) * HOUR_MIN
    if last < first:
        last = first
    return first, last


def edge_hours(lo: int, hi: int, first: int, last: int) -> list[int]:
    """The hours (minute index of their start) that [lo, hi) only partly covers, given the whole
    hours [first, last) of split_edges: read minute by minute, the whole ones from their sums."""
    edges = []
    if lo < first:
        edges.append(lo - lo % HOUR_MIN)
    if hi > last and (hi - hi % HOUR_MIN) not in edges and hi - hi % HOUR_MIN >= first:
        edges.append(hi - hi % HOUR_MIN)
    return edges


def resolve_policy(stored: tuple[int, int] | None, override: int) -> tuple[int, int]:
    """(unknown policy, min outage minutes) of a tenant: its stored policy, else the default
    (EXCLUDED, 0); a request's unknown-policy override wins over either."""
    policy, minimum = stored if stored is not None else (EXCLUDED, 0)
    return (override or policy, minimum)


# --------------------------------------------------------------------------- intervals


@dataclass
class Interval:
    start: int  # minute index, inclusive
    end: int  # minute index, exclusive
    cause: int

    @property
    def minutes(self) -> int:
        return self.end - self.start


_OUTAGE_RUN = re.compile(r"L+|H+|N+")


def outage_intervals(hour_maps: Iterable[tuple[int, str]], lo: int, hi: int, *, limit: int = 1000
                     ) -> list[Interval]:
    """Runs of consecutive outage minutes of one cause inside [lo, hi), oldest first, merged
    across hour boundaries. `hour_maps` are (hour, codes) pairs of one tenancy."""
    out: list[Interval] = []
    for hour, codes in sorted(hour_maps):
        a, b = max(lo - hour, 0), min(hi - hour, len(codes))
        if b <= a:
            continue
        for run in _OUTAGE_RUN.finditer(codes, a, b):
            start, end, cause = hour + run.start(), hour + run.end(), OUTAGE_CAUSES[run.group()[0]]
            if out and out[-1].end == start and out[-1].cause == cause:
                out[-1].end = end
            else:
                if len(out) >= limit:
                    return out
                out.append(Interval(start, end, cause))
    return out


@dataclass
class ObservedAutonomy:
    start: int | None = None  # minute index of the last battery-only run's start
    minutes: int = 0
    lower_bound: bool = False


def observed_autonomy(hour_maps: Iterable[tuple[int, str, str]], lo: int, hi: int) -> ObservedAutonomy:
    """On the last run of battery-only minutes ('B' in the source map) inside [lo, hi): minutes
    from its start until the DC bus first fell below the band ('L' in the power map), or the run's
    length as a lower bound when it never did. `hour_maps` are (hour, source_map, power_map)."""
    minutes: dict[int, tuple[str, str]] = {}
    for hour, src, pwr in hour_maps:
        for i in range(min(len(src), len(pwr))):
            m = hour + i
            if lo <= m < hi:
                minutes[m] = (src[i], pwr[i])
    runs: list[tuple[int, int]] = []
    for m in sorted(minutes):
        if minutes[m][0] != "B":
            continue
        if runs and runs[-1][1] == m:
            runs[-1] = (runs[-1][0], m + 1)
        else:
            runs.append((m, m + 1))
    if not runs:
        return ObservedAutonomy()
    start, end = runs[-1]
    for m in range(start, end):
        if minutes[m][1] == "L":
            return ObservedAutonomy(start, m - start, False)
    return ObservedAutonomy(start, end - start, True)


def battery_autonomy_h(soc_pct: float | None, load_a: float | None, bank_ah: float) -> float:
    """Hours the bank carries the load: SoC share of the rated ampere-hours over the load current."""
    if soc_pct is None or load_a is None or load_a <= 0 or bank_ah <= 0:
        return 0.0
    return max(0.0, soc_pct) / 100.0 * bank_ah / load_a


# --------------------------------------------------------------------------- site figures


@dataclass
class SiteTotals:
    """Additive site figures over a set of hours (kpi.site_hour rows)."""

    power_known: int = 0
    power_ok: int = 0
    grid_known: int = 0
    grid_present: int = 0
    dg_run_minutes: int = 0
    dg_starts: int = 0
    dg_fail_to_start: int = 0
    fuel_consumed_l: float = 0.0
    fuel_expected_l: float = 0.0
    fuel_drop_dg_off_l: float = 0.0
    refuel_l: float = 0.0
    refuels: int = 0
    energy_grid_kwh: float = 0.0
    energy_dg_kwh: float = 0.0
    energy_battery_kwh: float = 0.0

    def add_maps(self, grid: str, power: str, dg: str) -> None:
        self.power_known += sum(1 for c in power if c != "?")
        self.power_ok += power.count("1")
        self.grid_known += sum(1 for c in grid if c != "?")
        self.grid_present += grid.count("1")
        self.dg_run_minutes += dg.count("1")

    def add_numbers(self, row: Mapping[str, float]) -> None:
        g = row.get
        self.dg_starts += int(g("dg_starts") or 0)
        self.dg_fail_to_start += int(g("dg_fail_to_start") or 0)
        self.refuels += int(g("refuels") or 0)
        self.fuel_consumed_l += float(g("fuel_consumed_l") or 0.0)
        self.fuel_expected_l += float(g("fuel_expected_l") or 0.0)
        self.fuel_drop_dg_off_l += float(g("fuel_drop_dg_off_l") or 0.0)
        self.refuel_l += float(g("refuel_l") or 0.0)
        self.energy_grid_kwh += float(g("energy_grid_kwh") or 0.0)
        self.energy_dg_kwh += float(g("energy_dg_kwh") or 0.0)
        self.energy_battery_kwh += float(g("energy_battery_kwh") or 0.0)

    def merge(self, other: SiteTotals) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def power_availability(self) -> float:
        return self.power_ok / self.power_known if self.power_known else 1.0

    @property
    def grid_availability(self) -> float:
        return self.grid_present / self.grid_known if self.grid_known else 1.0

    @property
    def dg_run_hours(self) -> float:
        return self.dg_run_minutes / 60.0


# --------------------------------------------------------------------------- ranking


@dataclass(order=True)
class Ranked:
    sort_key: tuple[float, str, str]
    site_id: str = field(compare=False)
    tenant_id: str = field(compare=False)
    value: float = field(compare=False)


def rank(entries: Iterable[tuple[str, str, float]], *, lowest_first: bool, limit: int) -> list[Ranked]:
    """Worst first: lowest values (or highest when lowest_first is False), ties by site, tenant."""
    items = [Ranked(((v if lowest_first else -v), s, t), s, t, v) for s, t, v in entries]
    items.sort()
    return items[:limit]


def series_buckets(lo: int, hi: int, step_min: int) -> list[int]:
    """Bucket starts (minute indexes) of [lo, hi) by step."""
    return list(range(lo, hi, step_min))


def bucket_of(minute: int, lo: int, step_min: int) -> int:
    return lo + ((minute - lo) // step_min) * step_min


def sum_counts(parts: Sequence[Mapping[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for p in parts:
        total.update(p)
    return total


_COUNT_FIELDS = (
    "period_minutes", "up_minutes", "unknown_minutes", "outage_total", "outage_dc_low", "outage_dc_high",
    "outage_link_down", "outage_ignored_short", "outage_unknown_as_down", "excluded_total",
    "excluded_planned_maintenance", "excluded_force_majeure", "excluded_tenant_caused",
    "excluded_access_denied", "excluded_unknown",
)


def combine(figs: Sequence[AvailabilityFigures]) -> AvailabilityFigures:
    """Roll figures up (tenancies of a tenant, a region, a fleet): every minute count is summed and
    A is recomputed from the sums, never averaged. Tenancies may use different unknown-minute
    policies: each one's minutes are already classified by its own policy. The rollup's policy and
    minimum are those of its parts when they agree (0 otherwise) and its SLA target is the lowest."""
    sums = {f: sum(getattr(x, f) for x in figs) for f in _COUNT_FIELDS}
    counted = sums["period_minutes"] - sums["excluded_total"]
    defined = counted > 0
    a = min(1.0, max(0.0, (counted - sums["outage_total"]) / counted)) if defined else 1.0
    policies = {x.unknown_policy for x in figs}
    minimums = {x.min_outage_minutes for x in figs}
    target = min((x.sla_target for x in figs), default=0.0)
    return AvailabilityFigures(
        availability=a, defined=defined, unknown_policy=policies.pop() if len(policies) == 1 else 0,
        min_outage_minutes=minimums.pop() if len(minimums) == 1 else 0, sla_target=target,
        sla_met=(not defined) or a >= target, **sums)


# --------------------------------------------------------------------------- paging snapshots


class Snapshots:
    """The figures a paged answer was computed from, kept for its next pages.

    GetTenantAvailability rolls up every tenancy of the tenant on each page, so paging through a
    large tenant used to recompute the whole tenant once per page. The first page (no token)
    computes and stores the figures under the query's key; a continuation page within `ttl_s`
    reuses them, which also makes the pages one consistent snapshot. A miss (another replica,
    expired, evicted) recomputes: correct, only slower. Bounded to `max_entries` queries.
    """

    def __init__(self, *, ttl_s: float = 60.0, max_entries: int = 16) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[object, tuple[float, object]] = {}

    def get(self, key: object, now: float) -> object | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if now - hit[0] > self.ttl_s:
            del self._entries[key]
            return None
        return hit[1]

    def put(self, key: object, value: object, now: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (now, value)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest
