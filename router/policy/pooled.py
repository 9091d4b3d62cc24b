"""A quality model that pools what every model's outcomes say about the prompt.

``P(quality of model m on x) = sigmoid(x @ (w0 + w_m) + b_m)`` on standardised features: ``w0``
is shared by all models (how hard the prompt is, which kind of prompt it is), ``w_m`` is model
m's own departure from it, ``b_m`` its own level. The penalty ``lam0 / 2 |w0|^2 + lam / 2 sum
|w_m|^2`` shrinks every model towards the shared part rather than towards "no information", so a
model with few known outcomes (bandit logs spread over 29+ models) borrows the shared direction
learnt from all of them, and a model with many keeps its own (a hierarchical logistic model,
fitted by penalised maximum likelihood). Per-model logistic regression is the limit ``lam0 ->
inf``. Known outcomes only (NaN: unknown); scores in [0, 1] are soft labels (cross-entropy).

Why not scikit-learn: the same model is a single ``LogisticRegression`` over ``[x, one-hot(m),
x (x) one-hot(m)]`` with the shared block scaled, but that design matrix has ``d * (K + 1)``
columns and one row per known (prompt, model) pair, and scikit-learn cannot penalise the blocks
differently without rescaling them; the structured objective below is a short numpy function with an
exact gradient, minimised by SciPy's L-BFGS (imported in ``fit``: serving uses ``linear_form``).

The two penalties are chosen by K-fold cross-validated log-loss over the known outcomes, with the
folds split by prompt, as ``LogisticRegressionCV`` does for the per-model router.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.errors import PolicyError
from router.policy.direct import shrunk_means, sigmoid

LAMBDA_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # per-model departures, lam
SHARED_RATIO = (0.03, 0.3)  # lam0 = ratio * lam: the shared part is always penalised less
CV_FOLDS = 3


class PooledLogistic:
    """Hierarchical logistic quality model over K models (see the module docstring).

    Parameters
    ----------
    lam, lam0 : float or None
        Penalties of the per-model departures and of the shared part; None (default): chosen by
        cross-validated log-loss over :data:`LAMBDA_GRID` x :data:`SHARED_RATIO`.
    seed : int
        The cross-validation folds.
    """

    def __init__(self, lam: float | None = None, lam0: float | None = None, seed: int = 0) -> None:
        for name, value in (("lam", lam), ("lam0", lam0)):
            if value is not None and not value > 0:
                raise PolicyError(f"{name} must be > 0, got {value}")
        self.lam = lam
        self.lam0 = lam0
        self.seed = seed

    # ---- the objective ------------------------------------------------------------------
    @staticmethod
    def _unpack(theta: np.ndarray, d: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w0 = theta[:d]
        w = theta[d : d + d * k].reshape(d, k)
        b = theta[d + d * k :]
        return w0, w, b

    @classmethod
    def _fit_once(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        known: np.ndarray,
        lam: float,
        lam0: float,
        b_init: np.ndarray,
        theta0: np.ndarray | None = None,
    ) -> np.ndarray:
        from scipy.optimize import minimize

        d = x.shape[1]
        k = y.shape[1]
        n_known = max(int(known.sum()), 1)
        # each model's known rows: the whole matrix when all are known (full information, no
        # copy), else a gathered block (bandit logs: one model known per prompt, so the work
        # per iteration is the number of known outcomes times d, not n * K * d)
        blocks = []
        for j in range(k):
            rows = np.flatnonzero(known[:, j])
            if len(rows) == len(x):
                blocks.append((x, y[:, j]))
            else:
                blocks.append((x[rows], y[rows, j]))

        def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w0, w, b = cls._unpack(theta, d, k)
            g_w = np.empty((d, k))
            g_b = np.empty(k)
            loss = 0.0
            for j, (xj, yj) in enumerate(blocks):
                if len(yj) == 0:
                    g_w[:, j], g_b[j] = 0.0, 0.0
                    continue
                z = xj @ (w0 + w[:, j]) + b[j]
                # cross-entropy of soft labels, stable: log(1 + e^z) - y z
                loss += float((np.logaddexp(0.0, z) - yj * z).sum())
                r = sigmoid(z) - yj
                g_w[:, j] = xj.T @ r
                g_b[j] = r.sum()
            loss /= n_known
            g_w /= n_known
            g_b /= n_known
            loss += 0.5 * lam0 * float(w0 @ w0) + 0.5 * lam * float((w * w).sum())
            grad = np.concatenate([g_w.sum(axis=1) + lam0 * w0, (g_w + lam * w).ravel(), g_b])
            return loss, grad

        if theta0 is None:
            theta0 = np.concatenate([np.zeros(d + d * k), b_init])
        result = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
        return np.asarray(result.x)

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, x: np.ndarray, quality: np.ndarray) -> PooledLogistic:
        """``x`` (n, d) features, ``quality`` (n, K) in [0, 1] with NaN where unknown."""
        x = np.asarray(x, dtype=float)
        quality = np.asarray(quality, dtype=float)
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        xs = (x - self.mean_) / self.scale_
        known = np.isfinite(quality)
        y = np.where(known, quality, 0.0)
        k = quality.shape[1]
        # each model's level starts at the logit of its (shrunk) mean: a model with no known
        # outcome has no gradient on b_m and stays there
        means = np.clip(shrunk_means(quality), 1e-3, 1 - 1e-3)
        b_init = np.log(means / (1 - means))
        if self.lam is None or self.lam0 is None:
            self.lam_, self.lam0_, self.cv_scores_ = self._select(xs, y, known, b_init)
        else:
            self.lam_, self.lam0_, self.cv_scores_ = self.lam, self.lam0, {}
            self.drop_cv_state()
        theta = self._fit_once(xs, y, known, self.lam_, self.lam0_, b_init)
        d = x.shape[1]
        w0, w, b = self._unpack(theta, d, k)
        self.shared_, self.departures_, self.bias_ = w0.copy(), w.copy(), b.copy()
        return self

    def _select(
        self, xs: np.ndarray, y: np.ndarray, known: np.ndarray, b_init: np.ndarray
    ) -> tuple[float, float, dict[tuple[float, float], float]]:
        """(lam, lam0) of the lowest cross-validated log-loss over the known outcomes; folds
        split by prompt. Each fold walks the grid from the strongest penalty down, warm-started
        from the previous solution (a regularisation path)."""
        rows = np.flatnonzero(known.any(axis=1))
        rng = np.random.default_rng(self.seed)
        fold_of = np.full(len(xs), -1)
        fold_of[rows] = rng.permutation(len(rows)) % CV_FOLDS
        d, k = xs.shape[1], y.shape[1]
        scores: dict[tuple[float, float], float] = {}
        oof: dict[tuple[float, float], np.ndarray] = {}  # out-of-fold logits per penalty pair
        for ratio in SHARED_RATIO:
            for fold in range(CV_FOLDS):
                train, valid = fold_of != fold, fold_of == fold
                theta = None
                for lam in sorted(LAMBDA_GRID, reverse=True):
                    lam0 = ratio * lam
                    theta = self._fit_once(
                        xs[train], y[train], known[train], lam, lam0, b_init, theta
                    )
                    w0, w, b = self._unpack(theta, d, k)
                    z = xs[valid] @ (w + w0[:, None]) + b
                    m = known[valid]
                    ce = (np.logaddexp(0.0, z) - y[valid] * z)[m].sum()
                    scores[(lam, lam0)] = scores.get((lam, lam0), 0.0) + float(ce)
                    oof.setdefault((lam, lam0), np.full(y.shape, np.nan))[valid] = z
        lam, lam0 = min(scores, key=scores.__getitem__)
        # kept for a blend with another model judged on the same folds (QualityPredictor,
        # which drops them once used: a saved model does not carry them)
        self.fold_of_: np.ndarray | None = fold_of
        self.oof_logits_: np.ndarray | None = oof[(lam, lam0)]
        return lam, lam0, scores

    def drop_cv_state(self) -> None:
        """Forget the folds and out-of-fold logits of the penalty search (n x K floats)."""
        self.fold_of_ = self.oof_logits_ = None

    # ---- predicting ---------------------------------------------------------------------
    def linear_form(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` on raw features: ``predict(X) == sigmoid(X @ W + b)``."""
        w = (self.departures_ + self.shared_[:, None]) / self.scale_[:, None]
        return w, self.bias_ - self.mean_ @ w

    def predict(self, x: np.ndarray) -> np.ndarray:
        w, b = self.linear_form()
        return np.asarray(sigmoid(np.asarray(x, dtype=float) @ w + b))

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam_, "lam0": self.lam0_}
