"""The circuit breaker as a pure state machine: properties checked with hypothesis, a fake clock
and an injected random source (no sleeping)."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from sdk.breaker import (
    COUNTED_CODES,
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    State,
    breaker_for,
    reset_registry,
)

Code = grpc.StatusCode
NOT_COUNTED = [c for c in Code if c not in COUNTED_CODES and c is not Code.CANCELLED]
CLIENT_SIDE = [
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
    Code.UNAUTHENTICATED,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
]
ALL_CODES = list(Code)
FAST = 0.01
SETTINGS = settings(max_examples=150, deadline=None)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def make(
    config: BreakerConfig | None = None, rng: float = 0.5, metrics: bool = False
) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    target = f"t-{uuid.uuid4().hex[:8]}"
    cb = CircuitBreaker(target, config or BreakerConfig(), clock=clock, rng=lambda: rng, metrics=metrics)
    return cb, clock


def call(cb: CircuitBreaker, code: Code, duration: float | None = FAST) -> None:
    cb.record(cb.acquire(), code, duration)


def trip(cb: CircuitBreaker) -> None:
    for _ in range(cb.config.minimum_calls):
        call(cb, Code.UNAVAILABLE)
    assert cb.state is State.OPEN


# -- closed state ------------------------------------------------------------------------------


def test_the_counting_codes_are_exactly_the_server_side_ones():
    assert COUNTED_CODES == {
        Code.UNAVAILABLE,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.INTERNAL,
        Code.UNKNOWN,
    }
    assert not set(CLIENT_SIDE) & COUNTED_CODES and Code.CANCELLED not in COUNTED_CODES


@SETTINGS
@given(codes=st.lists(st.sampled_from(ALL_CODES), max_size=9), slow=st.booleans())
def test_never_opens_below_minimum_calls(codes, slow):
    cb, _ = make()  # minimum_calls = 10
    for code in codes:
        call(cb, code, 5.0 if slow else FAST)
    assert cb.state is State.CLOSED


@SETTINGS
@given(codes=st.lists(st.sampled_from(NOT_COUNTED + [Code.CANCELLED]), min_size=1, max_size=200))
def test_non_counting_codes_never_open_it(codes):
    cb, _ = make()
    for code in codes:
        call(cb, code)
    assert cb.state is State.CLOSED
    assert cb.failure_rate() == 0.0


@SETTINGS
@given(failures=st.lists(st.booleans(), min_size=1, max_size=80))
def test_opens_exactly_when_the_windowed_failure_rate_reaches_the_threshold(failures):
    """Against a direct model: last 20 outcomes, at least 10, rate >= 0.5."""
    cfg = BreakerConfig()
    cb, _ = make(cfg)
    model: list[bool] = []
    for failed in failures:
        call(cb, Code.INTERNAL if failed else Code.OK)
        model = (model + [failed])[-cfg.window_size :]
        should_open = len(model) >= cfg.minimum_calls and sum(model) / len(model) >= cfg.failure_rate_threshold
        assert (cb.state is State.OPEN) == should_open
        if should_open:
            break


def test_outcomes_older_than_the_window_time_are_forgotten():
    cb, clock = make(BreakerConfig(window_s=30))
    for _ in range(9):
        call(cb, Code.UNAVAILABLE)
    clock.now += 31
    assert cb.window_len() == 0
    for _ in range(5):
        call(cb, Code.OK)
    for _ in range(4):
        call(cb, Code.UNAVAILABLE)
    assert cb.state is State.CLOSED  # the 9 old failures no longer count


def test_slow_calls_count_as_failures_and_cancellations_count_as_nothing():
    cb, _ = make()
    for _ in range(20):
        call(cb, Code.CANCELLED, 10.0)
    assert cb.window_len() == 0
    for _ in range(9):
        call(cb, Code.OK, 2.5)  # slower than slow_call_threshold_s = 2.0
    assert cb.state is State.CLOSED
    call(cb, Code.NOT_FOUND, 3.0)
    assert cb.state is State.OPEN


def test_outcomes_of_calls_started_before_a_state_change_are_ignored():
    cb, clock = make()
    stale = [cb.acquire() for _ in range(5)]
    trip(cb)
    for permit in stale:
        cb.record(permit, Code.OK, FAST)
    assert cb.state is State.OPEN
    clock.now += 2
    trial = cb.acquire()
    cb.record(stale[0], Code.UNAVAILABLE, FAST)  # stale failure: no effect on half-open
    assert cb.state is State.HALF_OPEN
    cb.release(trial)


# -- open state ---------------------------------------------------------------------------------


@SETTINGS
@given(rng=st.floats(min_value=0, max_value=0.999999), waits=st.lists(st.floats(0, 0.9999), max_size=20))
def test_open_rejects_until_the_open_time_has_passed(rng, waits):
    cb, clock = make(rng=rng)
    trip(cb)
    opened_at = clock.now
    for fraction in sorted(waits):
        clock.now = opened_at + fraction * cb.open_for_s
        with pytest.raises(CircuitOpenError) as err:
            cb.acquire()
        assert err.value.code() is Code.UNAVAILABLE
        assert err.value.retry_in_s == pytest.approx(opened_at + cb.open_for_s - clock.now)
        assert err.value.details().startswith(f"circuit open for {cb.target}; retry in ")
    clock.now = opened_at + cb.open_for_s
    permit = cb.acquire()
    assert permit.trial and cb.state is State.HALF_OPEN


@SETTINGS
@given(draws=st.lists(st.floats(min_value=0, max_value=0.999999), min_size=1, max_size=12))
def test_open_time_grows_and_stays_within_the_jitter_bounds(draws):
    cfg = BreakerConfig()
    it = iter(draws)
    clock = Clock()
    cb = CircuitBreaker("t-grow", cfg, clock=clock, rng=lambda: next(it), metrics=False)
    trip(cb)
    for n in range(1, len(draws) + 1):
        nominal = min(cfg.open_base_s * 2 ** (n - 1), cfg.open_max_s)
        assert cb.consecutive_opens == n
        assert nominal * (1 - cfg.jitter) <= cb.open_for_s <= nominal * (1 + cfg.jitter)
        if n == len(draws):
            break
        clock.now += cb.open_for_s
        call(cb, Code.DEADLINE_EXCEEDED)  # the trial fails: re-open, longer
        assert cb.state is State.OPEN


def test_open_time_is_capped_at_open_max():
    cfg = BreakerConfig(open_base_s=1, open_max_s=30)
    assert [cfg.nominal_open_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert cfg.nominal_open_s(10_000) == 30


# -- half-open state ----------------------------------------------------------------------------


@SETTINGS
@given(trials=st.integers(1, 5), attempts=st.integers(1, 12))
def test_half_open_admits_at_most_n_concurrent_trials(trials, attempts):
    cb, clock = make(BreakerConfig(half_open_max_calls=trials))
    trip(cb)
    clock.now += 60
    permits, rejected = [], 0
    for _ in range(attempts):
        try:
            permits.append(cb.acquire())
        except CircuitOpenError:
            rejected += 1
    assert len(permits) == min(trials, attempts)
    assert rejected == max(attempts - trials, 0)
    if rejected:
        cb.release(permits.pop())  # a cancelled trial frees its slot
        permits.append(cb.acquire())
        with pytest.raises(CircuitOpenError):
            cb.acquire()


def test_all_trials_succeeding_closes_and_resets_the_open_time():
    cb, clock = make()
    trip(cb)
    clock.now += cb.open_for_s
    call(cb, Code.UNAVAILABLE)  # first trial fails: open again for ~2 s
    assert cb.consecutive_opens == 2
    clock.now += cb.open_for_s
    permits = [cb.acquire() for _ in range(3)]
    for p in permits[:2]:
        cb.record(p, Code.OK, FAST)
        assert cb.state is State.HALF_OPEN
    cb.record(permits[2], Code.NOT_FOUND, FAST)  # the server answered: a success
    assert cb.state is State.CLOSED
    assert cb.consecutive_opens == 0 and cb.window_len() == 0
    trip(cb)
    assert cb.open_for_s == pytest.approx(1.0)


@pytest.mark.parametrize("code", sorted(COUNTED_CODES, key=lambda c: c.value[0]))
def test_any_failing_trial_reopens(code):
    cb, clock = make()
    trip(cb)
    clock.now += cb.open_for_s
    ok = cb.acquire()
    bad = cb.acquire()
    cb.record(ok, Code.OK, FAST)
    cb.record(bad, code, FAST)
    assert cb.state is State.OPEN


def test_slow_trial_reopens():
    cb, clock = make()
    trip(cb)
    clock.now += cb.open_for_s
    call(cb, Code.OK, 2.5)
    assert cb.state is State.OPEN


# -- observability, registry, config -------------------------------------------------------------


def test_state_changes_are_logged_and_exported(caplog):
    cb, clock = make(metrics=True)
    target = cb.target

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, {"target": target, **labels}) or 0.0

    with caplog.at_level(logging.INFO, logger="towerco.sdk.breaker"):
        trip(cb)
        assert value("towerco_breaker_state") == 1
        with pytest.raises(CircuitOpenError):
            cb.acquire()
        clock.now += cb.open_for_s
        assert cb.state is State.HALF_OPEN
        assert value("towerco_breaker_state") == 2
        for _ in range(3):
            call(cb, Code.OK)
    assert value("towerco_breaker_state") == 0
    assert value("towerco_breaker_rejected_total") == 1
    for before, after in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]:
        assert value("towerco_breaker_transitions_total", **{"from": before, "to": after}) == 1
    changes = [r for r in caplog.records if r.getMessage() == "breaker_state_change"]
    assert [(r.from_state, r.to_state) for r in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert all(r.target == target for r in changes)
    assert changes[0].failure_rate == 1.0 and changes[0].open_for_s == pytest.approx(1.0)


def test_registry_keeps_one_breaker_per_target():
    reset_registry()
    try:
        a = breaker_for("host-a:1")
        assert breaker_for("host-a:1") is a
        assert breaker_for("host-b:1") is not a
    finally:
        reset_registry()


def test_force_open_and_reset():
    cb, _ = make()
    cb.force_open()
    with pytest.raises(CircuitOpenError):
        cb.acquire()
    cb.reset()
    assert cb.state is State.CLOSED
    cb.acquire()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_size": 0},
        {"minimum_calls": 30},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"open_base_s": 60, "open_max_s": 30},
        {"jitter": 1.0},
        {"half_open_max_calls": 0},
        {"slow_call_threshold_s": 0},
    ],
)
def test_bad_config_is_refused_with_a_clear_message(kwargs):
    with pytest.raises(ValueError, match="must|need"):
        BreakerConfig(**kwargs)


def test_circuit_open_error_is_a_grpc_error_and_pickles():
    import pickle

    err = CircuitOpenError("sites:7001", 1.26)
    assert isinstance(err, grpc.aio.AioRpcError)
    assert err.code() is Code.UNAVAILABLE
    assert err.details() == "circuit open for sites:7001; retry in 1.3s"
    again = pickle.loads(pickle.dumps(err))
    assert again.details() == err.details()


def test_try_acquire_decides_like_acquire_without_raising() -> None:
    clock = Clock()
    target = f"try-{uuid.uuid4().hex[:8]}"
    cb = CircuitBreaker(target, BreakerConfig(open_base_s=2.0, jitter=0.0), clock=clock)
    permit = cb.try_acquire()
    assert not isinstance(permit, float)
    assert not permit.trial and permit.started == clock.now
    cb.force_open()
    before = REGISTRY.get_sample_value("towerco_breaker_rejected_total", {"target": target}) or 0.0
    clock.now += 0.5
    assert cb.try_acquire() == pytest.approx(1.5)  # rejected: seconds until half-open
    with pytest.raises(CircuitOpenError) as err:
        cb.acquire()
    assert err.value.retry_in_s == pytest.approx(1.5)
    assert REGISTRY.get_sample_value("towerco_breaker_rejected_total", {"target": target}) == before + 2
    clock.now += 1.6
    trial = cb.try_acquire()
    assert not isinstance(trial, float) and trial.trial and cb.state is State.HALF_OPEN
