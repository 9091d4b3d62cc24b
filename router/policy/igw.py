"""SquareCB's exploration rule: inverse-gap weighting over predicted rewards, with a floor.

Foster and Rakhlin (2020), "Beyond UCB": every action but the best gets ``1 / (K + gamma *
gap)``, the best the rest; then each action is lifted to at least ``epsilon / K`` (or ``1 / K``
while it is unexplored), the mass taken from those above the floor, as VW's
``enforce_minimum_probability`` does. Used by the serving policy (``router.policy.quality``)
and by the replays that recompute its pmf in bulk (``training.simulate``).
"""

from __future__ import annotations

import numpy as np


def igw_pmf(
    rewards: np.ndarray, gamma: float, epsilon: float, unexplored: np.ndarray | None = None
) -> np.ndarray:
    """SquareCB's inverse-gap-weighted pmf over ``rewards`` (higher is better), then the floor
    ``p >= epsilon / K`` by moving mass from the actions above it (as VW's
    ``enforce_minimum_probability``). ``unexplored`` actions (a boolean mask) get the floor
    ``1 / K`` instead: with every action unexplored the pmf is uniform."""
    k = len(rewards)
    if k == 1:
        return np.ones(1)
    best = int(np.argmax(rewards))
    p: np.ndarray = 1.0 / (k + gamma * (rewards[best] - rewards))
    p[best] = 0.0
    p[best] = 1.0 - p.sum()
    floor = np.full(k, epsilon / k)
    if unexplored is not None:
        floor[unexplored] = 1.0 / k
    low = p < floor
    if low.any():
        need = float((floor[low] - p[low]).sum())
        high = ~low
        excess = p[high] - floor[high]
        p[high] -= need * excess / excess.sum()
        p[low] = floor[low]
    return p
