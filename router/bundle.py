"""The policy bundle: fitted features + action catalogue + policy + reward spec, saved together.

A policy only makes sense with the features it was trained on, so they travel as one directory::

    bundle.json      versions (bundle, features, policy), reward spec, models, provenance
    featurizer/      features.featurizer.RequestFeaturizer
    catalogue/       router.policy.actions.ActionCatalogue (prices, speeds, output-length model)
    policy/          router.policy.base.Policy

:func:`train_bundle` builds one from a routing dataset's train split (the VW policy is
warm-started from full information); the learning loop builds them from logged events.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.errors import PolicyError
from router.policy.actions import ActionCatalogue
from router.policy.base import Policy, RewardSpec
from router.policy.registry import get_policy_class
from router.policy.vw import VWSquareCBPolicy

FORMAT_VERSION = 1


@dataclass
class PolicyBundle:
    featurizer: RequestFeaturizer
    catalogue: ActionCatalogue
    policy: Policy
    provenance: dict[str, Any]

    @property
    def reward(self) -> RewardSpec:
        return self.policy.reward

    @property
    def version(self) -> str:
        """Stable id of this bundle: its provenance, features and reward spec."""
        payload = json.dumps(
            {
                "features": self.featurizer.version_,
                "reward": self.reward.__dict__,
                "policy": self.policy.name,
                "provenance": self.provenance,
            },
            sort_keys=True,
        )
        return f"bundle-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.featurizer.save(path / "featurizer")
        self.catalogue.save(path / "catalogue")
        self.policy.save(path / "policy")
        meta = {
            "format": FORMAT_VERSION,
            "version": self.version,
            "feature_version": self.featurizer.version_,
            "policy": self.policy.name,
            "reward": self.reward.__dict__,
            "models": self.catalogue.names,
            "provenance": self.provenance,
        }
        (path / "bundle.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PolicyBundle:
        path = Path(directory)
        meta_file = path / "bundle.json"
        if not meta_file.is_file():
            raise PolicyError(f"{path}: not a policy bundle (bundle.json is missing)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise PolicyError(f"{path}: bundle format {meta.get('format')} is not {FORMAT_VERSION}")
        bundle = cls(
            featurizer=RequestFeaturizer.load(path / "featurizer"),
            catalogue=ActionCatalogue.load(path / "catalogue"),
            policy=Policy.load(path / "policy"),
            provenance=meta["provenance"],
        )
        if bundle.version != meta["version"]:
            raise PolicyError(
                f"{path}: bundle version {bundle.version} does not match the recorded "
                f"{meta['version']}: its parts come from different trainings"
            )
        return bundle


def train_bundle(
    dataset: Any,
    w_cost: float = 0.2,
    w_latency: float = 0.0,
    policy_name: str = "vw_squarecb",
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
    from training.evaluation import Reference  # training-time only: keeps the service light

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
