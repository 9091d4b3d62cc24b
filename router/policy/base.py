"""The policy contract (DESIGN.md §3), river-style.

``predict_one(context, actions) -> pmf`` over the eligible actions; ``learn_one(context, actions,
chosen, probability, reward) -> None``. Randomness comes only from ``seed``. The public methods
check the contract and call the protected ``_predict_one`` / ``_learn_one``.

Batch training from full-information data (every model's outcome known for every prompt) goes
through ``fit(X, actions, reward)``: a policy that can use it warm-starts from it.
"""

from __future__ import annotations

import copy
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from features.errors import ConfigError, PolicyError

PMF_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Action:
    """One model the request may be sent to.

    Attributes
    ----------
    model : str
        Model name (its identity: policies key their per-model state on it).
    features : ndarray, shape (n_action_features,)
        Numeric description (:data:`router.policy.actions.ACTION_FEATURES`).
    expected_cost : float
        Predicted cost of this request on this model, in USD.
    expected_latency_ms : float
        Predicted latency of this request on this model.
    """

    model: str
    features: np.ndarray = field(repr=False)
    expected_cost: float = 0.0
    expected_latency_ms: float = 0.0


@dataclass(frozen=True)
class RewardSpec:
    """``reward = quality - w_cost * cost / cost_scale - w_latency * latency / latency_scale``.

    The raw components are logged, so any reward can be recomputed offline with other weights.
    """

    w_cost: float = 0.0
    w_latency: float = 0.0
    cost_scale: float = 1.0
    latency_scale: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("w_cost", "w_latency"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("cost_scale", "latency_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    def reward(self, quality: Any, cost: Any, latency_ms: Any) -> Any:
        return (
            quality
            - self.w_cost * cost / self.cost_scale
            - self.w_latency * latency_ms / self.latency_scale
        )

    def expected(self, quality: Any, actions: Sequence[Action]) -> np.ndarray:
        """Reward of each action given predicted qualities, shape ``(len(actions),)``."""
        cost = np.array([a.expected_cost for a in actions])
        latency = np.array([a.expected_latency_ms for a in actions])
        return np.asarray(self.reward(np.asarray(quality), cost, latency), dtype=float)


class Policy(ABC):
    """Base class of every routing policy.

    Subclasses set ``name`` (the registry key) and ``explores`` (whether every eligible action
    gets a probability > 0, which logging for off-policy learning needs).
    """

    name: ClassVar[str]
    explores: ClassVar[bool] = False
    # whether the reward weights apply when deciding (the policy scores quality, cost and
    # latency apart), so one fitted policy serves profiles with other weights (``with_reward``)
    decision_time_reward: ClassVar[bool] = False

    def __init__(self, reward: RewardSpec | None = None, seed: int = 0) -> None:
        self.reward = reward or RewardSpec()
        self.seed = seed

    def with_reward(self, reward: RewardSpec) -> Policy:
        """This policy deciding under ``reward``'s weights: a shallow copy that shares every
        fitted part (what it learns, both learn). Refused by a policy whose weights are baked
        into what it learned."""
        if reward == self.reward:
            return self
        if not self.decision_time_reward:
            raise PolicyError(
                f"{self.name}: reward weights are fixed when it learns ({self.reward}); it cannot "
                f"decide under {reward}"
            )
        view = copy.copy(self)
        view.reward = reward
        return view

    # ---- the contract -------------------------------------------------------------------
    def predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        """Probability of choosing each action, shape ``(len(actions),)``, summing to 1."""
        self._check(context, actions)
        pmf = np.asarray(self._predict_one(context, actions), dtype=float)
        if pmf.shape != (len(actions),) or not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
            raise PolicyError(f"{self.name}: invalid pmf {pmf!r} for {len(actions)} actions")
        total = pmf.sum()
        if abs(total - 1.0) > 1e-3:
            raise PolicyError(f"{self.name}: pmf sums to {total}, expected 1")
        normalised: np.ndarray = pmf / total
        return normalised

    def learn_one(
        self,
        context: np.ndarray,
        actions: Sequence[Action],
        chosen: int,
        probability: float,
        reward: float,
    ) -> None:
        """Learn from one logged decision: the ``chosen`` index, its logged probability and the
        observed reward."""
        self._check(context, actions)
        if not 0 <= chosen < len(actions):
            raise PolicyError(f"chosen must index the {len(actions)} actions, got {chosen}")
        if not 0.0 < probability <= 1.0:
            raise PolicyError(f"probability must be in (0, 1], got {probability}")
        if not math.isfinite(reward):
            raise PolicyError(f"reward must be finite, got {reward}")
        self._learn_one(context, actions, chosen, probability, reward)

    def fit(self, contexts: np.ndarray, actions: Sequence[Action], quality: np.ndarray) -> Policy:
        """Warm-start from full-information data; default: nothing to fit.

        Parameters
        ----------
        contexts : ndarray, shape (n, n_features)
        actions : the action catalogue (expected costs are per row in ``cost``)
        quality : ndarray, shape (n, len(actions)); NaN where unknown
        """
        return self

    @abstractmethod
    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray: ...

    def _learn_one(
        self,
        context: np.ndarray,
        actions: Sequence[Action],
        chosen: int,
        probability: float,
        reward: float,
    ) -> None:
        return None

    def _check(self, context: np.ndarray, actions: Sequence[Action]) -> None:
        if not actions:
            raise PolicyError(f"{self.name}: no eligible actions")
        if len({a.model for a in actions}) != len(actions):
            raise PolicyError(f"{self.name}: duplicate models among actions")
        if context.ndim != 1:
            raise PolicyError(f"{self.name}: context must be 1-D, got shape {context.shape}")

    # ---- persistence --------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serialisable), saved with the policy."""
        return {"seed": self.seed}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "policy": self.name,
            "params": self.params(),
            "reward": self.reward.__dict__,
        }
        (path / "policy.json").write_text(json.dumps(meta, indent=2))
        self._save_state(path)
        return path

    def _save_state(self, path: Path) -> None:
        return None

    def _load_state(self, path: Path) -> None:
        return None

    @staticmethod
    def load(directory: str | Path) -> Policy:
        from router.policy.registry import get_policy_class

        path = Path(directory)
        meta = json.loads((path / "policy.json").read_text())
        cls = get_policy_class(meta["policy"])
        policy = cls(reward=RewardSpec(**meta["reward"]), **meta["params"])
        policy._load_state(path)
        return policy


def mix_with_uniform(pmf: np.ndarray, epsilon: float) -> np.ndarray:
    """``(1 - epsilon) * pmf + epsilon / K``: the exploration floor."""
    return (1.0 - epsilon) * pmf + epsilon / len(pmf)


def greedy_pmf(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """Argmax of ``scores`` (ties shared) with an epsilon floor."""
    best = scores >= scores.max() - 1e-12
    return mix_with_uniform(best / best.sum(), epsilon)
