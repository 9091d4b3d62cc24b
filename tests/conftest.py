"""Shared fixtures: a small real routing dataset (the bundled MMLU-Pro sample, subsampled) and
a small policy bundle trained on it once per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.bundle import PolicyBundle
from router.policy.actions import ActionCatalogue
from training.bundle_train import train_bundle
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


@pytest.fixture(scope="session")
def tiny(small: RoutingDataset) -> RoutingDataset:
    """120 train + 40 test prompts of ``small``, all 29 models: enough to fit a bundle fast."""
    rng = np.random.default_rng(1)
    split = small.prompts["split"].to_numpy()
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(split == "train"), 120, replace=False),
            rng.choice(np.flatnonzero(split == "test"), 40, replace=False),
        ]
    )
    return small.subset(np.sort(rows))


@pytest.fixture(scope="session")
def bundle_dir(tiny: RoutingDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small real bundle (VW SquareCB warm-started on ``tiny``, 16 SVD components), trained
    once per session and saved: the gateway, pipeline, reload and canary tests load it."""
    trained = train_bundle(tiny, w_cost=0.2, featurizer_config=FeaturizerConfig(n_components=16))
    return trained.save(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> PolicyBundle:
    """A fresh copy of the session's bundle for each test module (a module may change its
    policy's state, by learning or by predicting; no module sees another's changes)."""
    return PolicyBundle.load(bundle_dir)


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test alone (parallel runs never share keys); its keys are
    deleted after the test."""
    name = f"polyroute-test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        import redis
        from services import REDIS

        client = redis.Redis(*REDIS, socket_timeout=2)
        keys = list(client.scan_iter(match=f"{name}*"))
        if keys:
            client.delete(*keys)
        client.close()
    except Exception:  # Redis down: nothing was written
        pass
