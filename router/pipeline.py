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

from router.bundle import PolicyBundle
from router.config import RouterConfig
from router.eligibility import RequestHints, eligible_models
from router.errors import ConfigError


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
    decide_ns: int


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
        self._rng = np.random.default_rng(seed)
        catalogue = bundle.catalogue
        self._price_in = {m.name: m.usd_per_mtok_in / 1e6 for m in config.models}
        self._price_out = {m.name: m.usd_per_mtok_out / 1e6 for m in config.models}
        self._columns = {m.name: catalogue.index[m.name] for m in config.models}

    def decide(
        self,
        text: str,
        n_turns: int,
        input_tokens: int,
        max_output_tokens: int,
        hints: RequestHints,
        tenant_data_classes: Collection[str] | None = None,
        unhealthy: Collection[str] = (),
    ) -> Decision:
        start = time.perf_counter_ns()
        bundle = self.bundle
        context = bundle.featurizer.transform_one(text, n_turns)
        out_tokens = bundle.catalogue.expected_output_tokens(context)
        latency_all = bundle.catalogue.expected_latency(context, out_tokens)
        cost = {
            m: input_tokens * self._price_in[m] + out_tokens[j] * self._price_out[m]
            for m, j in self._columns.items()
        }
        latency = {m: float(latency_all[j]) for m, j in self._columns.items()}
        eligibility = eligible_models(
            self.config,
            hints,
            input_tokens,
            max_output_tokens,
            tenant_data_classes,
            unhealthy,
            cost,
            latency,
        )
        names = eligibility.models
        actions = bundle.catalogue.actions_with_costs(
            np.array([cost.get(m, 0.0) for m in bundle.catalogue.names]),
            latency_all,
            names,
        )
        pmf = bundle.policy.predict_one(context, actions)
        # inverse-CDF sampling: Generator.choice costs ~20 us per call, this ~1 us
        u = self._rng.random() * pmf.sum()
        k = min(int(np.searchsorted(np.cumsum(pmf), u, side="right")), len(pmf) - 1)
        return Decision(
            decision_id=uuid.uuid4().hex,
            chosen=names[k],
            chosen_index=k,
            probability=float(pmf[k]),
            eligible=names,
            pmf=pmf,
            action_features=np.vstack([a.features for a in actions]),
            context=context,
            expected_cost_usd=cost[names[k]],
            expected_latency_ms=latency[names[k]],
            removed=eligibility.removed,
            decide_ns=time.perf_counter_ns() - start,
        )
