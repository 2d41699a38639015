"""KPI calculation, pure: samples -> minute aggregates -> minute states -> hourly KPI rows, and
when a site's marked hours are due for re-evaluation (`Settling`).

No I/O here. The consumer folds samples into mergeable per-minute aggregates (`fold`, `merge`),
then re-evaluates whole site-hours from the minute aggregates around them (`evaluate_hours`).
Every formula is documented in docs/kpis.md; the letters below are the minute codes stored in the
60-character minute maps of each hour row.

Tenancy minute codes (one per minute of `kpi.tenancy_hour.minutes`):
    U  up: DC bus in the tenancy's band and the link (when reported) up
    u  outage minute in a run shorter than the policy's minimum: ignored, counts as up
    L  outage: DC bus below the band         H  outage: DC bus above the band
    N  outage: tenant link down (DC in band)
    ?  unknown: no DC bus sample in the minute
    P F T A   an outage minute excused by a calendar window (planned maintenance, force majeure,
              tenant caused, access denied)
    p f t a   an unknown minute inside such a window
A window excuses bad minutes only: an up minute inside a window stays up, so declaring a window
can never lower a figure.

Site minute maps: grid ('1' mains present throughout, '0' not, '?' no sample), power ('1' DC in
the site band, 'L' below, 'H' above, '?'), generator ('1' running in the minute, '0', '?'),
source ('G' grid, 'D' generator, 'B' battery, '?').
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

# The site metrics some KPI reads. The catalogue's others (battery_v, cabinet_temp_c, door_open,
# rectifier_fault) are counted and skipped: no KPI uses them, and folding and storing them cost a
# third of the calculator's work (the telemetry service keeps every raw sample).
SITE_METRICS = ("mains_present", "dg_running", "fuel_level_l", "dc_bus_v", "load_a", "battery_soc_pct")
LINK_METRIC = "tenant_link_up"
KNOWN_METRICS = frozenset(SITE_METRICS) | {LINK_METRIC}

DEFAULT_BAND = (43.0, 60.0)
REFUEL_THRESHOLD_L = 5.0  # a rise of more than this within one minute step is a refuel
FUEL_LOOKBACK_MIN = 15  # a fuel change is measured against the last reading at most this old
FTS_GRACE_MIN = 1  # minutes after the start delay before a non-running DG is a fail-to-start
DG_POWER_FACTOR = 0.8
FUEL_A = 0.08415  # l/h per rated kW (no-load consumption)
FUEL_B = 0.246  # l/h per delivered kW

CATEGORY_CODES = {1: "P", 2: "F", 3: "T", 4: "A"}  # WindowCategory number -> excused outage code
UNKNOWN_IN_WINDOW = {"P": "p", "F": "f", "T": "t", "A": "a"}
OUTAGE_CODES = frozenset("LHN")


def minute_of(epoch_s: float) -> int:
    """The minute index (minutes since the Unix epoch) a time falls in."""
    return int(math.floor(epoch_s / 60.0))


# --------------------------------------------------------------------------- aggregation


@dataclass
class Agg:
    """Mergeable summary of one metric's samples in one minute."""

    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    last_t: float = -math.inf
    last_v: float = 0.0

    def add(self, t: float, v: float) -> None:
        self.n += 1
        self.total += v
        self.lo = min(self.lo, v)
        self.hi = max(self.hi, v)
        if t >= self.last_t:
            self.last_t, self.last_v = t, v

    def merge(self, other: Agg) -> None:
        self.n += other.n
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        if other.last_t >= self.last_t:
            self.last_t, self.last_v = other.last_t, other.last_v

    @property
    def avg(self) -> float:
        return self.total / self.n

    def to_list(self) -> list[float]:
        return [self.n, self.total, self.lo, self.hi, self.last_t, self.last_v]

    @classmethod
    def from_list(cls, raw: Sequence[float]) -> Agg:
        return cls(int(raw[0]), float(raw[1]), float(raw[2]), float(raw[3]), float(raw[4]), float(raw[5]))


MinuteAggs = dict[str, Agg]  # key: metric, or "tenant_link_up:<tenant>"


def agg_key(metric: str, tenant_id: str = "") -> str:
    return f"{LINK_METRIC}:{tenant_id}" if metric == LINK_METRIC else metric


RawAgg = list[Any]  # [n, total, lo, hi, last_t, last_v]: an Agg as stored (JSON) and folded on the hot path
RawAggs = dict[str, RawAgg]  # key as in MinuteAggs

# metric -> aggregate key of the site metrics (the link metric's key depends on the tenant)
_SITE_KEYS = {m: m for m in SITE_METRICS}
_LINK_PREFIX = LINK_METRIC + ":"
_LINK_LEN = len(_LINK_PREFIX)


def fold(samples: Iterable[tuple[str, str, str, float, float]]) -> dict[tuple[str, int], MinuteAggs]:
    """Fold (site_id, metric, tenant_id, epoch seconds, value) samples into per site-minute
    aggregates. Unknown metrics and non-finite values are skipped (the ingest API rejects them)."""
    out: dict[tuple[str, int], dict[str, RawAgg]] = {}
    for site_id, metric, tenant_id, t, v in samples:
        if not math.isfinite(t):
            continue
        _fold_one(out, site_id, metric, tenant_id, minute_of(t), t, v)
    return {k: {kk: Agg.from_list(a) for kk, a in aggs.items()} for k, aggs in out.items()}


def _fold_one(out: dict[tuple[str, int], RawAggs], site_id: str, metric: str, tenant_id: str, minute: int, t: float, v: float) -> None:
    key = _SITE_KEYS.get(metric)
    if key is None:
        if metric != LINK_METRIC or not tenant_id:
            return
        key = _LINK_PREFIX + tenant_id
    if not math.isfinite(v):
        return
    aggs = out.get((site_id, minute))
    if aggs is None:
        aggs = out[(site_id, minute)] = {}
    a = aggs.get(key)
    if a is None:
        aggs[key] = [1, 0.0 + v, v, v, t, v]
        return
    a[0] += 1
    a[1] += v
    if v < a[2]:
        a[2] = v
    if v > a[3]:
        a[3] = v
    if t >= a[4]:
        a[4] = t
        a[5] = v


def fold_messages(batches: Sequence[Sequence[Any]], *, oldest: float) -> tuple[dict[tuple[str, int], RawAggs], int, int]:
    """The hot path of `fold`, straight from TelemetryBatch samples (anything with site_id, metric,
    tenant_id, value and a Timestamp-like `time`), in raw form. A sample belongs to the minute of
    its whole epoch seconds; its time (for "latest") is seconds + nanos / 1e9. Samples of a metric
    no KPI reads are skipped first (cheapest); samples older than `oldest` are counted and left out.
    Returns (site-minute -> raw aggregates, samples taken, samples too late): "taken" is every
    sample but the late ones, so it includes the skipped and the non-finite ones."""
    out: dict[tuple[str, int], RawAggs] = {}
    site_keys = _SITE_KEYS
    link_prefix = _LINK_PREFIX
    link_metric = LINK_METRIC
    seen = late = 0
    last_site: str | None = None
    last_minute = -1
    aggs: RawAggs = {}
    for samples in batches:
        seen += len(samples)
        for s in samples:
            metric = s.metric
            key = site_keys.get(metric)
            if key is None:
                if metric != link_metric:
                    continue
                tenant_id = s.tenant_id
                if not tenant_id:
                    continue
                key = link_prefix + tenant_id
            tm = s.time
            sec = tm.seconds
            nanos = tm.nanos
            t = sec + nanos / 1e9 if nanos else sec
            if t < oldest:
                late += 1
                continue
            v = s.value
            if v - v != 0.0:  # nan or infinite
                continue
            site_id = s.site_id
            minute = sec // 60
            if minute != last_minute or site_id != last_site:
                mk = (site_id, minute)
                got = out.get(mk)
                if got is None:
                    got = out[mk] = {}
                aggs = got
                last_site, last_minute = site_id, minute
            a = aggs.get(key)
            if a is None:
                aggs[key] = [1, 0.0 + v, v, v, t, v]
                continue
            a[0] += 1
            a[1] += v
            if v < a[2]:
                a[2] = v
            if v > a[3]:
                a[3] = v
            if t >= a[4]:
                a[4] = t
                a[5] = v
    return out, seen - late, late


def merge_raw(into: RawAggs, other: Mapping[str, RawAgg]) -> RawAggs:
    """`merge` on raw aggregates (`other`'s lists are taken over, not copied)."""
    for key, b in other.items():
        a = into.get(key)
        if a is None:
            into[key] = b
            continue
        a[0] += b[0]
        a[1] += b[1]
        if b[2] < a[2]:
            a[2] = b[2]
        if b[3] > a[3]:
            a[3] = b[3]
        if b[4] >= a[4]:
            a[4] = b[4]
            a[5] = b[5]
    return into


def merge(into: MinuteAggs, other: Mapping[str, Agg]) -> MinuteAggs:
    for key, agg in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = Agg(agg.n, agg.total, agg.lo, agg.hi, agg.last_t, agg.last_v)
        else:
            mine.merge(agg)
    return into


def aggs_to_json(aggs: Mapping[str, Agg]) -> dict[str, list[float]]:
    return {k: a.to_list() for k, a in aggs.items()}


def aggs_from_json(raw: Mapping[str, Sequence[float]]) -> MinuteAggs:
    return {k: Agg.from_list(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- minute state


_NO_LINKS: Mapping[str, int] = MappingProxyType({})


class MinuteState(NamedTuple):
    """What one minute of one site looked like; None means no sample of that metric. (A tuple:
    thousands are built for every re-evaluation round.)"""

    mains: int | None = None  # 1 when present in every sample of the minute
    dg: int | None = None  # 1 when running in any sample of the minute
    dc_min: float | None = None
    dc_max: float | None = None
    dc_avg: float | None = None
    load_a: float | None = None
    fuel_l: float | None = None  # the mean reading of the minute (sensor noise averages out)
    soc_pct: float | None = None
    soc_t: float | None = None
    links: Mapping[str, int] = _NO_LINKS  # tenant -> 1 up in every sample, else 0

    @property
    def power_kw(self) -> float | None:
        if self.dc_avg is None or self.load_a is None:
            return None
        return self.dc_avg * self.load_a / 1000.0


def minute_state(aggs: Mapping[str, Agg]) -> MinuteState:
    return minute_state_raw({k: a.to_list() for k, a in aggs.items()})


_SITE_KEY_SET = frozenset(SITE_METRICS)


def minute_state_raw(raw: Mapping[str, Sequence[float]]) -> MinuteState:
    """The state of a minute from its raw aggregates ([n, total, lo, hi, last_t, last_v] by key,
    as stored); an aggregate without samples counts as absent."""
    get = raw.get
    mains, dg, dc, load, fuel, soc = (get("mains_present"), get("dg_running"), get("dc_bus_v"),
                                      get("load_a"), get("fuel_level_l"), get("battery_soc_pct"))
    links = {k[_LINK_LEN:]: (1 if a[2] >= 0.5 else 0) for k, a in raw.items()
             if k not in _SITE_KEY_SET and k.startswith(_LINK_PREFIX) and a[0] > 0} or _NO_LINKS
    if dc is not None and dc[0] <= 0:
        dc = None
    if soc is not None and soc[0] <= 0:
        soc = None
    return MinuteState(
        None if mains is None or mains[0] <= 0 else (1 if mains[2] >= 0.5 else 0),
        None if dg is None or dg[0] <= 0 else (1 if dg[3] >= 0.5 else 0),
        None if dc is None else float(dc[2]),
        None if dc is None else float(dc[3]),
        None if dc is None else dc[1] / dc[0],
        None if load is None or load[0] <= 0 else load[1] / load[0],
        None if fuel is None or fuel[0] <= 0 else fuel[1] / fuel[0],
        None if soc is None else float(soc[5]),
        None if soc is None else float(soc[4]),
        links,
    )


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TenancyCfg:
    tenant_id: str
    dc_min_v: float = DEFAULT_BAND[0]
    dc_max_v: float = DEFAULT_BAND[1]
    min_outage_minutes: int = 0


@dataclass(frozen=True)
class WindowCfg:
    start_minute: int  # inclusive
    end_minute: int  # exclusive
    category: int  # towerco.sites.v1.WindowCategory number (1..4)
    tenant_ids: frozenset[str] = frozenset()  # empty: every tenant on the site

    def affects(self, tenant_id: str) -> bool:
        return not self.tenant_ids or tenant_id in self.tenant_ids


@dataclass(frozen=True)
class SiteCfg:
    site_id: str
    dg_capacity_kva: float = 0.0
    dg_start_delay_s: float = 0.0
    battery_bank_ah: float = 0.0
    tenancies: tuple[TenancyCfg, ...] = ()
    windows: tuple[WindowCfg, ...] = ()

    @property
    def band(self) -> tuple[float, float]:
        """The site's power band: the tightest of its tenancies' bands, 43-60 V without any."""
        if not self.tenancies:
            return DEFAULT_BAND
        return (max(t.dc_min_v for t in self.tenancies), min(t.dc_max_v for t in self.tenancies))

    @property
    def fts_minutes(self) -> int:
        """Minutes after a mains loss within which the generator must be running."""
        return math.ceil(self.dg_start_delay_s / 60.0) + FTS_GRACE_MIN

    @property
    def pad_minutes(self) -> int:
        """How far outside an hour its evaluation must look (runs, fail-to-start, fuel)."""
        longest_run = max((t.min_outage_minutes for t in self.tenancies), default=0)
        return max(longest_run, self.fts_minutes, FUEL_LOOKBACK_MIN) + 1


# --------------------------------------------------------------------------- minute codes


def power_code(s: MinuteState, lo: float, hi: float) -> str:
    if s.dc_min is None or s.dc_max is None:
        return "?"
    if s.dc_min < lo:
        return "L"
    if s.dc_max > hi:
        return "H"
    return "1"


_BIT_CODE = {None: "?", 0: "0", 1: "1"}  # grid / generator map code of a 0/1/None minute field


def source_code(s: MinuteState) -> str:
    if s.mains == 1:
        return "G"
    if s.dg == 1:
        return "D"
    if s.mains == 0:
        return "B"
    return "?"


def window_codes(windows: Sequence[WindowCfg], tenant_id: str, start: int, n: int) -> list[str | None]:
    """Per minute of [start, start+n): the excusing category code, lowest category number first."""
    out: list[str | None] = [None] * n
    for w in sorted(windows, key=lambda w: -w.category):
        if not w.affects(tenant_id) or w.category not in CATEGORY_CODES:
            continue
        a, b = max(w.start_minute, start), min(w.end_minute, start + n)
        for m in range(a, b):
            out[m - start] = CATEGORY_CODES[w.category]
    return out


def tenancy_codes(states: Sequence[MinuteState | None], t: TenancyCfg,
                  windows: Sequence[WindowCfg], start: int) -> str:
    """The tenancy's minute codes for the minutes start, start+1, ... (one per state)."""
    raw: list[str] = []
    for s in states:
        if s is None or s.dc_min is None or s.dc_max is None:
            raw.append("?")
        elif s.dc_min < t.dc_min_v:
            raw.append("L")
        elif s.dc_max > t.dc_max_v:
            raw.append("H")
        elif s.links.get(t.tenant_id, 1) == 0:
            raw.append("N")
        else:
            raw.append("U")
    # Short runs are judged on the outage as it happened (windows do not cut runs), then windows
    # excuse what still counts; so a window can only ever turn a counted minute into an excused one.
    codes = list(ignore_short_outages("".join(raw), t.min_outage_minutes))
    excused = window_codes(windows, t.tenant_id, start, len(codes))
    for i, cat in enumerate(excused):
        if cat is None:
            continue
        if codes[i] in OUTAGE_CODES:
            codes[i] = cat
        elif codes[i] == "?":
            codes[i] = UNKNOWN_IN_WINDOW[cat]
    return "".join(codes)


def ignore_short_outages(codes: str, min_minutes: int) -> str:
    """Turn runs of consecutive outage minutes (any cause) shorter than min_minutes into 'u'."""
    if min_minutes <= 1:
        return codes
    out = list(codes)
    i = 0
    while i < len(out):
        if out[i] in OUTAGE_CODES:
            j = i
            while j < len(out) and out[j] in OUTAGE_CODES:
                j += 1
            if j - i < min_minutes:
                out[i:j] = ["u"] * (j - i)
            i = j
        else:
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------- hour evaluation


@dataclass
class SiteHour:
    """One site-hour's KPI row (kpi.site_hour)."""

    site_id: str
    hour: int  # minute index of the hour's first minute
    grid_map: str
    power_map: str
    dg_map: str
    source_map: str
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
    soc_pct: float | None = None  # the latest minute of the hour with both SoC and load
    load_a: float | None = None
    soc_time: float | None = None
    samples_minutes: int = 0  # minutes of the hour with any sample


@dataclass
class TenancyHour:
    """One tenancy-hour's row (kpi.tenancy_hour): its 60 minute codes."""

    site_id: str
    tenant_id: str
    hour: int
    minutes: str


def hour_range(minute_lo: int, minute_hi: int) -> list[int]:
    """The hour starts (minute index) of every hour overlapping [minute_lo, minute_hi)."""
    first = minute_lo - minute_lo % 60
    return list(range(first, minute_hi, 60))


def evaluate_hours(site: SiteCfg, hours: Iterable[int], states: Mapping[int, MinuteState]
                   ) -> tuple[list[SiteHour], list[TenancyHour]]:
    """Evaluate whole site-hours. `states` must hold every minute with data in
    [hour - site.pad_minutes, hour + 60 + site.pad_minutes) for each hour; missing minutes are
    unknown. Hours with no sample at all in the hour itself give no rows."""
    site_rows: list[SiteHour] = []
    ten_rows: list[TenancyHour] = []
    pad = site.pad_minutes
    lo, hi = site.band
    for h in sorted(set(hours)):
        if not any(m in states for m in range(h, h + 60)):
            continue
        start = h - pad
        span = [states.get(m) for m in range(start, h + 60 + pad)]
        hour_states = span[pad:pad + 60]
        site_rows.append(_site_hour(site, h, span, pad, hour_states, lo, hi))
        for t in site.tenancies:
            codes = tenancy_codes(span, t, site.windows, start)
            ten_rows.append(TenancyHour(site.site_id, t.tenant_id, h, codes[pad:pad + 60]))
    return site_rows, ten_rows


def _site_hour(site: SiteCfg, h: int, span: Sequence[MinuteState | None], pad: int,
               hour_states: Sequence[MinuteState | None], lo: float, hi: float) -> SiteHour:
    grid: list[str] = []
    power: list[str] = []
    dg: list[str] = []
    source: list[str] = []
    known = 0
    for s in hour_states:
        if s is None:
            grid.append("?")
            power.append("?")
            dg.append("?")
            source.append("?")
            continue
        known += 1
        grid.append(_BIT_CODE[s.mains])
        power.append(power_code(s, lo, hi))
        dg.append(_BIT_CODE[s.dg])
        source.append(source_code(s))
    row = SiteHour(site_id=site.site_id, hour=h, grid_map="".join(grid), power_map="".join(power),
                   dg_map="".join(dg), source_map="".join(source), samples_minutes=known)
    rated_kw = site.dg_capacity_kva * DG_POWER_FACTOR
    for i in range(pad, pad + 60):
        s = span[i]
        if s is None:
            continue
        prev = span[i - 1]
        # generator starts and fail-to-start
        if s.dg == 1 and prev is not None and prev.dg == 0:
            row.dg_starts += 1
        if (site.dg_capacity_kva > 0 and s.mains == 0 and prev is not None and prev.mains == 1
                and _fails_to_start(span, i, site.fts_minutes)):
            row.dg_fail_to_start += 1
        # energy by source
        kw = s.power_kw
        if kw is not None:
            kwh = kw / 60.0
            src = source_code(s)
            if src == "G":
                row.energy_grid_kwh += kwh
            elif src == "D":
                row.energy_dg_kwh += kwh
            elif src == "B":
                row.energy_battery_kwh += kwh
        if s.dg == 1:
            row.fuel_expected_l += (FUEL_A * rated_kw + FUEL_B * (kw or 0.0)) / 60.0
        # refuels: a rise of more than REFUEL_THRESHOLD_L against the previous reading
        if s.fuel_l is not None:
            last_fuel = _previous_fuel(span, i)
            if last_fuel is not None and s.fuel_l - last_fuel[2] > REFUEL_THRESHOLD_L:
                row.refuel_l += s.fuel_l - last_fuel[2]
                if not _was_refuelling(span, last_fuel[0]):
                    row.refuels += 1
        if s.soc_pct is not None and s.load_a is not None:
            row.soc_pct, row.load_a, row.soc_time = s.soc_pct, s.load_a, s.soc_t
    _fuel_balance(row, span, pad)
    return row


def _previous_fuel(span: Sequence[MinuteState | None], i: int) -> tuple[int, MinuteState, float] | None:
    """(index, minute, fuel level) of the latest minute before span[i], at most FUEL_LOOKBACK_MIN
    back, with a fuel reading."""
    for back in range(1, FUEL_LOOKBACK_MIN + 1):
        if i - back < 0:
            return None
        p = span[i - back]
        if p is not None and p.fuel_l is not None:
            return i - back, p, p.fuel_l
    return None


def _fuel_balance(row: SiteHour, span: Sequence[MinuteState | None], pad: int) -> None:
    """Fuel consumed = level at the hour's start - level at its end + refuelled volume, where the
    level at a boundary is the latest minute mean before it (at most FUEL_LOOKBACK_MIN back; else
    the hour's first / last reading). A net balance, so sensor noise does not add up, and hours
    telescope: consecutive hours share their boundary level. The part lost with the generator
    stopped (theft indicator) is the same balance over each run of steps in which it ran in
    neither minute. Both are clipped at 0."""
    readings = [m.fuel_l for m in span[pad:pad + 60] if m is not None and m.fuel_l is not None]
    if not readings:
        return
    before_start = _previous_fuel(span, pad)
    before_end = _previous_fuel(span, pad + 60)
    start = before_start[2] if before_start is not None else readings[0]
    end = before_end[2] if before_end is not None else readings[-1]
    row.fuel_consumed_l = max(0.0, start - end + row.refuel_l)
    # generator-off runs
    run_start: float | None = None
    run_last: float | None = None
    run_refuel = 0.0
    drop = 0.0
    for i in range(pad, pad + 60):
        s = span[i]
        if s is None or s.fuel_l is None:
            continue
        last_fuel = _previous_fuel(span, i)
        if last_fuel is None:
            continue
        _, p, p_fuel = last_fuel
        if s.dg == 1 or p.dg == 1:
            if run_start is not None and run_last is not None:
                drop += max(0.0, run_start - run_last + run_refuel)
            run_start = None
            continue
        if run_start is None:
            run_start, run_refuel = p_fuel, 0.0
        delta = s.fuel_l - p_fuel
        if delta > REFUEL_THRESHOLD_L:
            run_refuel += delta
        run_last = s.fuel_l
    if run_start is not None and run_last is not None:
        drop += max(0.0, run_start - run_last + run_refuel)
    row.fuel_drop_dg_off_l = drop


def _fails_to_start(span: Sequence[MinuteState | None], i: int, k: int) -> bool:
    """Mains was lost at span[i]: the DG fails to start when in none of the minutes i..i+k it
    runs or mains returns, and the minute i+k shows it stopped."""
    last = i + k
    if last >= len(span):
        return False
    for j in range(i, last + 1):
        s = span[j]
        if s is not None and (s.dg == 1 or s.mains == 1):
            return False
    end = span[last]
    return end is not None and end.dg == 0


def _was_refuelling(span: Sequence[MinuteState | None], i: int) -> bool:
    """Whether the reading at span[i] was itself the end of a refuel step (so a rise continuing
    from it is the same refuel)."""
    s = span[i]
    if s is None or s.fuel_l is None:
        return False
    for back in range(1, FUEL_LOOKBACK_MIN + 1):
        if i - back < 0:
            return False
        p = span[i - back]
        if p is not None and p.fuel_l is not None:
            return s.fuel_l - p.fuel_l > REFUEL_THRESHOLD_L
    return False


def affected_hours(minutes: Iterable[int], pad: int) -> set[int]:
    """Hours whose evaluation reads any of these minutes (the minute's own hour and any hour
    within `pad` minutes of it)."""
    out: set[int] = set()
    for m in minutes:
        for h in hour_range(m - pad, m + pad + 1):
            out.add(h)
    return out


def code_counts(codes: str) -> dict[str, int]:
    """How many minutes carry each code (every code present, zero when absent)."""
    out = dict.fromkeys("UuLHN?PFTApfta", 0)
    for c in codes:
        out[c] = out.get(c, 0) + 1
    return out


def default_availability(codes: str) -> tuple[float, bool]:
    """A over the given minutes under the default policy (unknown minutes excluded), for the
    hour events; the KPI service computes every policy at query time from the same counts."""
    return default_availability_of_counts(code_counts(codes), len(codes))


def default_availability_of_counts(c: Mapping[str, int], minutes: int) -> tuple[float, bool]:
    """`default_availability` from the minutes' counts by code (as stored with each hour row)."""
    down = c["L"] + c["H"] + c["N"]
    excluded = sum(c[x] for x in "PFTApfta?")
    counted = minutes - excluded
    if counted <= 0:
        return 1.0, False
    return (counted - down) / counted, True


# --------------------------------------------------------------------------- scheduling


class Settling:
    """When a site's marked hours are due for re-evaluation: once no telemetry has touched the
    site for `settle_s`, or once it has waited `max_delay_s` since it was first touched after its
    last evaluation. A site it has not seen touched (marked by the register path, or by an earlier
    run of the process) is due at once. Times are monotonic seconds."""

    def __init__(self, settle_s: float, max_delay_s: float) -> None:
        self.settle_s = settle_s
        self.max_delay_s = max_delay_s
        self._touched: dict[str, list[float]] = {}  # site -> [first, last] touch since its evaluation

    def touch(self, site_ids: Iterable[str], now: float) -> None:
        for site_id in site_ids:
            t = self._touched.get(site_id)
            if t is None:
                self._touched[site_id] = [now, now]
            else:
                t[1] = now

    def due(self, site_ids: Iterable[str], now: float) -> list[str]:
        out = []
        for site_id in site_ids:
            t = self._touched.get(site_id)
            if t is None or now - t[1] >= self.settle_s or now - t[0] >= self.max_delay_s:
                out.append(site_id)
        return out

    def evaluated(self, site_ids: Iterable[str], started: float) -> None:
        """These sites were re-evaluated from `started` on: touched since, they wait from then."""
        for site_id in site_ids:
            t = self._touched.get(site_id)
            if t is not None:
                if t[1] >= started:
                    t[0] = started
                else:
                    del self._touched[site_id]

    def forget_all_but(self, site_ids: Iterable[str]) -> None:
        """Drop the sites without marks any more (re-evaluated by another path)."""
        keep = set(site_ids)
        for site_id in [s for s in self._touched if s not in keep]:
            del self._touched[site_id]

    def waiting(self) -> bool:
        return bool(self._touched)

    def next_due_in(self, now: float) -> float:
        """Seconds until the first waiting site is due (0 when one is, or none waits)."""
        if not self._touched:
            return 0.0
        soonest = min(min(first + self.max_delay_s, last + self.settle_s) for first, last in self._touched.values())
        return max(0.0, soonest - now)
