"""SquareCB over a quality model: the serving policy that starts where the full-information
router is and learns from bandit feedback on top.

The policy predicts each eligible model's *quality* ``q(x, m)`` and applies the profile's reward
trade-off at decision time, ``r(x, m) = q(x, m) + b_m - w_cost * cost / cost_scale - w_latency *
latency / latency_scale`` (cost and latency are the action's per-request predictions), then
explores by SquareCB's inverse-gap weighting (Foster & Rakhlin 2020, arXiv 2002.04926)::

    p(m) = 1 / (K + gamma * (r_best - r(m)))   for every m but the best, which gets the rest,
    gamma = gamma_scale * t ** gamma_exponent  (t: outcomes behind the model: prior rows + learned)

followed by an exploration floor ``p >= epsilon / K`` (mass taken from the largest). Every logged
probability is exact and > 0, so off-policy evaluation stays valid.

Two sources of learning, one policy:

- **full information** (``fit``): a quality predictor
  (:class:`router.policy.direct.QualityPredictor`; by default per-model logistic regressions
  blended with a pooled model across models, each regularised by cross-validated log-loss) on
  any labelled set: a benchmark dataset, the bundled sample, a user's own evaluations.
- **bandit feedback** (``learn_one``): a per-model residual ``b_m``, the shrunken mean of
  ``observed reward - predicted reward`` over the decisions that chose ``m``:
  ``b_m = sum(residuals) / (n_m + kappa)``. A model whose answers or prices drifted away from the
  prior moves up or down with evidence; with no evidence it stays at the prior. (A full residual
  regression on the request features was tried and lost to this: see experiments/results.)

Why not VW's SquareCB directly: VW learns ``cost = -reward`` with the cost weight baked in, so
one workspace serves one trade-off, a profile with another weight needs another policy, and
warm start has to replay every labelled (prompt, model) pair through online SGD. Here the quality
model is fitted once in closed form and any profile's weights apply at decision time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import PolicyError
from router.policy.base import Action, Policy, RewardSpec
from router.policy.direct import QualityPredictor
from router.policy.igw import igw_pmf

logger = logging.getLogger(__name__)

RESIDUALS = ("chosen", "ips")
MIN_PROPENSITY = 1e-3  # the 1 / p weights of "ips" residuals are capped at 1,000
PREDICTOR_FILE = "predictor.joblib"  # the prior's scikit-learn estimators (a pickle)
LINEAR_FILE = "prior_linear.npz"  # its linear form: what serving decides with, no pickle


class QualitySquareCBPolicy(Policy):
    """SquareCB exploration over a prior quality model plus learned per-model residuals.

    Parameters
    ----------
    epsilon : float
        Exploration floor: every eligible model gets at least ``epsilon / K``.
    gamma_scale, gamma_exponent : float
        SquareCB's ``gamma = gamma_scale * t ** gamma_exponent``; larger is greedier.
    kappa : float
        Shrinkage of a model's residual towards 0 (pseudo-count of prior evidence).
    min_outcomes : int
        A model with fewer known outcomes (in the data the prior was fitted on, plus those
        learned since) gets probability >= 1 / K: a cold start explores uniformly until every
        model has that many (e.g. ``MIN_SAMPLES`` of
        :class:`~router.policy.direct.QualityPredictor`, enough to fit it); a warm-started
        policy is unaffected. Off by default: in train-split cross-validation of a cold start
        with 29 models it lost (experiments/results/routing_value.md).
    optimism : float
        Weight of :meth:`bonus`, an optimistic bonus ``0.5 / sqrt(n_m + 1)`` on a model with
        ``n_m`` known outcomes, so that a cold start does not lock out a model after a few
        unlucky draws (experiments/results/routing_value.md). 0 (default) turns it off.
    residuals : {"chosen", "ips"}
        How a model's residual averages its feedback. ``chosen`` (default): the plain mean over
        the decisions that chose it, i.e. where the policy rated it highest, which is where its
        prediction is most often too high (the winner's curse), yet the shift applies
        everywhere. ``ips``: each outcome weighted by ``1 / p`` of its logged probability
        (self-normalised, p floored at 0.001), an estimate of the mean residual over all the
        traffic, shrunk by its effective sample size ``n_eff / (n_eff + kappa)``.
    estimator, C : the prior quality predictor (see ``QualityPredictor``). Default ``"blend"``:
        per-model logistic regressions and the pooled model that shares strength across
        models, mixed with a weight chosen by cross-validated log-loss; in train-split
        cross-validation it matched or beat per-model LR-CV on both shared datasets, with full
        information and with one outcome per prompt, though not in every adaptive loop
        (experiments/results/routing_value.md).
    """

    name = "squarecb_quality"
    decision_time_reward = True
    explores = True

    def __init__(
        self,
        reward: RewardSpec | None = None,
        seed: int = 0,
        epsilon: float = 0.02,
        gamma_scale: float = 100.0,
        gamma_exponent: float = 0.5,
        kappa: float = 20.0,
        min_outcomes: int = 0,
        optimism: float = 0.0,
        residuals: str = "chosen",
        estimator: str = "blend",
        C: float = 0.1,
    ) -> None:
        super().__init__(reward, seed)
        if not 0.0 < epsilon < 1.0:
            raise PolicyError(f"epsilon must be in (0, 1), got {epsilon}")
        if not gamma_scale > 0:
            raise PolicyError(f"gamma_scale must be > 0, got {gamma_scale}")
        if not 0.0 <= gamma_exponent <= 1.0:
            raise PolicyError(f"gamma_exponent must be in [0, 1], got {gamma_exponent}")
        if not kappa > 0:
            raise PolicyError(f"kappa must be > 0, got {kappa}")
        if min_outcomes < 0:
            raise PolicyError(f"min_outcomes must be >= 0, got {min_outcomes}")
        if not optimism >= 0:
            raise PolicyError(f"optimism must be >= 0, got {optimism}")
        if residuals not in RESIDUALS:
            raise PolicyError(f"residuals must be one of {RESIDUALS}, got {residuals!r}")
        self.residual_mode = residuals
        self.epsilon = epsilon
        self.gamma_scale = gamma_scale
        self.gamma_exponent = gamma_exponent
        self.kappa = kappa
        self.min_outcomes = min_outcomes
        self.optimism = optimism
        self.estimator = estimator
        self.C = C
        self._predictor: QualityPredictor | None = None
        # a loaded prior whose pickle is not unpickled yet (see ``predictor``): its bytes
        self._predictor_pickle: bytes | None = None
        # what deciding needs of the prior: model -> column, the mean prior (a model it never
        # saw), and its linear form (W, b); None before any fit or load
        self._prior_index: dict[str, int] | None = None
        self._prior_fallback = 0.5
        self.n_prior_ = 0  # prompts behind the prior
        self.prior_counts_: dict[str, int] = {}  # known outcomes per model behind the prior
        self.residual_sum_: dict[str, float] = {}
        self.residual_count_: dict[str, int] = {}
        # residuals="ips": the residuals weighted by 1 / p: sum(w * r), sum(w), sum(w^2)
        self.weighted_sum_: dict[str, float] = {}
        self.weight_sum_: dict[str, float] = {}
        self.weight_sq_: dict[str, float] = {}
        self._linear: tuple[np.ndarray, np.ndarray] | None = None
        self._explored: set[str] = set()  # models known to have >= min_outcomes outcomes

    @property
    def predictor(self) -> QualityPredictor | None:
        """The prior quality predictor (scikit-learn estimators). A policy loaded from a bundle
        decides from the prior's linear form and unpickles this, importing scikit-learn, only
        when something asks for it (a LightGBM prior, which has no linear form, at load)."""
        if self._predictor is None and self._predictor_pickle is not None:
            import io

            import joblib

            self._predictor = joblib.load(io.BytesIO(self._predictor_pickle))
            self._predictor_pickle = None
        return self._predictor

    @predictor.setter
    def predictor(self, predictor: QualityPredictor | None) -> None:
        self._predictor = predictor
        self._predictor_pickle = None
        if predictor is None:
            self._prior_index, self._prior_fallback, self._linear = None, 0.5, None
            return
        self._prior_index = dict(predictor.index_)
        self._prior_fallback = float(predictor.prior_.mean())
        self._linear = predictor.linear_form()

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epsilon": self.epsilon,
            "gamma_scale": self.gamma_scale,
            "gamma_exponent": self.gamma_exponent,
            "kappa": self.kappa,
            "min_outcomes": self.min_outcomes,
            "optimism": self.optimism,
            "residuals": self.residual_mode,
            "estimator": self.estimator,
            "C": self.C,
        }

    # ---- learning -----------------------------------------------------------------------
    def fit(
        self,
        contexts: np.ndarray,
        actions: Sequence[Action],
        quality: np.ndarray,
    ) -> QualitySquareCBPolicy:
        """The prior from full information: ``quality[i, j]`` of action j on row i (NaN:
        unknown). Residuals learned so far are kept (they correct whatever prior serves)."""
        predictor = QualityPredictor(self.estimator, self.C, self.seed)
        self.predictor = predictor.fit(contexts, [a.model for a in actions], quality)
        self.n_prior_ = len(contexts)
        counts = np.isfinite(quality).sum(axis=0)
        self.prior_counts_ = {a.model: int(c) for a, c in zip(actions, counts, strict=True)}
        self._explored = set()
        return self

    def _learn_one(
        self,
        context: np.ndarray,
        actions: Sequence[Action],
        chosen: int,
        probability: float,
        reward: float,
    ) -> None:
        predicted = self._prior_rewards(context, actions)[chosen]
        model = actions[chosen].model
        self.residual_sum_[model] = self.residual_sum_.get(model, 0.0) + reward - predicted
        self.residual_count_[model] = self.residual_count_.get(model, 0) + 1
        if self.residual_mode == "ips":
            w = 1.0 / max(probability, MIN_PROPENSITY)
            residual = w * (reward - predicted)
            self.weighted_sum_[model] = self.weighted_sum_.get(model, 0.0) + residual
            self.weight_sum_[model] = self.weight_sum_.get(model, 0.0) + w
            self.weight_sq_[model] = self.weight_sq_.get(model, 0.0) + w * w

    # ---- deciding -----------------------------------------------------------------------
    def quality(self, contexts: np.ndarray, models: Sequence[str]) -> np.ndarray:
        """Prior predicted quality of ``models`` on each context, shape (n, len(models)): the
        prior's mean for a model it never saw, 0.5 for every model before any fit."""
        index = self._prior_index
        if index is None:
            return np.full((len(contexts), len(models)), 0.5)
        if self._linear is not None:
            w, b = self._linear
            q_all: np.ndarray = 1.0 / (1.0 + np.exp(-(contexts @ w + b)))
        else:
            predictor = self.predictor
            assert predictor is not None  # a prior without a linear form keeps its predictor
            q_all = predictor.predict(contexts)
        if all(m in index for m in models):
            return q_all[:, [index[m] for m in models]]
        fallback = self._prior_fallback  # a model the prior never saw
        q_all = np.hstack([q_all, np.full((len(contexts), 1), fallback)])
        return q_all[:, [index.get(m, -1) for m in models]]

    def residuals(self, models: Sequence[str]) -> np.ndarray:
        """Each model's learned residual ``b_m`` (0 for a model never chosen)."""
        if self.residual_mode == "ips":
            out = np.zeros(len(models))
            for j, m in enumerate(models):
                total = self.weight_sum_.get(m, 0.0)
                if total > 0:
                    n_eff = total * total / self.weight_sq_[m]
                    out[j] = self.weighted_sum_[m] / total * n_eff / (n_eff + self.kappa)
            return out
        return np.array(
            [
                self.residual_sum_.get(m, 0.0) / (self.residual_count_.get(m, 0) + self.kappa)
                for m in models
            ]
        )

    def bonus(self, models: Sequence[str]) -> np.ndarray:
        """Optimism under uncertainty: ``optimism * 0.5 / sqrt(n_m + 1)`` for a model with
        ``n_m`` known outcomes (behind the prior plus learned), the width of a Bernoulli mean's
        standard error at its widest. A model the log rarely chose keeps a bonus until its
        outcomes say it is worse, instead of being locked out by a prior guess (0 when
        ``optimism`` is 0; equal counts shift every model alike)."""
        if self.optimism == 0.0:
            return np.zeros(len(models))
        counts, learned = self.prior_counts_, self.residual_count_
        n = np.array([counts.get(m, 0) + learned.get(m, 0) for m in models], dtype=float)
        return self.optimism * 0.5 / np.sqrt(n + 1.0)

    def adjustments(self, models: Sequence[str]) -> np.ndarray:
        """What deciding adds to each model's prior reward: learned residual plus bonus."""
        out = self.residuals(models)
        if self.optimism != 0.0:
            out = out + self.bonus(models)
        return out

    def _rewards(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        """The prior's predicted reward of each action plus its model's learned residual (and
        optimism bonus)."""
        rewards: np.ndarray = self._prior_rewards(context, actions) + self.adjustments(
            [a.model for a in actions]
        )
        return rewards

    def _prior_rewards(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        q = self.quality(context[None, :], [a.model for a in actions])[0]
        return self.reward.expected(q, actions)

    def gamma(self) -> float:
        t = self.n_prior_ + sum(self.residual_count_.values())
        return float(self.gamma_scale * max(t, 1) ** self.gamma_exponent)

    def unexplored(self, models: Sequence[str]) -> np.ndarray | None:
        """Which of ``models`` have fewer than ``min_outcomes`` known outcomes (None: none)."""
        if self.min_outcomes == 0 or self._explored.issuperset(models):
            return None  # the usual case once warm: one set operation per decision
        counts = self.prior_counts_
        learned = self.residual_count_
        mask = np.array([counts.get(m, 0) + learned.get(m, 0) < self.min_outcomes for m in models])
        # learning only adds outcomes: a model explored stays explored until the next fit / load
        self._explored.update(m for m, low in zip(models, mask, strict=True) if not low)
        return mask if mask.any() else None

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        rewards = self._rewards(context, actions)
        unexplored = self.unexplored([a.model for a in actions])
        return igw_pmf(rewards, self.gamma(), self.epsilon, unexplored)

    # ---- persistence --------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        state = {
            "n_prior": self.n_prior_,
            "prior_counts": self.prior_counts_,
            "residual_sum": self.residual_sum_,
            "residual_count": self.residual_count_,
            "weighted_sum": self.weighted_sum_,
            "weight_sum": self.weight_sum_,
            "weight_sq": self.weight_sq_,
        }
        (path / "residuals.json").write_text(json.dumps(state, indent=2))
        if self._predictor_pickle is not None:  # loaded and never unpickled: the same bytes
            (path / PREDICTOR_FILE).write_bytes(self._predictor_pickle)
        elif self._predictor is not None:
            import joblib

            joblib.dump(self._predictor, path / PREDICTOR_FILE)
        if self._prior_index is not None and self._linear is not None:
            w, b = self._linear
            models = sorted(self._prior_index, key=self._prior_index.__getitem__)
            fallback = np.array(self._prior_fallback)
            np.savez(path / LINEAR_FILE, weights=w, bias=b, models=models, fallback=fallback)

    def _load_state(self, path: Path) -> None:
        state_file = path / "residuals.json"
        if not state_file.is_file():
            raise PolicyError(f"{path}: residuals.json is missing")
        state = json.loads(state_file.read_text())
        self.n_prior_ = int(state["n_prior"])
        self.prior_counts_ = {str(k): int(v) for k, v in state.get("prior_counts", {}).items()}
        self._explored = set()
        self.residual_sum_ = {str(k): float(v) for k, v in state["residual_sum"].items()}
        self.residual_count_ = {str(k): int(v) for k, v in state["residual_count"].items()}
        # (a bundle saved before the weighted sums existed has none: they start empty)
        for key, attr in (
            ("weighted_sum", "weighted_sum_"),
            ("weight_sum", "weight_sum_"),
            ("weight_sq", "weight_sq_"),
        ):
            setattr(self, attr, {str(k): float(v) for k, v in state.get(key, {}).items()})
        sums = (*self.residual_sum_.values(), *self.weighted_sum_.values())
        if not all(math.isfinite(v) for v in sums):
            raise PolicyError(f"{path}: residuals.json holds a non-finite residual")
        model, linear = path / PREDICTOR_FILE, path / LINEAR_FILE
        if not model.is_file():
            self.predictor = None
        elif linear.is_file():
            # the prior as arrays (no pickle, no scikit-learn); the predictor stays pickled
            with np.load(linear, allow_pickle=False) as arrays:
                models = [str(m) for m in arrays["models"]]
                w, b = arrays["weights"], arrays["bias"]
                fallback = float(arrays["fallback"])
            if w.ndim != 2 or w.shape[1] != len(models) or b.shape != (len(models),):
                raise PolicyError(
                    f"{linear}: weights {w.shape} and bias {b.shape} do not match "
                    f"its {len(models)} models"
                )
            self.predictor = None
            self._predictor_pickle = model.read_bytes()
            self._prior_index = {m: j for j, m in enumerate(models)}
            self._prior_fallback = fallback
            self._linear = (w, b)
        else:
            # a bundle saved before the prior's arrays were (or a LightGBM prior): unpickled,
            # which imports scikit-learn (and LightGBM) in the serving process
            import joblib

            self.predictor = joblib.load(model)
            if self._linear is not None:
                logger.warning(
                    "%s: no %s (saved by an older polyroute): the prior is unpickled, which "
                    "imports scikit-learn, SciPy and pandas (~170 MB of a serving process); "
                    "PolicyBundle.load(bundle).save(new directory) writes it",
                    path,
                    LINEAR_FILE,
                )
