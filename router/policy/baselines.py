"""Baseline policies: random, fixed model, cheapest, best single model, kNN router.

The oracle (per-prompt best, cheapest among ties) needs the true outcomes, so it is not a
policy: it lives in :mod:`training.benchmark`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ConfigError, PolicyError
from router.policy.base import Action, Policy, RewardSpec, greedy_pmf


class RandomPolicy(Policy):
    """Uniform over eligible models."""

    name = "random"
    decision_time_reward = True  # the reward plays no part in its choice
    explores = True

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        return np.full(len(actions), 1.0 / len(actions))


class FixedPolicy(Policy):
    """Always ``model``; when it is not eligible, the first eligible model."""

    name = "fixed"
    decision_time_reward = True  # the reward plays no part in its choice

    def __init__(self, reward: RewardSpec | None = None, seed: int = 0, model: str = "") -> None:
        super().__init__(reward, seed)
        self.model = model

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "model": self.model}

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        names = [a.model for a in actions]
        pmf = np.zeros(len(actions))
        pmf[names.index(self.model) if self.model in names else 0] = 1.0
        return pmf


class CheapestPolicy(Policy):
    """The eligible model with the lowest expected cost."""

    name = "cheapest"
    decision_time_reward = True  # the reward plays no part in its choice

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        return greedy_pmf(-np.array([a.expected_cost for a in actions]), 0.0)


class BestSinglePolicy(Policy):
    """The model with the best mean quality on the training data (next best if not eligible)."""

    name = "best_single"

    def fit(
        self, contexts: np.ndarray, actions: Sequence[Action], quality: np.ndarray
    ) -> BestSinglePolicy:
        means = np.nanmean(np.where(np.isfinite(quality), quality, np.nan), axis=0)
        self.ranking_ = [actions[j].model for j in np.argsort(-np.nan_to_num(means, nan=-1.0))]
        return self

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        if not hasattr(self, "ranking_"):
            raise PolicyError("best_single is not fitted")
        names = [a.model for a in actions]
        pmf = np.zeros(len(actions))
        rank = {m: r for r, m in enumerate(self.ranking_)}
        pmf[min(range(len(names)), key=lambda i: rank.get(names[i], len(rank)))] = 1.0
        return pmf

    def _save_state(self, path: Path) -> None:
        (path / "ranking.txt").write_text("\n".join(self.ranking_))

    def _load_state(self, path: Path) -> None:
        self.ranking_ = (path / "ranking.txt").read_text().splitlines()


class KNNPolicy(Policy):
    """kNN router (RouterBench): a model's quality = its mean over the k nearest training
    prompts (cosine distance on the request embedding); choose by the reward trade-off."""

    name = "knn"
    decision_time_reward = True
    explores = True

    def __init__(
        self, reward: RewardSpec | None = None, seed: int = 0, k: int = 10, epsilon: float = 0.02
    ) -> None:
        super().__init__(reward, seed)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        self.k = k
        self.epsilon = epsilon

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "k": self.k, "epsilon": self.epsilon}

    def fit(
        self, contexts: np.ndarray, actions: Sequence[Action], quality: np.ndarray
    ) -> KNNPolicy:
        self.models_ = [a.model for a in actions]
        self.contexts_ = np.asarray(contexts, dtype=float)
        self.quality_ = np.asarray(quality, dtype=float)
        self._index()
        return self

    def _index(self) -> None:
        k = min(self.k, len(self.contexts_))
        from sklearn.neighbors import NearestNeighbors  # kNN only: no import for other policies

        self.nn_ = NearestNeighbors(n_neighbors=k, metric="cosine").fit(self.contexts_)
        self.prior_ = np.nanmean(self.quality_, axis=0)

    def predict_quality(self, contexts: np.ndarray) -> np.ndarray:
        if not hasattr(self, "nn_"):
            raise PolicyError("knn is not fitted")
        _, idx = self.nn_.kneighbors(contexts)
        neighbours = self.quality_[idx]  # (n, k, n_models)
        counts = np.isfinite(neighbours).sum(axis=1)
        sums = np.nansum(neighbours, axis=1)
        quality: np.ndarray = np.where(counts > 0, sums / np.maximum(counts, 1), self.prior_)
        return quality

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        q_all = self.predict_quality(context[None, :])[0]
        index = {m: j for j, m in enumerate(self.models_)}
        q = np.array([q_all[index[a.model]] if a.model in index else 0.0 for a in actions])
        return greedy_pmf(self.reward.expected(q, actions), self.epsilon)

    def _save_state(self, path: Path) -> None:
        np.savez(path / "knn.npz", contexts=self.contexts_, quality=self.quality_)
        (path / "models.txt").write_text("\n".join(self.models_))

    def _load_state(self, path: Path) -> None:
        arrays = np.load(path / "knn.npz")
        self.contexts_, self.quality_ = arrays["contexts"], arrays["quality"]
        self.models_ = (path / "models.txt").read_text().splitlines()
        self._index()
