"""The "direct" router: a per-model quality predictor, choosing ``argmax reward(q_hat, cost)``.

For each model, an estimator of ``P(quality)`` given the request features is fitted on the
prompts where the model's outcome is known. Scores in [0, 1] that are not 0/1 are handled as
soft labels (cross-entropy): each row enters twice, as label 1 with weight q and label 0 with
weight 1 - q. The choice maximises ``q_hat - w_cost * cost / scale - ...`` (the profile's reward
spec) among eligible models, with an epsilon floor so that logged decisions stay usable for
off-policy learning.

scikit-learn, joblib (and LightGBM) are imported when a predictor is fitted, saved or loaded
from its pickle, not with this module: serving the default policy scores the predictor's
linear form (``QualityPredictor.linear_form``) with numpy alone (router/policy/quality.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import ConfigError, PolicyError
from router.policy.base import Action, Policy, RewardSpec, greedy_pmf

if TYPE_CHECKING:
    from router.policy.pooled import PooledLogistic

ESTIMATORS = ("logistic_cv", "logistic", "lgbm", "pooled", "blend")
CV_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MIN_SAMPLES = 20  # fewer known outcomes of a model: its (shrunk) mean is its prediction
PRIOR_WEIGHT = 5.0  # pseudo-outcomes at the overall mean behind each model's mean
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the per-model logit in "blend"


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large |z|."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def shrunk_means(quality: np.ndarray, weight: float = PRIOR_WEIGHT) -> np.ndarray:
    """Each column's mean of its known (finite) values, shrunk towards the overall mean by
    ``weight`` pseudo-outcomes: a model seen a few times (bandit logs) stays near the overall
    mean; 0.5 overall when nothing is known."""
    known = np.isfinite(quality)
    overall = float(quality[known].mean()) if known.any() else 0.5
    total = np.where(known, quality, 0.0).sum(axis=0)
    means: np.ndarray = (total + weight * overall) / (known.sum(axis=0) + weight)
    return means


def _soft_labels(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows duplicated as (label 1, weight q) and (label 0, weight 1 - q); zero weights dropped."""
    xx = np.vstack([x, x])
    yy = np.concatenate([np.ones(len(q)), np.zeros(len(q))])
    ww = np.concatenate([q, 1.0 - q])
    keep = ww > 0
    return xx[keep], yy[keep], ww[keep]


class QualityPredictor:
    """Per-model quality estimators over a fixed list of models.

    Parameters
    ----------
    estimator : {"logistic_cv", "logistic", "lgbm", "pooled", "blend"}
        ``logistic_cv`` (default) chooses each model's regularisation by 3-fold cross-validated
        log-loss on the training data (``LogisticRegressionCV`` over :data:`CV_GRID`), so
        nothing is tuned by hand to a dataset. ``pooled``: one hierarchical logistic model
        whose models share a direction and depart from it
        (:class:`router.policy.pooled.PooledLogistic`; penalties by cross-validation), for
        sparse bandit logs over many models. ``blend``: both, their logits mixed as
        ``a * per-model + (1 - a) * pooled`` with ``a`` in :data:`BLEND_WEIGHTS` chosen by the
        out-of-fold log-loss on the pooled model's cross-validation folds (still one linear
        form, so serving cost is unchanged). Which of the two is right differs by dataset and
        by how sparse the logs are (experiments/results/routing_value.md); the data decide.
    C : float
        Inverse regularisation of ``logistic``.
    seed : int
    """

    def __init__(self, estimator: str = "logistic_cv", C: float = 0.1, seed: int = 0) -> None:
        if estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if C <= 0:
            raise ConfigError(f"C must be > 0, got {C}")
        self.estimator = estimator
        self.C = C
        self.seed = seed

    def _make(self) -> Any:
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import KFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.estimator in ("logistic_cv", "blend"):
            cv = KFold(n_splits=3, shuffle=True, random_state=self.seed)
            search = LogisticRegressionCV(
                Cs=list(CV_GRID),
                cv=cv,
                scoring="neg_log_loss",
                max_iter=2000,
                l1_ratios=(0.0,),
                use_legacy_attributes=False,
            )
            return make_pipeline(StandardScaler(), search)
        if self.estimator == "logistic":
            return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000))
        import lightgbm as lgb  # only when asked for: serving a logistic model never loads it

        return lgb.LGBMClassifier(
            n_estimators=200,
            learning_rate=0.03,
            num_leaves=15,
            min_child_samples=20,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            random_state=self.seed,
            n_jobs=1,
            verbose=-1,
        )

    def fit(
        self, contexts: np.ndarray, models: Sequence[str], quality: np.ndarray
    ) -> QualityPredictor:
        """``quality`` shape (n, len(models)), NaN where unknown."""
        self.models_ = list(models)
        self.index_ = {m: j for j, m in enumerate(self.models_)}
        self.estimators_: list[Any] = []
        self.prior_ = shrunk_means(quality)
        if self.estimator in ("pooled", "blend"):
            from router.policy.pooled import PooledLogistic

            self.pooled_: PooledLogistic = PooledLogistic(seed=self.seed).fit(contexts, quality)
            if self.estimator == "pooled":
                self.pooled_.drop_cv_state()
                return self
        for j in range(len(models)):
            known = np.isfinite(quality[:, j])
            q = quality[known, j]
            if q.size < MIN_SAMPLES or min(q.sum(), (1.0 - q).sum()) < 3:
                self.estimators_.append(None)  # constant: the prior is the prediction
                continue
            x, y, w = _soft_labels(contexts[known], q)
            est = self._make()
            if self.estimator in ("logistic_cv", "blend"):
                est.fit(x, y, logisticregressioncv__sample_weight=w)
            elif self.estimator == "logistic":
                est.fit(x, y, logisticregression__sample_weight=w)
            else:
                est.fit(x, y, sample_weight=w)
            self.estimators_.append(est)
        if self.estimator == "blend":
            self.blend_weight_, self.blend_scores_ = self._choose_blend_weight(contexts, quality)
            self.pooled_.drop_cv_state()  # not saved with the bundle
        return self

    def _choose_blend_weight(
        self, contexts: np.ndarray, quality: np.ndarray
    ) -> tuple[float, dict[float, float]]:
        """The weight of the per-model logit, by out-of-fold cross-entropy over the known
        outcomes on the pooled model's folds (split by prompt): the pooled side's out-of-fold
        logits come from its own penalty search; the per-model side is refitted on each fold
        with the regularisation each model's cross-validation chose (plain logistic
        regressions, no second search)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        fold_of, z_pooled = self.pooled_.fold_of_, self.pooled_.oof_logits_
        assert fold_of is not None and z_pooled is not None  # set by the penalty search
        known = np.isfinite(quality) & (fold_of >= 0)[:, None]
        z_own = np.zeros(quality.shape)
        for j, est in enumerate(self.estimators_):
            for fold in np.unique(fold_of[fold_of >= 0]):
                valid = fold_of == fold
                rows = (fold_of != fold) & known[:, j]
                q = quality[rows, j]
                if est is None or q.size < MIN_SAMPLES or min(q.sum(), (1.0 - q).sum()) < 3:
                    mean = np.clip(shrunk_means(quality[rows][:, [j]])[0], 1e-6, 1 - 1e-6)
                    z_own[valid, j] = np.log(mean / (1 - mean))
                    continue
                x, y, w = _soft_labels(contexts[rows], q)
                model = make_pipeline(
                    StandardScaler(), LogisticRegression(C=float(est[-1].C_), max_iter=2000)
                ).fit(x, y, logisticregression__sample_weight=w)
                z_own[valid, j] = model.decision_function(contexts[valid])
        y, z_own, z_pooled = quality[known], z_own[known], z_pooled[known]
        scores: dict[float, float] = {}
        for a in BLEND_WEIGHTS:
            z = a * z_own + (1.0 - a) * z_pooled
            scores[a] = float((np.logaddexp(0.0, z) - y * z).mean())
        return min(scores, key=scores.__getitem__), scores

    def linear_form(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(W, b)`` with ``predict(X) == sigmoid(X @ W + b)`` when every estimator is a
        standardised logistic regression (or a constant): W (n_features, n_models), b (n_models,).
        None for LightGBM. Serving scores one request with one product instead of one
        scikit-learn call per model (each costs tens of microseconds of input validation)."""
        if not hasattr(self, "estimators_") or self.estimator == "lgbm":
            return None
        if self.estimator == "pooled":
            return self.pooled_.linear_form()
        if self.estimator == "blend":  # a mixture of two logits is linear too
            pooled_w, pooled_b = self.pooled_.linear_form()
            own = self._per_model_form(len(pooled_b), pooled_w.shape[0])
            a = self.blend_weight_
            return a * own[0] + (1.0 - a) * pooled_w, a * own[1] + (1.0 - a) * pooled_b
        n_features = next((len(e[0].mean_) for e in self.estimators_ if e is not None), None)
        if n_features is None:
            return None
        return self._per_model_form(len(self.estimators_), n_features)

    def _per_model_form(self, n_models: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """The per-model logistic regressions as ``(W, b)``; a model without one (too few
        outcomes) has zero weights and the logit of its prior."""
        weights = np.zeros((n_features, n_models))
        bias = np.zeros(n_models)
        for j, est in enumerate(self.estimators_):
            if est is None:  # constant: logit of the prior
                p = float(np.clip(self.prior_[j], 1e-6, 1 - 1e-6))
                bias[j] = np.log(p / (1 - p))
                continue
            scaler, model = est[0], est[-1]
            coef = np.asarray(model.coef_, dtype=float).reshape(-1) / scaler.scale_
            weights[:, j] = coef
            bias[j] = float(np.asarray(model.intercept_).reshape(-1)[0]) - coef @ scaler.mean_
        return weights, bias

    def predict(self, contexts: np.ndarray) -> np.ndarray:
        """Predicted quality, shape ``(n, n_models)``."""
        if not hasattr(self, "estimators_"):
            raise PolicyError("QualityPredictor is not fitted")
        if self.estimator == "pooled":
            return self.pooled_.predict(contexts)
        if self.estimator == "blend":
            form = self.linear_form()
            assert form is not None
            return sigmoid(np.asarray(contexts, dtype=float) @ form[0] + form[1])
        out = np.tile(self.prior_, (len(contexts), 1))
        for j, est in enumerate(self.estimators_):
            if est is not None:
                out[:, j] = est.predict_proba(contexts)[:, 1]
        return out


class DirectPolicy(Policy):
    """Full-information router: per-model quality predictor + the profile's reward trade-off."""

    name = "direct"
    decision_time_reward = True
    explores = True

    def __init__(
        self,
        reward: RewardSpec | None = None,
        seed: int = 0,
        estimator: str = "logistic_cv",
        C: float = 0.1,
        epsilon: float = 0.02,
    ) -> None:
        super().__init__(reward, seed)
        if not 0.0 < epsilon < 1.0:
            raise ConfigError(f"epsilon must be in (0, 1), got {epsilon}")
        self.estimator = estimator
        self.C = C
        self.epsilon = epsilon
        self.predictor = QualityPredictor(estimator, C, seed)

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "estimator": self.estimator,
            "C": self.C,
            "epsilon": self.epsilon,
        }

    def fit(
        self, contexts: np.ndarray, actions: Sequence[Action], quality: np.ndarray
    ) -> DirectPolicy:
        self.predictor.fit(contexts, [a.model for a in actions], quality)
        return self

    def predict_quality(self, contexts: np.ndarray) -> np.ndarray:
        return self.predictor.predict(contexts)

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        q_all = self.predictor.predict(context[None, :])[0]
        index = self.predictor.index_
        mean = float(self.predictor.prior_.mean())
        q = np.array([q_all[index[a.model]] if a.model in index else mean for a in actions])
        return greedy_pmf(self.reward.expected(q, actions), self.epsilon)

    def _save_state(self, path: Path) -> None:
        import joblib

        joblib.dump(self.predictor, path / "predictor.joblib")

    def _load_state(self, path: Path) -> None:
        import joblib

        self.predictor = joblib.load(path / "predictor.joblib")
