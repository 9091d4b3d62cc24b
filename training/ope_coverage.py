"""Do the OPE intervals cover the truth? A check on a full-information routing dataset.

Every model's recorded outcome is known for every prompt of the dataset, so the true value of
any routing policy on any set of prompts is known. One run (seeded) of :func:`run_coverage`:

1. draws ``n_logged`` test prompts with replacement (an i.i.d. request stream);
2. logs one decision per prompt with the logging policy (uniform over the eligible models,
   epsilon-greedy around the best single model of the train split, or near-greedy: the same with
   a floor of ``near_greedy_epsilon / K`` per model, as a champion that barely explores), recording
   its pscore; the
   reward is the recorded score minus the cost penalty of the profile
   (:class:`router.policy.base.RewardSpec`), exactly what the replay backends serve;
3. fits a reward model cross-fitted over prompt folds (each prompt's ``q̂`` comes from a model
   fitted on the other folds' logged rows only);
4. estimates the candidate policy's value with :func:`training.ope.estimate_policy_value` and
   compares each estimate and interval with two truths: ``v_cond = mean_i Σ_a π_e(a|x_i)
   r(x_i, a)`` over the logged prompts (the estimand given the prompts) and ``v_pop``, the same
   over the whole test split (what a request stream from that distribution estimates);
5. compares the candidate with the best single model of the train split (``fixed``, always that
   model) by the paired DR difference, with its support-aware interval and the verdict of
   :func:`training.ope_support.verdict`, against the true difference on the logged prompts.

The candidate policy is fitted once on the train split: the direct per-model quality predictor
(:class:`router.policy.direct.DirectPolicy`) scoring ``q̂ - w_cost · ĉ / cost_scale`` over the
eligible models, either as its own greedy pmf with an epsilon floor (``target="greedy"``) or as a
softmax of those scores with temperature ``tau`` (``target="softmax"``). What varies between
runs is the prompts drawn, the logged actions, the folds and the bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV

from features.errors import ConfigError
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec, greedy_pmf
from router.policy.direct import DirectPolicy
from training import ope_support
from training.datasets import RoutingDataset
from training.evaluation import Reference
from training.ope import check_ope_inputs, diagnostics, estimate_policy_value, round_terms

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


def _design(problem: Problem, rows: np.ndarray, actions: np.ndarray, kind: str) -> np.ndarray:
    x, s = problem.contexts[rows], problem.model_features[actions]
    if kind == "lgbm":
        return np.column_stack([x, s, actions])
    onehot = np.eye(len(problem.model_features))[actions]
    inter = (x[:, :, None] * s[:, None, :]).reshape(len(rows), -1)
    return np.column_stack([onehot, x, inter])


def _fit_predict(
    problem: Problem, kind: str, fit_rows: np.ndarray, fit_actions: np.ndarray, y: np.ndarray,
    rows: np.ndarray, seed: int,
) -> np.ndarray:  # fmt: skip
    """q̂ of every model on ``rows``, shape (len(rows), n_models), from a model of the logged
    ``(fit_rows, fit_actions) -> y``."""
    model: Any
    if kind == "lgbm":
        model = lgb.LGBMRegressor(
            n_estimators=100, learning_rate=0.05, num_leaves=7, min_child_samples=10,
            subsample=0.8, subsample_freq=1, random_state=seed, n_jobs=1, verbose=-1,
        )  # fmt: skip
    else:
        model = RidgeCV(alphas=np.logspace(-1, 4, 11))
    model.fit(_design(problem, fit_rows, fit_actions, kind), y)
    m = problem.rewards.shape[1]
    grid_rows, grid_actions = np.repeat(rows, m), np.tile(np.arange(m), len(rows))
    q = model.predict(_design(problem, grid_rows, grid_actions, kind)).reshape(len(rows), m)
    q_hat: np.ndarray = np.clip(q, *problem.reward_range)
    return q_hat


def cross_fit(
    problem: Problem, rows: np.ndarray, action: np.ndarray, reward: np.ndarray,
    config: CoverageConfig, rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Out-of-fold q̂ (n, n_models); folds split by prompt, so a prompt drawn twice is never on
    both sides."""
    prompts = np.unique(rows)
    fold_of = dict(zip(prompts, rng.permutation(len(prompts)) % config.n_folds, strict=True))
    fold = np.array([fold_of[p] for p in rows])
    q = np.empty((len(rows), problem.rewards.shape[1]))
    for k in range(config.n_folds):
        out, into = fold != k, fold == k
        q[into] = _fit_predict(
            problem, config.reward_model, rows[out], action[out], reward[out], rows[into],
            config.seed,
        )  # fmt: skip
    return q


def run_once(problem: Problem, config: CoverageConfig, run: int) -> list[dict[str, Any]]:
    """One logged sample and its estimates; a record per estimator."""
    rng = np.random.default_rng([config.seed, run])
    n_test = len(problem.contexts)
    rows = rng.integers(0, n_test, config.n_logged)
    cum = np.cumsum(problem.logging[rows], axis=1)
    cum /= cum[:, -1:]
    action = np.argmax(cum > rng.random(len(rows))[:, None], axis=1)
    pscore = problem.logging[rows, action]
    reward = problem.rewards[rows, action]
    pi_e = problem.target[rows]
    q_hat = cross_fit(problem, rows, action, reward, config, rng)
    mu = problem.logging[rows]
    table = estimate_policy_value(
        action, reward, pscore, pi_e, q_hat, alpha=config.alpha,
        n_bootstrap=config.n_bootstrap, seed=config.seed + run, reward_range=problem.reward_range,
        logging_pmf=mu,
    )  # fmt: skip
    diag = diagnostics(action, pscore, pi_e)
    v_cond = float(np.mean(np.sum(pi_e * problem.rewards[rows], axis=1)))
    common = {
        "run": run,
        "v_cond": v_cond,
        "v_pop": problem.value_pop,
        "ess": diag["ess"],
        "ess_expected": ope_support.expected_ess(pi_e, mu),
        "max_weight": diag["max_weight"],
    }
    records = [{"estimator": name, **common, **row} for name, row in table.iterrows()]
    records.append({"estimator": COMPARISON, **common, **compare(problem, config, run, rows,
                    action, reward, pscore, q_hat)})  # fmt: skip
    return records


#: the estimator name of the paired comparison's rows in :func:`run_coverage`'s frame
COMPARISON = "dr: candidate - best single"


def compare(
    problem: Problem, config: CoverageConfig, run: int, rows: np.ndarray, action: np.ndarray,
    reward: np.ndarray, pscore: np.ndarray, q_hat: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """The candidate against always the best single model: the paired DR difference, its
    bootstrap and support-aware intervals, the verdict, and the truth on the logged prompts."""
    pi_e, pi_f, mu = problem.target[rows], problem.fixed[rows], problem.logging[rows]
    terms = [
        round_terms("dr", check_ope_inputs(action, reward, pscore, pi, q_hat))
        for pi in (pi_e, pi_f)
    ]
    sigma2 = ope_support.residual_variance(reward, q_hat[np.arange(len(rows)), action])
    paired = ope_support.paired_interval(
        terms[0] - terms[1], pi_e - pi_f, mu, q_hat, sigma2, alpha=config.alpha,
        n_bootstrap=config.n_bootstrap, seed=config.seed + run, equivalence=config.equivalence,
    )  # fmt: skip
    truth = float(np.mean(np.sum((pi_e - pi_f) * problem.rewards[rows], axis=1)))
    return {
        "value": paired.pop("delta"),
        **paired,
        "v_cond": truth,
        "v_pop": float(np.mean(np.sum((problem.target - problem.fixed) * problem.rewards, axis=1))),
    }


def run_coverage(
    candidate: Candidate,
    config: CoverageConfig,
    on_run: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """All runs of one scenario, one row per (run, estimator)."""
    problem = build_problem(candidate, config)
    records: list[dict[str, Any]] = []
    for run in range(config.n_runs):
        records.extend(run_once(problem, config, run))
        if on_run is not None:
            on_run()
    return pd.DataFrame.from_records(records)


def _cover(frame: pd.DataFrame, low: str, high: str, truth: str) -> pd.Series:
    return ((frame[low] <= frame[truth]) & (frame[truth] <= frame[high])).astype(float)


def _verdicts(g: pd.DataFrame, equivalence: float) -> dict[str, float]:
    """Shares of the comparison's verdicts, and of the wrong ones against the true difference:
    "better"/"worse" of the wrong sign, or "no clear difference" when it is ``equivalence`` or
    more."""
    truth, word = g["v_cond"], g["verdict"]
    wrong = (
        ((word == ope_support.BETTER) & (truth < 0))
        | ((word == ope_support.WORSE) & (truth > 0))
        | ((word == ope_support.SAME) & (truth.abs() >= equivalence))
    )
    out = {f"verdict_{w}": float((word == w).mean()) for w in ope_support.VERDICTS}
    out["verdict_wrong"] = float(wrong.mean())
    out["truth_mean"] = float(truth.mean())
    return out


def summarise(
    runs: pd.DataFrame, equivalence: float = ope_support.DEFAULT_EQUIVALENCE
) -> pd.DataFrame:
    """Per estimator: bias, sd and RMSE against ``v_cond``, interval coverage (against
    ``v_cond`` and ``v_pop``) and median width, for the support-aware (``supp``), bootstrap,
    Gaussian and (CR(-2) row only) likelihood-ratio intervals; for the comparison row, the shares
    of its verdicts and of wrong ones; ``mc_se`` is the Monte Carlo standard error of a 95%
    coverage."""
    rows = {}
    for name, g in runs.groupby("estimator", sort=False):
        err = g["value"] - g["v_cond"]
        row: dict[str, Any] = {
            "n_runs": len(g),
            "bias": float(err.mean()),
            "sd": float(err.std(ddof=1)) if len(g) > 1 else 0.0,
            "rmse": float(np.sqrt(np.mean(err**2))),
        }
        for kind, (lo, hi) in {
            "supp": ("low", "high"),
            "boot": ("boot_low", "boot_high"),
            "gauss": ("gauss_low", "gauss_high"),
            "lr": ("lr_low", "lr_high"),
        }.items():
            if lo in g and g[lo].notna().all():
                row[f"cover_{kind}"] = float(_cover(g, lo, hi, "v_cond").mean())
                row[f"cover_{kind}_pop"] = float(_cover(g, lo, hi, "v_pop").mean())
                # median: a support-aware interval may be infinite
                row[f"width_{kind}"] = float((g[hi] - g[lo]).median())
        if "verdict" in g and g["verdict"].notna().all():
            row |= _verdicts(g, equivalence)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "estimator"
    table.attrs["mc_se"] = float(np.sqrt(0.95 * 0.05 / max(1, runs["run"].nunique())))
    return table


def scenario_meta(config: CoverageConfig, runs: pd.DataFrame) -> dict[str, Any]:
    first = runs.drop_duplicates("run")
    return {
        "config": asdict(config),
        "v_pop": float(first["v_pop"].iloc[0]),
        "v_cond_mean": float(first["v_cond"].mean()),
        "ess_mean": float(first["ess"].mean()),
        "ess_expected_mean": float(first["ess_expected"].mean()),
        "max_weight_mean": float(first["max_weight"].mean()),
    }
