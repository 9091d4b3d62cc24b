"""Which models may serve a request: compliance, profile, context window, hints, health,
and last the tenant's remaining budget.

Each rule removes models and says why; when nothing is left, :class:`NoEligibleModelError`
names every rule that removed something, so a caller knows what to relax (or
:class:`BudgetExceededError` when the budget rule removed the last ones: waiting helps).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from features.errors import (
    BudgetExceededError,
    ModelsUnavailableError,
    NoEligibleModelError,
    RequestError,
)
from router.config import RouterConfig

UNHEALTHY = "unhealthy (circuit open)"


@dataclass(frozen=True)
class RequestHints:
    """Per-request constraints (from ``metadata`` or ``x-polyroute-*`` headers)."""

    profile: str = "default"
    data_class: str | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    priority: int | None = None


# the name of the budget rule in ``Eligibility.removed`` (the gateway looks it up)
BUDGET_RULE = "maximum cost over the remaining budget"


@dataclass
class Eligibility:
    models: list[str]
    removed: dict[str, list[str]] = field(default_factory=dict)  # rule -> models it removed


def eligible_models(
    config: RouterConfig,
    hints: RequestHints,
    input_tokens: int,
    max_output_tokens: int,
    tenant_data_classes: Collection[str] | None = None,
    unhealthy: Collection[str] = (),
    expected_cost: Mapping[str, float] | None = None,
    expected_latency_ms: Mapping[str, float] | None = None,
    *,
    budget_remaining_usd: float | None = None,
) -> Eligibility:
    """Apply the rules in order; the survivors keep the config's model order."""
    return EligibilityRules(config).apply(
        hints,
        input_tokens,
        max_output_tokens,
        tenant_data_classes,
        unhealthy,
        expected_cost,
        expected_latency_ms,
        budget_remaining_usd=budget_remaining_usd,
    )


class EligibilityRules:
    """The rules of one config, with what does not depend on the request worked out once
    (the decision path builds this once; :func:`eligible_models` builds it per call)."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.names = [m.name for m in config.models]
        self._windows = [(m.name, m.context_tokens) for m in config.models]
        self._prices = [(m.name, m.usd_per_mtok_in / 1e6, m.usd_per_mtok_out / 1e6)
                        for m in config.models]  # fmt: skip
        self._smallest_window = min(w for _, w in self._windows)
        self._profiles = {
            name: frozenset(profile.models) if profile.models else None
            for name, profile in config.profiles.items()
        }
        self._data_classes = {
            name: (
                f"data class {name!r} needs tags {sorted(data.required_tags)}",
                frozenset(m.name for m in config.models if data.required_tags <= m.tags),
            )
            for name, data in config.data_classes.items()
        }

    def apply(
        self,
        hints: RequestHints,
        input_tokens: int,
        max_output_tokens: int,
        tenant_data_classes: Collection[str] | None = None,
        unhealthy: Collection[str] = (),
        expected_cost: Mapping[str, float] | None = None,
        expected_latency_ms: Mapping[str, float] | None = None,
        *,
        budget_remaining_usd: float | None = None,
    ) -> Eligibility:
        """Apply the rules in order; the survivors keep the config's model order.

        ``budget_remaining_usd`` (the tenant's daily budget less what is spent and reserved)
        removes, last, every model whose maximum cost for this request (input tokens at its
        input price + ``max_output_tokens`` at its output price) is over it: the policy then
        chooses among the models the budget can still pay for.
        """
        config = self.config
        if hints.profile not in self._profiles:
            raise RequestError(
                f"profile: unknown profile {hints.profile!r}; configured: {sorted(config.profiles)}"
            )
        candidates = self.names
        removed: dict[str, list[str]] = {}

        def keep(rule: str, allowed: Collection[str]) -> None:
            nonlocal candidates
            dropped = [m for m in candidates if m not in allowed]
            if dropped:
                removed[rule] = dropped
                candidates = [m for m in candidates if m in allowed]

        allowed_by_profile = self._profiles[hints.profile]
        if allowed_by_profile is not None:
            keep(f"profile {hints.profile!r}", allowed_by_profile)
        if hints.data_class is not None:
            if hints.data_class not in self._data_classes:
                raise RequestError(
                    f"data_class: unknown data class {hints.data_class!r}; "
                    f"configured: {sorted(config.data_classes)}"
                )
            if tenant_data_classes is not None and hints.data_class not in tenant_data_classes:
                raise RequestError(
                    f"data_class: this tenant may not send {hints.data_class!r} data"
                )
            keep(*self._data_classes[hints.data_class])
        needed = input_tokens + max_output_tokens
        if needed > self._smallest_window:  # else every model's window is large enough
            keep(
                f"context window < {needed} tokens",
                {name for name, window in self._windows if window >= needed},
            )
        if unhealthy:
            keep(UNHEALTHY, {m for m in candidates if m not in unhealthy})
        if hints.max_cost_usd is not None and expected_cost is not None:
            limit = hints.max_cost_usd
            keep(
                f"expected cost > {limit} USD",
                {m for m in candidates if expected_cost[m] <= limit},
            )
        if hints.max_latency_ms is not None and expected_latency_ms is not None:
            limit = hints.max_latency_ms
            keep(
                f"expected latency > {limit} ms",
                {m for m in candidates if expected_latency_ms[m] <= limit},
            )
        if budget_remaining_usd is not None:
            left = budget_remaining_usd
            max_cost = {
                name: input_tokens * price_in + max_output_tokens * price_out
                for name, price_in, price_out in self._prices
            }
            if candidates and all(max_cost[m] > left for m in candidates):
                cheapest = min(candidates, key=max_cost.__getitem__)
                raise BudgetExceededError(
                    f"budget: no eligible model's maximum cost for this request ({input_tokens} "
                    f"input + {max_output_tokens} output tokens) fits the remaining "
                    f"{max(left, 0.0):.6f} USD (cheapest: {cheapest!r} at "
                    f"{max_cost[cheapest]:.6f} USD)"
                )
            keep(BUDGET_RULE, {m for m in candidates if max_cost[m] <= left})
        if not candidates:
            reasons = "; ".join(f"{rule}: removed {models}" for rule, models in removed.items())
            if UNHEALTHY in removed:  # the rules allowed some: only their health stops them
                raise ModelsUnavailableError(
                    f"every model this request may use is unavailable ({reasons}); retry shortly"
                )
            raise NoEligibleModelError(f"no model may serve this request ({reasons})")
        return Eligibility(list(candidates), removed)
