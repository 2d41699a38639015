"""A circuit breaker per target: a pure state machine plus a process-wide registry.

Rules (numbers are `BreakerConfig` defaults):

* CLOSED: every finished call is an outcome in a sliding window of the last `window_size` (20)
  outcomes that are at most `window_s` (30 s) old. A failure is a call that ended with a
  server-side code (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN) or
  took longer than `slow_call_threshold_s` (2 s). Any other code is a success: the server
  answered (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ... are the caller's problem). A
  client-side cancellation is no outcome at all. Once the window holds at least `minimum_calls`
  (10) outcomes and the failure rate reaches `failure_rate_threshold` (0.5), the breaker opens.
* OPEN: every call is rejected at once with `CircuitOpenError` (UNAVAILABLE) until the open time
  has passed. The open time is `open_base_s` (1 s) times `open_multiplier` (2) per consecutive
  opening, capped at `open_max_s` (30 s), then spread by +/- `jitter` (20 %).
* HALF_OPEN: up to `half_open_max_calls` (3) trial calls go through; the rest are rejected.
  Any trial failure re-opens with the next, longer open time; when all trials succeed the
  breaker closes with an empty window and the open time goes back to `open_base_s`.

Every state change writes a log line (stdlib logging, logger "towerco.sdk.breaker", event
"breaker_state_change" with extra fields) and, when prometheus_client is importable, updates
`towerco_breaker_state{target}` (0 closed, 1 open, 2 half-open) and
`towerco_breaker_transitions_total{target,from,to}`; rejections count in
`towerco_breaker_rejected_total{target}`.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc.aio import AioRpcError

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "COUNTED_CODES",
    "Permit",
    "State",
    "breaker_for",
    "reset_registry",
]

log = logging.getLogger("towerco.sdk.breaker")
# A library must not print through logging's last-resort handler; configured logging (root
# handlers, structlog's stdlib bridge) still receives every record.
logging.getLogger("towerco.sdk").addHandler(logging.NullHandler())

COUNTED_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class BreakerConfig:
    window_size: int = 20
    window_s: float = 30.0
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_threshold_s: float = 2.0
    open_base_s: float = 1.0
    open_multiplier: float = 2.0
    open_max_s: float = 30.0
    jitter: float = 0.2
    half_open_max_calls: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.window_size < 1:
            problems.append("window_size must be >= 1")
        if self.window_s <= 0:
            problems.append("window_s must be > 0")
        if not 1 <= self.minimum_calls <= self.window_size:
            problems.append("minimum_calls must be between 1 and window_size")
        if not 0 < self.failure_rate_threshold <= 1:
            problems.append("failure_rate_threshold must be in (0, 1]")
        if self.slow_call_threshold_s <= 0:
            problems.append("slow_call_threshold_s must be > 0")
        if not 0 < self.open_base_s <= self.open_max_s:
            problems.append("need 0 < open_base_s <= open_max_s")
        if self.open_multiplier < 1:
            problems.append("open_multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            problems.append("jitter must be in [0, 1)")
        if self.half_open_max_calls < 1:
            problems.append("half_open_max_calls must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    def nominal_open_s(self, consecutive_opens: int) -> float:
        """Open time before jitter for the n-th consecutive opening (1-based)."""
        exponent = max(consecutive_opens - 1, 0)
        # Cap the exponent so a long outage never overflows the float.
        value = self.open_base_s * self.open_multiplier ** min(exponent, 64)
        return min(value, self.open_max_s)


class CircuitOpenError(AioRpcError):
    """Raised instead of calling when the breaker rejects a call; code UNAVAILABLE."""

    def __init__(self, target: str, retry_in_s: float) -> None:
        self.target = target
        self.retry_in_s = retry_in_s
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            initial_metadata=None,
            trailing_metadata=None,
            details=f"circuit open for {target}; retry in {retry_in_s:.1f}s",
            debug_error_string="towerco.sdk circuit breaker rejected the call",
        )

    def __reduce__(self) -> tuple[Any, tuple[str, float]]:  # picklable despite the constructor
        return (CircuitOpenError, (self.target, self.retry_in_s))


@dataclass(frozen=True, slots=True)
class Permit:
    """What `acquire` hands out; give it back to `record` or `release`."""

    generation: int
    trial: bool
    started: float


class _Metrics:
    state: Any
    transitions: Any
    rejected: Any

    def __init__(self) -> None:
        try:
            import prometheus_client as prom  # optional: the sdk works without it
        except ImportError:
            self.state = self.transitions = self.rejected = None
            return
        self.state = prom.Gauge(
            "towerco_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open", ["target"]
        )
        self.transitions = prom.Counter(
            "towerco_breaker_transitions", "Circuit breaker state changes", ["target", "from", "to"]
        )
        self.rejected = prom.Counter(
            "towerco_breaker_rejected", "Calls rejected by an open circuit breaker", ["target"]
        )


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _get_metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


class CircuitBreaker:
    """The state machine. Thread-safe; `clock` and `rng` are injectable for tests.

    Use: `permit = breaker.acquire()` (raises CircuitOpenError when rejected), run the call,
    then `breaker.record(permit, code, duration_s)`, or `breaker.release(permit)` when the call
    was cancelled by the client (no outcome).
    """

    def __init__(
        self,
        target: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
        metrics: bool = True,
    ) -> None:
        self.target = target
        self.config = config or BreakerConfig()
        self._clock = clock
        self._rng = rng or random.Random().random
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._generation = 0
        self._window: deque[tuple[float, bool]] = deque()  # (finished_at, failed)
        self._failures = 0
        self._opens = 0  # consecutive openings without a successful close
        self._open_until = 0.0
        self._open_for = 0.0
        self._trials_started = 0
        self._trials_ok = 0
        self._metrics = _get_metrics() if metrics else None
        # The rejection counter's child, bound once: a rejection is the hot path of an open breaker.
        self._rejected: Any = None
        if self._metrics is not None and self._metrics.state is not None:
            self._metrics.state.labels(target).set(int(State.CLOSED))
            self._rejected = self._metrics.rejected.labels(target)

    # -- inspection ---------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The current state; an OPEN breaker whose time has passed reads as HALF_OPEN."""
        with self._lock:
            change = self._maybe_half_open(self._clock())
            state = self._state
        if change is not None:
            self._announce(*change)
        return state

    @property
    def open_for_s(self) -> float:
        """The open time (with jitter) chosen at the last opening."""
        return self._open_for

    @property
    def consecutive_opens(self) -> int:
        return self._opens

    def elapsed(self, permit: Permit) -> float:
        """Seconds since `permit` was handed out, on the breaker's clock."""
        return self._clock() - permit.started

    def failure_rate(self) -> float:
        with self._lock:
            self._trim(self._clock())
            return self._failures / len(self._window) if self._window else 0.0

    def window_len(self) -> int:
        with self._lock:
            self._trim(self._clock())
            return len(self._window)

    # -- the protocol ---------------------------------------------------------------------------
    def acquire(self) -> Permit:
        """A permit to call, or CircuitOpenError when the call is rejected (see `try_acquire`)."""
        permit = self.try_acquire()
        if isinstance(permit, Permit):
            return permit
        raise CircuitOpenError(self.target, permit)

    def try_acquire(self) -> Permit | float:
        """A permit, or (rejected) the seconds until the breaker may let calls through again.

        The same decision as `acquire` without raising, so a caller can fail fast without the
        cost of an exception travelling through its frames (the client interceptor does this).
        Rejections are counted and never logged one by one; state changes are logged."""
        now = self._clock()
        with self._lock:
            state = self._state
            if state is State.CLOSED:
                return Permit(self._generation, False, now)
            change = self._maybe_half_open(now)
            permit = None
            if self._state is State.HALF_OPEN and self._trials_started < self.config.half_open_max_calls:
                self._trials_started += 1
                permit = Permit(self._generation, True, now)
            retry_in = max(self._open_until - now, 0.0) if self._state is State.OPEN else 0.1
        if change is not None:
            self._announce(*change)
        if permit is not None:
            return permit
        if self._rejected is not None:
            self._rejected.inc()
        return retry_in

    def release(self, permit: Permit) -> None:
        """Give a permit back without an outcome (client-side cancellation)."""
        with self._lock:
            if permit.trial and permit.generation == self._generation and self._state is State.HALF_OPEN:
                self._trials_started -= 1

    def record(self, permit: Permit, code: grpc.StatusCode, duration_s: float | None = None) -> None:
        """Record how a call ended. `duration_s` None means "do not judge speed" (streams)."""
        if code is grpc.StatusCode.CANCELLED:
            self.release(permit)
            return
        failed = code in COUNTED_CODES or (
            duration_s is not None and duration_s > self.config.slow_call_threshold_s
        )
        now = self._clock()
        changes: list[tuple[State, State, dict[str, Any]]] = []
        with self._lock:
            if permit.generation != self._generation:
                return  # the call started in an earlier state; its outcome no longer matters
            if self._state is State.CLOSED:
                self._window.append((now, failed))
                self._failures += failed
                self._trim(now)
                n = len(self._window)
                if n >= self.config.minimum_calls:
                    rate = self._failures / n
                    if rate >= self.config.failure_rate_threshold:
                        changes.append(self._open(now, State.CLOSED, {"failure_rate": round(rate, 3), "calls": n}))
            elif self._state is State.HALF_OPEN and permit.trial:
                if failed:
                    changes.append(self._open(now, State.HALF_OPEN, {"trial_failed_code": code.name}))
                else:
                    self._trials_ok += 1
                    if self._trials_ok >= self.config.half_open_max_calls:
                        changes.append(self._close())
        for change in changes:
            self._announce(*change)

    def force_open(self) -> None:
        """Open now (operators, tests, benchmarks)."""
        with self._lock:
            change = self._open(self._clock(), self._state, {"forced": True})
        self._announce(*change)

    def reset(self) -> None:
        """Close now and forget everything."""
        with self._lock:
            before = self._state
            change = self._close()
        if before is not State.CLOSED:
            self._announce(*change)

    # -- internals (lock held) -------------------------------------------------------------------
    def _trim(self, now: float) -> None:
        horizon = now - self.config.window_s
        window = self._window
        while window and (len(window) > self.config.window_size or window[0][0] < horizon):
            _, failed = window.popleft()
            self._failures -= failed

    def _maybe_half_open(self, now: float) -> tuple[State, State, dict[str, Any]] | None:
        if self._state is State.OPEN and now >= self._open_until:
            self._state = State.HALF_OPEN
            self._generation += 1
            self._trials_started = 0
            self._trials_ok = 0
            return (State.OPEN, State.HALF_OPEN, {"trials": self.config.half_open_max_calls})
        return None

    def _open(self, now: float, before: State, info: dict[str, Any]) -> tuple[State, State, dict[str, Any]]:
        self._opens += 1
        nominal = self.config.nominal_open_s(self._opens)
        spread = self.config.jitter * (2.0 * self._rng() - 1.0)
        self._open_for = nominal * (1.0 + spread)
        self._open_until = now + self._open_for
        self._state = State.OPEN
        self._generation += 1
        self._window.clear()
        self._failures = 0
        info = dict(info, open_for_s=round(self._open_for, 3), consecutive_opens=self._opens)
        return (before, State.OPEN, info)

    def _close(self) -> tuple[State, State, dict[str, Any]]:
        before = self._state
        self._state = State.CLOSED
        self._generation += 1
        self._window.clear()
        self._failures = 0
        self._opens = 0
        self._trials_started = 0
        self._trials_ok = 0
        return (before, State.CLOSED, {})

    def _announce(self, before: State, after: State, info: dict[str, Any]) -> None:
        log.log(
            logging.WARNING if after is not State.CLOSED else logging.INFO,
            "breaker_state_change",
            extra={"target": self.target, "from_state": before.label, "to_state": after.label, **info},
        )
        m = self._metrics
        if m is not None and m.state is not None:
            m.state.labels(self.target).set(int(after))
            m.transitions.labels(self.target, before.label, after.label).inc()


_registry: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def breaker_for(target: str, config: BreakerConfig | None = None) -> CircuitBreaker:
    """The process-wide breaker of `target` (created with `config` on first use)."""
    breaker = _registry.get(target)
    if breaker is None:
        with _registry_lock:
            breaker = _registry.get(target)
            if breaker is None:
                breaker = _registry[target] = CircuitBreaker(target, config)
    return breaker


def reset_registry() -> None:
    """Forget every per-target breaker (tests)."""
    with _registry_lock:
        _registry.clear()
