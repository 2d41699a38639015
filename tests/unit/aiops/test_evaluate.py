"""Scoring against ground truth (workers/aiops_engine/evaluate.py) on hand-made events and
detections with known answers: metric-aware matching, precursors, forecast leads and outcomes."""

from __future__ import annotations

from workers.aiops_engine import evaluate as ev

H = 3600.0


def test_a_detector_of_several_metrics_counts_for_a_type_only_with_its_metric():
    events = [ev.Event("cooling_failure", "S-1", 10 * H, 14 * H)]
    dets = [ev.Detection("S-1", "stat.baseline", 10.2 * H, 10 * H, ("cabinet_temp_c",)),
            ev.Detection("S-1", "stat.baseline", 11 * H, 11 * H, ("load_a",))]  # consumption: not cooling
    r = ev.score(events, dets, site_days=1, run_end=24 * H)["types"]["cooling_failure"]
    assert r["events"] == 1 and r["detected"] == 1 and r["anomalies"] == 1 and r["precision"] == 1.0
    # the load's anomaly still lies inside a fault's window: it is not a false anomaly either
    assert ev.score(events, dets, site_days=1, run_end=24 * H)["false_anomalies"] == 0
    # without the cabinet's detection the event is missed, whatever the load's baseline did
    r = ev.score(events, dets[1:], site_days=1, run_end=24 * H)["types"]["cooling_failure"]
    assert r["detected"] == 0 and r["f1"] is None


def test_a_warning_before_an_lvd_is_a_precursor_not_the_lvd():
    events = [ev.Event("battery_lvd", "S-1", 5 * H, 6 * H), ev.Event("grid_outage", "S-2", 1 * H, 3 * H)]
    dets = [ev.Detection("S-1", "rule.battery_near_lvd", 4.5 * H),  # warned 30 min ahead
            ev.Detection("S-1", "rule.battery_lvd", 5 * H),
            ev.Detection("S-2", "rule.battery_near_lvd", 2.5 * H)]  # power came back first
    lvd = ev.score(events, dets, site_days=2, run_end=24 * H)["types"]["battery_lvd"]
    assert lvd["detected"] == 1 and lvd["precision"] == 1.0 and lvd["median_ttd_s"] == 0
    pre = ev.precursor(events, dets, "battery_lvd", ("rule.battery_near_lvd",), run_end=24 * H)
    assert pre["warned"] == 1 and pre["median_lead_s"] == 0.5 * H
    assert pre["warnings"] == 2 and pre["share_followed"] == 0.5


def test_forecast_leads_and_outcomes():
    events = [ev.Event("battery_lvd", "S-1", 5 * H, 6 * H), ev.Event("battery_lvd", "S-2", 8 * H, 9 * H)]
    fs = [ev.Forecast("S-1", 2 * H, 5.1 * H, 5 * H, 2),  # right, 3 h ahead
          ev.Forecast("S-2", 7.8 * H, 8 * H, 8 * H, 2),  # 12 minutes ahead: too late to count
          ev.Forecast("S-3", 1 * H, 4 * H, 2 * H, 4)]  # averted
    r = ev.forecast_leads(events, fs)
    assert r["lvd_events"] == 2 and r["predicted"] == 2 and r["predicted_30min_ahead"] == 1
    assert r["share_30min_ahead"] == 0.5 and r["min_lead_s"] == 0.2 * H
    assert r["outcomes"] == {"pending": 0, "right": 2, "wrong": 0, "averted": 1}
    # a prediction resolved (averted) before the event does not count for it
    r = ev.forecast_leads(events[:1], [ev.Forecast("S-1", 1 * H, 5 * H, 2 * H, 4)])
    assert r["predicted"] == 0
