"""Availability formula, breakdowns, intervals and rollups at query time; hypothesis properties."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kpi import domain as q
from workers.kpi_calculator import domain as d


def test_formula_with_exclusions_and_default_unknown_policy():
    # the straddling scenario: 5 outage minutes, 15 excused, 40 up in a 60-minute period
    fig = q.availability(Counter({"L": 5, "A": 15, "U": 40}), 60)
    assert fig.availability == pytest.approx((60 - 5 - 15) / (60 - 15))
    assert fig.outage_total == 5 and fig.outage_dc_low == 5
    assert fig.excluded_total == 15 and fig.excluded_access_denied == 15
    assert fig.defined and fig.unknown_minutes == 0


def test_unknown_policies_on_a_gap_during_an_outage():
    counts = Counter({"U": 40, "L": 15, "?": 5})
    excl = q.availability(counts, 60)
    assert excl.availability == pytest.approx(40 / 55)
    assert excl.excluded_total == 5 and excl.excluded_unknown == 5 and excl.unknown_minutes == 5
    avail = q.availability(counts, 60, policy=q.AVAILABLE)
    assert avail.availability == pytest.approx(45 / 60)
    down = q.availability(counts, 60, policy=q.DOWN)
    assert down.availability == pytest.approx(40 / 60)
    assert down.outage_total == 20 and down.outage_unknown_as_down == 5


def test_minutes_with_no_row_are_unknown_and_all_excluded_is_undefined():
    fig = q.availability(Counter({"U": 60}), 120)
    assert fig.unknown_minutes == 60 and fig.availability == 1.0
    empty = q.availability(Counter(), 60)
    assert not empty.defined and empty.availability == 1.0 and empty.sla_met
    with pytest.raises(ValueError):
        q.availability(Counter({"U": 61}), 60)


def test_sla_and_ignored_short_outages():
    fig = q.availability(Counter({"U": 55, "u": 3, "L": 2}), 60, sla_target=0.99, min_outage_minutes=5)
    assert fig.availability == pytest.approx(58 / 60)
    assert fig.outage_ignored_short == 3 and not fig.sla_met


def test_outage_intervals_merge_across_hours_and_split_by_cause():
    maps = [(60, "U" * 58 + "LL"), (120, "LLH" + "U" * 54 + "NNN"), (0, "U" * 60)]
    ivs = q.outage_intervals(maps, 0, 180)
    assert [(i.start, i.end, i.cause) for i in ivs] == [(118, 122, 1), (122, 123, 2), (177, 180, 3)]
    clipped = q.outage_intervals(maps, 119, 121)
    assert [(i.start, i.end) for i in clipped] == [(119, 121)]


def test_observed_autonomy():
    src = "G" * 10 + "B" * 30 + "D" * 20
    pwr = "1" * 30 + "L" * 10 + "1" * 20
    obs = q.observed_autonomy([(0, src, pwr)], 0, 60)
    assert (obs.start, obs.minutes, obs.lower_bound) == (10, 20, False)
    obs = q.observed_autonomy([(0, src, "1" * 60)], 0, 60)
    assert (obs.minutes, obs.lower_bound) == (30, True)
    assert q.observed_autonomy([(0, "G" * 60, "1" * 60)], 0, 60).start is None
    assert q.battery_autonomy_h(50.0, 25.0, 200.0) == pytest.approx(4.0)
    assert q.battery_autonomy_h(50.0, 0.0, 200.0) == 0.0


def test_range_checks_and_edges():
    assert q.check_range(0, 3600, unit_min=60) == []
    assert q.check_range(60, 3600, unit_min=60) == ["must fall on whole hours"]
    assert q.check_range(30, 90) == ["must fall on whole minutes"]
    assert "end_time must be after start_time" in q.check_range(120, 60)
    assert q.split_edges(30, 200) == (60, 180)
    assert q.split_edges(10, 50) == (60, 60)
    assert q.slice_map(60, "abcdefghij" + "x" * 50, 62, 65) == "cde"


def test_ranking_worst_first():
    ranked = q.rank([("A", "", 0.9), ("B", "", 0.5), ("C", "", 0.9)], lowest_first=True, limit=2)
    assert [r.site_id for r in ranked] == ["B", "A"]
    ranked = q.rank([("A", "", 1), ("B", "", 3)], lowest_first=False, limit=5)
    assert [r.site_id for r in ranked] == ["B", "A"]


# --------------------------------------------------------------------------- properties

STATE = st.one_of(
    st.none(),
    st.builds(lambda v, link: d.MinuteState(dc_min=v, dc_max=v, dc_avg=v, links={"t": link}),
              st.sampled_from([40.0, 50.0, 62.0]), st.sampled_from([0, 1, 1, 1])),
)
WINDOW = st.tuples(st.integers(0, 180), st.integers(1, 60), st.integers(1, 4))
POLICY = st.sampled_from(q.POLICIES)


def codes_for(states, windows, min_outage):
    t = d.TenancyCfg("t", 43.0, 60.0, min_outage)
    ws = [d.WindowCfg(a, a + n, c) for a, n, c in windows]
    return d.tenancy_codes(states, t, ws, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(STATE, min_size=1, max_size=180), st.lists(WINDOW, max_size=3), st.integers(0, 6),
       POLICY, st.integers(0, 60))
def test_availability_in_unit_interval(states, windows, min_outage, policy, extra):
    codes = codes_for(states, windows, min_outage)
    fig = q.availability(Counter(codes), len(codes) + extra, policy=policy)
    assert 0.0 <= fig.availability <= 1.0
    assert fig.outage_total + fig.excluded_total <= fig.period_minutes


@settings(max_examples=200, deadline=None)
@given(st.lists(STATE, min_size=1, max_size=180), st.lists(WINDOW, max_size=3), WINDOW,
       st.integers(0, 6), POLICY)
def test_adding_an_exclusion_window_never_lowers_availability(states, windows, extra, min_outage, policy):
    before = q.availability(Counter(codes_for(states, windows, min_outage)), len(states), policy=policy)
    after = q.availability(Counter(codes_for(states, [*windows, extra], min_outage)), len(states),
                           policy=policy)
    assert after.availability >= before.availability - 1e-12


@settings(max_examples=200, deadline=None)
@given(st.lists(STATE, min_size=2, max_size=240), st.lists(WINDOW, max_size=3), st.integers(0, 6),
       POLICY, st.data())
def test_splitting_a_period_and_recombining_gives_the_whole(states, windows, min_outage, policy, data):
    codes = codes_for(states, windows, min_outage)
    hours = [(h, codes[h:h + 60]) for h in range(0, len(codes), 60)]
    cut = data.draw(st.integers(1, len(codes) - 1))
    parts = [Counter("".join(q.slice_map(h, c, lo, hi) for h, c in hours)) for lo, hi in
             [(0, cut), (cut, len(codes))]]
    whole = q.availability(Counter(codes), len(codes), policy=policy)
    recombined = q.availability(q.sum_counts(parts), len(codes), policy=policy)
    assert recombined == whole
    left, right = (q.availability(p, n, policy=policy) for p, n in zip(parts, [cut, len(codes) - cut],
                                                                        strict=True))
    assert left.outage_total + right.outage_total == whole.outage_total
    assert left.excluded_total + right.excluded_total == whole.excluded_total


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="UuLHN?PFTApfta", min_size=1, max_size=60))
def test_event_availability_matches_the_service_formula(codes):
    a, defined = d.default_availability(codes)
    fig = q.availability(Counter(codes), len(codes), policy=q.EXCLUDED)
    assert (a, defined) == (pytest.approx(fig.availability), fig.defined)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="UuLHN?PFTApfta", max_size=60), min_size=1, max_size=5), POLICY)
def test_rollup_of_tenancies_equals_figure_of_summed_counts(maps, policy):
    figs = [q.availability(Counter(m), 60, policy=policy) for m in maps]
    rolled = q.combine(figs)
    direct = q.availability(q.sum_counts([Counter(m) for m in maps]), 60 * len(maps), policy=policy)
    assert rolled.availability == pytest.approx(direct.availability)
    assert (rolled.outage_total, rolled.excluded_total, rolled.defined) == (
        direct.outage_total, direct.excluded_total, direct.defined)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="UuLHN?PFTApfta", max_size=120), st.integers(0, 30), POLICY)
def test_series_value_matches_the_full_formula(codes, extra, policy):
    fig = q.availability(Counter(codes), len(codes) + extra, policy=policy)
    value, known = q.availability_value(Counter(codes), len(codes) + extra, policy)
    assert value == pytest.approx(fig.availability)
    assert known == (fig.period_minutes - fig.excluded_total if fig.defined else 0)


def test_edge_hours_are_the_partly_covered_hours() -> None:
    from services.kpi.domain import edge_hours, split_edges

    for lo, hi, want in [(0, 120, []), (30, 120, [0]), (0, 90, [60]), (30, 90, [0, 60]), (10, 50, [0]),
                         (60, 60, []), (61, 119, [60])]:
        first, last = split_edges(lo, hi)
        assert edge_hours(lo, hi, first, last) == want, (lo, hi)


def test_policy_resolution_default_stored_and_override() -> None:
    from services.kpi.domain import EXCLUDED, resolve_policy

    assert resolve_policy(None, 0) == (EXCLUDED, 0)
    assert resolve_policy((3, 15), 0) == (3, 15)
    assert resolve_policy((3, 15), 2) == (2, 15)  # the request's unknown policy wins, the minimum stays
    assert resolve_policy(None, 2) == (2, 0)


def test_paging_snapshots_serve_continuations_within_their_ttl() -> None:
    from services.kpi.domain import Snapshots

    snaps = Snapshots(ttl_s=60.0, max_entries=2)
    assert snaps.get("q1", 0.0) is None
    snaps.put("q1", "figures-1", 0.0)
    assert snaps.get("q1", 59.0) == "figures-1"
    assert snaps.get("q1", 61.0) is None and snaps.get("q1", 61.0) is None  # expired, then gone
    snaps.put("a", 1, 100.0)
    snaps.put("b", 2, 101.0)
    snaps.put("a", 3, 102.0)  # refreshed: now the newest
    snaps.put("c", 4, 103.0)  # evicts the oldest, "b"
    assert snaps.get("b", 103.0) is None and snaps.get("a", 103.0) == 3 and snaps.get("c", 103.0) == 4
