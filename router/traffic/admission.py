"""Admission by priority: which requests a saturated worker sheds first.

A worker holds at most ``max_in_flight`` routed requests. Priority ``p`` (0-9) is admitted while
fewer than ``max_in_flight * share(p)`` are in flight, ``share(p) = s0 + (1 - s0) * p / 9`` with
``s0 = admission.lowest_priority_share``: as the worker fills up, priority 0 is refused first
and priority 9 last (it may use every slot). Refused requests get 503 + Retry-After at once,
except that requests of priority ``admission.queue_min_priority`` or more wait up to
``admission.queue_wait_ms`` for a slot; a freed slot goes to the highest waiting priority
(first come first served within one), and no new request overtakes a waiting one of its
priority or higher.

Per worker, in memory: the event loop is single-threaded, so checks and counts need no lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from features.errors import OverloadedError
from router.config import AdmissionConfig
from router.prometheus import GatewayMetrics


class Admission:
    """The in-flight slots of one worker, by priority."""

    def __init__(self, max_in_flight: int, config: AdmissionConfig, metrics: GatewayMetrics):
        self.max_in_flight = max_in_flight
        low = config.lowest_priority_share
        self.shares = [low + (1 - low) * p / 9 for p in range(10)]
        self.limits = [max_in_flight * share for share in self.shares]
        self.wait_s = config.queue_wait_ms / 1000
        self.queue_min_priority = config.queue_min_priority
        self.metrics = metrics
        self.in_flight = 0  # routed requests being handled (until the response starts)
        # waiting requests: (-priority, arrival, future set when a slot is handed over)
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    def _first_waiting(self) -> int | None:
        """The highest waiting priority (None when nobody waits)."""
        waiting = self._waiting
        while waiting and waiting[0][2].done():  # timed out or cancelled: gone
            heapq.heappop(waiting)
        return -waiting[0][0] if waiting else None

    def try_acquire(self, priority: int) -> bool:
        """Take a slot now if ``priority`` may have one; never waits."""
        if self.in_flight < self.limits[priority]:
            first = self._first_waiting() if self._waiting else None
            if first is None or first < priority:
                self.in_flight += 1
                return True
        return False

    async def acquire(self, priority: int) -> None:
        """Take a slot, waiting for one if ``priority`` may wait.

        Raises
        ------
        OverloadedError
            No slot for this priority (503 + Retry-After).
        """
        if self.try_acquire(priority):
            return
        if self.wait_s > 0 and priority >= self.queue_min_priority:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (-priority, next(self._arrivals), future))
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
        self.metrics.shed.labels(str(priority)).inc()
        waited = f", after waiting {self.wait_s * 1000:g} ms" if self.wait_s > 0 else ""
        raise OverloadedError(
            f"overloaded: {self.in_flight} requests in flight (max_in_flight "
            f"{self.max_in_flight}); priority {priority} is admitted below "
            f"{self.limits[priority]:g} ({self.shares[priority]:.0%}){waited}; retry shortly"
        )

    def release(self) -> None:
        """Give a slot back; hand it over to the highest waiting priority that may have it."""
        self.in_flight -= 1
        while self._waiting:
            first = self._first_waiting()
            if first is None or self.in_flight >= self.limits[first]:
                return  # lower priorities may have even fewer slots
            _, _, future = heapq.heappop(self._waiting)
            self.in_flight += 1
            future.set_result(None)
