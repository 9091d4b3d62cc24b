"""Shared fixtures: a small real routing dataset (the bundled MMLU-Pro sample, subsampled)."""

from __future__ import annotations

import numpy as np
import pytest

from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.policy.actions import ActionCatalogue
from training.datasets import RoutingDataset, load_dataset


@pytest.fixture(scope="session")
def bundled() -> RoutingDataset:
    return load_dataset("bundled")


@pytest.fixture(scope="session")
def small(bundled: RoutingDataset) -> RoutingDataset:
    """400 train + 150 test prompts of the bundled sample, all 29 models."""
    rng = np.random.default_rng(0)
    split = bundled.prompts["split"].to_numpy()
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(split == "train"), 400, replace=False),
            rng.choice(np.flatnonzero(split == "test"), 150, replace=False),
        ]
    )
    return bundled.subset(np.sort(rows))


@pytest.fixture(scope="session")
def fitted(small: RoutingDataset) -> tuple[RequestFeaturizer, ActionCatalogue, np.ndarray]:
    train = small.split("train")
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=32)).fit(
        train.prompts["prompt"].tolist()
    )
    x = featurizer.transform(train.prompts["prompt"].tolist())
    catalogue = ActionCatalogue(small.models).fit(x, train.output_tokens, train.available)
    return featurizer, catalogue, x
