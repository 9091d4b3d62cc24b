"""Operating points of routers on a routing dataset's test split.

A router here is a predicted-quality matrix ``q_hat`` (n, M) and a predicted-cost matrix
``c_hat`` (n, M); its operating points come from sweeping ``lambda`` in
``argmax_m q_hat - lambda * c_hat / cost_scale`` over the models available on each prompt
(DESIGN.md §5). Realised cost and quality are the dataset's true outcomes of the chosen models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.datasets import RoutingDataset
from training.metrics import Curve, aiq, cost_at, pair_curve


@dataclass(frozen=True)
class Reference:
    """Single-model facts on the evaluated prompts: what every router is compared with."""

    single: dict[str, tuple[float, float]]  # model -> (mean cost, mean quality)
    best_model: str
    cheapest_model: str
    c_lo: float
    c_hi: float

    @property
    def best_quality(self) -> float:
        return self.single[self.best_model][1]

    @property
    def best_cost(self) -> float:
        return self.single[self.best_model][0]

    @classmethod
    def of(cls, data: RoutingDataset) -> Reference:
        single = {}
        for j, m in enumerate(data.model_names):
            ok = data.available[:, j]
            if ok.any():
                single[m] = (float(data.cost[ok, j].mean()), float(data.quality[ok, j].mean()))
        costs = {m: c for m, (c, _) in single.items()}
        best = max(single, key=lambda m: (single[m][1], -single[m][0]))
        return cls(
            single=single,
            best_model=best,
            cheapest_model=min(costs, key=costs.__getitem__),
            c_lo=min(costs.values()),
            c_hi=max(costs.values()),
        )


def lambda_grid(n: int = 60) -> np.ndarray:
    """0, a geometric grid, and +inf (pure cost minimisation)."""
    return np.concatenate([[0.0], np.geomspace(1e-3, 1e3, n), [np.inf]])


def choose(q_hat: np.ndarray, c_hat: np.ndarray, lam: float, available: np.ndarray) -> np.ndarray:
    """Chosen column per row: ``argmax q_hat - lam * c_hat`` over available models; ties and
    ``lam = inf`` go to the cheapest."""
    if np.isinf(lam):
        score = -c_hat
    else:
        score = q_hat - lam * c_hat - 1e-9 * c_hat / (np.nanmax(c_hat) + 1e-300)
    score = np.where(available, score, -np.inf)
    chosen: np.ndarray = np.argmax(score, axis=1)
    return chosen


def operating_point(data: RoutingDataset, chosen: np.ndarray) -> tuple[float, float]:
    rows = np.arange(len(chosen))
    return float(data.cost[rows, chosen].mean()), float(data.quality[rows, chosen].mean())


def sweep(
    data: RoutingDataset, q_hat: np.ndarray, c_hat: np.ndarray, cost_scale: float, grid: np.ndarray
) -> Curve:
    """Operating points of a router over the lambda grid, in grid order."""
    scaled = c_hat / cost_scale
    return [operating_point(data, choose(q_hat, scaled, lam, data.available)) for lam in grid]


def summarise(curve: Curve, ref: Reference) -> dict[str, float | None]:
    """The JSON figures of one router: AIQ, cost@95/97/100, max quality, mean cost."""
    qb, cb = ref.best_quality, ref.best_cost
    return {
        "aiq": aiq(curve, ref.c_lo, ref.c_hi),
        "cost_at_95": cost_at(curve, 0.95, qb, cb),
        "cost_at_97": cost_at(curve, 0.97, qb, cb),
        "cost_at_100": cost_at(curve, 1.0, qb, cb),
        "max_quality": max(q for _, q in curve),
        "mean_cost": float(np.mean([c for c, _ in curve])),
    }


def pair_metrics(
    data: RoutingDataset, q_hat: np.ndarray, strong: str, weak: str
) -> dict[str, float | None]:
    """APGR and CPT(50%) / CPT(80%) for a strong/weak pair, on prompts where both are known."""
    s, w = data.model_names.index(strong), data.model_names.index(weak)
    both = data.available[:, s] & data.available[:, w]
    curve = pair_curve(
        q_hat[both, s] - q_hat[both, w], data.quality[both, s], data.quality[both, w]
    )
    return {"apgr": curve.apgr, "cpt_50": curve.cpt(0.5), "cpt_80": curve.cpt(0.8)}
