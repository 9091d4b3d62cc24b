"""Reward model for off-policy evaluation: q̂(x, a) for every model on every logged request.

A LightGBM regressor (sklearn API) of one logged outcome column (``reward``, ``quality``,
``cost_usd`` or ``latency_ms``) on

    [context features, one-hot of the model over a fixed model list, the model's action features,
     log1p(input tokens)]

fitted on the chosen action of each logged row (the only action whose outcome is observed).
:meth:`RewardModel.predict_all` scores every model of a model list on every row, which is what
the direct method (DM) and doubly robust (DR) estimators need.

Cross-fitting (:meth:`RewardModel.cross_fit`): DR is unbiased when either the propensities or
q̂ are right, but when q̂ is fitted on the same rows it corrects, its own overfitting leaks into
the estimate. Each row's predictions therefore come from a model trained on the other folds
(Chernozhukov et al. 2018, "Double/debiased machine learning", Econometrics J. 21(1);
Dudík, Langford & Li 2011, "Doubly robust policy evaluation and learning", ICML).

Frames are the output of :func:`router.events.join.join_events` (list-valued columns
``context_features``, ``action_features``, ``eligible_models``; ``chosen_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from features.errors import ConfigError, DatasetError, NotFittedError

TARGETS = ("reward", "quality", "cost_usd", "latency_ms")


def model_static_features(frame: pd.DataFrame, models: Sequence[str]) -> np.ndarray:
    """Each model's logged action features, shape ``(len(models), n_action_features)``.

    Action features are static per model (prices, speeds), so the first logged row that lists a
    model gives them; a model never eligible in ``frame`` gets NaN (LightGBM treats it as
    missing).
    """
    index = {m: j for j, m in enumerate(models)}
    width = max((len(rows[0]) for rows in frame["action_features"] if len(rows)), default=0)
    out = np.full((len(models), width), np.nan)
    seen: set[str] = set()
    for names, rows in zip(frame["eligible_models"], frame["action_features"], strict=True):
        for name, row in zip(names, rows, strict=True):
            if name not in seen and name in index:
                out[index[name]] = row
                seen.add(name)
        if len(seen) == len(models):
            break
    return out


class RewardModel:
    """LightGBM regression of one outcome column on context, model identity and action features.

    Parameters
    ----------
    target : {"reward", "quality", "cost_usd", "latency_ms"}
        Column of the joined frame to predict.
    n_estimators, learning_rate, num_leaves, min_child_samples : LightGBM parameters
        Small defaults: the logs of one evaluation are thousands of rows, not millions.
    seed : int
    n_jobs : int
        Threads per fit; 1 keeps results bit-for-bit reproducible.

    Attributes
    ----------
    models_ : list of str
        The model list of the one-hot block (fixed at ``fit``).
    estimator_ : lightgbm.LGBMRegressor
    """

    def __init__(
        self,
        target: str = "reward",
        n_estimators: int = 150,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 20,
        seed: int = 0,
        n_jobs: int = 1,
    ) -> None:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
        if n_estimators < 1:
            raise ConfigError(f"n_estimators must be >= 1, got {n_estimators}")
        self.target = target
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.seed = seed
        self.n_jobs = n_jobs

    def params(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "seed": self.seed,
            "n_jobs": self.n_jobs,
        }

    def with_target(self, target: str) -> RewardModel:
        """An unfitted copy with the same parameters predicting ``target``."""
        return type(self)(**{**self.params(), "target": target})

    # ---- design matrix ------------------------------------------------------------------
    def _design(self, frame: pd.DataFrame, model_index: np.ndarray, static: np.ndarray) -> Any:
        """Rows of ``frame`` paired with one model each (``model_index`` into ``models_``;
        -1 = a model outside ``models_``: zero one-hot, NaN action features)."""
        context = np.vstack(list(frame["context_features"])).astype(float)
        k = len(self.models_)
        onehot = np.zeros((len(frame), k))
        known = model_index >= 0
        onehot[np.flatnonzero(known), model_index[known]] = 1.0
        action = np.full((len(frame), static.shape[1]), np.nan)
        action[known] = static[model_index[known]]
        tokens = frame["input_tokens"].to_numpy(float) if "input_tokens" in frame else None
        extra = np.log1p(np.nan_to_num(tokens, nan=0.0))[:, None] if tokens is not None else None
        blocks = [context, onehot, action] + ([extra] if extra is not None else [])
        return np.hstack(blocks)

    def _estimator(self) -> lgb.LGBMRegressor:
        return lgb.LGBMRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            random_state=self.seed,
            n_jobs=self.n_jobs,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )

    # ---- public API ---------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, models: Sequence[str] | None = None) -> RewardModel:
        """Fit on the chosen action of each row of ``frame`` (rows with a finite target).

        Parameters
        ----------
        frame : joined decisions (:func:`router.events.join.join_events`)
        models : the one-hot model list; default: every model eligible somewhere in ``frame``.
        """
        if self.target not in frame:
            raise DatasetError(f"frame has no {self.target!r} column to fit the reward model on")
        y = frame[self.target].to_numpy(float)
        rows = frame[np.isfinite(y)]
        if len(rows) < 2:
            raise DatasetError(f"reward model: need >= 2 rows with a finite {self.target!r}")
        if models is None:
            models = sorted({m for names in frame["eligible_models"] for m in names})
        self.models_ = list(models)
        self.static_ = model_static_features(frame, self.models_)
        index = {m: j for j, m in enumerate(self.models_)}
        chosen = np.array([index.get(m, -1) for m in rows["chosen_model"]])
        self.estimator_ = self._estimator().fit(
            self._design(rows, chosen, self.static_), y[np.isfinite(y)]
        )
        return self

    def predict_all(self, frame: pd.DataFrame, models: Sequence[str]) -> np.ndarray:
        """q̂ of every model in ``models`` on every row, shape ``(len(frame), len(models))``."""
        if not hasattr(self, "estimator_"):
            raise NotFittedError("RewardModel is not fitted: call fit() first")
        index = {m: j for j, m in enumerate(self.models_)}
        out = np.empty((len(frame), len(models)))
        for k, name in enumerate(models):
            column = np.full(len(frame), index.get(name, -1))
            out[:, k] = self.estimator_.predict(self._design(frame, column, self.static_))
        return out

    def cross_fit(
        self,
        frame: pd.DataFrame,
        models: Sequence[str],
        n_folds: int = 2,
        seed: int | None = None,
    ) -> np.ndarray:
        """Out-of-fold q̂, shape ``(len(frame), len(models))``: row i is scored by a model fitted
        on the folds not containing i (cross-fitting, Chernozhukov et al. 2018)."""
        if n_folds < 2:
            raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
        if len(frame) < 2 * n_folds:
            raise DatasetError(f"cross_fit: {len(frame)} rows are too few for {n_folds} folds")
        folds = KFold(n_folds, shuffle=True, random_state=self.seed if seed is None else seed)
        out = np.empty((len(frame), len(models)))
        for train, held in folds.split(np.arange(len(frame))):
            model = self.with_target(self.target).fit(frame.iloc[train], models)
            out[held] = model.predict_all(frame.iloc[held], models)
        return out
