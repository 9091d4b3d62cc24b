"""Live health of the upstreams: circuit breakers per model and per instance, live latency and
load, the choice of instance (power of two choices), and the retry budget.

Everything here runs on the event loop of one worker, so no locks are needed; a state change
costs a few dictionary operations, and :meth:`HealthBoard.unhealthy` (read by every decision)
returns a cached frozenset that changes only when a breaker changes state.

Why not a library: pybreaker and aiobreaker count *consecutive* failures of one wrapped call and
own the call itself; here a breaker needs an error *rate* over a time window, half-open probes,
an open time set by an upstream's ``Retry-After``, a separate verdict per instance and per model
from the same call, and latency outliers (a model 10x slower than its peers is ejected like a
failing one). Finagle's retry budget and Envoy's outlier detection are the models followed.

States (per breaker)::

    closed --(failure rate >= failure_rate over window_s with >= min_requests,
              or consecutive_failures in a row, or Retry-After)--> open
    open --(open_s elapsed; doubles on each failed probe up to max_open_s)--> half_open
    half_open --(a probe succeeds)--> closed;  --(a probe fails)--> open

A model is *unhealthy* (not eligible, so the policy's pmf is over the others) while its model
breaker is open, or while every instance's breaker is open; a half-open model is eligible and
its next calls are the probes (at most ``half_open_probes`` at once).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from router.config import BreakerConfig, ResilienceConfig, RouterConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
FAILURE_PENALTY_S = 1.0  # a failed call weighs in an instance's EWMA latency as at least this
STATE_CODE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    """One breaker: an error rate over a sliding window of one-second buckets."""

    def __init__(self, settings: BreakerConfig, clock: Callable[[], float]) -> None:
        self.s = settings
        self._clock = clock
        n = max(1, math.ceil(settings.window_s))
        self._ok = [0] * n
        self._fail = [0] * n
        self._epoch = [-1] * n  # the second each bucket counts
        self.state = CLOSED
        self.open_until = 0.0
        self.open_s = settings.open_s
        self.consecutive = 0
        self.probes = 0  # half-open calls in flight
        self.reason = ""

    def _bucket(self, now: float) -> int:
        second = int(now)
        i = second % len(self._ok)
        if self._epoch[i] != second:
            self._epoch[i], self._ok[i], self._fail[i] = second, 0, 0
        return i

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) within the window."""
        oldest = int(now) - len(self._ok) + 1
        ok = sum(c for c, e in zip(self._ok, self._epoch, strict=True) if e >= oldest)
        fail = sum(c for c, e in zip(self._fail, self._epoch, strict=True) if e >= oldest)
        return ok, fail

    def allows(self, now: float) -> bool:
        """Whether a call may go through now (moves open -> half-open when its time is up)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now < self.open_until:
                return False
            self.state, self.probes = HALF_OPEN, 0
        return self.probes < self.s.half_open_probes

    def started(self) -> None:
        if self.state == HALF_OPEN:
            self.probes += 1

    def record(self, ok: bool, now: float, retry_after_s: float | None = None) -> bool:
        """Count one finished call; True when the state changed."""
        i = self._bucket(now)
        if ok:
            self._ok[i] += 1
            self.consecutive = 0
        else:
            self._fail[i] += 1
            self.consecutive += 1
        if self.state == HALF_OPEN:
            self.probes = max(0, self.probes - 1)
            if ok:
                self.close()
                return True
            self.trip(now, "probe failed", backoff=True, retry_after_s=retry_after_s)
            return True
        if ok or self.state == OPEN:
            return False
        if retry_after_s is not None:
            self.trip(now, "retry-after", retry_after_s=retry_after_s)
            return True
        if self.consecutive >= self.s.consecutive_failures:
            self.trip(now, f"{self.consecutive} consecutive failures")
            return True
        n_ok, n_fail = self.counts(now)
        total = n_ok + n_fail
        if total >= self.s.min_requests and n_fail / total >= self.s.failure_rate:
            self.trip(now, f"failure rate {n_fail}/{total} over {self.s.window_s:g} s")
            return True
        return False

    def trip(
        self, now: float, reason: str, backoff: bool = False, retry_after_s: float | None = None
    ) -> None:
        """Open the breaker (for ``retry_after_s`` when the upstream said how long)."""
        if backoff:
            self.open_s = min(self.open_s * 2, self.s.max_open_s)
        duration = self.open_s
        if retry_after_s is not None:
            duration = min(max(retry_after_s, 0.0), self.s.max_open_s)
        self.state, self.open_until, self.reason = OPEN, now + duration, reason
        self.probes = 0

    def close(self) -> None:
        self.state, self.open_s, self.consecutive, self.reason = CLOSED, self.s.open_s, 0, ""
        n = len(self._ok)
        self._ok, self._fail, self._epoch = [0] * n, [0] * n, [-1] * n


@dataclass
class InstanceState:
    url: str
    weight: float
    breaker: CircuitBreaker
    outstanding: int = 0
    ewma_s: float = 0.0  # EWMA latency of successful calls (0: none yet)
    n: int = 0


@dataclass
class ModelState:
    name: str
    breaker: CircuitBreaker
    instances: list[InstanceState]
    expected_ms: float = 0.0  # EWMA of the latency the policy expected for its calls
    ratio: float = 0.0  # EWMA of observed / expected latency (0: no sample yet)
    n: int = 0
    in_flight: int = 0
    wrr: list[int] = field(default_factory=list)  # weighted round robin slots (instance index)
    wrr_next: int = 0


class RetryBudget:
    """Finagle's retry budget: each request deposits ``ratio`` of a retry, each retry withdraws
    one, and ``min_per_s`` retries per second are always allowed; so retries add at most
    ``ratio`` x the request load (plus the floor) however many upstreams fail."""

    def __init__(self, ratio: float, min_per_s: float, clock: Callable[[], float]) -> None:
        self.ratio, self.min_per_s, self._clock = ratio, min_per_s, clock
        self.cap = max(10.0, 10 * min_per_s)
        self.tokens = self.cap
        self._last = clock()

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        now = self._clock()
        self.tokens = min(self.cap, self.tokens + (now - self._last) * self.min_per_s)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class HealthBoard:
    """Breakers, live latency and load of every model and instance of one config."""

    def __init__(
        self,
        config: RouterConfig,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self.settings: ResilienceConfig = config.resilience
        self._clock = clock
        self._rng = random.Random(seed)
        s = self.settings
        self.models: dict[str, ModelState] = {}
        for m in config.models:
            instances = [
                InstanceState(i.base_url, i.weight, CircuitBreaker(s.breaker, clock))
                for i in m.endpoints()
            ]
            total = sum(i.weight for i in instances)
            slots = [
                k
                for k, inst in enumerate(instances)
                for _ in range(max(1, round(10 * inst.weight / total)))
            ]
            self.models[m.name] = ModelState(
                m.name, CircuitBreaker(s.breaker, clock), instances, wrr=slots
            )
        self.names = [m.name for m in config.models]
        self.budget = RetryBudget(s.retry_budget_ratio, s.retry_budget_min_per_s, clock)
        self._unhealthy: frozenset[str] = frozenset()
        self._next_check = math.inf  # earliest time an open breaker may turn half-open
        self._factors: np.ndarray | None = None
        self._factors_at = -math.inf
        self.transitions = 0  # state changes, for metrics and tests
        self.on_transition: Callable[[str, str, str], None] | None = None
        # shared with other workers and replicas (router.traffic.shared_health): models another
        # process found open, until when; and this process's own changes not yet published
        self.shared_open: dict[str, float] = {}
        self.to_publish: dict[str, float | None] = {}  # model -> seconds open, None: closed

    # ---- eligibility ----------------------------------------------------------------------
    def unhealthy(self) -> frozenset[str]:
        """Models that may not be chosen now (cached; recomputed on a state change or when an
        open breaker's time is up)."""
        if self._clock() >= self._next_check:
            self._refresh()
        return self._unhealthy

    def _refresh(self) -> None:
        now = self._clock()
        out = set()
        next_check = math.inf
        for state in self.models.values():
            shared = self.shared_open.get(state.name, 0.0)
            if (
                shared > now
                or not state.breaker.allows(now)
                or not any(i.breaker.allows(now) for i in state.instances)
            ):
                out.add(state.name)
            if shared > now:
                next_check = min(next_check, shared)
            for b in (state.breaker, *(i.breaker for i in state.instances)):
                if b.state == OPEN:
                    next_check = min(next_check, b.open_until)
        self._unhealthy = frozenset(out)
        self._next_check = next_check

    def state(self, model: str) -> str:
        return self.models[model].breaker.state

    # ---- balancing ------------------------------------------------------------------------
    def pick(self, model: str, exclude: Sequence[str] = ()) -> str | None:
        """An instance of ``model`` to call (None: none is available): power of two choices on
        EWMA latency x (outstanding + 1) by default, or smooth weighted round robin."""
        state = self.models[model]
        now = self._clock()
        if not state.breaker.allows(now):
            return None  # open, or half-open with its probes already out
        if len(state.instances) == 1:
            inst = state.instances[0]
            return inst.url if inst.url not in exclude and inst.breaker.allows(now) else None
        if self.settings.balancing == "round_robin":
            for _ in range(len(state.wrr)):
                inst = state.instances[state.wrr[state.wrr_next]]
                state.wrr_next = (state.wrr_next + 1) % len(state.wrr)
                if inst.url not in exclude and inst.breaker.allows(now):
                    return inst.url
            return None
        candidates = [i for i in state.instances if i.url not in exclude and i.breaker.allows(now)]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0].url
        a, b = self._rng.sample(candidates, 2)
        return a.url if self._load(a) <= self._load(b) else b.url

    @staticmethod
    def _load(inst: InstanceState) -> float:
        # an instance with no sample yet looks fast, so each gets tried; weight scales capacity
        return inst.ewma_s * (inst.outstanding + 1) / inst.weight

    # ---- calls ----------------------------------------------------------------------------
    def started(self, model: str, url: str) -> None:
        state = self.models[model]
        state.in_flight += 1
        state.breaker.started()
        inst = self._instance(state, url)
        inst.outstanding += 1
        inst.breaker.started()
        if state.breaker.state == HALF_OPEN or inst.breaker.state == HALF_OPEN:
            # a probe is out: the model is not eligible again until it comes back (else every
            # request of the next moments would choose it and find no call allowed)
            self._refresh()

    def finished(
        self,
        model: str,
        url: str,
        ok: bool,
        seconds: float,
        expected_ms: float | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Record one finished call on its *instance*: breaker, EWMA latency (a failure counts
        as a call of at least ``FAILURE_PENALTY_S``, so balancing shuns a failing instance even
        before its breaker opens) and the model's live latency ratio (observed /
        ``expected_ms``). ``retry_after_s`` (the upstream's ``Retry-After``) opens the instance
        for that long. The model's own breaker hears of the call in :meth:`model_finished`."""
        now = self._clock()
        state = self.models[model]
        state.in_flight = max(0, state.in_flight - 1)
        inst = self._instance(state, url)
        inst.outstanding = max(0, inst.outstanding - 1)
        alpha = self.settings.ewma_alpha
        changed = inst.breaker.record(ok, now, retry_after_s)
        sample = seconds if ok else max(seconds, FAILURE_PENALTY_S)
        inst.ewma_s = sample if inst.n == 0 else (1 - alpha) * inst.ewma_s + alpha * sample
        inst.n += 1
        if ok and expected_ms is not None and expected_ms > 0:
            ratio = seconds * 1000 / expected_ms
            if state.n == 0 or state.breaker.state == HALF_OPEN:
                state.ratio = ratio  # a probe re-measures from scratch
            else:
                state.ratio = (1 - alpha) * state.ratio + alpha * ratio
            state.n += 1
        if changed:
            self._changed(model, url)

    def abandoned(self, model: str, url: str) -> None:
        """A call given up by our side (the caller went away, the task was cancelled): it says
        nothing about the upstream, but its load and any probe slot it held are released."""
        state = self.models[model]
        state.in_flight = max(0, state.in_flight - 1)
        inst = self._instance(state, url)
        inst.outstanding = max(0, inst.outstanding - 1)
        for breaker in (state.breaker, inst.breaker):
            if breaker.state == HALF_OPEN and breaker.probes > 0:
                breaker.probes -= 1
                self._refresh()

    def model_finished(self, model: str, ok: bool) -> None:
        """Record what one request got from ``model`` over all the instances it tried:
        answered (``ok``) or not. A model that answered but runs ``slow_ratio`` times slower
        than its peers is a latency outlier and counts as failed (ejected like one)."""
        now = self._clock()
        state = self.models[model]
        slow = ok and self._slow(state)
        changed = state.breaker.record(ok and not slow, now)
        if slow and state.breaker.state == CLOSED:
            state.breaker.trip(now, "latency outlier")
            changed = True
        if changed:
            self._changed(model, None)

    def _changed(self, model: str, url: str | None) -> None:
        self.transitions += 1
        breaker = self.models[model].breaker
        if breaker.state == OPEN:
            self.to_publish[model] = breaker.open_until - self._clock()
        elif breaker.state == CLOSED:
            self.to_publish[model] = None
            self.shared_open.pop(model, None)  # our own probe found it back
        self._refresh()
        if self.on_transition is not None:
            state = self.models[model]
            self.on_transition(model, url or "", state.breaker.state)

    def _instance(self, state: ModelState, url: str) -> InstanceState:
        for inst in state.instances:
            if inst.url == url:
                return inst
        raise KeyError(f"{state.name} has no instance {url}")

    # ---- shared state ---------------------------------------------------------------------
    def take_published(self) -> tuple[dict[str, float], list[str]]:
        """The model breakers that opened (for how long) and closed since the last call."""
        changes, self.to_publish = self.to_publish, {}
        opened = {m: s for m, s in changes.items() if s is not None and s > 0}
        return opened, [m for m, s in changes.items() if s is None]

    def apply_shared(self, open_for_s: dict[str, float]) -> None:
        """Another process's view: each model open for so many more seconds (0: not open)."""
        now = self._clock()
        shared = {m: now + s for m, s in open_for_s.items() if s > 0}
        if shared.keys() != self.shared_open.keys():
            self.transitions += 1
        self.shared_open = shared
        self._refresh()

    # ---- live latency -----------------------------------------------------------------------
    def _reference(self, state: ModelState) -> float | None:
        """The median live latency ratio of the *other* models with enough calls (None: none)."""
        n_min = self.settings.slow_min_calls
        others = [
            s.ratio for s in self.models.values() if s is not state and s.n >= n_min and s.ratio
        ]
        return statistics.median(others) if others else None

    def _slow(self, state: ModelState) -> bool:
        ratio = self.settings.slow_ratio
        if ratio is None or state.n < self.settings.slow_min_calls:
            return False
        ref = self._reference(state)
        return ref is not None and state.ratio > ratio * ref

    def latency_factors(self) -> np.ndarray | None:
        """Per config model, how much slower than its peers it runs now (observed / expected
        latency, over the median of the others; clipped to [1, slow_ratio]): the decision path
        multiplies its latency predictions by it, so with a latency weight the policy moves
        traffic off a slowed model before any breaker opens. None while every factor is 1.
        Recomputed at most every 100 ms (a median over models per request would cost more than
        the rest of the decision)."""
        now = self._clock()
        if now - self._factors_at < 0.1:
            return self._factors
        self._factors_at = now
        cap = self.settings.slow_ratio or 10.0
        factors = np.ones(len(self.names))
        for k, name in enumerate(self.names):
            state = self.models[name]
            if state.n < self.settings.slow_min_calls or not state.ratio:
                continue
            ref = self._reference(state)
            if ref:
                factors[k] = min(max(state.ratio / ref, 1.0), cap)
        self._factors = None if np.all(factors == 1.0) else factors
        return self._factors

    def snapshot(self) -> dict[str, object]:
        """Every breaker's state and the live load (``GET /admin/health``)."""
        now = self._clock()
        out: dict[str, object] = {}
        for name, state in self.models.items():
            ok, fail = state.breaker.counts(now)
            out[name] = {
                "state": state.breaker.state,
                "reason": state.breaker.reason or None,
                "open_for_s": max(0.0, state.breaker.open_until - now)
                if state.breaker.state == OPEN
                else 0.0,
                "window": {"ok": ok, "failed": fail},
                "in_flight": state.in_flight,
                "latency_ratio": round(state.ratio, 4),
                "instances": [
                    {
                        "url": i.url,
                        "state": i.breaker.state,
                        "reason": i.breaker.reason or None,
                        "outstanding": i.outstanding,
                        "ewma_latency_ms": round(i.ewma_s * 1000, 3),
                    }
                    for i in state.instances
                ],
            }
        return out
