"""Routing metrics, implemented exactly as defined in docs/metrics.md.

- AIQ: RouterBench (Hu et al. 2024, arXiv 2403.12031), made independent of the compared routers:
  the mean of the router's non-decreasing upper concave hull H over ``[c_lo, c_hi]``.
- cost@x%: the lowest mean cost among the router's operating points whose quality is at least
  x% of the best single model's, divided by that model's mean cost.
- APGR / CPT(x%): RouteLLM (Ong et al. 2024, arXiv 2406.18665).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from features.errors import DatasetError

Curve = list[tuple[float, float]]  # [(mean cost, mean quality), ...]


def upper_hull(points: Curve) -> Curve:
    """The upper concave hull of ``(cost, quality)`` points, cut after its highest quality.

    The result is sorted by cost and non-decreasing in quality.
    """
    if not points:
        raise DatasetError("upper_hull needs at least one operating point")
    best: dict[float, float] = {}
    for c, q in points:
        best[float(c)] = max(float(q), best.get(float(c), -np.inf))
    pts = sorted(best.items())
    hull: list[tuple[float, float]] = []
    for p in pts:
        # pop while the last two hull points and p make a non-right turn (keeps the upper hull)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    top = int(np.argmax([q for _, q in hull]))
    return hull[: top + 1]


def aiq(points: Curve, c_lo: float, c_hi: float) -> float:
    """Average improvement in quality: the mean of H(c) over ``[c_lo, c_hi]``.

    H is :func:`upper_hull` interpolated linearly, 0 left of the router's cheapest point and
    equal to its best quality right of its last point. Computed exactly (piecewise linear).
    """
    if not c_hi > c_lo:
        raise DatasetError(f"AIQ needs c_hi > c_lo, got c_lo={c_lo}, c_hi={c_hi}")
    hull = upper_hull(points)
    xs = np.array([c for c, _ in hull])
    ys = np.array([q for _, q in hull])
    knots = np.unique(np.clip(np.concatenate([[c_lo, c_hi], xs]), c_lo, c_hi))
    total = 0.0
    for a, b in itertools.pairwise(knots):
        if (a + b) / 2 < xs[0]:
            continue  # H = 0 left of the cheapest point
        ya, yb = np.interp([a, b], xs, ys, right=ys[-1])
        total += (ya + yb) / 2 * (b - a)
    return float(total / (c_hi - c_lo))


def cost_at(points: Curve, fraction: float, best_quality: float, best_cost: float) -> float | None:
    """cost@x%: lowest cost reaching ``fraction * best_quality``, relative to ``best_cost``.

    Returns None when no operating point reaches it.
    """
    reached = [c for c, q in points if q >= fraction * best_quality - 1e-12]
    return None if not reached else float(min(reached) / best_cost)


@dataclass(frozen=True)
class PairCurve:
    """RouteLLM's strong/weak evaluation of one router.

    Attributes
    ----------
    share : ndarray, shape (n + 1,)  share of prompts sent to the strong model
    pgr : ndarray, shape (n + 1,)    performance gap recovered at that share
    """

    share: np.ndarray
    pgr: np.ndarray

    @property
    def apgr(self) -> float:
        """Area under PGR over the strong-call share from 0 to 1 (trapezoids)."""
        return float(np.sum((self.pgr[1:] + self.pgr[:-1]) / 2 * np.diff(self.share)))

    def cpt(self, x: float) -> float | None:
        """Smallest share of strong-model calls with PGR >= x (None if never)."""
        ok = np.flatnonzero(self.pgr >= x - 1e-12)
        return None if ok.size == 0 else float(self.share[ok[0]])


def pair_curve(preference: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray) -> PairCurve:
    """PGR as a function of the strong-call share when calling the strong model on the prompts
    with the highest ``preference`` (the router's predicted gain of strong over weak).

    Parameters
    ----------
    preference, q_strong, q_weak : ndarray, shape (n,)
    """
    n = len(preference)
    if not len(q_strong) == len(q_weak) == n:
        raise DatasetError(
            f"pair_curve: preference, q_strong and q_weak differ in length "
            f"({n}, {len(q_strong)}, {len(q_weak)})"
        )
    if not (np.all(np.isfinite(q_strong)) and np.all(np.isfinite(q_weak))):
        raise DatasetError("pair_curve: outcomes must be known (finite) on every prompt")
    gap = q_strong.mean() - q_weak.mean() if n else 0.0
    if n == 0 or gap <= 0:
        raise DatasetError("pair_curve needs prompts and a strong model better than the weak one")
    order = np.argsort(-preference, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((q_strong - q_weak)[order])]) / n
    return PairCurve(share=np.arange(n + 1) / n, pgr=gain / gap)
