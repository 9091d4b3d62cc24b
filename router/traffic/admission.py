"""Admission: how many routed requests a worker holds at once, and which it sheds first.

The limit
---------
``admission.limiter: gradient2`` (default): the limit follows the latency the gateway itself
adds, after Netflix concurrency-limits' ``Gradient2Limit``
(github.com/Netflix/concurrency-limits, ``concurrency-limits-core/.../limit/Gradient2Limit.java``
driven by ``WindowedLimit``; "Performance Under Load", Netflix tech blog, 2018). Every
``window_ms`` (and at least :data:`WINDOW_MIN_SAMPLES` samples) the window's average latency
``short`` is compared with a long-term exponential average ``long`` (a time constant of
:data:`LONG_S`, the library's 600 windows of its default second; the first :data:`LONG_WARMUP`
windows plainly averaged)::

    gradient  = max(0.5, min(1.0, latency_tolerance * long / short))
    new       = limit * gradient + queue_size          queue_size = max(4, sqrt(limit))
    limit     = clamp(limit * (1 - smoothing) + new * smoothing, min_limit, max_in_flight)

the limit is not raised while fewer than half of it were in flight in the window (the load,
not the limit, bounded the traffic), and ``long`` is cut by 10% whenever it is more than twice
``short`` (recovery after a long overload), both as in ``Gradient2Limit``. ``queue_size``
grows as the square root of the limit (the library's ``SquareRootFunction``, an option of its
builder; its default is a constant 4, kept as the floor) so that a deployment whose upstream
calls take seconds, and so needs hundreds of requests in flight (Little's law), reaches its
limit in seconds rather than minutes. ``latency_tolerance`` is ``rttTolerance`` of the
library's later versions.

``admission.limiter: fixed``: the limit is ``max_in_flight``, as before this limiter existed.

What latency the limit follows
------------------------------
A request's wall time is mostly the upstream's (seconds for an LLM), which the gateway's
concurrency does not govern: a limit following it would shrink whenever a model writes longer
answers, refusing requests an idle gateway could serve, and a few milliseconds of queueing in
the gateway would vanish in it (a gradient of 1.002). So the sample is the gateway's own
time, without the upstream: from admission until the first upstream call leaves (the decision,
the event, rate limits and budget), which the route makes include one turn of the event loop
(``await asyncio.sleep(0)`` after admission, :meth:`Admission.admitted`). That turn is the
queue every step of every request waits in when the worker's one core is saturated; the
synchronous decision path alone would not show it. The in-flight count still includes the
upstream wait (the slot is held until the response starts), so a smaller limit means fewer
requests, hence less work, on the loop.

Priorities and the queue
------------------------
Priority ``p`` (0-9) is admitted while fewer than ``limit * share(p)`` requests are in flight,
``share(p) = s0 + (1 - s0) * p / 9`` with ``s0 = admission.lowest_priority_share``: priority 0
is refused first and priority 9 last (it may use every slot). Requests of priority
``admission.queue_min_priority`` or more wait for a slot, the highest waiting priority first
(first come first served within one; no new request overtakes a waiting one of its priority
or higher), at most ``admission.queue_wait_ms``: the queue-time bound, after which the request
is refused (503 + Retry-After) rather than served late. Under the adaptive limit, a request
that would wait behind one that has already waited half the bound is refused at once (the
queue is not draining fast enough to serve it in time; CoDel's reading of a standing queue
from its head's sojourn time), and when no priority could have a slot or wait, the gateway
refuses before it routes or parses the request (:meth:`Admission.saturated`,
:class:`router.http.routes.RefuseWhenSaturated`): under sustained
overload refusals are most of the traffic, and answered at once, not after the bound, with
the least work. ``limiter: fixed`` keeps the admission as it was before (every request that
may wait waits the full bound, and is parsed first).

Why not a library: no Python package implements these algorithms for a server with priorities
and a bounded queue (PyPI has AIMD throttles for clients, e.g. ``ace-concurrency`` 0.1, and
semaphores); the arithmetic above is a dozen lines and the queue has to be ours anyway.

Per worker, in memory: the event loop is single-threaded, so checks and counts need no lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable

from features.errors import OverloadedError
from router.config import AdmissionConfig
from router.prometheus import GatewayMetrics

WINDOW_MIN_SAMPLES = 10  # samples a window needs before it updates the limit (WindowedLimit's)
# the long-term average's time constant: Gradient2Limit's longWindow of 600 windows of
# WindowedLimit's 1 s; in seconds, so that a minute of overload moves the baseline as little
# with windows of 100 ms as with the library's (the baseline must not learn the overload)
LONG_S = 600.0
LONG_WARMUP = 10  # first windows plainly averaged (ExpAvgMeasurement's warm-up)


class GradientLimit:
    """The Gradient2 limit (module docstring) over windows of latency samples.

    ``clock`` (seconds) times the windows; the samples come measured.
    """

    def __init__(
        self,
        config: AdmissionConfig,
        max_limit: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_limit = max_limit
        self.min_limit = min(config.min_limit, max_limit)
        self.limit = float(min(max(config.initial_limit, self.min_limit), max_limit))
        self.smoothing = config.smoothing
        self.tolerance = config.latency_tolerance
        self.window_s = config.window_ms / 1000
        self.clock = clock
        self.long: float | None = None  # the long-term average latency (seconds)
        self.short: float | None = None  # the last window's average
        self._windows = 0
        self._sum = 0.0
        self._count = 0
        self._max_in_flight = 0
        self._window_end: float | None = None

    def sample(self, seconds: float, in_flight: int) -> bool:
        """Add one request's latency, with the requests in flight then; True when the window
        closed and the limit was recomputed."""
        now = self.clock()
        if self._window_end is None:
            self._window_end = now + self.window_s
        self._sum += seconds
        self._count += 1
        self._max_in_flight = max(self._max_in_flight, in_flight)
        if self._count < WINDOW_MIN_SAMPLES or now < self._window_end:
            return False
        duration = now - (self._window_end - self.window_s)
        self._update(self._sum / self._count, self._max_in_flight, duration)
        self._sum, self._count, self._max_in_flight = 0.0, 0, 0
        self._window_end = now + self.window_s
        return True

    def _update(self, short: float, in_flight: int, duration: float) -> None:
        self.short = short = max(short, 1e-9)
        self._windows += 1
        if self.long is None or self._windows <= LONG_WARMUP:
            n = self._windows
            self.long = short if self.long is None else self.long + (short - self.long) / n
        else:  # an exponential average over LONG_S / duration windows of this one's length
            factor = 2 / (LONG_S / duration + 1)
            self.long = self.long * (1 - factor) + short * factor
        if self.long / short > 2:  # back from a long overload: forget it faster
            self.long *= 0.9
        if in_flight < self.limit / 2:  # the traffic, not the limit, held the concurrency
            return
        gradient = max(0.5, min(1.0, self.tolerance * self.long / short))
        queue_size = max(4.0, math.sqrt(self.limit))
        new = self.limit * gradient + queue_size
        new = self.limit * (1 - self.smoothing) + new * self.smoothing
        self.limit = max(float(self.min_limit), min(float(self.max_limit), new))


class Admission:
    """The in-flight slots of one worker, by priority, under a fixed or an adaptive limit."""

    def __init__(
        self,
        max_in_flight: int,
        config: AdmissionConfig,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.max_in_flight = max_in_flight
        self.gradient = (
            GradientLimit(config, max_in_flight, clock) if config.limiter == "gradient2" else None
        )
        low = config.lowest_priority_share
        self.shares = [low + (1 - low) * p / 9 for p in range(10)]
        self.wait_s = config.queue_wait_ms / 1000
        self.queue_min_priority = config.queue_min_priority
        self.metrics = metrics
        self.clock = clock
        self.in_flight = 0  # routed requests being handled (until the response starts)
        # waiting requests: (-priority, arrival, since, future set when a slot is handed over)
        self._waiting: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        metrics.admission_limit.set(self.limit)

    @property
    def limit(self) -> float:
        """The requests in flight priority 9 may reach now."""
        return self.gradient.limit if self.gradient is not None else float(self.max_in_flight)

    def limit_of(self, priority: int) -> float:
        """The requests in flight below which ``priority`` is admitted now."""
        return self.limit * self.shares[priority]

    def _first_waiting(self) -> tuple[int, float] | None:
        """The highest waiting priority and since when its first request waits (None when
        nobody waits)."""
        waiting = self._waiting
        while waiting and waiting[0][3].done():  # timed out or cancelled: gone
            heapq.heappop(waiting)
        return (-waiting[0][0], waiting[0][2]) if waiting else None

    def try_acquire(self, priority: int) -> bool:
        """Take a slot now if ``priority`` may have one; never waits."""
        if self.in_flight < self.limit_of(priority):
            first = self._first_waiting() if self._waiting else None
            if first is None or first[0] < priority:
                self.in_flight += 1
                return True
        return False

    async def acquire(self, priority: int) -> None:
        """Take a slot, waiting for one up to the queue-time bound if ``priority`` may wait.

        Raises
        ------
        OverloadedError
            No slot for this priority (503 + Retry-After).
        """
        if self.try_acquire(priority):
            return
        waited = ""
        if self.wait_s > 0 and priority >= self.queue_min_priority:
            stale = self._stale_queue()
            first = self._first_waiting()
            if stale is not None and first is not None and first[0] >= priority:
                self.metrics.admission_waits.labels("refused_at_once").inc()
                waited = stale
            else:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                heapq.heappush(
                    self._waiting, (-priority, next(self._arrivals), self.clock(), future)
                )
                try:
                    await asyncio.wait_for(future, self.wait_s)
                    self.metrics.admission_waits.labels("admitted").inc()
                    return
                except TimeoutError:
                    self.metrics.admission_waits.labels("timed_out").inc()
                except BaseException:  # the caller went away: give back a slot handed over
                    if future.done() and not future.cancelled():
                        self.release()
                    raise
                waited = f", after waiting {self.wait_s * 1000:g} ms (queue_wait_ms)"
        raise self.refusal(priority, waited)

    def _stale_queue(self) -> str | None:
        """Why the queue takes no more requests now, or None: under the adaptive limit, when
        its head has waited half the bound (it is not draining fast enough to serve a newcomer
        in time). The fixed limit queues every request that may wait, as it always did."""
        if self.gradient is None:
            return None
        first = self._first_waiting()
        if first is None:
            return None
        waited = self.clock() - first[1]
        if waited < self.wait_s / 2:
            return None
        return (
            f"; the queue is not draining (its head has waited {waited * 1000:.0f} ms of "
            f"queue_wait_ms {self.wait_s * 1000:g})"
        )

    def saturated(self) -> str | None:
        """Why no request, whatever its priority, could have a slot or wait for one now, or
        None. The gateway asks before it parses a request
        (:class:`router.http.routes.RefuseWhenSaturated`), so that refusing costs as little as
        possible when refusals are most of the traffic (adaptive limit only)."""
        if self.gradient is None or self.in_flight < self.limit:
            return None
        if self.wait_s <= 0:
            return ""
        return self._stale_queue()

    def refusal(self, priority: int | None, why: str = "") -> OverloadedError:
        """The 503 of a refused request (counted by priority; None: refused before parsing)."""
        self.metrics.shed.labels("any" if priority is None else str(priority)).inc()
        kind = "max_in_flight"
        if self.gradient is not None:
            kind = f"adaptive limit {self.limit:.0f} of at most max_in_flight"
        admits = "no priority is admitted" if priority is None else (
            f"priority {priority} is admitted below {self.limit_of(priority):.3g} "
            f"({self.shares[priority]:.0%})"
        )  # fmt: skip
        return OverloadedError(
            f"overloaded: {self.in_flight} requests in flight ({kind} {self.max_in_flight}); "
            f"{admits}{why}; retry shortly"
        )

    async def admitted(self) -> float:
        """After a slot is taken: one turn of the event loop, and the time the latency sample
        starts from (:meth:`observe`); that turn is how long the loop makes each step of a
        request wait, the congestion the adaptive limit must see. The fixed limit skips it."""
        since = self.clock()
        if self.gradient is not None:
            await asyncio.sleep(0)
        return since

    def observe(self, since: float) -> None:
        """A request admitted at ``since`` is leaving the gateway for its upstream: its
        gateway latency is a sample of the adaptive limit."""
        if self.gradient is None:
            return
        if self.gradient.sample(self.clock() - since, self.in_flight):
            self.metrics.admission_limit.set(self.gradient.limit)
            self._hand_over()  # a higher limit may have room for waiting requests

    def release(self) -> None:
        """Give a slot back; hand it over to the highest waiting priority that may have it."""
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            first = self._first_waiting()
            if first is None or self.in_flight >= self.limit_of(first[0]):
                return  # lower priorities may have even fewer slots
            future = heapq.heappop(self._waiting)[3]
            self.in_flight += 1
            future.set_result(None)
