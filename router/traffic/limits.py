"""Tenant limits on the request path: rate limits at admission, the daily budget's remaining
amount for eligibility, its reservation at dispatch and its settlement at the outcome.

A Redis failure (:class:`~features.errors.TrafficStoreError`) is counted in
``polyroute_traffic_store_errors_total{op, action}`` and then:

- rate limits **fail open**: the request is admitted. They protect fairness and capacity, which
  ``max_in_flight`` and the priorities still protect in each worker; refusing every tenant
  because the limiter is down would turn a Redis outage into a full outage.
- budgets **fail closed**: a tenant with a budget is refused with 503 + Retry-After. A budget
  is money: without the ledger, concurrent requests could spend without bound, and the request
  cannot be reserved, so it could not be accounted for either.
- a failed settlement keeps the reservation (the budget is under-used until the day ends,
  never overspent).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from features.errors import (
    BudgetExceededError,
    RateLimitedError,
    RequestError,
    TrafficStoreError,
)
from router.config import RouterConfig, TenantConfig
from router.eligibility import RequestHints
from router.prometheus import GatewayMetrics
from router.traffic.store import NANO_USD, WINDOW_S, RateLimit, TrafficStore

log = logging.getLogger(__name__)

DAY_S = 86_400
OPEN_PRIORITY = 9  # the priority of a caller on a service without tenants (open access)


def effective_priority(tenant: TenantConfig | None, hints: RequestHints) -> int:
    """The tenant's priority (9 without tenants), lowered, never raised, by the ``priority``
    hint."""
    base = tenant.priority if tenant is not None else OPEN_PRIORITY
    return base if hints.priority is None else min(base, hints.priority)


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits, worked out once; ``budget_nusd`` None without a budget."""

    tenant: str
    keys: str  # ``<prefix>:{<tenant>}``: the prefix of the tenant's keys
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget_usd: float | None
    budget_nusd: int | None
    requests: RateLimit | None  # the request limit (1 a request), built once


@dataclass(slots=True)
class Admitted:
    """A request that passed its tenant's rate limits, with its budget as found."""

    limits: TenantLimits
    budget_key: str | None = None
    day_end: float = 0.0  # the UTC midnight the budget resets at (epoch seconds)
    spent_nusd: int = 0
    reserved_nusd: int = 0

    @property
    def remaining_usd(self) -> float | None:
        """The budget less spent and reserved (None without a budget)."""
        if self.limits.budget_nusd is None:
            return None
        return (self.limits.budget_nusd - self.spent_nusd - self.reserved_nusd) / NANO_USD


@dataclass(slots=True)
class Reservation:
    """A request's maximum cost held on its tenant's budget until its outcome settles it."""

    limits: TenantLimits
    budget_key: str
    amount_nusd: int
    settled: bool = field(default=False)


class Traffic:
    """The tenants' rate limits and budgets over one :class:`TrafficStore`.

    ``limits_of`` is None for a tenant without limits (and without tenants): the request path
    then does no work here at all.
    """

    def __init__(
        self,
        config: RouterConfig,
        store: TrafficStore,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._clock = clock
        prefix = config.traffic.key_prefix
        self._limits: dict[str, TenantLimits] = {}
        for t in config.tenants:
            if (t.requests_per_minute, t.tokens_per_minute, t.budget_usd_per_day) == (None,) * 3:
                continue
            budget = t.budget_usd_per_day
            keys = f"{prefix}:{{{t.name}}}"
            self._limits[t.name] = TenantLimits(
                tenant=t.name,
                keys=keys,
                requests_per_minute=t.requests_per_minute,
                tokens_per_minute=t.tokens_per_minute,
                budget_usd=budget,
                budget_nusd=round(budget * NANO_USD) if budget is not None else None,
                requests=RateLimit(f"{keys}:rpm", WINDOW_S / t.requests_per_minute, 1)
                if t.requests_per_minute is not None
                else None,
            )
        self._price = {  # nano-USD per input and output token
            m.name: (m.usd_per_mtok_in * 1000.0, m.usd_per_mtok_out * 1000.0) for m in config.models
        }
        self._day = (-1, "")  # (day number, its date): formatted once a day
        self._tasks: set[asyncio.Task[None]] = set()
        self._settle_now = getattr(store, "settle_now", None)  # the in-memory store's
        self._last_warning = -math.inf

    def limits_of(self, tenant: TenantConfig | None) -> TenantLimits | None:
        return self._limits.get(tenant.name) if tenant is not None and self._limits else None

    async def start(self) -> None:
        await self.store.start()

    async def aclose(self) -> None:
        """Wait (a little) for settlements still running, then close the store."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.store.aclose()

    # ---- admission: rate limits, and the budget as it stands ------------------------------
    def _budget_day(self) -> tuple[str, float]:
        now = self._clock()
        number = int(now // DAY_S)
        if number != self._day[0]:
            self._day = (number, time.strftime("%Y-%m-%d", time.gmtime(number * DAY_S)))
        return self._day[1], (number + 1) * DAY_S

    async def admit(self, limits: TenantLimits, input_tokens: int, max_out: int) -> Admitted:
        """Charge the request to its tenant's rate limits and read its budget.

        Raises
        ------
        RateLimitedError
            Over ``requests_per_minute`` or ``tokens_per_minute`` (Retry-After from the limiter).
        BudgetExceededError
            Nothing left of today's budget.
        RequestError
            The request alone counts more tokens than ``tokens_per_minute``.
        TrafficStoreError
            The store failed and the tenant has a budget (fail closed).
        """
        tokens = input_tokens + max_out
        rates: list[tuple[RateLimit, str, int]] = []
        if limits.requests is not None and limits.requests_per_minute is not None:
            rates.append((limits.requests, "requests", limits.requests_per_minute))
        if limits.tokens_per_minute is not None:
            n = limits.tokens_per_minute
            if tokens > n:
                raise RequestError(
                    f"max_tokens: this request counts {tokens} tokens (~{input_tokens} input "
                    f"+ {max_out} max output), more than tenant {limits.tenant!r}'s "
                    f"tokens_per_minute of {n}; lower max_tokens or shorten the messages"
                )
            rates.append((RateLimit(f"{limits.keys}:tpm", WINDOW_S / n, tokens), "tokens", n))
        admitted = Admitted(limits)
        if limits.budget_nusd is not None:
            day, admitted.day_end = self._budget_day()
            admitted.budget_key = f"{limits.keys}:budget:{day}"
        try:
            taken = await self.store.take([r for r, _, _ in rates], admitted.budget_key)
        except TrafficStoreError as exc:
            self._store_failed("take", exc, closed=limits.budget_nusd is not None)
            if limits.budget_nusd is not None:
                raise self._closed(limits, exc) from exc
            return admitted  # fail open: no rate limit while the store is down
        if taken.refused >= 0:
            _, unit, n = rates[taken.refused]
            name = f"{unit}_per_minute"
            self.metrics.rate_limited.labels(limits.tenant, name).inc()
            needs = "1 request" if unit == "requests" else f"{tokens} tokens"
            raise RateLimitedError(
                f"rate limit: tenant {limits.tenant!r} is over its {name} of {n} (this request "
                f"counts {needs}); retry after {taken.retry_after_s:.3f} s",
                retry_after_s=taken.retry_after_s,
            )
        admitted.spent_nusd, admitted.reserved_nusd = taken.spent_nusd, taken.reserved_nusd
        if limits.budget_nusd is not None and (admitted.remaining_usd or 0.0) <= 0:
            raise self.over_budget(admitted, "nothing is left")
        return admitted

    # ---- the budget -----------------------------------------------------------------------
    def max_cost_nusd(self, model: str, input_tokens: int, max_out: int) -> int:
        price_in, price_out = self._price[model]
        return math.ceil(input_tokens * price_in + max_out * price_out)

    async def reserve(
        self, admitted: Admitted, models: Iterable[str], input_tokens: int, max_out: int
    ) -> Reservation | None:
        """Reserve the request's maximum cost (the most expensive of ``models``, the models the
        dispatch may call) on its tenant's budget; None without a budget.

        Raises
        ------
        BudgetExceededError
            Concurrent requests took the room since admission.
        TrafficStoreError
            The store failed (budgets fail closed).
        """
        limits, key = admitted.limits, admitted.budget_key
        if limits.budget_nusd is None or key is None:
            return None
        amount = max(self.max_cost_nusd(m, input_tokens, max_out) for m in models)
        try:
            reserved = await self.store.reserve(key, amount, limits.budget_nusd)
        except TrafficStoreError as exc:
            self._store_failed("reserve", exc, closed=True)
            raise self._closed(limits, exc) from exc
        admitted.spent_nusd, admitted.reserved_nusd = reserved.spent_nusd, reserved.reserved_nusd
        if not reserved.ok:
            raise self.over_budget(
                admitted, f"this request may cost up to {amount / NANO_USD:.6f} USD", amount
            )
        return Reservation(limits, key, amount)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace the reservation by the actual cost (0 for a failed call: a release); once.
        Synchronous for the in-memory store, a background task for Redis."""
        if reservation.settled:
            return
        reservation.settled = True
        actual = max(0, round(cost_usd * NANO_USD))
        args = (reservation.budget_key, reservation.amount_nusd, actual)
        if self._settle_now is not None:
            self._settle_now(*args)
            return
        task = asyncio.get_running_loop().create_task(self._settle(reservation, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, reservation: Reservation, key: str, amount: int, actual: int) -> None:
        try:
            await self.store.settle(key, amount, actual)
        except TrafficStoreError as exc:
            self._store_failed("settle", exc, closed=True, action="reservation_kept")

    def over_budget(
        self, admitted: Admitted, why: str, needed_nusd: int = 0
    ) -> BudgetExceededError:
        """The 429 of a request its tenant's budget cannot pay for: the limit, what is spent and
        reserved, and when it resets. Retry-After: the UTC midnight, or 1 s when the requests in
        flight hold the room this one needs (their settlement may free it)."""
        limits = admitted.limits
        assert limits.budget_nusd is not None and limits.budget_usd is not None
        self.metrics.budget_refused.labels(limits.tenant).inc()
        spent, reserved = admitted.spent_nusd, admitted.reserved_nusd
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(admitted.day_end))
        to_reset = max(1.0, admitted.day_end - self._clock())
        may_free = reserved > 0 and spent + max(needed_nusd, 1) <= limits.budget_nusd
        return BudgetExceededError(
            f"budget: tenant {limits.tenant!r} is at its budget_usd_per_day of "
            f"{limits.budget_usd:g} USD ({why}): {spent / NANO_USD:.6f} USD spent and "
            f"{reserved / NANO_USD:.6f} USD reserved by requests in flight today; it resets "
            f"at {reset} (UTC midnight, in {to_reset:.0f} s)"
            + ("; the requests in flight may free room sooner" if may_free else ""),
            retry_after_s=1.0 if may_free else to_reset,
        )

    # ---- store failures -------------------------------------------------------------------
    def _closed(self, limits: TenantLimits, exc: TrafficStoreError) -> TrafficStoreError:
        return TrafficStoreError(
            f"budget: tenant {limits.tenant!r}'s budget cannot be checked, so the request is "
            f"refused (budgets fail closed; retry shortly): {exc}"
        )

    def _store_failed(
        self, op: str, exc: TrafficStoreError, closed: bool, action: str | None = None
    ) -> None:
        action = action or ("refused" if closed else "admitted")
        self.metrics.traffic_store_errors.labels(op, action).inc()
        now = time.monotonic()
        if now - self._last_warning > 60:  # one line a minute, the metric counts every one
            self._last_warning = now
            log.warning("traffic store failed (%s, request %s): %s", op, action, exc)
