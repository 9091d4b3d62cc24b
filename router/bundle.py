"""The policy bundle: fitted features + action catalogue + policy + reward spec, saved together.

A policy only makes sense with the features it was trained on, so they travel as one directory::

    bundle.json      versions (bundle, features, policy), reward spec, models, provenance
    featurizer/      features.featurizer.RequestFeaturizer
    catalogue/       router.policy.actions.ActionCatalogue (prices, speeds, output-length model)
    policy/          router.policy.base.Policy

This module is the bundle *format* only (load, save, versions); training builds bundles
(``training.bundle_train.train_bundle`` from a routing dataset, the learning loop from logged
events).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.errors import PolicyError
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import Policy, RewardSpec

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
