"""Scoring detections against ground truth (the simulator's faults.jsonl), pure. Used by
`make bench-detect` and `towerco aiops backtest --site-file`.

Definitions (docs/aiops.md, "Quality"):
* a truth event of type T is **detected** when an anomaly of one of T's detectors (FAULT_DETECTORS:
  a detector name, or `detector|metric` for a detector that judges several metrics, so the load's
  baseline is not taken for a cooling failure's) on the same site fires (detect time) between the event's start minus `early_s` and its end
  plus `late_s`; time to detect = detect time - start (negative when a precursor fired first);
* an anomaly of T's detectors is a **true positive for T** when it fires in that window of some
  event of type T (or of a type sharing a detector with T: grid and regional outages) on its site; precision(T) = those / all anomalies of T's detectors;
* event F1(T) = 2 P R / (P + R) with R = detected events / events;
* a **false anomaly** is one (any detector) that fires in the window of no truth event of any
  type on its site; reported per site-day;
* forecasts: for each battery_lvd event, the lead time of the first prediction of the kind made
  in the 12 hours before it (and not resolved before it); share predicted >= 30 min ahead; and
  how the predictions of each kind turned out (right / wrong / averted / pending);
* precursors (a warning of a state that may lead to a fault, e.g. rule.battery_near_lvd before
  an LVD): the share of the type's events it warned of before they started, the warning lead,
  and the share of its warnings followed by such an event.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

FAULT_DETECTORS: dict[str, tuple[str, ...]] = {
    "grid_outage": ("rule.mains_lost",),
    "regional_outage": ("rule.mains_lost",),
    "dg_fail_to_start": ("rule.dg_fail_to_start",),
    "battery_lvd": ("rule.battery_lvd",),
    "fuel_theft": ("stat.fuel_theft",),
    "cooling_failure": ("rule.high_cabinet_temp", "stat.baseline|cabinet_temp_c"),
    "door_open": ("rule.door_open",),
    "rectifier_fault": ("rule.rectifier_fault",),
    "tenant_link_down": ("rule.tenant_link_down",),
    "telemetry_link_loss": ("stat.telemetry_gap",),
}
NOT_FAULTS = frozenset({"refuel"})
# Warnings of a state that can lead to a fault of the type, scored as precursors (evaluate.precursor).
PRECURSORS: dict[str, tuple[str, ...]] = {"battery_lvd": ("rule.battery_near_lvd",)}


@dataclass(frozen=True)
class Event:
    type: str
    site_id: str
    start: float
    end: float | None


@dataclass(frozen=True)
class Detection:
    site_id: str
    detector: str
    time: float  # when it fired
    start: float = 0.0
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Forecast:
    site_id: str
    predict_time: float
    expected_time: float
    resolved_time: float | None = None
    outcome: int = 1  # towerco.aiops.v1.PredictionOutcome: 1 pending, 2 right, 3 wrong, 4 averted


def names(d: Detection) -> set[str]:
    """What a detection answers to in FAULT_DETECTORS: its detector, and detector|metric."""
    return {d.detector, *(f"{d.detector}|{m}" for m in d.metrics)}


def _window(e: Event, run_end: float, early_s: float, late_s: float) -> tuple[float, float]:
    return e.start - early_s, (e.end if e.end is not None else run_end) + late_s


def score(events: Iterable[Event], detections: Sequence[Detection], *, site_days: float, run_end: float,
          early_s: float = 120.0, late_s: float = 300.0, fault_detectors: Mapping[str, Sequence[str]] | None = None,
          any_detector: bool = False) -> dict:
    """Per fault type: events, detected, recall, precision, f1, median time to detect (s); and
    false anomalies per site-day. `any_detector`: every detection counts for every type (for a
    baseline that does not say what it found, like a plain outlier model)."""
    fmap = dict(fault_detectors or FAULT_DETECTORS)
    evs = [e for e in events if e.type not in NOT_FAULTS]
    by_site: dict[str, list[Event]] = defaultdict(list)
    for e in evs:
        by_site[e.site_id].append(e)
    det_by_site: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        det_by_site[d.site_id].append(d)
    out: dict[str, dict] = {}
    for typ, dets in fmap.items():
        wanted = set(dets)
        mine = [e for e in evs if e.type == typ]
        ttd = []
        for e in mine:
            lo, hi = _window(e, run_end, early_s, late_s)
            hits = [d.time for d in det_by_site.get(e.site_id, ()) if (any_detector or names(d) & wanted)
                    and lo <= d.time <= hi]
            if hits:
                ttd.append(min(hits) - e.start)
        cand = [d for d in detections if any_detector or names(d) & wanted]
        # types sharing a detector with this one (grid and regional outages: rule.mains_lost)
        kin = {u for u, ds in fmap.items() if any_detector or wanted & set(ds)} | {typ}
        tp = 0
        for d in cand:
            if any(e.type in kin and _window(e, run_end, early_s, late_s)[0] <= d.time
                   <= _window(e, run_end, early_s, late_s)[1] for e in by_site.get(d.site_id, ())):
                tp += 1
        recall = len(ttd) / len(mine) if mine else None
        precision = tp / len(cand) if cand else None
        f1 = (2 * precision * recall / (precision + recall) if precision and recall else 0.0) \
            if recall is not None and precision is not None else None
        out[typ] = {"events": len(mine), "detected": len(ttd), "recall": _r(recall), "precision": _r(precision),
                    "f1": _r(f1), "median_ttd_s": _r(statistics.median(ttd)) if ttd else None,
                    "anomalies": len(cand)}
    false = 0
    false_by: dict[str, int] = defaultdict(int)
    examples: list[dict] = []
    for d in detections:
        explained = any(_window(e, run_end, early_s, late_s)[0] <= d.time <= _window(e, run_end, early_s, late_s)[1]
                        for e in by_site.get(d.site_id, ()))
        if not explained:
            false += 1
            false_by[d.detector] += 1
            if len(examples) < 10:
                examples.append({"site_id": d.site_id, "detector": d.detector, "metrics": list(d.metrics),
                                 "time": d.time})
    return {"types": out, "false_anomalies": false, "false_per_site_day": _r(false / site_days if site_days else 0.0),
            "false_by_detector": dict(sorted(false_by.items())), "false_examples": examples,
            "detections": len(detections)}


def forecast_leads(events: Iterable[Event], forecasts: Sequence[Forecast], *, horizon_s: float = 12 * 3600,
                   lead_s: float = 1800.0) -> dict:
    """For each battery_lvd event: the lead of the first battery prediction made before it on
    the site (within `horizon_s`, not resolved before the event)."""
    leads = []
    missed = 0
    by_site: dict[str, list[Forecast]] = defaultdict(list)
    for f in forecasts:
        by_site[f.site_id].append(f)
    lvds = [e for e in events if e.type == "battery_lvd"]
    for e in lvds:
        cands = [f for f in by_site.get(e.site_id, ()) if e.start - horizon_s <= f.predict_time <= e.start
                 and (f.resolved_time is None or f.resolved_time >= e.start - 60)]
        if cands:
            leads.append(e.start - min(f.predict_time for f in cands))
        else:
            missed += 1
    ok = sum(1 for x in leads if x >= lead_s)
    outcomes = {name: sum(1 for f in forecasts if f.outcome == code)
                for code, name in ((1, "pending"), (2, "right"), (3, "wrong"), (4, "averted"))}
    return {"lvd_events": len(lvds), "predicted": len(leads), "predicted_30min_ahead": ok,
            "share_30min_ahead": _r(ok / len(lvds)) if lvds else None,
            "median_lead_s": _r(statistics.median(leads)) if leads else None,
            "min_lead_s": _r(min(leads)) if leads else None, "predictions": len(forecasts), "outcomes": outcomes}


def precursor(events: Iterable[Event], detections: Sequence[Detection], typ: str, detectors: Sequence[str], *,
              horizon_s: float = 12 * 3600, run_end: float, late_s: float = 300.0) -> dict:
    """How well a warning foretells events of `typ`: the share of those events it warned of (fired in
    the `horizon_s` before the start, or at the start), the median warning lead, and the share of
    its warnings followed by such an event within `horizon_s` (or fired during one)."""
    wanted = set(detectors)
    evs = [e for e in events if e.type == typ]
    warns = [d for d in detections if names(d) & wanted]
    by_site: dict[str, list[Detection]] = defaultdict(list)
    for d in warns:
        by_site[d.site_id].append(d)
    leads = []
    for e in evs:
        before = [d.time for d in by_site.get(e.site_id, ()) if e.start - horizon_s <= d.time <= e.start]
        if before:
            leads.append(e.start - min(before))
    followed = sum(1 for d in warns if any(e.site_id == d.site_id and d.time - late_s
                                           <= e.start <= d.time + horizon_s
                                           or e.site_id == d.site_id and e.start <= d.time
                                           <= (e.end if e.end is not None else run_end) for e in evs))
    return {"detectors": list(detectors), "events": len(evs), "warned": len(leads),
            "share_warned": _r(len(leads) / len(evs)) if evs else None,
            "median_lead_s": _r(statistics.median(leads)) if leads else None,
            "warnings": len(warns), "share_followed": _r(followed / len(warns)) if warns else None}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
