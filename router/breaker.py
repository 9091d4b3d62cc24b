"""Circuit breakers and the retry budget: the state machines of :mod:`router.health`.

Why not a library: pybreaker and aiobreaker count *consecutive* failures of one wrapped call and
own the call itself; here a breaker needs an error *rate* over a time window, half-open probes,
an open time set by an upstream's ``Retry-After``, and separate verdicts per instance and per
model from the same call, told to it by the caller. Finagle's retry budget is the model of
:class:`RetryBudget`.

States (per breaker)::

    closed --(failure rate >= failure_rate over window_s with >= min_requests,
              or consecutive_failures in a row, or Retry-After)--> open
    open --(open_s elapsed; doubles on each failed probe up to max_open_s)--> half_open
    half_open --(a probe succeeds)--> closed;  --(a probe fails)--> open
"""

from __future__ import annotations

import math
from collections.abc import Callable

from router.config import BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CODE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the value of polyroute_circuit_state


class CircuitBreaker:
    """One breaker: an error rate over a sliding window of one-second buckets."""

    def __init__(self, settings: BreakerConfig) -> None:
        self.s = settings
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

    def abandoned(self) -> bool:
        """A call given up by our side: frees its probe slot; True when it held one."""
        if self.state == HALF_OPEN and self.probes > 0:
            self.probes -= 1
            return True
        return False

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
