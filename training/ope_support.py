"""What the logs cannot show: support-aware uncertainty and the verdict of a comparison.

The bootstrap and Gaussian intervals of :func:`training.ope.estimate_policy_value` resample the
logged rounds. When the logger gave the actions the evaluated policy prefers a tiny probability
(a near-greedy champion with a floor of 0.0007 per model, say), those actions are almost never in
the sample: the resampled terms never meet their large importance weights, DR's correction is
zero there, and the interval is a narrow band around the reward model's guess. The realised
effective sample size looks healthy too, because the weights of the rounds that were drawn are
close to 1. Neither measures support where the policy departs from the logger.

Both quantities below depend on the logger's whole pmf ``π_b(· | x_i)`` rather than on the
actions that happened to be drawn:

``m2_i = Σ_a π_e(a | x_i)² / π_b(a | x_i)``
    the second moment of the importance weight under the logger, ``E_b[w² | x_i]``
    (``E_b[w | x_i] = 1``). ``expected_ess = n / mean_i m2_i`` is Kish's effective sample size in
    expectation: ``n`` when ``π_e = π_b``, about ``n / K`` for a greedy policy under uniform
    logging, and a handful when the policy sits where the logger put a floor. It is infinite
    (ESS 0) where ``π_e > 0`` and ``π_b = 0``.

support-aware variance of DR's per-round term
    ``Var_i(q̂(x_i, π_e)) + mean_i m2_i · σ̂²`` with ``σ̂² = mean_i (r_i - q̂(x_i, a_i))²`` the
    reward model's out-of-fold squared error on the logged actions (so the interval carries the
    reward model's error, not only the outcome noise): the conditional variance of the
    correction ``w (r - q̂)`` is ``Σ_a π_e² / π_b · E[(r - q̂)² | x, a]``, which the drawn sample
    shows only when the rare actions were drawn. For IPW the second moment is
    ``Σ_a π_e² / π_b · (q̂² + σ̂²)``. For a paired difference of two policies the correction's
    weight is ``π_c - π_0``, so the departure that counts is between the two policies, measured
    against the logger.

The reported interval is the union of the bootstrap interval and ``value ± z · se_support``: as
wide as the drawn sample shows, and at least as wide as the logger's pmf says it should be.
For DM, Switch-DR and DRos (which lean on the reward model where weights are large) the same DR
support interval is used: their error there is the reward model's error, which the bootstrap of a
fixed ``q̂`` cannot show.

:func:`verdict` turns an improvement interval into one of four words, so that "no clear
difference" is said only when the data rule out a difference of ``equivalence`` or more (an
equivalence test in the spirit of TOST), and "cannot tell" otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from training.ope_intervals import bootstrap_means

#: the words :func:`verdict` returns
BETTER, WORSE, SAME, CANNOT_TELL = "better", "worse", "no clear difference", "cannot tell"
VERDICTS = (BETTER, WORSE, SAME, CANNOT_TELL)
#: a difference smaller than this (reward units) counts as "no clear difference"
DEFAULT_EQUIVALENCE = 0.05


def _weight_ratios(target: np.ndarray, logging: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``π_e(a|x_i)² / π_b(a|x_i)`` per row and action (0 where ``π_b = 0``), and the rows where
    ``π_e ≠ 0 = π_b`` (no support at all)."""
    t, b = np.asarray(target, float), np.asarray(logging, float)
    ratios = np.where(b > 0, t**2 / np.where(b > 0, b, 1.0), 0.0)
    return ratios, ((t != 0) & (b <= 0)).any(axis=1)


def weight_second_moment(target: np.ndarray, logging: np.ndarray) -> np.ndarray:
    """``m2_i = Σ_a π_e(a|x_i)² / π_b(a|x_i)``, shape (n,); ``inf`` where ``π_e > 0 = π_b``.

    ``target`` may be a difference of two pmfs (any sign): its square is what counts.
    """
    ratios, unsupported = _weight_ratios(target, logging)
    return np.where(unsupported, np.inf, ratios.sum(axis=1))


def expected_ess(target: np.ndarray, logging: np.ndarray) -> float:
    """Kish's effective sample size in expectation under the logger, ``n / mean_i m2_i``."""
    m2 = weight_second_moment(target, logging)
    mean = float(np.mean(m2))
    return 0.0 if not np.isfinite(mean) or mean <= 0 else len(m2) / mean


def residual_variance(reward: np.ndarray, q_logged: np.ndarray) -> float:
    """``σ̂² = mean (r_i - q̂(x_i, a_i))²``: the reward model's squared error on the logged
    actions (use out-of-fold ``q̂``, or it is optimistic)."""
    resid = np.asarray(reward, float) - np.asarray(q_logged, float)
    return float(np.mean(resid**2))


def support_se(
    name: str,
    target: np.ndarray,
    logging: np.ndarray,
    q_hat: np.ndarray,
    sigma2: float,
    value: float,
) -> float:
    """Standard error of estimator ``name``'s mean from the logger's pmf (see the module
    docstring); ``inf`` without support. ``ipw``/``snipw`` use IPW's second moment, every
    other name DR's.

    ``target`` is the evaluated pmf (or the difference of two pmfs for a paired comparison),
    ``q_hat`` the reward model on every action.
    """
    t, q = np.asarray(target, float), np.asarray(q_hat, float)
    n = len(t)
    ratios, unsupported = _weight_ratios(t, logging)
    if unsupported.any():
        return float("inf")
    if name in ("ipw", "snipw"):
        moment = float(np.mean((ratios * (q**2 + sigma2)).sum(axis=1)))
        return float(np.sqrt(max(moment - value**2, 0.0) / n))
    dm_terms = (t * q).sum(axis=1)
    var = float(np.var(dm_terms, ddof=1)) if n > 1 else 0.0
    return float(np.sqrt((var + float(np.mean(ratios.sum(axis=1))) * sigma2) / n))


def support_columns(
    table: pd.DataFrame,
    target: np.ndarray,
    logging: np.ndarray,
    q_hat: np.ndarray,
    sigma2: float,
    alpha: float,
) -> pd.DataFrame:
    """``support_se, low, high`` for each estimator row of ``table`` (columns ``value,
    boot_low, boot_high``): DM, Switch-DR and DRos lean on q̂ where weights are large, so they
    get DR's support s.e."""
    rows = []
    for name, row in table.iterrows():
        se = support_se(str(name), target, logging, q_hat, sigma2, float(row["value"]))
        low, high = widen(row["value"], row["boot_low"], row["boot_high"], se, alpha)
        rows.append((se, low, high))
    return pd.DataFrame(rows, index=table.index, columns=["support_se", "low", "high"])


def paired_interval(
    d: np.ndarray,
    diff_pmf: np.ndarray | None,
    logging: np.ndarray | None,
    q_hat: np.ndarray | None,
    sigma2: float,
    *,
    estimator: str = "dr",
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    seed: int = 0,
    equivalence: float = DEFAULT_EQUIVALENCE,
) -> dict[str, Any]:
    """``V(candidate) - V(baseline)`` from the per-round differences ``d`` of their terms: the
    paired percentile bootstrap (OBP's resamples) and, with the logger's pmf, the support-aware
    interval of ``diff_pmf = π_candidate - π_baseline``, and the verdict.

    Returns ``delta, low, high, boot_low, boot_high, support_se, verdict``.
    """
    delta = float(d.mean())
    means = bootstrap_means(d, n_bootstrap, seed)
    boot_low = float(np.percentile(means, 100 * alpha / 2))
    boot_high = float(np.percentile(means, 100 * (1 - alpha / 2)))
    se = float("nan")
    if diff_pmf is not None and logging is not None and q_hat is not None:
        se = support_se(estimator, diff_pmf, logging, q_hat, sigma2, delta)
    low, high = widen(delta, boot_low, boot_high, se, alpha)
    return {
        "delta": delta,
        "low": low,
        "high": high,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "support_se": se,
        "verdict": verdict(low, high, equivalence),
    }


def widen(value: float, low: float, high: float, se: float, alpha: float) -> tuple[float, float]:
    """The union of ``[low, high]`` and ``value ± z_{1-alpha/2} · se`` (``se`` NaN: unchanged)."""
    if np.isnan(se):
        return low, high
    z = float(stats.norm.ppf(1 - alpha / 2))
    half = z * se
    return min(low, value - half), max(high, value + half)


def verdict(low: float, high: float, equivalence: float = DEFAULT_EQUIVALENCE) -> str:
    """The word for an improvement interval ``[low, high]`` of ``V(candidate) - V(baseline)``.

    ``better`` when ``low > 0``; ``worse`` when ``high < 0``; ``no clear difference`` only when
    the whole interval lies inside ``(-equivalence, +equivalence)`` (the data rule out a
    difference that matters); ``cannot tell`` otherwise: the interval holds 0 and a difference
    of at least ``equivalence``, so the logs cannot say which is better.
    """
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    if -equivalence < low and high < equivalence:
        return SAME
    return CANNOT_TELL


def describe(word: str, candidate: str, baseline: str, equivalence: float) -> str:
    """A headline for :func:`verdict`'s word."""
    return {
        BETTER: f"{candidate} is estimated better than {baseline}",
        WORSE: f"{candidate} is estimated worse than {baseline}",
        SAME: f"No clear difference between {candidate} and {baseline} "
        f"(the interval rules out a difference of {equivalence:g} or more)",
        CANNOT_TELL: f"Cannot tell {candidate} from {baseline}: the logs hold too little "
        f"support where they differ (the interval holds 0 and differences of {equivalence:g} "
        "or more)",
    }[word]


def summary(target: np.ndarray, logging: np.ndarray) -> dict[str, Any]:
    """Support diagnostics of one evaluated pmf against the logger's: ``ess_expected``, and
    ``departure`` = mean total-variation distance ``½ Σ_a |π_e - π_b|`` (the share of the
    policy's decisions that differ from the logger's)."""
    t, b = np.asarray(target, float), np.asarray(logging, float)
    return {
        "ess_expected": expected_ess(t, b),
        "departure": float(0.5 * np.abs(t - b).sum(axis=1).mean()),
    }
