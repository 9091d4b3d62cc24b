"""Offline policy evaluation (OPE) of a routing policy from logged decisions.

The estimators follow Open Bandit Pipeline 0.5.7 (``obp/ope/estimators.py``) formula for
formula; ``tests/test_ope.py`` checks them against values computed by that library and by
vw-estimators 0.2.2 (``tests/fixtures/OPE_REFERENCE.md``). Notation, for logged rounds
``i = 1..n``: ``a_i`` the logged action, ``r_i`` its reward, ``p_i = π_b(a_i | x_i)`` its logging
probability (``pscore``), ``π_e(· | x_i)`` the evaluated policy (``action_dist``),
``w_i = π_e(a_i | x_i) / p_i`` the importance weight, ``q̂(x, a)`` a reward model
(``estimated_rewards``), ``q̂(x_i, π_e) = Σ_a π_e(a | x_i) q̂(x_i, a)`` and ``E_n`` the mean over
rounds. Every estimator is ``E_n`` of per-round terms (:data:`ROUND_TERMS`):

============  ===================================================================
``dm``        ``q̂(x_i, π_e)``                                   (direct method)
``ipw``       ``min(w_i, λ) r_i``, ``λ = inf`` by default         (Horvitz-Thompson)
``snipw``     ``w_i r_i / E_n[w]``                                 (self-normalised)
``dr``        ``q̂(x_i, π_e) + min(w_i, λ)(r_i - q̂(x_i, a_i))``    (doubly robust)
``sndr``      ``q̂(x_i, π_e) + w_i (r_i - q̂(x_i, a_i)) / E_n[w]``
``switch_dr`` ``q̂(x_i, π_e) + 1{w_i <= λ} w_i (r_i - q̂(x_i, a_i))``  (≤: λ itself keeps it)
``dros``      ``q̂(x_i, π_e) + λ w_i/(w_i² + λ) · (r_i - q̂(x_i, a_i))``  (OBP's code; its
              docstring shows an extra factor ``w_i`` that the code does not apply)
============  ===================================================================

Eligible sets that vary per request are zeros in ``action_dist``: each row sums to 1 over the
``K`` actions, and the reward model may be NaN where ``π_e`` is 0.

References
----------
Dudík, Langford and Li, "Doubly Robust Policy Evaluation and Learning", ICML 2011 (DM, DR).
Swaminathan and Joachims, "The Self-Normalized Estimator for Counterfactual Learning",
NeurIPS 2015 (SNIPW). Wang, Agarwal and Dudík, "Optimal and Adaptive Off-policy Evaluation in
Contextual Bandits", ICML 2017 (Switch-DR). Su, Dimakopoulou, Krishnamurthy and Dudík,
"Doubly Robust Off-policy Evaluation with Shrinkage", ICML 2020 (DRos). Saito et al., "Open
Bandit Dataset and Pipeline", 2021 (OBP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from features.errors import ConfigError, DatasetError
from training import ope_support
from training.ope_inputs import (
    LoggedFeedback,
    as_2d,
    check_logging_pmf,
    check_ope_inputs,
    first_row,
    importance_weights,
)
from training.ope_intervals import bootstrap_means, cressie_read_estimate, cressie_read_interval
from training.ope_intervals import gaussian_interval as _gaussian

# the inputs' names stay importable from here (``ope.check_ope_inputs`` etc.)
__all__ = [
    "COLUMNS",
    "ESTIMATORS",
    "MODEL_FREE",
    "ROUND_TERMS",
    "LoggedFeedback",
    "check_ope_inputs",
    "diagnostics",
    "dm",
    "dr",
    "dros",
    "estimate_policy_value",
    "importance_weights",
    "ipw",
    "round_terms",
    "sndr",
    "snipw",
    "switch_dr",
]

ESTIMATORS = ("ipw", "snipw", "dm", "dr", "sndr", "switch_dr", "dros")
MODEL_FREE = ("ipw", "snipw")
Array = np.ndarray
COLUMNS = ("value", "boot_low", "boot_high", "boot_mean", "gauss_low", "gauss_high")


# ---- per-round terms (OBP's _estimate_round_rewards) ------------------------------------------
def _dm(d: LoggedFeedback, lam: float) -> np.ndarray:
    return d.q_pi


def _ipw(d: LoggedFeedback, lam: float) -> np.ndarray:
    terms: np.ndarray = np.minimum(d.iw, lam) * d.reward
    return terms


def _snipw(d: LoggedFeedback, lam: float) -> np.ndarray:
    w = d.iw
    terms: np.ndarray = d.reward * w / w.mean()
    return terms


def _dr(d: LoggedFeedback, lam: float) -> np.ndarray:
    terms: np.ndarray = d.q_pi + np.minimum(d.iw, lam) * (d.reward - d.q_logged)
    return terms


def _sndr(d: LoggedFeedback, lam: float) -> np.ndarray:
    w = d.iw
    terms: np.ndarray = d.q_pi + w * (d.reward - d.q_logged) / w.mean()
    return terms


def _switch_dr(d: LoggedFeedback, lam: float) -> np.ndarray:
    w = d.iw
    terms: np.ndarray = d.q_pi + (w <= lam) * w * (d.reward - d.q_logged)
    return terms


def _dros(d: LoggedFeedback, lam: float) -> np.ndarray:
    w = d.iw
    shrunk = w if np.isinf(lam) else lam * w / (w**2 + lam)
    terms: np.ndarray = d.q_pi + shrunk * (d.reward - d.q_logged)
    return terms


#: estimator name -> per-round terms ``f(data, λ)``; the estimate is their mean.
ROUND_TERMS: dict[str, Callable[[LoggedFeedback, float], np.ndarray]] = {
    "dm": _dm,
    "ipw": _ipw,
    "snipw": _snipw,
    "dr": _dr,
    "sndr": _sndr,
    "switch_dr": _switch_dr,
    "dros": _dros,
}


def round_terms(name: str, data: LoggedFeedback, lambda_: float = np.inf) -> np.ndarray:
    """Per-round terms of estimator ``name`` (a key of :data:`ROUND_TERMS`), shape (n,).

    ``lambda_`` is the clipping level of ``ipw``/``dr``, the switch threshold of ``switch_dr``
    and the shrinkage of ``dros``; the other estimators ignore it.
    """
    if name not in ROUND_TERMS:
        raise ConfigError(f"estimator: expected one of {sorted(ROUND_TERMS)}; got {name!r}")
    return ROUND_TERMS[name](data, float(lambda_))


def _point(name: str, lam: float, *args: Any) -> float:
    return float(round_terms(name, check_ope_inputs(*args), lam).mean())


def dm(action_dist: np.ndarray, estimated_rewards: np.ndarray) -> float:
    """Direct method ``E_n[q̂(x_i, π_e)]``."""
    pi = as_2d("action_dist", action_dist)
    n = len(pi)
    return _point("dm", np.inf, np.zeros(n, int), np.zeros(n), np.ones(n), pi, estimated_rewards)


def ipw(
    action: Array, reward: Array, pscore: Array, action_dist: Array, *, lambda_: float = np.inf
) -> float:
    """Inverse propensity weighting ``E_n[min(w_i, λ) r_i]`` (no clipping by default)."""
    return _point("ipw", lambda_, action, reward, pscore, action_dist)


def snipw(action: Array, reward: Array, pscore: Array, action_dist: Array) -> float:
    """Self-normalised IPW ``Σ w_i r_i / Σ w_i``."""
    return _point("snipw", np.inf, action, reward, pscore, action_dist)


def dr(
    action: Array,
    reward: Array,
    pscore: Array,
    action_dist: Array,
    estimated_rewards: Array,
    *,
    lambda_: float = np.inf,
) -> float:
    """Doubly robust ``E_n[q̂(x_i, π_e) + min(w_i, λ)(r_i - q̂(x_i, a_i))]``."""
    return _point("dr", lambda_, action, reward, pscore, action_dist, estimated_rewards)


def sndr(
    action: Array, reward: Array, pscore: Array, action_dist: Array, estimated_rewards: Array
) -> float:
    """Self-normalised DR ``E_n[q̂(x_i, π_e) + w_i (r_i - q̂(x_i, a_i)) / E_n[w]]``."""
    return _point("sndr", np.inf, action, reward, pscore, action_dist, estimated_rewards)


def switch_dr(
    action: Array,
    reward: Array,
    pscore: Array,
    action_dist: Array,
    estimated_rewards: Array,
    *,
    lambda_: float = 5.0,
) -> float:
    """Switch-DR: the DR correction only where ``w_i <= λ``."""
    return _point("switch_dr", lambda_, action, reward, pscore, action_dist, estimated_rewards)


def dros(
    action: Array,
    reward: Array,
    pscore: Array,
    action_dist: Array,
    estimated_rewards: Array,
    *,
    lambda_: float = 10.0,
) -> float:
    """DR with optimistic shrinkage: weight ``λ w/(w² + λ)`` on the correction."""
    return _point("dros", lambda_, action, reward, pscore, action_dist, estimated_rewards)


def estimate_policy_value(
    action: np.ndarray,
    reward: np.ndarray,
    pscore: np.ndarray,
    action_dist: np.ndarray,
    estimated_rewards: np.ndarray | None = None,
    *,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    seed: int = 12345,
    switch_lambda: float = 5.0,
    dros_lambda: float = 10.0,
    reward_range: tuple[float, float] | None = None,
    logging_pmf: np.ndarray | None = None,
) -> pd.DataFrame:
    """Every estimator's value with a bootstrap and a Gaussian ``1 - alpha`` interval.

    Parameters
    ----------
    action : ndarray, shape (n,)
        Logged actions, integers in ``[0, K)``.
    reward : ndarray, shape (n,)
    pscore : ndarray, shape (n,)
        Logging probability of the logged action, in (0, 1].
    action_dist : ndarray, shape (n, K) or OBP's (n, K, 1)
        The evaluated policy's pmf per row (zeros for ineligible actions).
    estimated_rewards : ndarray, same shape as ``action_dist``, optional
        Reward model ``q̂(x_i, a)``; fit it on other rows than the ones evaluated (cross-fitting)
        or DR's interval is too narrow. Without it only ``ipw`` and ``snipw`` are returned.
    alpha : float
        The intervals' level is ``1 - alpha``.
    n_bootstrap, seed : int
        OBP's bootstrap: every estimator is resampled with the same indices, drawn from
        ``np.random.RandomState(seed)`` (OBP's values when ``seed = 12345``).
    switch_lambda, dros_lambda : float
        λ of Switch-DR (``w <= λ`` keeps the correction) and of DRos.
    reward_range : (rmin, rmax), optional
        Known reward bounds. When given, rewards are checked to lie inside, and a row
        ``cressieread`` is added: the CR(-2) estimate with its likelihood-ratio interval
        (vw-estimators) in the extra columns ``lr_low``, ``lr_high``.
    logging_pmf : ndarray, shape (n, K), optional
        The logger's whole pmf per row. With it and a reward model, the columns ``support_se``
        and ``low, high`` are added: the support-aware interval (the union of the bootstrap
        interval and ``value ± z · support_se``, :mod:`training.ope_support`), which stays wide
        where the logs hold too little of what the policy would do.

    Returns
    -------
    DataFrame
        Index: ``ipw, snipw`` then, with a reward model, ``dm, dr, sndr, switch_dr, dros``.
        Columns: ``value`` (the estimate, OBP's definitions, see the module docstring),
        ``boot_low, boot_high, boot_mean`` (percentile bootstrap of the per-round terms, OBP's
        ``estimate_interval``; SNIPW/SNDR terms are normalised once on the full sample) and
        ``gauss_low, gauss_high`` = ``value ± z_{1-alpha/2} · sd(terms) / sqrt(n)`` (``ddof=1``;
        for ``ipw`` this is vw-estimators' gaussian interval; for the self-normalised
        estimators it ignores the variance of the normaliser). DM's intervals treat the reward
        model as fixed, so they miss its estimation error and bias.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: expected a level in (0, 1); got {alpha}")
    if n_bootstrap < 1:
        raise ConfigError(f"n_bootstrap: expected >= 1; got {n_bootstrap}")
    data = check_ope_inputs(action, reward, pscore, action_dist, estimated_rewards)
    if reward_range is not None:
        rmin, rmax = (float(v) for v in reward_range)
        if not rmin < rmax:
            raise DatasetError(
                f"reward_range: expected (rmin, rmax) with rmin < rmax; got {reward_range}"
            )
        bad = (data.reward < rmin) | (data.reward > rmax)
        if bad.any():
            i = first_row(bad)
            raise DatasetError(
                f"reward: every entry must lie in reward_range [{rmin}, {rmax}]; "
                f"row {i} is {data.reward[i]}"
            )
    names = list(MODEL_FREE if data.estimated_rewards is None else ESTIMATORS)
    lambdas = {"switch_dr": switch_lambda, "dros": dros_lambda}
    terms = np.stack([round_terms(m, data, lambdas.get(m, np.inf)) for m in names])
    means = bootstrap_means(terms, n_bootstrap, seed)
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=1)
    gauss = np.array([_gaussian(t, alpha=alpha) for t in terms])
    table = pd.DataFrame(
        {
            "value": terms.mean(axis=1),
            "boot_low": low,
            "boot_high": high,
            "boot_mean": means.mean(axis=1),
            "gauss_low": gauss[:, 0],
            "gauss_high": gauss[:, 1],
        },
        index=pd.Index(names, name="estimator"),
    )
    if logging_pmf is not None and data.estimated_rewards is not None:
        mu = check_logging_pmf(logging_pmf, data)
        sigma2 = ope_support.residual_variance(data.reward, data.q_logged)
        support = ope_support.support_columns(
            table, data.action_dist, mu, data.estimated_rewards, sigma2, alpha
        )
        table = pd.concat([table, support], axis=1)
    if reward_range is not None:
        w = data.iw
        lr = cressie_read_interval(w, data.reward, rmin=rmin, rmax=rmax, alpha=alpha)
        table.loc["cressieread", "value"] = cressie_read_estimate(w, data.reward)
        table["lr_low"], table["lr_high"] = np.nan, np.nan
        table.loc["cressieread", ["lr_low", "lr_high"]] = lr
    return table


def diagnostics(
    action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, switch_lambda: float = 5.0
) -> dict[str, Any]:
    """How much the logs say about the evaluated policy.

    Returns
    -------
    dict
        ``n`` rounds; ``ess = (Σw)² / Σw²`` (Kish's effective sample size of the importance
        weights) and ``ess_ratio = ess / n``; ``max_weight``; ``n_weight_above_lambda`` (rows
        with ``w > switch_lambda``, those Switch-DR hands to the reward model); and
        ``action_counts`` (logged action -> count, every action of ``[0, K)``).
    """
    pi = as_2d("action_dist", action_dist)
    n, k = pi.shape
    data = check_ope_inputs(action, np.zeros(n), pscore, pi)
    w = data.iw
    sumsq = float(np.sum(w**2))
    ess = float(np.sum(w)) ** 2 / sumsq if sumsq > 0 else 0.0
    counts = np.bincount(data.action, minlength=k)
    return {
        "n": int(n),
        "ess": ess,
        "ess_ratio": ess / n,
        "max_weight": float(w.max()),
        "n_weight_above_lambda": int(np.sum(w > switch_lambda)),
        "action_counts": {int(j): int(c) for j, c in enumerate(counts)},
    }
