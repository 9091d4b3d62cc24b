"""The decision path of one request: features -> eligibility -> policy -> sampled choice.

``DecisionEngine.decide`` is everything between a parsed request and the dispatch to a model:
it is what the overhead budget is spent on (benchmarked by ``polyroute bench-decision``). The
chosen model is sampled from the policy's pmf and its probability is recorded, so every
decision can be learned from and evaluated off-policy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from features.errors import ConfigError, PolicyError
from router.bundle import PolicyBundle
from router.config import RouterConfig
from router.eligibility import EligibilityRules, RequestHints
from router.policy.base import Policy, RewardSpec


def sample_index(pmf: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn from ``pmf`` (one uniform draw, inverse CDF): much cheaper per call than
    ``Generator.choice``."""
    u = rng.random() * pmf.sum()
    return min(int(np.searchsorted(np.cumsum(pmf), u, side="right")), len(pmf) - 1)


@dataclass(frozen=True)
class Decision:
    """One routing decision, with everything its decision event needs.

    Attributes
    ----------
    pmf : ndarray, shape (len(eligible),)
        The policy's probabilities over ``eligible`` (in that order).
    action_features : ndarray, shape (len(eligible), n_action_features)
    context : ndarray, shape (n_features,)
    """

    decision_id: str
    chosen: str
    chosen_index: int
    probability: float
    eligible: list[str]
    pmf: np.ndarray
    action_features: np.ndarray
    context: np.ndarray
    expected_cost_usd: float
    expected_latency_ms: float
    removed: dict[str, list[str]]
    reward: RewardSpec  # the weights the policy decided under (the request's profile)
    decide_ns: int
    # nanoseconds per stage of decide_ns, in the order of STAGES: features, cost model,
    # eligibility, policy (the actions and their pmf), sampling (with the decision id)
    stages_ns: tuple[int, ...] = ()
    # the live latency factor applied to the chosen model's prediction (router.health): the
    # prediction before it is expected_latency_ms / latency_factor
    latency_factor: float = 1.0


STAGES = ("features", "cost_model", "eligibility", "policy", "sampling")


class DecisionEngine:
    """Routes requests with a policy bundle under a router config.

    Every routable model of the config must be known to the bundle's action catalogue (its
    output-length model and prices): otherwise construction fails naming the models.
    """

    def __init__(self, config: RouterConfig, bundle: PolicyBundle, seed: int = 0) -> None:
        unknown = [m.name for m in config.models if m.name not in bundle.catalogue.index]
        if unknown:
            raise ConfigError(
                f"models {unknown} are in the config but not in the policy bundle "
                f"{bundle.version}; it knows {bundle.catalogue.names}"
            )
        self.config = config
        self.bundle = bundle
        # logged with every decision: computed once (it hashes the bundle's provenance)
        self.version = bundle.version
        self._rng = np.random.default_rng(seed)
        catalogue = bundle.catalogue
        # the config's prices per catalogue column (0 for catalogue models not in the config)
        self._names = [m.name for m in config.models]
        self._name_index = {name: i for i, name in enumerate(self._names)}
        self._columns = np.array([catalogue.index[m.name] for m in config.models], dtype=np.intp)
        self._price_in = np.zeros(len(catalogue.names))
        self._price_out = np.zeros(len(catalogue.names))
        self._price_in[self._columns] = [m.usd_per_mtok_in / 1e6 for m in config.models]
        self._price_out[self._columns] = [m.usd_per_mtok_out / 1e6 for m in config.models]
        self._rules = EligibilityRules(config)
        # latency = ttft + output tokens / speed, with the config's figures where it sets them
        self._ttft = catalogue.ttft_ms.copy()
        self._speed = catalogue.tokens_per_s.copy()
        for m, column in zip(config.models, self._columns, strict=True):
            if m.ttft_ms is not None:
                self._ttft[column] = m.ttft_ms
            if m.tokens_per_s is not None:
                self._speed[column] = m.tokens_per_s
        # each profile's view of the policy, deciding under the profile's reward weights
        self._policies: dict[str, Policy] = {}
        for name, profile in config.profiles.items():
            base = bundle.reward
            spec = RewardSpec(
                w_cost=base.w_cost if profile.w_cost is None else profile.w_cost,
                w_latency=base.w_latency if profile.w_latency is None else profile.w_latency,
                cost_scale=base.cost_scale,
                latency_scale=base.latency_scale,
            )
            try:
                self._policies[name] = bundle.policy.with_reward(spec)
            except PolicyError as exc:
                raise ConfigError(
                    f"profiles.{name}: w_cost / w_latency differ from the bundle's, and {exc}; "
                    "leave them unset or serve a policy that applies weights at decision time "
                    "(squarecb_quality, direct)"
                ) from exc

    def decide(
        self,
        text: str,
        n_turns: int,
        input_tokens: int,
        max_output_tokens: int,
        hints: RequestHints,
        tenant_data_classes: Collection[str] | None = None,
        unhealthy: Collection[str] = (),
        latency_factors: np.ndarray | None = None,
        *,
        budget_remaining_usd: float | None = None,
    ) -> Decision:
        """Decide one request. ``unhealthy``: models whose circuit is open (not eligible);
        ``latency_factors``: per config model, how much slower than predicted each runs now
        (``router.health``), applied to the latency predictions before the policy scores;
        ``budget_remaining_usd`` (the tenant's daily budget left, None without a budget) keeps
        to the models whose maximum cost for this request fits it, before the policy chooses
        (so the logged probabilities are those actually used)."""
        clock = time.perf_counter_ns
        start = clock()
        bundle = self.bundle
        catalogue = bundle.catalogue
        context = bundle.featurizer.transform_one(text, n_turns)
        t_features = clock()
        out_tokens = catalogue.expected_output_tokens(context)
        latency_all = self._ttft + out_tokens / self._speed * 1000.0  # as the catalogue's
        if latency_factors is not None:
            latency_all = latency_all.copy()
            latency_all[self._columns] *= latency_factors
        # expected cost per catalogue column, at the config's prices
        cost_all = input_tokens * self._price_in + out_tokens * self._price_out
        t_cost = clock()
        # the cost and latency rules only run when the request sets a limit
        eligibility = self._rules.apply(
            hints,
            input_tokens,
            max_output_tokens,
            tenant_data_classes,
            unhealthy,
            dict(zip(self._names, cost_all[self._columns].tolist(), strict=True))
            if hints.max_cost_usd is not None
            else None,
            dict(zip(self._names, latency_all[self._columns].tolist(), strict=True))
            if hints.max_latency_ms is not None
            else None,
            budget_remaining_usd=budget_remaining_usd,
        )
        names = eligibility.models
        t_eligibility = clock()
        actions = catalogue.actions_with_costs(cost_all, latency_all, names)
        policy = self._policies.get(hints.profile, bundle.policy)
        pmf = policy.predict_one(context, actions)
        t_policy = clock()
        k = sample_index(pmf, self._rng)
        chosen = actions[k]
        decision_id = uuid.uuid4().hex
        action_features = np.array([a.features for a in actions])
        end = clock()
        return Decision(
            decision_id=decision_id,
            chosen=names[k],
            chosen_index=k,
            probability=float(pmf[k]),
            eligible=names,
            pmf=pmf,
            action_features=action_features,
            context=context,
            expected_cost_usd=chosen.expected_cost,
            expected_latency_ms=chosen.expected_latency_ms,
            removed=eligibility.removed,
            reward=policy.reward,
            latency_factor=1.0
            if latency_factors is None
            else float(latency_factors[self._name_index[names[k]]]),
            decide_ns=end - start,
            stages_ns=(
                t_features - start,
                t_cost - t_features,
                t_eligibility - t_cost,
                t_policy - t_eligibility,
                end - t_policy,
            ),
        )
