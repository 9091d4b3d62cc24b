"""Independent library baselines from MABWiser (Strong et al. 2021): LinUCB and linear
epsilon-greedy, wrapped in the policy contract.

MABWiser keeps one ridge regression per arm. Its arms are the catalogue's models; a request's
eligible subset is chosen among them. LinUCB is deterministic (argmax of the upper confidence
bound), so it puts probability 1 on one action and must not serve traffic whose logs are used
for learning (``explores = False``); linear epsilon-greedy keeps epsilon / K on every action.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from mabwiser.mab import MAB, LearningPolicy

from features.errors import ConfigError
from router.policy.base import Action, Policy, RewardSpec, greedy_pmf


def _with_bias(context: np.ndarray) -> np.ndarray:
    """One row with a constant feature appended: MABWiser's ridge regressions fit no intercept,
    so without it an arm's mean reward is invisible on centred features."""
    return np.append(context, 1.0)[None, :]


class _MABWiserPolicy(Policy):
    def __init__(
        self, reward: RewardSpec | None = None, seed: int = 0, models: Sequence[str] = ()
    ) -> None:
        super().__init__(reward, seed)
        self.models = list(models)

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "models": self.models}

    def _learning_policy(self) -> Any:
        raise NotImplementedError

    def _mab(self, actions: Sequence[Action]) -> MAB:
        if not hasattr(self, "mab_"):
            arms = self.models or [a.model for a in actions]
            self.mab_ = MAB(
                arms=list(arms), learning_policy=self._learning_policy(), seed=self.seed
            )
            self.fitted_ = False
        for a in actions:
            if a.model not in self.mab_.arms:
                self.mab_.add_arm(a.model)
        return self.mab_

    def _expectations(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        mab = self._mab(actions)
        if not self.fitted_:
            return np.zeros(len(actions))
        values = mab.predict_expectations(_with_bias(context))
        row = values if isinstance(values, dict) else values[0]
        return np.array([float(row[a.model]) for a in actions])

    def _learn_one(
        self,
        context: np.ndarray,
        actions: Sequence[Action],
        chosen: int,
        probability: float,
        reward: float,
    ) -> None:
        mab = self._mab(actions)
        args = ([actions[chosen].model], [reward], _with_bias(context))
        if self.fitted_:
            mab.partial_fit(*args)
        else:
            mab.fit(*args)
            self.fitted_ = True

    def _save_state(self, path: Path) -> None:
        if hasattr(self, "mab_"):
            joblib.dump((self.mab_, self.fitted_), path / "mab.joblib")

    def _load_state(self, path: Path) -> None:
        if (path / "mab.joblib").is_file():
            self.mab_, self.fitted_ = joblib.load(path / "mab.joblib")


class LinUCBPolicy(_MABWiserPolicy):
    """MABWiser LinUCB: argmax of the upper confidence bound of the reward."""

    name = "linucb"

    def __init__(
        self,
        reward: RewardSpec | None = None,
        seed: int = 0,
        models: Sequence[str] = (),
        alpha: float = 1.0,
    ) -> None:
        super().__init__(reward, seed, models)
        self.alpha = alpha

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha}

    def _learning_policy(self) -> Any:
        return LearningPolicy.LinUCB(alpha=self.alpha)

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        return greedy_pmf(self._expectations(context, actions), 0.0)


class EpsilonGreedyPolicy(_MABWiserPolicy):
    """MABWiser LinGreedy: the best predicted reward with probability 1 - epsilon."""

    name = "epsilon_greedy"
    explores = True

    def __init__(
        self,
        reward: RewardSpec | None = None,
        seed: int = 0,
        models: Sequence[str] = (),
        epsilon: float = 0.1,
    ) -> None:
        super().__init__(reward, seed, models)
        if not 0.0 < epsilon < 1.0:
            raise ConfigError(f"epsilon must be in (0, 1), got {epsilon}")
        self.epsilon = epsilon

    def params(self) -> dict[str, Any]:
        return {**super().params(), "epsilon": self.epsilon}

    def _learning_policy(self) -> Any:
        # epsilon=0 inside MABWiser: the exploration is ours, so that the pmf we log is exact
        return LearningPolicy.LinGreedy(epsilon=0.0)

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        return greedy_pmf(self._expectations(context, actions), self.epsilon)
