"""Where rate limits and budgets are kept: the store interface and the in-memory store.

A store does three atomic things (:class:`TrafficStore`): ``take`` charges a request to every
GCRA limit of its tenant at once (all pass and are charged, or none is) and reads the tenant's
budget of the day in the same call; ``reserve`` adds a request's maximum cost to the budget's
reservations unless spent + reserved would go over the limit; ``settle`` replaces a reservation
with the actual cost. :class:`MemoryStore` keeps them in this process (the default: each worker
and replica counts on its own); ``router.traffic.redis_store.RedisStore`` in Redis, shared.

GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a limit of ``n``
units per minute has an emission interval ``T = 60 / n`` seconds per unit and a theoretical
arrival time ``tat``; a request of ``c`` units at ``now`` moves it to ``max(tat, now) + c * T``
and passes while that is at most :data:`WINDOW_S` ahead of ``now``. So a full minute's worth
(``n``) passes at once, then ``n / 60`` per second: over any ``t`` seconds at most
``n + n * t / 60`` units pass. A refused request waits ``new_tat - now - WINDOW_S`` seconds.

Money is kept in integer nano-USD (:data:`NANO_USD`): sums stay exact in Redis and in Lua.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

WINDOW_S = 60.0  # the burst of a per-minute limit: one minute's worth
NANO_USD = 1_000_000_000  # store units per USD
BUDGET_TTL_S = 2 * 86_400  # a day's budget is kept a day after it ends (late settlements)
EPSILON_S = 1e-6  # float slack: n requests of interval 60/n fill the window exactly


@dataclass(slots=True)
class RateLimit:
    """One GCRA limit a request is charged to.

    Attributes
    ----------
    key : str
        The limit's key in the store (one per tenant and limit).
    interval_s : float
        Seconds per unit: 60 / the per-minute limit.
    cost : int
        Units this request takes (1 for requests, its tokens for tokens).
    """

    key: str
    interval_s: float
    cost: int


@dataclass(slots=True)
class Taken:
    """What :meth:`TrafficStore.take` found.

    Attributes
    ----------
    refused : int
        Index of the limit that refused (the one with the longest wait), -1 when every limit
        passed and was charged; nothing is charged when one refuses.
    retry_after_s : float
        Seconds until the refused request would pass (0 when it passed).
    spent_nusd, reserved_nusd : int
        The budget's spent and reserved amounts (0 without a budget key).
    """

    refused: int
    retry_after_s: float
    spent_nusd: int
    reserved_nusd: int


@dataclass(slots=True)
class Reserved:
    """What :meth:`TrafficStore.reserve` did: ``ok`` when the amount was reserved; the budget's
    spent and reserved amounts (after the reservation when ok, as found otherwise)."""

    ok: bool
    spent_nusd: int
    reserved_nusd: int


class TrafficStore(Protocol):
    """Rate limits and budgets, each operation atomic (see the module docstring)."""

    async def start(self) -> None:
        """Connect (called in the app's event loop, at startup)."""

    async def aclose(self) -> None:
        """Disconnect."""

    async def take(self, limits: Sequence[RateLimit], budget_key: str | None) -> Taken: ...

    async def reserve(self, budget_key: str, amount_nusd: int, limit_nusd: int) -> Reserved: ...

    async def settle(self, budget_key: str, reserved_nusd: int, actual_nusd: int) -> None: ...

    async def sync_open(
        self, opened: dict[str, float], closed: Sequence[str], keys: Sequence[str]
    ) -> list[float]:
        """Shared circuit breakers (``router.traffic.shared_health``): mark ``opened`` keys
        open for their seconds, clear ``closed`` ones, and return how long each of ``keys``
        stays open (0: not open), all in one round trip."""
        ...


class MemoryStore:
    """The store of one process: dictionaries, microseconds per call.

    ``settle_now`` is the synchronous settle (the gateway settles at once, without a task).
    Budgets expire :data:`BUDGET_TTL_S` after their last reservation, like their Redis keys.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._budgets: dict[str, list[float]] = {}  # key -> [spent, reserved, expires at]
        self._open: dict[str, float] = {}  # breaker key -> open until

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def take(self, limits: Sequence[RateLimit], budget_key: str | None) -> Taken:
        now = self._clock()
        tats = self._tat
        refused, worst = -1, 0.0
        new = []
        for i, limit in enumerate(limits):
            tat = max(tats.get(limit.key, now), now) + limit.interval_s * limit.cost
            wait = tat - now - WINDOW_S
            if wait > EPSILON_S and wait > worst:
                refused, worst = i, wait
            new.append(tat)
        if refused < 0:
            for limit, tat in zip(limits, new, strict=True):
                tats[limit.key] = tat
        spent, reserved = self._budget(budget_key, now) if budget_key is not None else (0, 0)
        return Taken(refused, worst, spent, reserved)

    def _budget(self, key: str, now: float) -> tuple[int, int]:
        entry = self._budgets.get(key)
        if entry is None or entry[2] <= now:
            return 0, 0
        return int(entry[0]), int(entry[1])

    async def reserve(self, budget_key: str, amount_nusd: int, limit_nusd: int) -> Reserved:
        now = self._clock()
        spent, reserved = self._budget(budget_key, now)
        if spent + reserved + amount_nusd > limit_nusd:
            return Reserved(False, spent, reserved)
        if budget_key not in self._budgets:  # a new day's key: drop the expired ones
            for key in [k for k, e in self._budgets.items() if e[2] <= now]:
                del self._budgets[key]
        reserved += amount_nusd
        self._budgets[budget_key] = [spent, reserved, now + BUDGET_TTL_S]
        return Reserved(True, spent, reserved)

    def settle_now(self, budget_key: str, reserved_nusd: int, actual_nusd: int) -> None:
        now = self._clock()
        spent, reserved = self._budget(budget_key, now)
        self._budgets[budget_key] = [
            spent + actual_nusd,
            max(0, reserved - reserved_nusd),
            now + BUDGET_TTL_S,
        ]

    async def settle(self, budget_key: str, reserved_nusd: int, actual_nusd: int) -> None:
        self.settle_now(budget_key, reserved_nusd, actual_nusd)

    async def sync_open(
        self, opened: dict[str, float], closed: Sequence[str], keys: Sequence[str]
    ) -> list[float]:
        now = self._clock()
        for key, seconds in opened.items():
            self._open[key] = now + seconds
        for key in closed:
            self._open.pop(key, None)
        return [max(0.0, self._open.get(key, now) - now) for key in keys]
