"""The NOC's correlation rules, lifecycle and statistics (services/noc/domain.py), pure."""

from __future__ import annotations

import itertools

import pytest

from services.noc import domain as d

P = d.Params(dedup_window_s=300, flap_window_s=600, flap_threshold=4, regional_window_s=300, regional_min_sites=3,
             auto_resolve_hold_s=300, reopen_window_s=3600, link_window_s=86400)
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
FACTS = d.SiteFacts("S1", "north", (d.Tenancy("ten-a", "acme", 0.999), d.Tenancy("ten-b", "beta", 0.99)))


def ids():
    counter = itertools.count(1)
    return lambda: f"00000000-0000-0000-0000-{next(counter):012d}"


def anomaly(detector: str, t: float, *, site: str = "S1", tenant: str = "", cleared: bool = False, aid: str = "",
            metrics: tuple[str, ...] = ()) -> d.Signal:
    return d.signal_from_anomaly(anomaly_id=aid or f"{detector}-{t}-{site}", site_id=site, detector=detector,
                                 metrics=metrics, tenant_id=tenant, severity=3, time=t, summary="", cleared=cleared)


class World:
    """Site views kept across signals, as the store would give them back."""

    def __init__(self, *facts: d.SiteFacts) -> None:
        self.views = {f.site_id: d.SiteView(f) for f in (facts or (FACTS,))}
        self.regions: dict[str, d.RegionView] = {}
        self.new_id = ids()
        self.outs: list[d.Decisions] = []

    def send(self, sig: d.Signal, sla: dict[str, d.Sla] | None = None) -> tuple[d.Outcome, d.Decisions]:
        out = d.Decisions()
        view = self.views[sig.site_id]
        rv = self.regions.setdefault(view.facts.region, d.RegionView(view.facts.region))
        got = d.correlate(view, sig, params=P, out=out, new_id=self.new_id, sla=sla, region=rv)
        self.outs.append(out)
        return got, out

    def incidents(self, site: str = "S1") -> list[d.IncidentRec]:
        return [i for i in self.views[site].incidents if not i.merged_into]

    def timeline(self, iid: str) -> list[d.Entry]:
        return [e for o in self.outs for e in o.timeline if e.incident_id == iid]


# ------------------------------------------------------------------ the cause table


def test_every_aiops_detector_maps_to_a_cause_and_models_share_one():
    from workers.aiops_engine import domain as engine

    for name, _layer, _doc in engine.detectors():
        c = d.detector_cause(name)
        assert c.probable_cause and c.alarm_type and c.kind, name
    assert d.detector_cause("model.ecod") is d.MODEL_CAUSE
    assert d.detector_cause("rule.mains_lost").step == "mains_failure"
    assert d.detector_cause("stat.telemetry_gap").kind == d.UNREACHABLE
    assert d.detector_cause("stat.fuel_theft").kind == d.FUEL
    assert d.cause_of("tenant_specific_thing").kind == d.EXTERNAL
    assert d.cause_of("site_down").step == "site_down"


def test_external_signal_defaults_its_keys():
    s = d.signal_from_external(source="nms", source_alarm_id="1", site_id="S1", time=T0, probable_cause="site_down",
                               alarm_type=0, severity=d.CRITICAL)
    assert s.dedup_key == s.clear_key == "nms/S1/site_down"
    assert s.alarm_type == d.EQUIPMENT and s.kind == d.POWER
    t = d.signal_from_external(source="nms", source_alarm_id="1", site_id="S1", time=T0, probable_cause="site_down",
                               alarm_type=0, severity=d.CRITICAL, text="other")
    assert s.content_hash() != t.content_hash()


# ------------------------------------------------------------------ dedup and flapping


def test_repeats_of_an_active_alarm_are_one_alarm():
    w = World()
    a1, _ = w.send(anomaly("rule.door_open", T0, aid="x1"))
    a2, _ = w.send(anomaly("rule.door_open", T0 + 30, aid="x2"))
    assert a1.alarm is a2.alarm and a2.alarm.count == 2 and a2.alarm.last_seen == T0 + 30
    [inc] = w.incidents()
    assert inc.alarm_count == 2 and inc.kind == d.ENVIRONMENT


def test_reraise_within_the_dedup_window_is_the_same_alarm_and_later_a_new_one():
    w = World()
    first, _ = w.send(anomaly("rule.low_fuel", T0))
    w.send(anomaly("rule.low_fuel", T0 + 10, cleared=True))
    again, _ = w.send(anomaly("rule.low_fuel", T0 + 100))
    assert again.alarm is first.alarm and again.alarm.transitions == 2 and again.alarm.active
    w.send(anomaly("rule.low_fuel", T0 + 110, cleared=True))
    later, _ = w.send(anomaly("rule.low_fuel", T0 + 5000))
    assert later.alarm is not first.alarm


def test_flapping_makes_one_flapping_incident_with_hysteresis():
    w = World()
    for k in range(6):
        w.send(anomaly("rule.rectifier_fault", T0 + k * 60))
        w.send(anomaly("rule.rectifier_fault", T0 + k * 60 + 20, cleared=True))
    [inc] = w.incidents()
    assert inc.flapping
    assert sum(1 for e in w.timeline(inc.id) if e.kind == d.T_FLAPPING) == 1
    # still flapping (and not auto-resolved) within the calm period
    out = d.Decisions()
    d.tick(inc, T0 + 5 * 60 + 20 + 300, params=P, facts=FACTS, out=out)
    assert inc.flapping and inc.state == d.OPEN
    # calm for a whole flapping window: no longer flapping, then auto-resolved
    out = d.Decisions()
    d.tick(inc, T0 + 5 * 60 + 20 + 601, params=P, facts=FACTS, out=out)
    assert not inc.flapping and inc.state == d.RESOLVED
    assert [c for _, c, _ in out.changes] == ["updated", "resolved"]


# ------------------------------------------------------------------ the power chain


def test_power_chain_is_one_incident_with_the_stated_root_cause_and_impact():
    w = World()
    sla = {"ten-a": d.Sla(0.9995, 1440), "ten-b": d.Sla(0.98, 1440)}
    for k, det in enumerate(["rule.mains_lost", "rule.dg_fail_to_start", "rule.battery_near_lvd", "rule.dc_bus_low"]):
        w.send(anomaly(det, T0 + k * 60), sla)
    w.send(anomaly("rule.tenant_link_down", T0 + 300, tenant="acme"), sla)
    [inc] = w.incidents()
    assert inc.kind == d.POWER and inc.alarm_count == 5
    assert inc.chain == ["mains_failure", "dg_fail_to_start", "battery_low", "dc_low", "tenant_link_down"]
    assert (inc.root_code, inc.root_summary) == ("mains_failure+dg_fail_to_start", "mains failure, DG failed to start")
    assert inc.title == "S1: mains failure, DG failed to start"
    assert inc.severity == d.SEV_CRITICAL
    by = {i.tenant_id: i for i in inc.impacts}
    assert by["acme"].service_down and by["beta"].service_down
    assert by["acme"].sla_target_percent == 99.9 and by["acme"].availability_percent == 99.95
    minutes = d.month_minutes(T0 + 300)
    assert by["acme"].budget_remaining_minutes == pytest.approx(0.001 * minutes - 0.0005 * 1440, abs=0.1)
    assert by["beta"].budget_remaining_minutes == pytest.approx(0.01 * minutes - 0.02 * 1440, abs=0.1)
    kinds = [e.kind for e in w.timeline(inc.id)]
    assert kinds.count(d.T_ALARM_JOINED) == 4 and d.T_ROOT_CAUSE_CHANGED in kinds


def test_root_cause_without_mains_is_the_first_step():
    assert d.root_cause(["dc_low", "battery_low"]) == ("battery_low", "battery low")
    assert d.root_cause(["dc_low", "rectifier_failure"]) == ("rectifier_failure", "rectifier failure")
    assert d.root_cause([]) == ("", "")


def test_tenant_link_alone_is_its_own_incident_for_that_tenant_only():
    w = World()
    w.send(anomaly("rule.tenant_link_down", T0, tenant="beta"))
    [inc] = w.incidents()
    assert inc.kind == d.TENANT_LINK and inc.tenant_ids == ["beta"]
    assert [i.tenant_id for i in inc.impacts] == ["beta"] and inc.impacts[0].service_down


def test_unreachable_is_distinct_from_down():
    w = World()
    w.send(anomaly("stat.telemetry_gap", T0))
    w.send(anomaly("rule.dc_bus_low", T0 + 10))
    kinds = sorted(i.kind for i in w.incidents())
    assert kinds == [d.POWER, d.UNREACHABLE]
    unreachable = next(i for i in w.incidents() if i.kind == d.UNREACHABLE)
    assert not any(i.service_down for i in unreachable.impacts)


# ------------------------------------------------------------------ regional


def test_regional_outage_opens_a_parent_with_the_site_incidents_as_children():
    sites = [d.SiteFacts(f"R{k}", "coast", (d.Tenancy(f"t{k}", "acme", 0.99),)) for k in range(5)]
    w = World(*sites)
    for k in range(2):
        w.send(anomaly("rule.mains_lost", T0 + k * 30, site=f"R{k}"))
    assert w.regions["coast"].parent is None
    w.send(anomaly("rule.mains_lost", T0 + 90, site="R2"))
    parent = w.regions["coast"].parent
    assert parent is not None and parent.kind == d.REGIONAL and parent.root_code == "regional_grid_outage"
    assert {i.parent_id for k in range(3) for i in w.incidents(f"R{k}")} == {parent.id}
    w.send(anomaly("rule.mains_lost", T0 + 200, site="R3"))
    [late] = w.incidents("R3")
    assert late.parent_id == parent.id
    assert parent.site_ids == ["R0", "R1", "R2", "R3"] and parent.title == "coast: regional grid outage (4 sites)"
    # outside the window: a lone site stays alone
    w2 = World(*sites)
    w2.send(anomaly("rule.mains_lost", T0, site="R0"))
    w2.send(anomaly("rule.mains_lost", T0 + 400, site="R1"))
    w2.send(anomaly("rule.mains_lost", T0 + 800, site="R2"))
    assert w2.regions["coast"].parent is None


def test_regional_parent_resolves_when_every_child_did():
    sites = [d.SiteFacts(f"R{k}", "coast") for k in range(3)]
    w = World(*sites)
    for k in range(3):
        w.send(anomaly("rule.mains_lost", T0 + k, site=f"R{k}"))
    parent = w.regions["coast"].parent
    assert parent is not None
    kids = [i for k in range(3) for i in w.incidents(f"R{k}")]
    d.tick(parent, T0 + 10, params=P, facts=None, out=d.Decisions(), children=kids)
    assert parent.state == d.OPEN
    for k in kids:
        d.transition(k, "resolve", actor="op", now=T0 + 20, note="", out=d.Decisions())
    d.tick(parent, T0 + 30, params=P, facts=None, out=d.Decisions(), children=kids)
    assert parent.state == d.RESOLVED


# ------------------------------------------------------------------ suppression


def test_alarm_in_a_window_is_kept_suppressed_and_raised_when_the_window_ends():
    facts = d.SiteFacts("S1", "north", FACTS.tenancies, ((T0 - 60, T0 + 600),))
    w = World(facts)
    got, out = w.send(anomaly("rule.door_open", T0))
    assert got.alarm is not None and got.alarm.suppressed
    [inc] = w.incidents()
    assert inc.suppressed and inc.suppressed_until == T0 + 600
    assert [e.kind for e in out.timeline][:2] == [d.T_OPENED, d.T_SUPPRESSED]
    out = d.Decisions()
    d.tick(inc, T0 + 300, params=P, facts=facts, out=out)
    assert inc.suppressed and not out.changes
    out = d.Decisions()
    d.tick(inc, T0 + 601, params=P, facts=facts, out=out)
    assert not inc.suppressed and [c for _, c, _ in out.changes] == ["updated"]
    assert out.timeline[0].kind == d.T_UNSUPPRESSED


def test_chained_windows_extend_the_suppression():
    facts = d.SiteFacts("S1", "north", (), ((T0, T0 + 100), (T0 + 100, T0 + 200)))
    assert facts.window_end(T0 + 50) == T0 + 200
    assert facts.window_end(T0 + 250) is None


def test_an_incident_resolved_inside_the_window_is_never_raised():
    facts = d.SiteFacts("S1", "north", (), ((T0, T0 + 600),))
    w = World(facts)
    w.send(anomaly("rule.door_open", T0 + 1, aid="a"))
    [inc] = w.incidents()
    d.transition(inc, "resolve", actor="op", now=T0 + 100, note="", out=d.Decisions())
    out = d.Decisions()
    d.tick(inc, T0 + 700, params=P, facts=facts, out=out)
    assert inc.suppressed and not out.changes


# ------------------------------------------------------------------ auto-resolve and recurrence


def test_auto_resolve_after_the_hold_and_not_before():
    w = World()
    w.send(anomaly("rule.high_cabinet_temp", T0, aid="h"))
    w.send(anomaly("rule.high_cabinet_temp", T0 + 60, aid="h", cleared=True))
    [inc] = w.incidents()
    assert inc.clear_since == T0 + 60
    d.tick(inc, T0 + 60 + 299, params=P, facts=FACTS, out=d.Decisions())
    assert inc.state == d.OPEN
    out = d.Decisions()
    d.tick(inc, T0 + 60 + 300, params=P, facts=FACTS, out=out)
    assert inc.state == d.RESOLVED and out.timeline[-1].kind == d.T_AUTO_RESOLVED


def test_a_raise_cancels_the_auto_resolve_timer():
    w = World()
    w.send(anomaly("rule.high_cabinet_temp", T0))
    w.send(anomaly("rule.high_cabinet_temp", T0 + 60, cleared=True))
    w.send(anomaly("rule.door_open", T0 + 90))
    [inc] = w.incidents()
    assert inc.clear_since is None


def test_recurrence_within_the_window_reopens_and_later_links():
    w = World()
    w.send(anomaly("stat.fuel_theft", T0))
    w.send(anomaly("stat.fuel_theft", T0 + 60, cleared=True))
    [inc] = w.incidents()
    d.tick(inc, T0 + 400, params=P, facts=FACTS, out=d.Decisions())
    assert inc.state == d.RESOLVED
    _, out = w.send(anomaly("stat.fuel_theft", T0 + 1000))
    assert inc.state == d.OPEN and inc.reopen_count == 1 and ("reopened" in [c for _, c, _ in out.changes])
    w.send(anomaly("stat.fuel_theft", T0 + 1060, cleared=True))
    d.tick(inc, T0 + 1400, params=P, facts=FACTS, out=d.Decisions())
    _, out = w.send(anomaly("stat.fuel_theft", T0 + 1400 + 3601))
    newer = [i for i in w.incidents() if i.id != inc.id]
    assert len(newer) == 1 and newer[0].recurrence_of == inc.id and newer[0].state == d.OPEN


# ------------------------------------------------------------------ lifecycle


def _incident(state: int = d.OPEN) -> d.IncidentRec:
    return d.IncidentRec(id="i1", title="t", kind=d.POWER, severity=d.SEV_MAJOR, state=state, site_id="S1",
                         region="north", first_seen=T0, last_seen=T0)


@pytest.mark.parametrize(("state", "action", "ok"), [
    (d.OPEN, "acknowledge", True), (d.ACKNOWLEDGED, "acknowledge", False), (d.RESOLVED, "acknowledge", False),
    (d.CLOSED, "acknowledge", False),
    (d.OPEN, "resolve", True), (d.ACKNOWLEDGED, "resolve", True), (d.RESOLVED, "resolve", False),
    (d.CLOSED, "resolve", False),
    (d.OPEN, "close", False), (d.ACKNOWLEDGED, "close", False), (d.RESOLVED, "close", True),
    (d.CLOSED, "close", False),
    (d.OPEN, "reopen", False), (d.ACKNOWLEDGED, "reopen", False), (d.RESOLVED, "reopen", True),
    (d.CLOSED, "reopen", True),
])
def test_the_lifecycle_state_machine(state, action, ok):
    inc = _incident(state)
    out = d.Decisions()
    if ok:
        entry = d.transition(inc, action, actor="op", now=T0 + 5, note="n", out=out)
        assert inc.state == d.ACTIONS[action][1] and entry.actor == "op" and entry.text == "n"
        assert out.changes[0][1] == d.ACTIONS[action][3]
    else:
        with pytest.raises(d.IllegalTransition) as err:
            d.transition(inc, action, actor="op", now=T0 + 5, note="", out=out)
        assert err.value.reason == f"INCIDENT_{d.STATE_NAMES[state].upper()}"
        assert inc.state == state and not out.changes


def test_resolving_a_closed_incident_names_the_reason():
    with pytest.raises(d.IllegalTransition, match="cannot resolve a closed incident") as err:
        d.transition(_incident(d.CLOSED), "resolve", actor="op", now=T0, note="", out=d.Decisions())
    assert err.value.reason == "INCIDENT_CLOSED"


def test_acknowledge_records_who_and_when_and_reopen_counts():
    inc = _incident()
    d.transition(inc, "acknowledge", actor="alice", now=T0 + 60, note="", out=d.Decisions())
    assert inc.acknowledged_by == "alice" and inc.acknowledge_time == T0 + 60
    d.transition(inc, "resolve", actor="alice", now=T0 + 120, note="", out=d.Decisions())
    d.transition(inc, "close", actor="alice", now=T0 + 180, note="", out=d.Decisions())
    d.transition(inc, "reopen", actor="bob", now=T0 + 240, note="back", out=d.Decisions())
    assert inc.state == d.OPEN and inc.reopen_count == 1 and inc.close_time is None and inc.resolve_time is None


def test_assign_and_comment():
    inc = _incident()
    out = d.Decisions()
    d.assign(inc, "carol", actor="op", now=T0, out=out)
    d.comment(inc, "on site", actor="op", now=T0, out=out)
    assert inc.assignee == "carol" and [e.kind for e in out.timeline] == [d.T_ASSIGNED, d.T_COMMENTED]
    assert out.events() == out.changes[:1]  # a second "updated" of the same batch says nothing new
    with pytest.raises(d.IllegalTransition):
        d.assign(_incident(d.CLOSED), "x", actor="op", now=T0, out=d.Decisions())


def test_merge_moves_alarms_and_closes_the_sources():
    w = World()
    w.send(anomaly("rule.door_open", T0))
    w.send(anomaly("stat.fuel_theft", T0 + 5))
    env, fuel = sorted(w.incidents(), key=lambda i: i.kind)
    alarms = list(w.views["S1"].alarms.values())
    out = d.Decisions()
    d.merge(env, [fuel], alarms, actor="op", now=T0 + 60, out=out)
    assert fuel.merged_into == env.id and fuel.state == d.CLOSED
    assert all(a.incident_id == env.id for a in alarms) and env.alarm_count == 2
    assert ("closed" in [c for i, c, _ in out.changes if i == fuel.id])
    with pytest.raises(d.IllegalTransition) as err:
        d.merge(env, [env], alarms, actor="op", now=T0, out=d.Decisions())
    assert err.value.reason == "MERGE_INTO_SELF"
    with pytest.raises(d.IllegalTransition) as err:
        d.merge(env, [fuel], alarms, actor="op", now=T0, out=d.Decisions())
    assert err.value.reason == "INCIDENT_MERGED"


def test_split_moves_some_alarms_to_a_new_incident():
    w = World()
    w.send(anomaly("rule.door_open", T0))
    w.send(anomaly("rule.high_cabinet_temp", T0 + 5))
    [inc] = w.incidents()
    alarms = list(w.views["S1"].alarms.values())
    temp = next(a for a in alarms if a.probable_cause == "high_temperature")
    out = d.Decisions()
    new, _ = d.split(inc, [temp.id], alarms, title="cooling", actor="op", now=T0 + 60, new_id=w.new_id, facts=FACTS,
                     out=out)
    assert temp.incident_id == new.id and new.title == "cooling" and new.alarm_count == 1 and inc.alarm_count == 1
    with pytest.raises(d.IllegalTransition) as err:
        d.split(inc, [a.id for a in alarms if a.incident_id == inc.id], alarms, title="", actor="op", now=T0,
                new_id=w.new_id, facts=FACTS, out=d.Decisions())
    assert err.value.reason == "SPLIT_ALL_ALARMS"
    with pytest.raises(d.IllegalTransition) as err:
        d.split(inc, ["nope"], alarms, title="", actor="op", now=T0, new_id=w.new_id, facts=FACTS, out=d.Decisions())
    assert err.value.reason == "ALARM_NOT_IN_INCIDENT"


# ------------------------------------------------------------------ clears, cursors, stats


def test_a_clear_with_nothing_active_changes_nothing():
    w = World()
    got, out = w.send(anomaly("rule.door_open", T0, cleared=True))
    assert got.alarm is None and not out.alarms and not out.incidents




def test_stats_mtta_mttr_mtbf_and_noise_reduction():
    incs = [d.StatIncident("a", ("S1",), "north", ("acme",), T0, T0 + 60, T0 + 600),
            d.StatIncident("b", ("S2",), "south", ("beta",), T0, None, T0 + 1200),
            d.StatIncident("c", ("S1",), "north", ("acme",), T0, T0 + 120, None)]
    alarms = [d.StatAlarms("S1", "north", ("acme",), 40), d.StatAlarms("S2", "south", ("beta",), 20)]
    overall, groups = d.noc_stats(incs, alarms, range_s=86400, group_by=1)
    assert overall.incidents == 3 and overall.raw_alarms == 60 and overall.alarms_per_incident == 20
    assert overall.noise_reduction == pytest.approx(0.95)
    assert overall.mtta_seconds == 90 and overall.mttr_seconds == 900
    assert overall.acknowledged == 2 and overall.resolved == 2
    assert overall.mtbf_seconds == pytest.approx(86400 * 2 / 3, abs=0.01)
    by = {g.key: g for g in groups}
    assert by["S1"].incidents == 2 and by["S1"].mtbf_seconds == 43200 and by["S2"].raw_alarms == 20
    _, regions = d.noc_stats(incs, alarms, range_s=86400, group_by=2)
    assert [g.key for g in regions] == ["north", "south"]
    _, tenants = d.noc_stats(incs, alarms, range_s=86400, group_by=3)
    assert {g.key: g.incidents for g in tenants} == {"acme": 2, "beta": 1}
    empty, _ = d.noc_stats([], [], range_s=10)
    assert empty.incidents == 0 and empty.noise_reduction == 0


def test_a_resend_of_a_still_active_alarm_does_not_reopen_a_resolved_incident():
    w = World()
    w.send(anomaly("rule.door_open", T0, aid="d1"))
    [inc] = w.incidents()
    d.transition(inc, "resolve", actor="op", now=T0 + 10, note="stale", out=d.Decisions())
    got, out = w.send(anomaly("rule.door_open", T0 + 20, aid="d2"))
    assert inc.state == d.RESOLVED and got.alarm is not None and got.alarm.count == 2
    assert not out.changes and not out.incidents
    # a raise after a clear is a recurrence: it reopens
    w.send(anomaly("rule.door_open", T0 + 30, aid="d1", cleared=True))
    w.send(anomaly("rule.door_open", T0 + 40, aid="d3"))
    assert inc.state == d.OPEN and inc.reopen_count == 1
