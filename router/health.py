"""Live health of the upstreams: a circuit breaker per model and per instance, live latency and
load, the choice of instance (power of two choices), latency outliers (a model 10x slower than its
peers is ejected like a failing one, as Envoy's outlier detection does) and the retry budget.

Everything here runs on the event loop of one worker, so no locks are needed; a state change
costs a few dictionary operations, and :meth:`HealthBoard.unhealthy` (read by every decision)
returns a cached frozenset that changes only when a breaker changes state.

The breakers themselves and the retry budget are :mod:`router.breaker`.

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

from features.errors import UnknownKeyError
from router.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryBudget
from router.config import ResilienceConfig, RouterConfig

FAILURE_PENALTY_S = 1.0  # a failed call weighs in an instance's EWMA latency as at least this


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
                InstanceState(i.base_url, i.weight, CircuitBreaker(s.breaker))
                for i in m.endpoints()
            ]
            total = sum(i.weight for i in instances)
            slots = [
                k
                for k, inst in enumerate(instances)
                for _ in range(max(1, round(10 * inst.weight / total)))
            ]
            self.models[m.name] = ModelState(
                m.name, CircuitBreaker(s.breaker), instances, wrr=slots
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
        if state.breaker.abandoned() | inst.breaker.abandoned():  # both: no short circuit
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
        raise UnknownKeyError(f"{state.name} has no instance {url}")

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
