"""The scenarios of the OPE coverage study (:mod:`training.ope_coverage`): what every run of a
scenario shares.

The candidate policy is fitted once on the train split (:func:`fit_candidate`): the direct
per-model quality predictor (:class:`router.policy.direct.DirectPolicy`) scoring
``q̂ - w_cost · ĉ / cost_scale`` over the eligible models, either as its own greedy pmf with an
epsilon floor (``target="greedy"``) or as a softmax of those scores with temperature ``tau``
(``target="softmax"``). :func:`build_problem` turns a scenario (:class:`CoverageConfig`) into the
candidate's pmf, the logging policy's pmf and the best single model's on the test split, with
the true rewards: the recorded score minus the cost penalty of the profile
(:class:`router.policy.base.RewardSpec`), exactly what the replay backends serve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.errors import ConfigError
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec, greedy_pmf
from router.policy.direct import DirectPolicy
from training import ope_support
from training.datasets import RoutingDataset
from training.evaluation import Reference

TARGETS = ("softmax", "greedy")
LOGGING = ("uniform", "epsilon_greedy", "near_greedy")
REWARD_MODELS = ("ridge", "lgbm")


@dataclass(frozen=True)
class CoverageConfig:
    """One scenario of the coverage experiment.

    n_runs : seeded repetitions. n_logged : logged decisions per run.
    target, tau, target_epsilon : the candidate policy (see the module docstring).
    logging, logging_epsilon : the logging policy; ``epsilon_greedy`` puts ``1 - epsilon`` on
        the best single model of the train split (by mean reward) and spreads ``epsilon``
        uniformly over the eligible models; ``near_greedy`` does the same with
        ``near_greedy_epsilon`` (0.02: 0.0007 per model with 29 models).
    w_cost : the profile's cost weight (cost scale: mean cost of the dearest model on train).
    reward_model : ``ridge`` (RidgeCV on model one-hot, context, context x model features) or
        ``lgbm`` (LightGBM on context, model features and model id).
    n_folds, alpha, n_bootstrap, seed : cross-fitting folds, interval level, bootstrap size and
        the base seed (run ``k`` uses ``seed + k``).
    equivalence : the margin of the comparison's verdict (:func:`training.ope_support.verdict`).
    """

    n_runs: int = 200
    n_logged: int = 600
    target: str = "softmax"
    tau: float = 0.05
    target_epsilon: float = 0.02
    logging: str = "uniform"
    logging_epsilon: float = 0.3
    near_greedy_epsilon: float = 0.02
    w_cost: float = 0.2
    reward_model: str = "ridge"
    n_folds: int = 2
    alpha: float = 0.05
    n_bootstrap: int = 1000
    seed: int = 0
    equivalence: float = ope_support.DEFAULT_EQUIVALENCE

    def __post_init__(self) -> None:
        for name, allowed in (
            ("target", TARGETS),
            ("logging", LOGGING),
            ("reward_model", REWARD_MODELS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_runs < 1 or self.n_logged < 10 or self.n_folds < 2:
            raise ConfigError("need n_runs >= 1, n_logged >= 10 and n_folds >= 2")
        if not (self.tau > 0 and 0 < self.target_epsilon < 1 and 0 < self.logging_epsilon <= 1):
            raise ConfigError("need tau > 0, target_epsilon in (0, 1), logging_epsilon in (0, 1]")
        if not 0 < self.near_greedy_epsilon <= 1:
            raise ConfigError("need near_greedy_epsilon in (0, 1]")
        if not self.equivalence > 0:
            raise ConfigError("need equivalence > 0")


@dataclass(frozen=True)
class Problem:
    """What every run shares: the test prompts' contexts, true rewards and both policies.

    Matrices are (n_test, n_models); rewards are 0 and pmfs 0 where a model's outcome is
    unknown (it is not eligible there).
    """

    contexts: np.ndarray
    model_features: np.ndarray  # (n_models, n_action_features), standardised
    rewards: np.ndarray
    target: np.ndarray
    logging: np.ndarray
    fixed: np.ndarray  # always the best single model of the train split where it is eligible
    reward_range: tuple[float, float]

    @property
    def value_pop(self) -> float:
        return float(np.mean(np.sum(self.target * self.rewards, axis=1)))


def _softmax(scores: np.ndarray, eligible: np.ndarray, tau: float) -> np.ndarray:
    z = np.where(eligible, scores / tau, -np.inf)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    pmf: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return pmf


@dataclass
class Candidate:
    """What the scenarios share: features of the test split and the fitted candidate's scores
    ``q̂ - w_cost · ĉ / cost_scale`` (n_test, n_models)."""

    data: RoutingDataset
    spec: RewardSpec
    x_test: np.ndarray
    model_features: np.ndarray
    scores: np.ndarray


def fit_candidate(data: RoutingDataset, w_cost: float = 0.2, seed: int = 0) -> Candidate:
    """Fit features, cost model and the direct quality predictor on the train split."""
    train, test = data.split("train"), data.split("test")
    texts = train.prompts["prompt"].tolist()
    featurizer = RequestFeaturizer().fit(texts)
    x_train = featurizer.transform(texts)
    x_test = featurizer.transform(test.prompts["prompt"].tolist())
    catalogue = ActionCatalogue(data.models).fit(x_train, train.output_tokens, train.available)
    spec = RewardSpec(w_cost=w_cost, cost_scale=Reference.of(train).c_hi)
    zeros = np.zeros(len(catalogue.names))
    policy = DirectPolicy(reward=spec, seed=seed)
    policy.fit(x_train, catalogue.actions_with_costs(zeros, zeros), train.quality)
    scores = spec.reward(
        policy.predict_quality(x_test), catalogue.expected_cost(x_test, test.input_tokens), 0.0
    )
    feats = catalogue.static_features
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-12)
    return Candidate(data, spec, x_test, feats, np.asarray(scores))


def build_problem(candidate: Candidate, config: CoverageConfig) -> Problem:
    """The candidate's pmf and the logging pmf on the test split, and the true rewards."""
    data, spec, scores = candidate.data, candidate.spec, candidate.scores
    if spec.w_cost != config.w_cost:
        raise ConfigError(
            f"w_cost: the candidate was fitted with {spec.w_cost}, not {config.w_cost}"
        )
    train, test = data.split("train"), data.split("test")
    eligible = test.available
    if config.target == "softmax":
        target = _softmax(scores, eligible, config.tau)
    else:
        target = np.zeros_like(scores)
        for i in range(len(scores)):
            cols = np.flatnonzero(eligible[i])
            target[i, cols] = greedy_pmf(scores[i, cols], config.target_epsilon)
    uniform = eligible / eligible.sum(axis=1, keepdims=True)
    train_reward = np.where(train.available, spec.reward(train.quality, train.cost, 0.0), np.nan)
    best = np.zeros(eligible.shape)
    best[:, int(np.nanargmax(np.nanmean(train_reward, axis=0)))] = 1.0
    best *= eligible
    fixed = np.where(best.sum(axis=1, keepdims=True) > 0, best, uniform)
    if config.logging == "uniform":
        logging = uniform
    else:
        eps = (
            config.logging_epsilon
            if config.logging == "epsilon_greedy"
            else config.near_greedy_epsilon
        )
        logging = (1 - eps) * best + eps * uniform
        logging /= logging.sum(axis=1, keepdims=True)  # best model not eligible: uniform
    rewards = np.where(eligible, spec.reward(test.quality, test.cost, 0.0), 0.0)
    cost_max = float(np.nanmax(np.where(data.available, data.cost, np.nan)))
    return Problem(
        contexts=candidate.x_test,
        model_features=candidate.model_features,
        rewards=rewards,
        target=target,
        logging=logging,
        fixed=fixed,
        reward_range=(-config.w_cost * cost_max / spec.cost_scale, 1.0),
    )
