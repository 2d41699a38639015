"""AIOps detection, pure: a site's samples in, anomaly and prediction transitions out.

No I/O here. The consumer hands each site's samples (in time order) to `Engine.process` with the
site's `SiteState` (plain data, persisted as JSON in aiops.site_state) and configuration
(`SiteCfg`, from the Sites register); the engine returns `Transition`s (an anomaly opens or
clears) and `PredictionChange`s (a forecast is made or resolved). Everything is driven by sample
time, never by the wall clock, so a replay gives the same answers as the live run.

Layers (docs/aiops.md describes every detector, its parameters and its explanation):
  rules        known physics per snapshot (all samples of one time), parameterised by the site's
               power configuration: mains lost, DG fail-to-start, DG with mains, DC bus below the
               tenancy band, battery near LVD, high cabinet temperature, door open outside a
               planned window, rectifier fault, low fuel, tenant link down
  statistics   per minute: a seasonal robust baseline per metric (hour-of-day bins, EWMA of the
               level and of the absolute deviation, updated with clipped residuals, smoothed z
               with hysteresis), fuel theft / drain (a regression over the last minutes of fuel
               level against the burn the load implies), the telemetry gap ("site unreachable")
  forecasts    battery depletion (on battery, no DG) and fuel run-out (DG running)
The multivariate pyod models are in workers/aiops_engine/models.py.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VERSION = "1"
LVD_SOC = 12.0
DEFAULT_BAND = (43.0, 60.0)
FUEL_A = 0.08415  # l/h per rated kW (no-load consumption), as docs/kpis.md
FUEL_B = 0.246  # l/h per delivered kW
DG_POWER_FACTOR = 0.8
ID_NAMESPACE = uuid.UUID("6d1f0a3c-6c1e-4f7e-9d7b-4f0f3a2b1c11")

# Severities and layers: the numbers of the proto enums (towerco.aiops.v1).
INFO, WARNING, MAJOR, CRITICAL = 1, 2, 3, 4
RULE, STATISTICS, MODEL = 1, 2, 3
# Prediction kinds and outcomes.
BATTERY_DEPLETION, FUEL_RUNOUT, SITE_DOWN = 1, 2, 3
PENDING, RIGHT, WRONG, AVERTED = 1, 2, 3, 4

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    category: int  # 1 planned maintenance


@dataclass(frozen=True)
class SiteCfg:
    """What the detectors need of a site's register entry."""

    site_id: str
    region: str = ""
    tenant_ids: tuple[str, ...] = ()
    has_grid: bool = True
    has_dg: bool = True
    dg_capacity_kva: float = 0.0
    dg_start_delay_s: float = 120.0
    battery_bank_ah: float = 0.0
    fuel_tank_l: float = 0.0
    dc_min_v: float = DEFAULT_BAND[0]
    dc_max_v: float = DEFAULT_BAND[1]
    windows: tuple[Window, ...] = ()

    @property
    def site_class(self) -> str:
        """Sites with the same power chain behave alike; the models are trained per class."""
        return ("grid" if self.has_grid else "offgrid") + ("+dg" if self.has_dg else "")

    def in_planned_window(self, t: float) -> bool:
        return any(w.category == 1 and w.start <= t < w.end for w in self.windows)


@dataclass(frozen=True)
class Params:
    """Every threshold of every detector (docs/aiops.md); the defaults need no tuning per site."""

    fresh_s: float = 300.0  # a latest value older than this is not used by the rules
    fts_grace_s: float = 60.0  # after the DG start delay, before a stopped DG is a fail-to-start
    dg_with_mains_s: float = 300.0
    lvd_margin_pct: float = 8.0  # battery near LVD: SoC below LVD + this, not charging
    cabinet_max_c: float = 50.0  # while the site is powered (cooling running)
    cabinet_critical_c: float = 65.0  # on battery (cooling shed)
    cabinet_hysteresis_c: float = 2.0
    cooling_settle_s: float = 7200.0  # at most this long to cool down after power returns
    cooling_loss_s: float = 300.0  # the rule keeps its normal limit through a power cut this short
    cabinet_tau_s: float = 1800.0  # the cabinet's thermal time constant
    cabinet_heat_c: float = 17.0  # how much hotter it settles with the cooling off
    cabinet_dark_c: float = -3.0  # ... and with the site dark (cooling and equipment off: no heat from it)
    stale_s: float = 1800.0  # a baseline level not learned for this long (and no hour bin) restarts
    cabinet_residual_c: float = 0.3  # cooled down once the excess heat is below this
    context_metrics: tuple[str, ...] = ("cabinet_temp_c",)  # judged net of the heat power cuts explain
    live_bus_metrics: tuple[str, ...] = ("load_a",)  # judged only while the DC bus is live
    upward_metrics: tuple[str, ...] = ("cabinet_temp_c",)  # only a rise is anomalous (a cooler cabinet is no fault)
    dark_v: float = 1.0  # a DC bus at or below this is dead (the site is dark)
    lvd_soc_tol_pct: float = 3.0  # the LVD has tripped: dark, unpowered, SoC within this of the LVD point
    cabinet_for_s: float = 120.0
    low_fuel_share: float = 0.15
    low_fuel_for_s: float = 300.0
    gap_min_s: float = 90.0  # a site is unreachable after max(this, gap_intervals x its interval)
    gap_intervals: float = 4.0
    # seasonal baseline
    baseline_metrics: tuple[str, ...] = ("cabinet_temp_c", "load_a")
    z_open: float = 6.0
    z_close: float = 3.0
    open_after: int = 3  # consecutive points above z_open
    close_after: int = 5  # consecutive points below z_close
    z_spike: float = 12.0  # one point this far out is flagged on its own
    smooth: float = 0.4  # weight of the newest z in the smoothed z
    min_bin_n: int = 30  # points an hour-of-day bin needs before it is used
    min_global_n: int = 20  # points before the baseline scores at all
    rel_floor: float = 0.002  # the scale is at least this share of the level
    bin_rate: float = 0.02  # slowest learning rate of an hour-of-day bin (per point)
    global_rate: float = 0.005  # ... and of the global level
    relearn_after_s: float = 86400.0  # an anomaly open this long becomes the new normal
    # fuel theft / drain
    fuel_window_min: int = 10
    fuel_min_points: int = 5
    theft_rate_lpm: float = 0.25
    theft_min_drop_l: float = 4.0
    refuel_rise_l: float = 5.0
    # forecasts
    forecast_horizon_h: float = 24.0
    # multivariate models
    model_p_open: float = 0.0005
    model_p_close: float = 0.01
    model_open_after: int = 5
    model_close_after: int = 5


@dataclass(frozen=True)
class Adjustment:
    """Feedback on one site-detector(-metric): a threshold factor (statistical and model
    detectors) or a suppression (rules) until reviewed."""

    factor: float = 1.0
    suppressed: bool = False


NO_ADJUSTMENT = Adjustment()

# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Feature:
    name: str
    observed: float
    expected: float = 0.0
    threshold: float = 0.0
    contribution: float = 1.0


@dataclass(frozen=True)
class Transition:
    """An anomaly opens ("open") or clears ("clear")."""

    kind: str
    id: str
    key: str
    detector: str
    layer: int
    metrics: tuple[str, ...]
    severity: int
    score: float
    start: float  # estimated onset
    time: float  # the sample time of the decision (detect time for "open", end for "clear")
    summary: str = ""
    features: tuple[Feature, ...] = ()
    tenant_id: str = ""
    version: str = VERSION


@dataclass(frozen=True)
class PredictionChange:
    """A prediction is made ("open") or resolved ("resolve", with its outcome)."""

    kind: str
    id: str
    pkind: int
    detector: str
    predict_time: float
    expected_time: float
    confidence: float
    inputs: tuple[Feature, ...] = ()
    outcome: int = PENDING
    time: float = 0.0  # for "resolve": when decided
    actual_time: float | None = None


def anomaly_id(site_id: str, key: str, start: float) -> str:
    """Deterministic, so a redelivered batch produces the same anomaly (stored once)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{site_id}|{key}|{start:.3f}"))


# --------------------------------------------------------------------------- univariate baseline


BINS = 48  # 24 hours of the day x 2 contexts (the engine: site powered by mains/DG or on battery)


def new_baseline() -> list[Any]:
    """[levels[48], devs[48], ns[48], glevels[2], gdevs[2], gns[2], zs, above, below, open_since, last_t,
    last_learn]: hour-of-day bins and a global level per context."""
    return [[0.0] * BINS, [0.0] * BINS, [0] * BINS, [0.0, 0.0], [0.0, 0.0], [0, 0], 0.0, 0, 0, None, None, None]


@dataclass(frozen=True)
class Score:
    z: float
    zs: float
    expected: float
    scale: float
    score: float  # in [0, 1]
    flag: bool  # inside an anomaly (hysteresis) or a spike
    opened: bool  # this point opened an anomaly
    closed: bool  # this point closed one
    spike: bool
    ready: bool  # enough history to score


def _score01(z: float, k: float) -> float:
    """|z| = k maps to 0.5; monotone, 0 at 0, tends to 1."""
    a = abs(z) / k
    return 1.0 - math.exp(-math.log(2.0) * a * a)


def baseline_step(b: list[Any], t: float, x: float, p: Params, factor: float = 1.0, context: int = 0,
                  learn: bool = True, restart_after_s: float = 0.0, upward: bool = False) -> Score:
    """Score x (at time t) against the baseline, then learn from it unless it is anomalous.
    `context` (0 or 1) keeps separate bins and global levels for two regimes of the series.
    `learn` False: scored, not learned from. `restart_after_s` > 0: a global level that has not
    learned for that long (the caller did not let it) restarts from x where the hour has no bin.
    `upward`: only values above the baseline open an anomaly (z below it counts as 0 for opening).

    Strictly causal: the score of a point uses only the points before it."""
    levels, devs, ns = b[0], b[1], b[2]
    glevels, gdevs, gns = b[3], b[4], b[5]
    c = context
    h = int((t % 86400.0) // 3600.0) + 24 * c
    glevel, gdev, gn = glevels[c], gdevs[c], gns[c]
    use_bin = ns[h] >= p.min_bin_n
    last_learn = b[11] if len(b) > 11 else None
    if restart_after_s > 0 and not use_bin and gn and b[9] is None and last_learn is not None \
            and t - last_learn > restart_after_s:
        # the global level has not learned for a while (the metric was not judged, e.g. the
        # cabinet through a power cut) and this hour has no bin yet: it restarts from here
        glevels[c] = glevel = x
        gns[c] = gn = min(gn, p.min_global_n - 1)
    expected = levels[h] if use_bin else glevel
    dev = devs[h] if use_bin else gdev
    ready = gn >= p.min_global_n
    scale = max(dev * 1.2533, p.rel_floor * abs(expected), 1e-9)
    z = (x - expected) / scale if ready else 0.0
    zj = max(z, 0.0) if upward else z  # what is judged
    zs = b[6] + p.smooth * (zj - b[6]) if ready else 0.0
    k_open, k_close, k_spike = p.z_open * factor, p.z_close * factor, p.z_spike * factor
    opened = closed = False
    is_open = b[9] is not None
    spike = ready and abs(zj) > k_spike
    if ready:
        if not is_open:
            b[7] = b[7] + 1 if abs(zs) > k_open else 0
            if b[7] >= p.open_after or spike:
                b[9] = t
                b[7] = b[8] = 0
                opened = is_open = True
        else:
            b[8] = b[8] + 1 if abs(zs) < k_close else 0
            if b[8] >= p.close_after:
                b[9] = None
                b[7] = b[8] = 0
                closed, is_open = True, False
            elif t - b[9] >= p.relearn_after_s:  # a lasting change is the new normal
                b[0], b[1], b[2] = [x] * BINS, [0.0] * BINS, [0] * BINS
                b[3], b[4], b[5] = [x, x], [0.0, 0.0], [0, 0]
                b[9] = None
                b[7] = b[8] = 0
                closed, is_open = True, False
                zs = 0.0
    b[6] = zs
    b[10] = t
    # learn, robustly: residuals clipped at 3 scales, and points already far out (|z| > 2) count
    # less and less (nothing from |z| >= 5), so a slow drift is not absorbed as it grows
    # (for an upward-only metric a value below the baseline is learned in full: no fault makes it)
    w = 1.0 if not ready or abs(z) <= 2.0 or (upward and z < 0) else max(0.0, 1.0 - (abs(z) - 2.0) / 3.0)
    if learn and (not is_open or closed) and w > 0.0:
        clip = 3.0 * scale
        if gn == 0:
            glevels[c] = x
        else:
            ag = w * max(1.0 / (gn + 1), p.global_rate)
            r = min(max(x - glevel, -clip), clip) if ready else x - glevel
            glevels[c] = glevel + ag * r
            gdevs[c] = gdev + ag * (min(abs(x - glevel), clip if ready else abs(x - glevel)) - gdev)
        gns[c] = gn + 1
        if ns[h] == 0:
            levels[h] = x if not ready else expected
            devs[h] = gdevs[c]
        else:
            ab = w * max(1.0 / (ns[h] + 1), p.bin_rate)
            r = min(max(x - levels[h], -clip), clip)
            levels[h] += ab * r
            devs[h] += ab * (min(abs(x - levels[h]), clip) - devs[h])
        ns[h] += 1
        if len(b) > 11:
            b[11] = t
        else:
            b.append(t)
    flag = is_open or spike
    return Score(z, zs, expected, scale, _score01(max(abs(zs), abs(z) if spike else 0.0), k_open) if ready else 0.0,
                 flag, opened, closed, spike, ready)


# --------------------------------------------------------------------------- fuel


def _slope(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (per minute) and the fitted drop over the points' span."""
    n = len(points)
    mt = sum(p[0] for p in points) / n
    mv = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mt) ** 2 for p in points)
    if sxx <= 0:
        return 0.0, 0.0
    slope = sum((p[0] - mt) * (p[1] - mv) for p in points) / sxx
    span = points[-1][0] - points[0][0]
    return slope, -slope * span


def expected_burn_lph(cfg: SiteCfg, load_a: float, bus_v: float) -> float:
    p_rated = cfg.dg_capacity_kva * DG_POWER_FACTOR
    p_load = max(load_a, 0.0) * max(bus_v, 0.0) / 1000.0
    return FUEL_A * p_rated + FUEL_B * p_load


def cooldown_s(cut_s: float, p: Params) -> float:
    """How long a cabinet takes to cool down after a power cut of `cut_s` (first-order lag: it
    gained heat_c (1 - e^(-cut/tau)) and loses it with the same time constant)."""
    excess = p.cabinet_heat_c * (1.0 - math.exp(-cut_s / p.cabinet_tau_s))
    if excess <= p.cabinet_residual_c:
        return 0.0
    return min(p.cooling_settle_s, p.cabinet_tau_s * math.log(excess / p.cabinet_residual_c))


# --------------------------------------------------------------------------- site state


@dataclass
class SiteState:
    """Everything the detectors remember about one site (persisted as JSON)."""

    last_t: float | None = None
    interval: float = 0.0  # EWMA of the time between snapshots
    latest: dict[str, list[Any]] = field(default_factory=dict)  # metric -> [t, v]
    links: dict[str, list[Any]] = field(default_factory=dict)  # tenant -> [t, v]
    open: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"id", "start", ...}
    timers: dict[str, float] = field(default_factory=dict)
    minute: int | None = None
    acc: dict[str, list[Any]] = field(default_factory=dict)  # metric -> [n, sum, max] in the minute
    baselines: dict[str, list[Any]] = field(default_factory=dict)
    fuel: list[Any] = field(default_factory=list)  # [[minute, mean level, dg_any, load, bus], ...]
    preds: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> open prediction
    samples: int = 0
    features: list[Any] = field(default_factory=list)  # [[minute, [value or None per MODEL_FEATURES]], ...] not yet scored

    def to_json(self) -> dict[str, Any]:
        return {"last_t": self.last_t, "interval": self.interval, "latest": self.latest, "links": self.links,
                "open": self.open, "timers": self.timers, "minute": self.minute, "acc": self.acc,
                "baselines": self.baselines, "fuel": self.fuel, "preds": self.preds, "samples": self.samples,
                "features": self.features}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> SiteState:
        if not d:
            return cls()
        return cls(last_t=d.get("last_t"), interval=d.get("interval", 0.0), latest=dict(d.get("latest", {})),
                   links=dict(d.get("links", {})), open=dict(d.get("open", {})), timers=dict(d.get("timers", {})),
                   minute=d.get("minute"), acc=dict(d.get("acc", {})), baselines=dict(d.get("baselines", {})),
                   fuel=list(d.get("fuel", [])), preds=dict(d.get("preds", {})), samples=int(d.get("samples", 0)),
                   features=list(d.get("features") or []))


# --------------------------------------------------------------------------- the engine

# Rule name -> (metrics, severity, one-line description). docs/aiops.md explains each.
RULES: dict[str, tuple[tuple[str, ...], int, str]] = {
    "rule.mains_lost": (("mains_present",), WARNING, "grid mains absent on a grid-connected site"),
    "rule.dg_fail_to_start": (("mains_present", "dg_running"), MAJOR,
                              "mains lost and the DG not running after its start delay"),
    "rule.dg_running_with_mains": (("mains_present", "dg_running"), WARNING, "DG running while mains is present"),
    "rule.dc_bus_low": (("dc_bus_v",), CRITICAL, "DC bus below the tenancy band"),
    "rule.battery_near_lvd": (("battery_soc_pct",), MAJOR,
                              "on battery with the state of charge near the low-voltage disconnect"),
    "rule.battery_lvd": (("dc_bus_v", "battery_soc_pct"), CRITICAL,
                         "the low-voltage disconnect tripped: unpowered, DC bus dead, battery at its LVD point"),
    "rule.high_cabinet_temp": (("cabinet_temp_c",), MAJOR, "cabinet temperature above its limit"),
    "rule.door_open": (("door_open",), WARNING, "door open outside a planned maintenance window"),
    "rule.rectifier_fault": (("rectifier_fault",), MAJOR, "rectifier module alarm"),
    "rule.low_fuel": (("fuel_level_l",), WARNING, "fuel below its share of the tank"),
    "rule.tenant_link_down": (("tenant_link_up",), MAJOR, "a tenant's link down while the site is powered"),
}
STAT_DETECTORS: dict[str, tuple[int, str]] = {
    "stat.baseline": (WARNING, "a metric far from its seasonal (hour-of-day) robust baseline"),
    "stat.fuel_theft": (CRITICAL, "fuel falling with the DG off, or faster than the load's burn"),
    "stat.telemetry_gap": (MAJOR, "no telemetry from the site: site unreachable"),
}
FORECASTS: dict[str, str] = {
    "forecast.battery": "time to low-voltage disconnect on battery with no DG",
    "forecast.fuel": "time to an empty tank while the DG runs",
    "forecast.site_down": "time until the site goes dark: on battery with no DG, the battery's depletion; "
                          "with the DG carrying it, the fuel run-out plus what the battery then holds",
}


class Engine:
    """Stateless over sites: every call takes the site's state and configuration."""

    def __init__(self, params: Params | None = None) -> None:
        self.p = params or Params()

    # -- public

    def process(self, st: SiteState, cfg: SiteCfg, samples: Iterable[tuple[float, str, str, float]],
                adjust: Mapping[str, Adjustment] | None = None) -> tuple[list[Transition], list[PredictionChange]]:
        """Fold one site's samples (time, metric, tenant_id, value), time-ordered, into its state."""
        out: list[Transition] = []
        preds: list[PredictionChange] = []
        adj = adjust or {}
        group_t: float | None = None
        pending: list[tuple[str, float]] = []  # the snapshot's values, for its minute's means
        for t, metric, tenant, v in samples:
            if st.last_t is not None and t < st.last_t - 1e-6:
                continue  # older than what was already judged: the rules look forward only
            if group_t is not None and t != group_t:
                self._snapshot(st, cfg, group_t, adj, out, preds, pending)
                pending = []
            group_t = t
            if metric == "tenant_link_up":
                st.links[tenant] = [t, v]
            else:
                st.latest[metric] = [t, v]
                pending.append((metric, v))
            st.samples += 1
        if group_t is not None:
            self._snapshot(st, cfg, group_t, adj, out, preds, pending)
        return out, preds

    def tick(self, st: SiteState, cfg: SiteCfg, now: float,
             adjust: Mapping[str, Adjustment] | None = None) -> list[Transition]:
        """Judge silence at `now` (the partition's event-time clock): the telemetry gap."""
        out: list[Transition] = []
        if st.last_t is None:
            return out
        key = "stat.telemetry_gap"
        limit = self.gap_limit(st)
        if now - st.last_t > limit and key not in st.open and not (adjust or {}).get(key, NO_ADJUSTMENT).suppressed:
            start = st.last_t + min(st.interval or limit, limit)
            self._open(st, cfg, out, key, "stat.telemetry_gap", STATISTICS, (), STAT_DETECTORS[key][0], 1.0,
                       start, now, f"no telemetry for {now - st.last_t:.0f} s (expected every "
                                   f"{st.interval:.0f} s)",
                       (Feature("silence_s", now - st.last_t, st.interval, limit, 1.0),))
        return out

    def gap_limit(self, st: SiteState) -> float:
        return max(self.p.gap_min_s, self.p.gap_intervals * st.interval)

    # -- helpers

    def _open(self, st: SiteState, cfg: SiteCfg, out: list[Transition], key: str, detector: str, layer: int,
              metrics: tuple[str, ...], severity: int, score: float, start: float, t: float, summary: str,
              features: tuple[Feature, ...], tenant: str = "") -> None:
        aid = anomaly_id(cfg.site_id, key, start)
        st.open[key] = {"id": aid, "start": start, "detector": detector, "layer": layer, "metrics": list(metrics),
                        "severity": severity, "score": score, "tenant": tenant}
        out.append(Transition("open", aid, key, detector, layer, metrics, severity, min(max(score, 0.0), 1.0),
                              start, t, summary, features, tenant))

    def _clear(self, st: SiteState, out: list[Transition], key: str, t: float, summary: str = "") -> None:
        o = st.open.pop(key, None)
        if o is None:
            return
        out.append(Transition("clear", o["id"], key, o["detector"], o["layer"], tuple(o["metrics"]), o["severity"],
                              o["score"], o["start"], t, summary, (), o.get("tenant", "")))

    def _cond(self, st: SiteState, cfg: SiteCfg, out: list[Transition], key: str, active: bool, t: float, *,
              for_s: float = 0.0, score: float = 1.0, summary: str = "", features: tuple[Feature, ...] = (),
              adj: Mapping[str, Adjustment], tenant: str = "", detector: str | None = None) -> None:
        """A rule with debounce: opens once active for `for_s`, clears at the first inactive point."""
        det = detector or key
        on_key = key + ":on"
        if active:
            since = st.timers.get(on_key)
            if since is None:
                st.timers[on_key] = since = t
            if key not in st.open and t - since >= for_s and not adj.get(det, NO_ADJUSTMENT).suppressed:
                metrics, severity, _ = RULES[det]
                self._open(st, cfg, out, key, det, RULE, metrics, severity, score, since, t, summary, features,
                           tenant)
        else:
            st.timers.pop(on_key, None)
            if key in st.open:
                self._clear(st, out, key, t)

    def _cooled(self, st: SiteState, t: float) -> bool:
        """The cabinet's cooling has been running: no power cut longer than cooling_loss_s, or
        one that ended at least cooling_settle_s ago (the cabinet needs that long to cool down)."""
        off = st.timers.get("unpowered_since")
        if off is not None and t - off > self.p.cooling_loss_s:
            return False
        since = st.timers.get("cooling_from")
        return since is None or t - since >= st.timers.get("cooling_settle", self.p.cooling_settle_s)

    def _thermal(self, st: SiteState, cfg: SiteCfg, t: float, mains: float | None, dg: float | None) -> None:
        """The cabinet's excess heat that the power state explains (first-order lag): it moves
        towards cabinet_heat_c while the site is unpowered (the cooling is shed) and back towards 0
        while it is powered, with the time constant cabinet_tau_s. Added up per minute for the
        cabinet baseline. After a silence the power state during it is unknown: the baseline
        stays blind for as long as the cabinet would need to cool down after a cut that long."""
        p = self.p
        if mains is None and dg is None:
            return
        unpowered = not ((mains is not None and mains >= 0.5 and cfg.has_grid) or (dg is not None and dg >= 0.5))
        bus = self._val(st, "dc_bus_v", t)
        dark = unpowered and bus is not None and bus <= p.dark_v
        tm = st.timers
        last = tm.get("thermal_t")
        e = tm.get("thermal_e", 0.0)
        if last is not None and t > last:
            dt = t - last
            if dt > self.gap_limit(st):
                tm["thermal_blind_until"] = t + cooldown_s(dt, p)
            target = p.cabinet_dark_c if dark else p.cabinet_heat_c if unpowered else 0.0
            e = target + (e - target) * math.exp(-dt / p.cabinet_tau_s)
        tm["thermal_t"] = t
        tm["thermal_e"] = e
        tm["thermal_sum"] = tm.get("thermal_sum", 0.0) + e
        tm["thermal_n"] = tm.get("thermal_n", 0.0) + 1.0

    def _val(self, st: SiteState, metric: str, t: float) -> float | None:
        lv = st.latest.get(metric)
        if lv is None or t - lv[0] > self.p.fresh_s:
            return None
        return float(lv[1])

    # -- one snapshot (every sample of one time)

    def _snapshot(self, st: SiteState, cfg: SiteCfg, t: float, adj: Mapping[str, Adjustment],
                  out: list[Transition], preds: list[PredictionChange],
                  values: Sequence[tuple[str, float]] = ()) -> None:
        key = "stat.telemetry_gap"
        if st.last_t is not None and key not in st.open and t - st.last_t > self.gap_limit(st) \
                and not adj.get(key, NO_ADJUSTMENT).suppressed:
            # a silence nobody judged while it lasted (a backlog, a replay): seen now, in event time
            self._open(st, cfg, out, key, key, STATISTICS, (), STAT_DETECTORS[key][0], 1.0,
                       st.last_t + min(st.interval or self.gap_limit(st), self.gap_limit(st)), t,
                       f"no telemetry for {t - st.last_t:.0f} s (expected every {st.interval:.0f} s)",
                       (Feature("silence_s", t - st.last_t, st.interval, self.gap_limit(st), 1.0),))
        if st.last_t is not None and t > st.last_t:
            d = min(t - st.last_t, 600.0)
            st.interval = d if st.interval == 0 else st.interval + 0.1 * (d - st.interval)
        if key in st.open:
            self._clear(st, out, key, t)
        st.last_t = t
        m = int(t // 60)
        if st.minute is None:
            st.minute = m
        elif m != st.minute:
            self._close_minute(st, cfg, adj, out, preds)  # before this snapshot's values join a minute
            st.minute = m
        acc = st.acc
        for metric, v in values:
            a = acc.get(metric)
            if a is None:
                acc[metric] = [1, v, v]
            else:
                a[0] += 1
                a[1] += v
                if v > a[2]:
                    a[2] = v
        self._rules(st, cfg, t, adj, out)

    def _rules(self, st: SiteState, cfg: SiteCfg, t: float, adj: Mapping[str, Adjustment],
               out: list[Transition]) -> None:
        p = self.p
        mains = self._val(st, "mains_present", t)
        dg = self._val(st, "dg_running", t)
        bus = self._val(st, "dc_bus_v", t)
        soc = self._val(st, "battery_soc_pct", t)
        temp = self._val(st, "cabinet_temp_c", t)
        door = self._val(st, "door_open", t)
        rect = self._val(st, "rectifier_fault", t)
        fuel = self._val(st, "fuel_level_l", t)
        self._thermal(st, cfg, t, mains, dg)
        if (mains is not None and mains >= 0.5 and cfg.has_grid) or (dg is not None and dg >= 0.5):
            off = st.timers.pop("unpowered_since", None)
            if off is not None and t > off:  # the cooling was off: the cabinet needs time to cool down
                st.timers["cooling_from"] = t
                st.timers["cooling_settle"] = cooldown_s(t - off, p)
        elif mains is not None or dg is not None:
            st.timers.setdefault("unpowered_since", t)
        if mains is not None:
            lost = cfg.has_grid and mains < 0.5
            if lost and "mains_lost_since" not in st.timers:
                st.timers["mains_lost_since"] = t
            if not lost:
                st.timers.pop("mains_lost_since", None)
            self._cond(st, cfg, out, "rule.mains_lost", lost, t, summary="mains lost",
                       features=(Feature("mains_present", mains, 1.0, 0.5),), adj=adj)
            if dg is not None:
                since = st.timers.get("mains_lost_since")
                wait = cfg.dg_start_delay_s + p.fts_grace_s
                fts = cfg.has_dg and lost and dg < 0.5 and since is not None and t - since >= wait
                self._cond(st, cfg, out, "rule.dg_fail_to_start", fts, t,
                           summary=f"mains lost and the DG stopped {wait:.0f} s after (start delay "
                                   f"{cfg.dg_start_delay_s:.0f} s)",
                           features=(Feature("dg_running", dg, 1.0, 0.5),
                                     Feature("seconds_since_mains_lost", t - since if since else 0.0, 0.0, wait)),
                           adj=adj)
                both = cfg.has_grid and mains >= 0.5 and dg >= 0.5
                self._cond(st, cfg, out, "rule.dg_running_with_mains", both, t, for_s=p.dg_with_mains_s,
                           summary="the DG keeps running with mains present",
                           features=(Feature("dg_running", dg, 0.0, 0.5), Feature("mains_present", mains, 1.0, 0.5)),
                           adj=adj)
        if bus is not None:
            low = bus < cfg.dc_min_v
            self._cond(st, cfg, out, "rule.dc_bus_low", low, t,
                       score=min(1.0, 0.5 + 0.5 * (cfg.dc_min_v - bus) / max(cfg.dc_min_v, 1.0)),
                       summary=f"DC bus {bus:.1f} V below the band minimum {cfg.dc_min_v:.1f} V",
                       features=(Feature("dc_bus_v", bus, 53.5, cfg.dc_min_v),), adj=adj)
        if bus is not None and soc is not None:
            unpowered = (mains is not None and mains < 0.5 or not cfg.has_grid) and (dg is None or dg < 0.5)
            tripped = unpowered and bus <= p.dark_v and soc <= LVD_SOC + p.lvd_soc_tol_pct
            self._cond(st, cfg, out, "rule.battery_lvd", tripped, t,
                       summary=f"low-voltage disconnect: DC bus {bus:.1f} V on battery at {soc:.0f} % "
                               f"(LVD {LVD_SOC:.0f} %): the site is dark",
                       features=(Feature("dc_bus_v", bus, 53.5, p.dark_v, 0.5),
                                 Feature("battery_soc_pct", soc, LVD_SOC, LVD_SOC + p.lvd_soc_tol_pct, 0.5)),
                       adj=adj)
        if soc is not None:
            discharging = (mains is not None and mains < 0.5 or not cfg.has_grid) and (dg is None or dg < 0.5)
            near = cfg.battery_bank_ah >= 0 and discharging and soc < LVD_SOC + p.lvd_margin_pct \
                and (bus is None or bus > 0)
            self._cond(st, cfg, out, "rule.battery_near_lvd", near, t,
                       score=min(1.0, 0.5 + 0.5 * (LVD_SOC + p.lvd_margin_pct - soc) / p.lvd_margin_pct),
                       summary=f"on battery at {soc:.0f} % state of charge (LVD {LVD_SOC:.0f} %)",
                       features=(Feature("battery_soc_pct", soc, 100.0, LVD_SOC + p.lvd_margin_pct),), adj=adj)
        if temp is not None:
            # On battery the cooling is shed and heat is expected: only the critical limit holds.
            powered = self._cooled(st, t)
            limit = p.cabinet_max_c if powered else p.cabinet_critical_c
            hot = temp > limit - (p.cabinet_hysteresis_c if "rule.high_cabinet_temp" in st.open else 0.0)
            self._cond(st, cfg, out, "rule.high_cabinet_temp", hot, t, for_s=p.cabinet_for_s,
                       score=min(1.0, max(0.5, 0.5 + (temp - limit) / 20.0)),
                       summary=f"cabinet at {temp:.1f} °C (limit {limit:.0f} °C"
                               f"{'' if powered else ', on battery'})",
                       features=(Feature("cabinet_temp_c", temp, 0.0, limit),), adj=adj)
        if door is not None:
            opened = door >= 0.5 and not cfg.in_planned_window(t)
            self._cond(st, cfg, out, "rule.door_open", opened, t, summary="door open outside a planned window",
                       features=(Feature("door_open", door, 0.0, 0.5),), adj=adj)
        if rect is not None:
            self._cond(st, cfg, out, "rule.rectifier_fault", rect >= 0.5, t, summary="rectifier alarm active",
                       features=(Feature("rectifier_fault", rect, 0.0, 0.5),), adj=adj)
        if fuel is not None and cfg.has_dg and cfg.fuel_tank_l > 0:
            limit = p.low_fuel_share * cfg.fuel_tank_l
            self._cond(st, cfg, out, "rule.low_fuel", fuel < limit, t, for_s=p.low_fuel_for_s,
                       summary=f"{fuel:.0f} l of fuel left (limit {limit:.0f} l)",
                       features=(Feature("fuel_level_l", fuel, cfg.fuel_tank_l, limit),), adj=adj)
        for tenant, (lt, lv) in st.links.items():
            if t - lt > p.fresh_s:
                continue
            down = lv < 0.5 and bus is not None and bus >= cfg.dc_min_v
            self._cond(st, cfg, out, f"rule.tenant_link_down|{tenant}", down, t, tenant=tenant,
                       detector="rule.tenant_link_down", summary=f"{tenant}'s link down with the site powered",
                       features=(Feature("tenant_link_up", lv, 1.0, 0.5),), adj=adj)

    # -- per minute: statistics and forecasts

    def _close_minute(self, st: SiteState, cfg: SiteCfg, adj: Mapping[str, Adjustment], out: list[Transition],
                      preds: list[PredictionChange]) -> None:
        p = self.p
        minute = st.minute
        assert minute is not None
        t_end = (minute + 1) * 60.0
        means = {k: a[1] / a[0] for k, a in st.acc.items() if a[0]}
        maxes = {k: a[2] for k, a in st.acc.items() if a[0]}
        st.acc = {}
        # the cabinet is judged net of the heat the power state explains (the thermal model)
        tn = st.timers.pop("thermal_n", 0.0)
        excess = st.timers.pop("thermal_sum", 0.0) / tn if tn else None
        blind = st.timers.get("thermal_blind_until", 0.0) > t_end
        bus_live = means.get("dc_bus_v", 53.5) > p.dark_v
        for metric in p.baseline_metrics:
            x = means.get(metric)
            if x is None:
                continue
            key = f"stat.baseline|{metric}"
            a = adj.get(key, NO_ADJUSTMENT)
            b = st.baselines.get(metric)
            if b is None:
                b = st.baselines[metric] = new_baseline()
            learn = True
            if metric in p.context_metrics:
                if excess is None or blind or not cfg.has_grid:
                    # not known, or off-grid (the cabinet follows the DG's charge cycle, hours on
                    # battery and hours on the DG, and seldom settles): left to the rule
                    continue  # the power state is not known: the heat it explains is not either
                x -= excess  # the cooling-corrected temperature
                # learns only while the cabinet has settled and is not known to be too hot
                learn = abs(excess) <= p.cabinet_residual_c and "rule.high_cabinet_temp" not in st.open
            elif metric in p.live_bus_metrics and not bus_live:
                continue  # a dark site draws nothing: that is the outage, not a drift
            s = baseline_step(b, minute * 60.0, x, p, a.factor, learn=learn,
                              restart_after_s=p.stale_s if metric in p.context_metrics else 0.0,
                              upward=metric in p.upward_metrics)
            if s.opened and not a.suppressed:
                direction = "above" if x > s.expected else "below"
                self._open(st, cfg, out, key, "stat.baseline", STATISTICS, (metric,), WARNING, s.score,
                           minute * 60.0 - (p.open_after - 1) * 60.0 if not s.spike else minute * 60.0, t_end,
                           f"{metric} {x:.2f} {direction} its hour-of-day baseline {s.expected:.2f} "
                           f"(z {s.zs:+.1f}{self._excess_note(metric, excess)})",
                           (Feature(metric, x, s.expected, s.expected + math.copysign(p.z_open * a.factor * s.scale,
                                                                                      x - s.expected), 1.0),))
            elif s.closed:
                self._clear(st, out, key, minute * 60.0)
        self._fuel(st, cfg, minute, means, maxes, adj, out)
        self._forecast(st, cfg, t_end, means, out, preds)
        st.features.append([minute, minute_features(st, means, maxes, minute)])
        if len(st.features) > MAX_PENDING_FEATURES:
            del st.features[0]

    def _excess_note(self, metric: str, excess: float | None) -> str:
        if metric not in self.p.context_metrics or not excess or excess < self.p.cabinet_residual_c:
            return ""
        return f", net of {excess:.1f} °C a power cut explains"

    def _fuel(self, st: SiteState, cfg: SiteCfg, minute: int, means: Mapping[str, float],
              maxes: Mapping[str, float], adj: Mapping[str, Adjustment], out: list[Transition]) -> None:
        p = self.p
        level = means.get("fuel_level_l")
        if level is None or not cfg.has_dg:
            return
        dg_any = maxes.get("dg_running", 0.0) >= 0.5
        ring = st.fuel
        if ring and level - ring[-1][1] > p.refuel_rise_l:  # a refuel: start over
            ring.clear()
            self._clear(st, out, "stat.fuel_theft", minute * 60.0, "refuelled")
        ring.append([minute, level, 1 if dg_any else 0, means.get("load_a", 0.0), means.get("dc_bus_v", 0.0)])
        while ring and ring[0][0] <= minute - p.fuel_window_min:
            ring.pop(0)
        key = "stat.fuel_theft"
        a = adj.get(key, NO_ADJUSTMENT)
        if len(ring) < p.fuel_min_points:
            return
        states = {r[2] for r in ring}
        if len(states) != 1:
            return  # the DG changed state inside the window: judged once it is steady
        dg_on = ring[0][2] == 1
        slope, drop = _slope([(r[0], r[1]) for r in ring])
        if dg_on:
            burn = sum(expected_burn_lph(cfg, r[3], r[4]) for r in ring) / len(ring) / 60.0
            limit = 2.0 * burn + p.theft_rate_lpm
        else:
            burn, limit = 0.0, p.theft_rate_lpm
        limit *= a.factor
        falling = slope < -limit and drop > p.theft_min_drop_l * a.factor
        if key not in st.open:
            if falling and not a.suppressed:
                onset = next((r[0] for r in ring if r[1] < ring[0][1] - 1.0), ring[0][0] + 1) - 1
                what = "with the DG running, faster than its burn" if dg_on else "with the DG off"
                self._open(st, cfg, out, key, key, STATISTICS, ("fuel_level_l", "dg_running"), CRITICAL,
                           min(1.0, 0.5 + 0.5 * (-slope - limit) / max(limit, 1e-6)), onset * 60.0,
                           (minute + 1) * 60.0,
                           f"fuel falling {-slope:.2f} l/min {what} ({drop:.1f} l in {len(ring)} min)",
                           (Feature("fuel_drop_l_per_min", -slope, burn, limit, 0.7),
                            Feature("fuel_drop_l", drop, burn * len(ring), p.theft_min_drop_l, 0.3)))
        else:
            recent = ring[-p.fuel_min_points:]
            rs, _ = _slope([(r[0], r[1]) for r in recent])
            if rs > -0.4 * limit:
                st.timers["fuel_quiet"] = st.timers.get("fuel_quiet", 0) + 1
                if st.timers["fuel_quiet"] >= 3:
                    st.timers.pop("fuel_quiet", None)
                    self._clear(st, out, key, (minute - 2) * 60.0)
                    del ring[:-1]  # the drop is judged; a new one must show in a fresh window
            else:
                st.timers.pop("fuel_quiet", None)

    def _forecast(self, st: SiteState, cfg: SiteCfg, t: float, means: Mapping[str, float], out: list[Transition],
                  preds: list[PredictionChange]) -> None:
        p = self.p
        mains = self._val(st, "mains_present", t)
        dg = self._val(st, "dg_running", t)
        bus = self._val(st, "dc_bus_v", t)
        soc = self._val(st, "battery_soc_pct", t)
        load = means.get("load_a")
        fuel = self._val(st, "fuel_level_l", t)
        outage = mains is not None and (mains < 0.5 or not cfg.has_grid)
        on_battery = outage and (dg is None or dg < 0.5)
        running = dg is not None and dg >= 0.5
        since = st.timers.get("mains_lost_since")
        # no DG coming: none on the site, or a grid site past its start delay (a fail-to-start)
        no_dg = not cfg.has_dg or (cfg.has_grid and since is not None
                                   and t - since >= cfg.dg_start_delay_s + p.fts_grace_s)
        dark = bus is not None and bus <= p.dark_v or (soc is not None and soc <= LVD_SOC)
        # hours the battery carries the load from its present charge (None: not known)
        battery_h = max(soc - LVD_SOC, 0.0) / 100.0 * cfg.battery_bank_ah / load \
            if soc is not None and load and load > 0.5 and cfg.battery_bank_ah > 0 else None
        burn = 0.0
        if running and cfg.dg_capacity_kva > 0:
            burn = expected_burn_lph(cfg, load or 0.0, means.get("dc_bus_v", bus or 0.0))
            ring = st.fuel
            if len(ring) >= p.fuel_min_points and all(r[2] == 1 for r in ring):
                slope, _ = _slope([(r[0], r[1]) for r in ring])
                burn = max(burn, -slope * 60.0)
        fuel_h = fuel / burn if running and fuel is not None and burn > 0 else None
        # battery depletion: on battery and no DG coming
        bkey = "battery"
        open_b = st.preds.get(bkey)
        if open_b is not None:
            if dark:
                self._resolve(st, bkey, self._on_time(open_b, t), t, t, preds)
            elif not on_battery:
                self._resolve(st, bkey, AVERTED, t, None, preds)
            elif self._overdue(open_b, t):
                self._resolve(st, bkey, WRONG, t, None, preds)
        elif on_battery and no_dg and not dark and battery_h is not None and battery_h <= p.forecast_horizon_h:
            assert soc is not None and load is not None
            self._predict(st, cfg, bkey, BATTERY_DEPLETION, "forecast.battery", t, t + battery_h * 3600.0, 0.8,
                          (Feature("battery_soc_pct", soc, LVD_SOC, LVD_SOC),
                           Feature("battery_bank_ah", cfg.battery_bank_ah),
                           Feature("load_a", load)), preds)
        # fuel run-out while the DG runs
        fkey = "fuel"
        open_f = st.preds.get(fkey)
        refuelled = open_f is not None and fuel is not None and fuel > open_f.get("level", 0.0) + p.refuel_rise_l
        if open_f is not None:
            if fuel is not None and fuel <= 2.0 and not running:
                self._resolve(st, fkey, self._on_time(open_f, t), t, t, preds)
            elif not running or refuelled:
                self._resolve(st, fkey, AVERTED, t, None, preds)
            elif self._overdue(open_f, t):
                self._resolve(st, fkey, WRONG, t, None, preds)
        elif fuel_h is not None and fuel is not None and fuel_h <= p.forecast_horizon_h:
            self._predict(st, cfg, fkey, FUEL_RUNOUT, "forecast.fuel", t, t + fuel_h * 3600.0, 0.6,
                          (Feature("fuel_level_l", fuel), Feature("burn_l_per_h", burn)), preds, level=fuel)
        # site down: when the site goes dark with the sources it has now. On battery with no DG
        # coming: the battery's depletion. With the DG carrying an outage: the fuel run-out, then
        # the battery from (at least) its present charge.
        skey = "site_down"
        open_s = st.preds.get(skey)
        if open_s is not None:
            via_dg = open_s.get("via_dg", 0.0) >= 0.5
            if dark:
                self._resolve(st, skey, self._on_time(open_s, t), t, t, preds)
            elif not outage or (via_dg and not running and fuel is not None and fuel > 2.0) \
                    or (via_dg and fuel is not None and fuel > open_s.get("level", 0.0) + p.refuel_rise_l) \
                    or (not via_dg and running):
                self._resolve(st, skey, AVERTED, t, None, preds)  # power back, or the basis changed
            elif self._overdue(open_s, t):
                self._resolve(st, skey, WRONG, t, None, preds)
        elif outage and not dark and battery_h is not None:
            assert soc is not None and load is not None
            if on_battery and no_dg:
                hours, via, conf = battery_h, 0.0, 0.8
            elif running and fuel_h is not None and fuel is not None:
                hours, via, conf = fuel_h + battery_h, 1.0, 0.5
            else:
                return
            if hours <= p.forecast_horizon_h:
                inputs = [Feature("hours_on_battery", battery_h), Feature("battery_soc_pct", soc, LVD_SOC, LVD_SOC),
                          Feature("battery_bank_ah", cfg.battery_bank_ah), Feature("load_a", load)]
                if via:
                    inputs[:0] = [Feature("hours_of_fuel", fuel_h or 0.0), Feature("fuel_level_l", fuel or 0.0),
                                  Feature("burn_l_per_h", burn)]
                self._predict(st, cfg, skey, SITE_DOWN, "forecast.site_down", t, t + hours * 3600.0, conf,
                              tuple(inputs), preds, via_dg=via, level=fuel if fuel is not None else 0.0)

    @staticmethod
    def _tolerance(o: Mapping[str, Any]) -> float:
        """How far from its expected time a prediction may come true and still be right."""
        return max(0.25 * (float(o["expected"]) - float(o["t"])), 900.0)

    def _on_time(self, o: Mapping[str, Any], t: float) -> int:
        return RIGHT if abs(t - float(o["expected"])) <= self._tolerance(o) else WRONG

    def _overdue(self, o: Mapping[str, Any], t: float) -> bool:
        return t > float(o["expected"]) + self._tolerance(o)

    def _predict(self, st: SiteState, cfg: SiteCfg, key: str, pkind: int, detector: str, t: float,
                 expected: float, confidence: float, inputs: tuple[Feature, ...],
                 preds: list[PredictionChange], **extra: float) -> None:
        pid = anomaly_id(cfg.site_id, "prediction|" + key, t)
        st.preds[key] = {"id": pid, "t": t, "expected": expected, "pkind": pkind, "detector": detector,
                         "confidence": confidence, **extra}
        preds.append(PredictionChange("open", pid, pkind, detector, t, expected, confidence, inputs))

    def _resolve(self, st: SiteState, key: str, outcome: int, t: float, actual: float | None,
                 preds: list[PredictionChange]) -> None:
        o = st.preds.pop(key)
        preds.append(PredictionChange("resolve", o["id"], o["pkind"], o["detector"], o["t"], o["expected"],
                                      o["confidence"], (), outcome, t, actual))


# --------------------------------------------------------------------------- multivariate models

MODEL_FEATURES = ("load_a", "dc_bus_v", "cabinet_temp_c", "fuel_rate_lpm", "dg_running", "mains_present",
                  "battery_soc_pct")
MODEL_DETECTOR = "model.ecod"
MAX_PENDING_FEATURES = 120  # closed minutes kept for the models when nobody scores them


def minute_features(st: SiteState, means: Mapping[str, float], maxes: Mapping[str, float],
                    minute: int) -> list[float | None]:
    """A site-minute's feature vector for the models (None where the minute has no sample)."""
    ring = [r for r in st.fuel if r[0] > minute - 5]
    rate = _slope([(r[0], r[1]) for r in ring])[0] if len(ring) >= 3 else (0.0 if "fuel_level_l" in means else None)
    return [means.get("load_a"), means.get("dc_bus_v"), means.get("cabinet_temp_c"), rate,
            maxes.get("dg_running"), means.get("mains_present"), means.get("battery_soc_pct")]


def trainable(st: SiteState) -> bool:
    """A minute is a training example only when nothing is known to be wrong on the site."""
    return not st.open


def model_step(st: SiteState, cfg: SiteCfg, minute: int, tail: float, contributions: Sequence[Feature],
               version: int, p: Params, adjust: Adjustment = NO_ADJUSTMENT) -> list[Transition]:
    """Hysteresis on a model's tail probability (the share of training minutes scoring at least
    as high): open after `model_open_after` minutes below `model_p_open` (divided by the feedback
    factor), clear after `model_close_after` minutes above `model_p_close`."""
    out: list[Transition] = []
    key = MODEL_DETECTOR
    p_open = p.model_p_open / adjust.factor
    if key not in st.open:
        n = st.timers.get("model_above", 0) + 1 if tail < p_open else 0
        st.timers["model_above"] = n
        if n >= p.model_open_after and not adjust.suppressed:
            st.timers["model_above"] = 0
            start = (minute - p.model_open_after + 1) * 60.0
            top = ", ".join(f.name for f in contributions[:3])
            aid = anomaly_id(cfg.site_id, key, start)
            st.open[key] = {"id": aid, "start": start, "detector": key, "layer": MODEL, "metrics": [
                f.name for f in contributions[:3]], "severity": INFO, "score": 1.0 - tail, "tenant": ""}
            out.append(Transition("open", aid, key, key, MODEL, tuple(f.name for f in contributions[:3]), INFO,
                                  min(1.0, max(0.0, 1.0 - tail)), start, (minute + 1) * 60.0,
                                  f"unusual combination for a {cfg.site_class} site (driven by {top}; "
                                  f"tail probability {tail:.2g}, model v{version})", tuple(contributions[:5]),
                                  version=str(version)))
    else:
        n = st.timers.get("model_below", 0) + 1 if tail > p.model_p_close else 0
        st.timers["model_below"] = n
        if n >= p.model_close_after:
            st.timers["model_below"] = 0
            o = st.open.pop(key)
            out.append(Transition("clear", o["id"], key, key, MODEL, tuple(o["metrics"]), o["severity"], o["score"],
                                  o["start"], (minute + 1) * 60.0, "", (), "", version=str(version)))
    return out


def detectors() -> list[tuple[str, int, str]]:
    """(name, layer, description) of every detector this engine runs."""
    out = [(n, RULE, d) for n, (_, _, d) in RULES.items()]
    out += [(n, STATISTICS, d) for n, (_, d) in STAT_DETECTORS.items()]
    out.append((MODEL_DETECTOR, MODEL, "multivariate outlier of the site class's pyod ECOD model"))
    out += [(n, 0, d) for n, d in FORECASTS.items()]
    return out
