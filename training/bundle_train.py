"""Training a policy bundle on a routing dataset's train split (full information).

The bundle format itself (load, save, versions) is serving code: :mod:`router.bundle`.
"""

from __future__ import annotations

from typing import Any

from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.bundle import PolicyBundle
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec
from router.policy.registry import DEFAULT_POLICY, get_policy_class
from router.policy.vw import VWSquareCBPolicy
from training.evaluation import Reference


def train_bundle(
    dataset: Any,
    w_cost: float = 0.2,
    w_latency: float = 0.0,
    policy_name: str = DEFAULT_POLICY,
    seed: int = 0,
    featurizer_config: FeaturizerConfig | None = None,
    cold_start: bool = False,
    policy_params: dict[str, Any] | None = None,
) -> PolicyBundle:
    """Fit a bundle on a routing dataset's train split (full information).

    The reward's cost scale is the mean cost of the most expensive model on the train split,
    so ``w_cost = 1`` trades all of a quality point for that model's typical cost.
    ``cold_start=True`` fits the featurizer and the cost model but leaves the policy untrained
    (a new deployment without outcome data: the learning loop has to teach it).
    """
    train = dataset.split("train")
    texts = train.prompts["prompt"].tolist()
    featurizer = RequestFeaturizer(featurizer_config).fit(texts)
    x = featurizer.transform(texts)
    catalogue = ActionCatalogue(dataset.models).fit(x, train.output_tokens, train.available)
    spec = RewardSpec(w_cost=w_cost, w_latency=w_latency, cost_scale=Reference.of(train).c_hi)
    policy = get_policy_class(policy_name)(reward=spec, seed=seed, **(policy_params or {}))
    costs = catalogue.expected_cost(x, train.input_tokens)
    latencies = catalogue.expected_latency(x)
    per_row = [catalogue.actions_with_costs(costs[i], latencies[i]) for i in range(len(x))]
    if cold_start:
        pass
    elif isinstance(policy, VWSquareCBPolicy):
        policy.fit(x, per_row, train.quality)  # per-request expected costs in the reward
    else:
        policy.fit(x, per_row[0], train.quality)
    provenance = {"dataset": dataset.name, "n_train": train.n_prompts, "seed": seed}
    if cold_start:
        provenance["cold_start"] = True
    return PolicyBundle(featurizer, catalogue, policy, provenance)
