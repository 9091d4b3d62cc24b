"""Confidence intervals for off-policy evaluation, and the vw-estimators weight-only estimators.

Two families live here, both functions of per-round quantities only (no validation: callers
pass clean arrays, e.g. from :func:`training.ope.check_ope_inputs`):

- intervals on a mean of per-round terms: the bootstrap of Open Bandit Pipeline 0.5.7
  (``obp.utils.estimate_confidence_interval_by_bootstrap``), reproduced draw for draw, and a
  Gaussian (CLT) interval;
- the estimators of vw-estimators 0.2.2 (``estimators/bandits/*.py``) that need only the
  importance weights ``w`` and rewards ``r``: IPS, SNIPS, the empirical-likelihood (MLE) and
  Cressie-Read CR(-2) point estimates, and the Gaussian, Clopper-Pearson and Cressie-Read
  likelihood-ratio intervals. Their sums use :func:`math.fsum`, as the library's
  ``IncrementalFsum`` (exact summation) does.

References
----------
Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS Datasets and Benchmarks 2021.
Karampatziakis, Langford and Mineiro, "Empirical Likelihood for Contextual Bandits",
NeurIPS 2020 (the MLE and CR(-2) estimators and intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from features.errors import DatasetError


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap interval of a mean.

    Attributes
    ----------
    low, high : float
        ``alpha/2`` and ``1 - alpha/2`` percentiles (numpy's default linear interpolation).
    mean : float
        Mean of the bootstrap means (OBP's ``"mean"`` entry).
    means : ndarray, shape (n_bootstrap,)
    """

    low: float
    high: float
    mean: float
    means: np.ndarray


def bootstrap_indices(n: int, n_bootstrap: int = 1000, seed: int = 12345) -> np.ndarray:
    """The resample indices OBP draws, shape ``(n_bootstrap, n)``.

    ``RandomState.choice(terms, size=n)`` draws ``randint(0, n, size=n)``; the legacy
    ``RandomState`` stream is frozen across numpy versions, so these match OBP exactly.
    """
    rs = np.random.RandomState(seed)
    return np.stack([rs.randint(0, n, size=n) for _ in range(n_bootstrap)])


def bootstrap_means(terms: np.ndarray, n_bootstrap: int = 1000, seed: int = 12345) -> np.ndarray:
    """Bootstrap means of per-round terms, one fresh ``RandomState(seed)`` per row of terms.

    Parameters
    ----------
    terms : ndarray, shape (n,) or (n_estimators, n)
        Several estimators' terms share the same resamples, exactly as separate OBP calls with
        the same ``random_state`` would.

    Returns
    -------
    ndarray, shape (n_bootstrap,) or (n_estimators, n_bootstrap)
    """
    arr = np.asarray(terms, dtype=float)
    rows = np.atleast_2d(arr)
    n = rows.shape[1]
    rs = np.random.RandomState(seed)
    out = np.empty((rows.shape[0], n_bootstrap))
    for b in range(n_bootstrap):
        # indices drawn one resample at a time: memory stays O(n) for large logs
        out[:, b] = rows[:, rs.randint(0, n, size=n)].mean(axis=1)
    return out[0] if arr.ndim == 1 else out


def bootstrap_interval(
    terms: np.ndarray, *, alpha: float = 0.05, n_bootstrap: int = 1000, seed: int = 12345
) -> BootstrapInterval:
    """OBP's percentile bootstrap of ``mean(terms)`` (``estimate_interval`` of every estimator).

    ``means_b = mean(terms[idx_b])`` for ``idx_b = RandomState(seed).randint(0, n, n)`` drawn
    ``n_bootstrap`` times in a row; the interval is the ``100 alpha/2`` and
    ``100 (1 - alpha/2)`` percentiles of the means. For SNIPW, OBP normalises the terms once on
    the full sample and does not renormalise inside each resample; pass such terms to match it.
    """
    means = bootstrap_means(terms, n_bootstrap, seed)
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapInterval(float(low), float(high), float(np.mean(means)), means)


def gaussian_interval(terms: np.ndarray, *, alpha: float = 0.05) -> tuple[float, float]:
    """CLT interval ``mean ± z_{1-alpha/2} · s / sqrt(n)``, ``s`` the ``ddof=1`` std of terms.

    With ``terms = w · r`` this is vw-estimators' ``gaussian.Interval`` (which computes
    ``s² = (Σx² - (Σx)²/n)/(n-1)``, floored at 0; ``np.var`` is the same number, computed
    without the cancellation). NaN bounds when ``n < 2``.
    """
    x = np.asarray(terms, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    half = stats.norm.ppf(1 - alpha / 2) * math.sqrt(max(0.0, float(np.var(x, ddof=1))) / x.size)
    centre = float(np.mean(x))
    return centre - half, centre + half


def ips_estimate(w: np.ndarray, r: np.ndarray) -> float:
    """vw-estimators ``ips.Estimator``: ``Σ w r / n``."""
    return math.fsum(np.asarray(w) * np.asarray(r)) / len(w)


def snips_estimate(w: np.ndarray, r: np.ndarray) -> float:
    """vw-estimators ``snips.Estimator``: ``Σ w r / Σ w`` (0 when ``Σ w = 0``)."""
    sumw = math.fsum(w)
    return math.fsum(np.asarray(w) * np.asarray(r)) / sumw if sumw > 0 else 0.0


def cressie_read_estimate(
    w: np.ndarray, r: np.ndarray, *, wmin: float = 0.0, wmax: float = math.inf
) -> float:
    """CR(-2) point estimate, vw-estimators ``cressieread.Estimator(wmin, wmax)``.

    ``wfake = wmax`` if ``Σw < n`` else ``wmin`` (after widening ``[wmin, wmax]`` to the data).
    If ``wfake = inf``: ``γ = -(1+n)/n, β = 0``; otherwise with ``a = (wfake + Σw)/(1+n)``,
    ``b = (wfake² + Σw²)/(1+n)``: ``γ = (b-a)/(a²-b)``, ``β = (1-a)/(a²-b)``. Then
    ``V = (-γ Σwr - β Σw²r)/(1+n) + max(0, 1 - (-γ Σw - β Σw²)/(1+n)) · mean(r)``.
    """
    w, r = np.asarray(w, dtype=float), np.asarray(r, dtype=float)
    n = float(len(w))
    wmin, wmax = min(wmin, float(w.min())), max(wmax, float(w.max()))
    sumw, sumwsq = math.fsum(w), math.fsum(w**2)
    sumwr, sumwsqr, sumr = math.fsum(w * r), math.fsum(w**2 * r), math.fsum(r)
    wfake = wmax if sumw < n else wmin
    if wfake == math.inf:
        gamma, beta = -(1 + n) / n, 0.0
    else:
        a = (wfake + sumw) / (1 + n)
        b = (wfake**2 + sumwsq) / (1 + n)
        gamma, beta = (b - a) / (a * a - b), (1 - a) / (a * a - b)
    vhat = (-gamma * sumwr - beta * sumwsqr) / (1 + n)
    missing = max(0.0, 1 - (-gamma * sumw - beta * sumwsq) / (1 + n))
    return vhat + missing * sumr / n


def empirical_likelihood_estimate(
    w: np.ndarray, r: np.ndarray, *, wmin: float = 0.0, wmax: float = math.inf
) -> float:
    """Empirical-likelihood (MLE) point estimate, vw-estimators ``mle.Estimator(wmin, wmax)``.

    Solves the dual ``Σ (w-1)/((w-1)β + n) = 0`` for ``β`` with :func:`scipy.optimize.brentq`
    on ``[β_min, β_max]`` (the range keeping every implied probability in [0, 1]), or takes the
    endpoint where the gradient keeps one sign; then
    ``V = Σ w r/((w-1)β* + n) + max(0, 1 - Σ w/((w-1)β* + n)) · mean(r)``.
    """
    w, r = np.asarray(w, dtype=float), np.asarray(r, dtype=float)
    n = float(len(w))
    wmin, wmax = min(wmin, float(w.min())), max(wmax, float(w.max()))

    def grad(beta: float) -> float:
        return math.fsum((w - 1) / ((w - 1) * beta + n))

    betaub = n / (1 - wmin)
    below, above = w[w < 1], w[w > 1]
    betamax = min(betaub, float(np.min((n - 1) / (1 - below))) if below.size else betaub)
    betalb = 0.0 if wmax == math.inf else n / (1 - wmax)
    betamin = max(betalb, float(np.max((n - 1) / (1 - above))) if above.size else betalb)
    gradmin, gradmax = grad(betamin), grad(betamax)
    if gradmin * gradmax < 0:
        betastar = float(optimize.brentq(grad, betamin, betamax))
    elif gradmin < 0:
        betastar = betamin
    else:
        betastar = betamax
    denom = (w - 1) * betastar + n
    missing = max(0.0, 1.0 - math.fsum(w / denom))
    return math.fsum(w * r / denom) + missing * math.fsum(r) / n


def clopper_pearson_interval(
    w: np.ndarray, r: np.ndarray, *, rmin: float = 0.0, rmax: float = 1.0, alpha: float = 0.05
) -> tuple[float, float]:
    """vw-estimators ``clopper_pearson.Interval(rmin, rmax)``.

    ``r' = (r - rmin)/(rmax - rmin)`` must lie in [0, 1]; ``S = Σ r'w / max w`` "successes" in
    ``N = n / max w`` "trials"; ``low = Beta.ppf(alpha/2, S, N-S+1)`` (0 if S = 0),
    ``high = Beta.ppf(1-alpha/2, S+1, N-S)`` (1 if S = N), mapped back to ``[rmin, rmax]``.
    Only meaningful for rewards that really are bounded by ``[rmin, rmax]``.
    """
    w, r = np.asarray(w, dtype=float), np.asarray(r, dtype=float)
    if np.any((r < rmin) | (r > rmax)):
        raise DatasetError(f"reward: every entry must lie in [rmin, rmax] = [{rmin}, {rmax}]")
    wmax = float(w.max())
    if wmax <= 0:
        return math.nan, math.nan
    scaled = (r - rmin) / (rmax - rmin)
    successes = float(np.sum(scaled * w)) / wmax
    trials = len(w) / wmax
    low = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes > 0 else 0.0
    high = stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    high = high if successes < trials else 1.0
    return rmin + float(low) * (rmax - rmin), rmin + float(high) * (rmax - rmin)


def cressie_read_interval(
    w: np.ndarray,
    r: np.ndarray,
    *,
    rmin: float = 0.0,
    rmax: float = 1.0,
    alpha: float = 0.05,
    wmin: float = 0.0,
    wmax: float = math.inf,
    atol: float = 1e-9,
) -> tuple[float, float]:
    """CR(-2) likelihood-ratio interval, vw-estimators ``cressieread.IntervalImpl.get``.

    A port of the library's closed form (``empirical_r_bounds=False``, no drops): the profile
    of the CR(-2) divergence against the critical value ``F.isf(alpha, 1, n)``, bounds over a
    fake extra point with weight in ``{wmin, wmax}`` and reward at the opposite bound, clamped to
    ``[rmin, rmax]``. Uses only ``n, Σw, Σw², Σwr, Σw²r, Σw²r²``. Needs known reward bounds.
    """
    w, r = np.asarray(w, dtype=float), np.asarray(r, dtype=float)
    if np.any((r < rmin) | (r > rmax)):
        raise DatasetError(f"reward: every entry must lie in [rmin, rmax] = [{rmin}, {rmax}]")
    n = float(len(w))
    wmin, wmax = min(wmin, float(w.min())), max(wmax, float(w.max()))
    sumw, sumwsq = math.fsum(w), math.fsum(w**2)
    sumwr, sumwsqr, sumwsqrsq = math.fsum(w * r), math.fsum(w**2 * r), math.fsum(w**2 * r**2)

    uncwfake = wmax if sumw < n else wmin
    if uncwfake == math.inf:
        uncgstar = 1 + 1 / n
    else:
        unca = (uncwfake + sumw) / (1 + n)
        uncb = (uncwfake**2 + sumwsq) / (1 + n)
        uncgstar = (1 + n) * (unca - 1) ** 2 / (uncb - unca * unca)
    delta = float(stats.f.isf(q=alpha, dfn=1, dfd=n))
    phi = (-uncgstar - delta) / (2 * (1 + n))

    bounds = []
    for rb, sign in ((rmin, 1), (rmax, -1)):
        candidates = []
        for wfake in (wmin, wmax):
            if wfake == math.inf:
                x = sign * (rb + (sumwr - sumw * rb) / n)
                y = (rb * sumw - sumwr) ** 2 / (n * (1 + n)) - (
                    rb**2 * sumwsq - 2 * rb * sumwsqr + sumwsqrsq
                ) / (1 + n)
                z = phi + 1 / (2 * n)
            else:
                barw = (wfake + sumw) / (1 + n)
                barwsq = (wfake * wfake + sumwsq) / (1 + n)
                barwr = sign * (wfake * rb + sumwr) / (1 + n)
                barwsqr = sign * (wfake * wfake * rb + sumwsqr) / (1 + n)
                barwsqrsq = (wfake * wfake * rb * rb + sumwsqrsq) / (1 + n)
                if not barwsq > barw**2:
                    continue
                x = barwr + ((1 - barw) * (barwsqr - barw * barwr) / (barwsq - barw**2))
                y = (barwsqr - barw * barwr) ** 2 / (barwsq - barw**2) - (barwsqrsq - barwr**2)
                z = phi + (1 / 2) * (1 - barw) ** 2 / (barwsq - barw**2)
            if math.isclose(y * z, 0, abs_tol=atol * atol):
                candidates.append(x - math.sqrt(2) * atol)
            elif z <= 0 and y * z >= 0:
                candidates.append(x - math.sqrt(2 * y * z))
        best = min(candidates) if candidates else rmin
        bounds.append(min(rmax, max(rmin, sign * best)))
    return bounds[0], bounds[1]
