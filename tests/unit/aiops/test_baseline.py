"""The seasonal robust baseline on synthetic series with known answers: step, spike, drift,
seasonality, flat line, gaps, noise only; and causality (truncating never changes earlier scores)."""

from __future__ import annotations

import math
import random

import pytest

from workers.aiops_engine import domain as d

P = d.Params()
DAY = 86400.0


def run(values, *, step_s: float = 60.0, t0: float = 0.0, params: d.Params = P):
    b = d.new_baseline()
    out = []
    for i, x in enumerate(values):
        t = t0 + i * step_s
        if x is None:  # a gap: nothing is scored or learned
            continue
        out.append((i, d.baseline_step(b, t, x, params)))
    return out


def noise(n: int, seed: int = 1, sd: float = 1.0, level: float = 20.0):
    rng = random.Random(seed)
    return [level + rng.gauss(0, sd) for _ in range(n)]


def flagged(scored, lo=0, hi=None):
    return [i for i, s in scored if s.flag and i >= lo and (hi is None or i < hi)]


def opened_at(scored):
    return [i for i, s in scored if s.opened]


def test_noise_only_raises_nothing():
    for seed in range(5):
        assert flagged(run(noise(4000, seed))) == [], seed


def test_flat_line_raises_nothing():
    scored = run([42.0] * 3000)
    assert flagged(scored) == []
    assert all(0.0 <= s.score <= 1.0 for _, s in scored)


def test_step_is_detected_within_a_few_points_and_clears_after_it_ends():
    xs = noise(3000) [:2000] + [v + 8.0 for v in noise(300, seed=2)] + noise(700, seed=3)
    scored = run(xs)
    assert flagged(scored, 0, 2000) == []
    first = opened_at(scored)
    assert first and 2000 <= first[0] <= 2005
    # cleared within 10 points after the step ends, no re-open afterwards
    after = [i for i, s in scored if s.closed and i >= 2300]
    assert after and after[0] <= 2310
    assert flagged(scored, 2320) == []


def test_spike_is_flagged_on_its_own_point():
    xs = noise(3000)
    xs[2500] += 40.0
    scored = run(xs)
    hits = flagged(scored)
    assert 2500 in hits
    spike = dict(scored)[2500]
    assert spike.spike and spike.score > 0.9
    assert not [i for i in hits if i < 2500]


def test_slow_drift_is_detected_before_it_is_large():
    xs = noise(4000)
    for i in range(2500, 4000):
        xs[i] += 0.02 * (i - 2500)  # 0.02 sd per point: +30 sd at the end
    scored = run(xs)
    assert flagged(scored, 0, 2500) == []
    first = opened_at(scored)
    assert first and 2500 < first[0] < 3300  # before the drift reaches +16 sd


def test_daily_seasonality_is_learned_not_flagged():
    rng = random.Random(7)
    n = 6 * 1440  # six days at one point a minute
    xs = [30.0 + 8.0 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0, 0.3) for i in range(n)]
    scored = run(xs)
    assert flagged(scored, 1440) == []  # after the first day, nothing
    # the same +5 offset at the trough is caught once the hours are learned
    xs2 = list(xs)
    for i in range(5 * 1440 + 600, 5 * 1440 + 660):
        xs2[i] += 5.0
    scored2 = run(xs2)
    first = [i for i in opened_at(scored2) if i >= 1440]
    assert first and 5 * 1440 + 600 <= first[0] <= 5 * 1440 + 606


def test_gaps_are_not_read_as_zeros():
    xs: list[float | None] = noise(3000)
    for i in range(1500, 1800):
        xs[i] = None
    scored = run(xs)
    assert flagged(scored) == []
    assert all(i not in range(1500, 1800) for i, _ in scored)


def test_scores_are_causal_truncation_never_changes_earlier_scores():
    xs = noise(2500)
    xs[1200] += 30
    for i in range(1800, 2500):
        xs[i] += 6
    full = run(xs)
    for cut in (300, 1201, 1900, 2200):
        part = run(xs[:cut])
        assert part == full[:len(part)]


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_any_unit_and_scale_gives_the_same_flags(scale):
    xs = noise(3000)
    for i in range(2000, 2100):
        xs[i] += 10
    base = flagged(run(xs))
    assert flagged(run([x * scale for x in xs])) == base
    assert base and base[0] >= 2000


def test_threshold_factor_raises_the_bar():
    xs = noise(3000)
    for i in range(2000, 2100):
        xs[i] += 7.0
    assert opened_at(run(xs))
    b = d.new_baseline()
    raised = [d.baseline_step(b, i * 60.0, x, P, factor=3.0) for i, x in enumerate(xs)]
    assert not any(s.opened for s in raised)
