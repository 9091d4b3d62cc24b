"""Tests for training.metrics against the definitions of docs/metrics.md: AIQ (hull, cut, H = 0 left
of the cheapest point, best quality right of the last point), cost@x%, and RouteLLM's
PGR / APGR / CPT."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import aiq, cost_at, pair_curve, upper_hull

Curve = list[tuple[float, float]]


# ---------------------------------------------------------------- an independent reference


def reference_h(points: Curve, c: np.ndarray) -> np.ndarray:
    """H(c) straight from the definition, by brute force over pairs of operating points.

    The upper concave hull at c is the best linear interpolation between two points bracketing
    c; cut after the highest quality (smallest cost reaching it) it is that quality; 0 left of
    the cheapest point.
    """
    costs = np.array([p[0] for p in points], dtype=float)
    quals = np.array([p[1] for p in points], dtype=float)
    c = np.asarray(c, dtype=float)[:, None]
    best = np.full(c.shape[0], -np.inf)
    # single points exactly at c
    best = np.maximum(best, np.where(c == costs, quals, -np.inf).max(axis=1))
    i, j = np.nonzero(costs[:, None] < costs[None, :])
    if i.size:
        ci, cj, qi, qj = costs[i], costs[j], quals[i], quals[j]
        inside = (ci <= c) & (c <= cj)
        interp = qi + (qj - qi) * (c - ci) / (cj - ci)
        best = np.maximum(best, np.where(inside, interp, -np.inf).max(axis=1))
    q_max = quals.max()
    c_star = costs[quals == q_max].min()
    h = np.where(c[:, 0] >= c_star, q_max, best)
    return np.where(c[:, 0] < costs.min(), 0.0, h)


def reference_aiq(points: Curve, c_lo: float, c_hi: float, grid: int = 2001) -> float:
    """Midpoint rule on a dense grid that also contains every point's cost: H is linear inside
    each cell, so the numeric integral is exact up to rounding."""
    costs = np.array([p[0] for p in points])
    knots = np.unique(
        np.concatenate([np.linspace(c_lo, c_hi, grid), costs[(costs > c_lo) & (costs < c_hi)]])
    )
    mid = (knots[1:] + knots[:-1]) / 2
    return float(np.sum(reference_h(points, mid) * np.diff(knots)) / (c_hi - c_lo))


def random_points(rng: np.random.Generator) -> Curve:
    n = int(rng.integers(1, 13))
    costs = rng.uniform(0.0, 1.0, n)
    if rng.random() < 0.3:  # ties in cost
        costs = np.round(costs, 1)
    quals = rng.uniform(0.0, 1.0, n)
    return [(float(c), float(q)) for c, q in zip(costs, quals, strict=True)]


def random_range(rng: np.random.Generator) -> tuple[float, float]:
    c_lo = float(rng.uniform(0.0, 0.6))
    return c_lo, c_lo + float(rng.uniform(0.05, 1.0))


# ---------------------------------------------------------------- AIQ by hand


@pytest.mark.parametrize(
    ("points", "c_lo", "c_hi", "expected"),
    [
        pytest.param([(0.5, 0.8)], 0.0, 1.0, 0.4, id="single-point-mid-range"),
        pytest.param([(0.0, 0.8)], 0.0, 1.0, 0.8, id="single-point-at-c_lo"),
        pytest.param([(-1.0, 0.7)], 0.0, 1.0, 0.7, id="single-point-left-of-range"),
        pytest.param([(2.0, 0.9)], 0.0, 1.0, 0.0, id="single-point-right-of-range"),
        pytest.param([(1.0, 0.9)], 0.0, 1.0, 0.0, id="single-point-at-c_hi"),
        pytest.param([(0.0, 0.2), (1.0, 0.6)], 0.0, 1.0, 0.4, id="line"),
        pytest.param([(1.0, 0.6), (0.0, 0.2)], 0.0, 1.0, 0.4, id="line-unsorted"),
        pytest.param([(0.0, 0.2), (1.0, 0.6)], 0.0, 2.0, 0.5, id="line-then-flat"),
        pytest.param([(0.0, 0.2), (1.0, 0.6)], 0.5, 1.0, 0.5, id="range-inside-line"),
        pytest.param([(0.0, 0.3), (0.5, 0.7)], 1.0, 2.0, 0.7, id="range-right-of-all"),
        pytest.param([(0.0, 0.2), (0.5, 0.3), (1.0, 0.6)], 0.0, 1.0, 0.4, id="below-hull-ignored"),
        pytest.param([(0.0, 0.2), (0.5, 0.5), (1.0, 0.6)], 0.0, 1.0, 0.45, id="above-line-counts"),
        pytest.param([(0.0, 0.2), (0.5, 0.8), (1.0, 0.6)], 0.0, 1.0, 0.65, id="cut-after-best"),
        pytest.param([(0.25, 0.4), (0.75, 0.8)], 0.0, 1.0, 0.5, id="zero-left-of-cheapest"),
        pytest.param([(0.0, 0.2), (0.0, 0.6), (1.0, 0.6)], 0.0, 1.0, 0.6, id="same-cost-best-q"),
        pytest.param([(0.5, 0.8), (0.5, 0.8)], 0.0, 1.0, 0.4, id="duplicate-point"),
    ],
)
def test_aiq_hand_values(points: Curve, c_lo: float, c_hi: float, expected: float) -> None:
    assert aiq(points, c_lo, c_hi) == pytest.approx(expected, abs=1e-12)


def test_aiq_cut_differs_from_uncut_hull() -> None:
    # Uncut, the hull would fall from 0.8 to 0.6 and average 0.6; cut it stays at 0.8.
    points = [(0.0, 0.2), (0.5, 0.8), (1.0, 0.6)]
    assert aiq(points, 0.0, 1.0) == pytest.approx(0.25 + 0.4)
    assert aiq(points, 0.0, 1.0) > 0.25 + 0.5 * (0.8 + 0.6) / 2 + 1e-6


@pytest.mark.parametrize(("c_lo", "c_hi"), [(1.0, 1.0), (1.0, 0.5), (0.0, -1.0)])
def test_aiq_rejects_empty_cost_range(c_lo: float, c_hi: float) -> None:
    with pytest.raises(ValueError, match="c_hi > c_lo"):
        aiq([(0.5, 0.5)], c_lo, c_hi)


def test_aiq_rejects_nan_cost_range() -> None:
    with pytest.raises(ValueError, match="c_hi > c_lo"):
        aiq([(0.5, 0.5)], 0.0, float("nan"))


def test_aiq_and_hull_reject_no_points() -> None:
    with pytest.raises(ValueError, match="at least one"):
        aiq([], 0.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        upper_hull([])


def test_aiq_matches_dense_integration_of_the_definition() -> None:
    rng = np.random.default_rng(20241126)
    for _ in range(300):
        points = random_points(rng)
        c_lo, c_hi = random_range(rng)
        assert aiq(points, c_lo, c_hi) == pytest.approx(
            reference_aiq(points, c_lo, c_hi), abs=1e-9
        ), (points, c_lo, c_hi)


def test_aiq_matches_plain_uniform_grid() -> None:
    # A second, cruder integration that knows nothing of the breakpoints.
    rng = np.random.default_rng(7)
    for _ in range(10):
        points = random_points(rng)
        c_lo, c_hi = random_range(rng)
        edges = np.linspace(c_lo, c_hi, 50_001)
        mid = (edges[1:] + edges[:-1]) / 2
        dense = float(reference_h(points, mid).mean())
        assert aiq(points, c_lo, c_hi) == pytest.approx(dense, abs=1e-4)


def test_aiq_never_decreases_when_a_point_is_added() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        points = random_points(rng)
        c_lo, c_hi = random_range(rng)
        extra = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
        assert aiq([*points, extra], c_lo, c_hi) >= aiq(points, c_lo, c_hi) - 1e-12


def test_aiq_is_bounded_by_best_quality() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        points = random_points(rng)
        c_lo, c_hi = random_range(rng)
        value = aiq(points, c_lo, c_hi)
        assert 0.0 <= value <= max(q for _, q in points) + 1e-12


# ---------------------------------------------------------------- upper_hull


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        pytest.param([(0.3, 0.4)], [(0.3, 0.4)], id="single"),
        pytest.param([(1, 0.2), (1, 0.5)], [(1.0, 0.5)], id="same-cost-keeps-best"),
        pytest.param(
            [(1.0, 0.6), (0.5, 0.3), (0.0, 0.2)], [(0.0, 0.2), (1.0, 0.6)], id="drops-below"
        ),
        pytest.param(
            [(0.0, 0.2), (0.5, 0.8), (1.0, 0.6)], [(0.0, 0.2), (0.5, 0.8)], id="cut-after-best"
        ),
        pytest.param(
            [(1.0, 0.5), (2.0, 0.9), (3.0, 0.9)], [(1.0, 0.5), (2.0, 0.9)], id="tie-at-top"
        ),
        pytest.param([(0.0, 0.9), (1.0, 0.5)], [(0.0, 0.9)], id="cheapest-is-best"),
        pytest.param(
            [(0.0, 0.0), (1.0, 0.6), (2.0, 0.8), (3.0, 0.9)],
            [(0.0, 0.0), (1.0, 0.6), (2.0, 0.8), (3.0, 0.9)],
            id="already-concave",
        ),
        pytest.param(
            [(0.0, 0.0), (1.0, 0.1), (2.0, 0.8), (3.0, 0.9)],
            [(0.0, 0.0), (2.0, 0.8), (3.0, 0.9)],
            id="convex-kink-removed",
        ),
    ],
)
def test_upper_hull_hand_cases(points: Curve, expected: Curve) -> None:
    hull = upper_hull(points)
    assert len(hull) == len(expected)
    np.testing.assert_allclose(np.array(hull, dtype=float), np.array(expected), atol=1e-12)


def test_upper_hull_properties_on_random_sets() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        points = random_points(rng)
        hull = upper_hull(points)
        xs = np.array([c for c, _ in hull])
        ys = np.array([q for _, q in hull])
        # vertices are input points, sorted by strictly increasing cost
        assert set(hull) <= {(float(c), float(q)) for c, q in points}
        assert np.all(np.diff(xs) > 0)
        # non-decreasing, and ends at the best quality
        assert np.all(np.diff(ys) >= -1e-12)
        assert ys[-1] == max(q for _, q in points)
        # starts at the cheapest cost with the best quality seen at that cost
        c_min = min(c for c, _ in points)
        assert xs[0] == c_min
        assert ys[0] == max(q for c, q in points if c == c_min)
        # concave: slopes non-increasing
        if len(hull) >= 3:
            slopes = np.diff(ys) / np.diff(xs)
            assert np.all(np.diff(slopes) <= 1e-9)
        # no point lies above it (within its cost span; right of it, H is the best quality)
        for c, q in points:
            assert q <= np.interp(c, xs, ys) + 1e-12
        # and it is the definition's H at every vertex
        np.testing.assert_allclose(reference_h(points, xs), ys, atol=1e-12)


# ---------------------------------------------------------------- cost@x%

COST_POINTS: Curve = [(0.1, 0.5), (0.3, 0.8), (0.2, 0.76), (0.6, 0.9)]


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.5, 0.2),  # 0.5 * 0.8 = 0.4: the cheapest point (0.1) / 0.5
        (0.95, 0.4),  # 0.76 reached exactly by (0.2, 0.76)
        (0.96, 0.6),  # 0.768: (0.3, 0.8)
        (1.0, 0.6),
        (1.1, 1.2),  # 0.88: only (0.6, 0.9), dearer than the best single model
        (1.2, None),  # 0.96: never reached
    ],
)
def test_cost_at_hand_values(fraction: float, expected: float | None) -> None:
    value = cost_at(COST_POINTS, fraction, best_quality=0.8, best_cost=0.5)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected, abs=1e-12)


def test_cost_at_uses_points_not_the_hull() -> None:
    # (0.5, 0.5) lies below the hull segment from (0, 0.1) to (1, 1): it still counts, and the
    # hull (which reaches 0.5 at cost 0.444...) is not used.
    points = [(0.0, 0.1), (0.5, 0.5), (1.0, 1.0)]
    assert cost_at(points, 0.5, best_quality=1.0, best_cost=2.0) == pytest.approx(0.25)
    # the hull's interpolation between points is not an operating point either
    points = [(0.0, 0.0), (0.4, 0.9), (1.0, 1.0)]
    assert cost_at(points, 0.45, best_quality=1.0, best_cost=1.0) == pytest.approx(0.4)


def test_cost_at_none_when_never_reached() -> None:
    assert cost_at([(0.1, 0.5), (0.2, 0.6)], 1.0, best_quality=0.7, best_cost=0.3) is None


# ---------------------------------------------------------------- PGR / APGR / CPT

Q_STRONG = np.array([1.0, 1.0, 0.0, 1.0])
Q_WEAK = np.array([0.0, 1.0, 0.0, 0.0])  # gap = 0.75 - 0.25 = 0.5; gains [1, 0, 0, 1]


def test_pair_curve_hand_example() -> None:
    curve = pair_curve(np.array([0.9, 0.1, 0.5, 0.8]), Q_STRONG, Q_WEAK)
    np.testing.assert_allclose(curve.share, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.pgr, [0.0, 0.5, 1.0, 1.0, 1.0])
    assert curve.apgr == pytest.approx(0.75)
    assert curve.cpt(0.0) == 0.0
    assert curve.cpt(0.5) == pytest.approx(0.25)
    assert curve.cpt(0.8) == pytest.approx(0.5)
    assert curve.cpt(1.0) == pytest.approx(0.5)
    assert curve.cpt(1.01) is None


def test_pair_curve_worst_ordering() -> None:
    curve = pair_curve(-np.array([0.9, 0.1, 0.5, 0.8]), Q_STRONG, Q_WEAK)
    np.testing.assert_allclose(curve.pgr, [0.0, 0.0, 0.0, 0.5, 1.0])
    assert curve.apgr == pytest.approx(0.25)
    assert curve.cpt(0.5) == pytest.approx(0.75)
    assert curve.cpt(0.9) == pytest.approx(1.0)


def test_pair_curve_ties_keep_prompt_order() -> None:
    curve = pair_curve(np.zeros(4), Q_STRONG, Q_WEAK)
    np.testing.assert_allclose(curve.pgr, [0.0, 0.5, 0.5, 0.5, 1.0])
    assert curve.apgr == pytest.approx(0.25 * (0.25 + 0.5 + 0.5 + 0.75))


def test_pgr_can_exceed_one() -> None:
    # the strong model is worse on the third prompt: calling it there loses quality
    curve = pair_curve(
        np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    )
    np.testing.assert_allclose(curve.pgr, [0.0, 1.0, 2.0, 1.0])
    assert curve.apgr == pytest.approx((0.5 + 1.5 + 1.5) / 3)
    assert curve.cpt(1.5) == pytest.approx(2 / 3)


def test_pgr_matches_definition_on_random_instance() -> None:
    rng = np.random.default_rng(1)
    n = 50
    q_strong = (rng.random(n) < 0.7).astype(float)
    q_weak = (rng.random(n) < 0.4).astype(float)
    preference = rng.random(n)
    curve = pair_curve(preference, q_strong, q_weak)
    order = np.argsort(-preference)
    gap = q_strong.mean() - q_weak.mean()
    for k in range(n + 1):
        strong = np.zeros(n, dtype=bool)
        strong[order[:k]] = True
        q_router = np.where(strong, q_strong, q_weak).mean()
        assert curve.share[k] == pytest.approx(k / n)
        assert curve.pgr[k] == pytest.approx((q_router - q_weak.mean()) / gap, abs=1e-12)


@pytest.fixture(scope="module")
def large_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2024)
    n = 20_000
    return (rng.random(n) < 0.7).astype(float), (rng.random(n) < 0.5).astype(float)


def test_apgr_perfect_vs_random_router(large_pair: tuple[np.ndarray, np.ndarray]) -> None:
    q_strong, q_weak = large_pair
    rng = np.random.default_rng(99)
    perfect = pair_curve(q_strong - q_weak, q_strong, q_weak)
    random = pair_curve(rng.random(len(q_strong)), q_strong, q_weak)
    assert random.apgr == pytest.approx(0.5, abs=0.03)
    # perfect: PGR climbs to P(gain=+1)/gap, stays, then falls to 1 over the P(gain=-1) tail.
    # Population values p_up = 0.35, p_down = 0.15, gap = 0.2 give 1.3875.
    gain = q_strong - q_weak
    up, down, gap = (gain > 0).mean(), (gain < 0).mean(), gain.mean()
    top = up / gap
    expected = up * top / 2 + (1 - up - down) * top + down * (top + 1) / 2
    assert perfect.apgr == pytest.approx(expected, abs=1e-3)
    assert perfect.apgr == pytest.approx(1.3875, abs=0.05)
    assert perfect.apgr > random.apgr + 0.5
    for _ in range(5):
        assert perfect.apgr >= pair_curve(rng.random(len(gain)), q_strong, q_weak).apgr
    # CPT(100%) of the perfect router: the share that recovers the whole gap, gap / 1 per prompt
    assert perfect.cpt(1.0) == pytest.approx(gap, abs=1 / len(gain))


def test_apgr_of_reversed_order_is_complement() -> None:
    # PGR_reversed(s) = 1 - PGR(1 - s), so the areas add up to 1.
    rng = np.random.default_rng(8)
    q_strong = (rng.random(500) < 0.6).astype(float)
    q_weak = (rng.random(500) < 0.4).astype(float)
    preference = rng.random(500)
    forward = pair_curve(preference, q_strong, q_weak)
    backward = pair_curve(-preference, q_strong, q_weak)
    assert forward.apgr + backward.apgr == pytest.approx(1.0, abs=1e-12)


def test_pair_curve_ends_at_zero_and_one() -> None:
    rng = np.random.default_rng(4)
    q_strong = rng.random(200)
    q_weak = q_strong - rng.uniform(-0.1, 0.3, 200)
    curve = pair_curve(rng.random(200), q_strong, q_weak)
    assert curve.share.shape == curve.pgr.shape == (201,)
    assert curve.pgr[0] == 0.0
    assert curve.pgr[-1] == pytest.approx(1.0, abs=1e-12)
    assert curve.share[0] == 0.0
    assert curve.share[-1] == 1.0


@pytest.mark.parametrize(
    ("q_strong", "q_weak"),
    [
        pytest.param([0.5, 0.5], [0.5, 0.5], id="no-gap"),
        pytest.param([0.0, 1.0], [1.0, 1.0], id="strong-worse"),
    ],
)
def test_pair_curve_rejects_non_positive_gap(q_strong: list[float], q_weak: list[float]) -> None:
    with pytest.raises(ValueError, match="strong model better"):
        pair_curve(np.zeros(2), np.array(q_strong), np.array(q_weak))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_pair_curve_rejects_no_prompts() -> None:
    with pytest.raises(ValueError, match="needs prompts"):
        pair_curve(np.array([]), np.array([]), np.array([]))


@pytest.mark.parametrize(
    ("preference", "q_strong"),
    [
        pytest.param([0.3, 0.2, 0.1, 0.5], [1.0, np.nan, 0.0, 1.0], id="nan-outcome"),
        pytest.param([0.3, 0.2, 0.1], [1.0, 1.0, 0.0, 1.0], id="length-mismatch"),
    ],
)
def test_pair_curve_rejects_malformed_input(preference: list[float], q_strong: list[float]) -> None:
    with pytest.raises(ValueError):
        pair_curve(np.array(preference), np.array(q_strong), Q_WEAK)
