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

The scenario (the candidate, fitted once on the train split, the logging policy, the true
rewards) is built once by :mod:`training.ope_coverage_scenarios`; what varies between runs is the
prompts drawn, the logged actions, the folds and the bootstrap. This module runs a scenario
(:func:`run_coverage`) and summarises its runs (:func:`summarise`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV

from training import ope_support
from training.ope import check_ope_inputs, diagnostics, estimate_policy_value, round_terms
from training.ope_coverage_scenarios import Candidate, CoverageConfig, Problem, build_problem


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
