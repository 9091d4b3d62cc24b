"""Validated inputs of the OPE estimators (:mod:`training.ope`): shapes, probabilities and
rewards checked once, with messages naming the argument and the first offending row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from features.errors import DatasetError


@dataclass(frozen=True)
class LoggedFeedback:
    """Validated OPE inputs (see :func:`check_ope_inputs`). Arrays have ``n`` rows, ``K``
    actions; ``estimated_rewards`` has NaNs replaced by 0 where ``action_dist`` is 0."""

    action: np.ndarray  # (n,) int
    reward: np.ndarray  # (n,) float
    pscore: np.ndarray  # (n,) float
    action_dist: np.ndarray  # (n, K)
    estimated_rewards: np.ndarray | None  # (n, K)

    @property
    def iw(self) -> np.ndarray:
        """Importance weights ``w_i = π_e(a_i | x_i) / p_i``, shape (n,)."""
        return importance_weights(self.action, self.pscore, self.action_dist)

    @property
    def q_pi(self) -> np.ndarray:
        """``q̂(x_i, π_e)`` as OBP computes it (``np.average`` weighted by ``π_e``), shape (n,)."""
        q = self._q()
        q_pi: np.ndarray = (q * self.action_dist).sum(axis=1) / self.action_dist.sum(axis=1)
        return q_pi

    @property
    def q_logged(self) -> np.ndarray:
        """``q̂(x_i, a_i)``, shape (n,)."""
        q_logged: np.ndarray = self._q()[np.arange(len(self.action)), self.action]
        return q_logged

    def _q(self) -> np.ndarray:
        if self.estimated_rewards is None:
            raise DatasetError("estimated_rewards: required by the DM/DR-family estimators")
        return self.estimated_rewards


def as_2d(name: str, array: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(array, dtype=float)
    if arr.ndim == 3:
        if arr.shape[2] != 1:
            raise DatasetError(
                f"{name}: expected shape (n, K) or (n, K, 1); got {arr.shape} "
                "(slate positions beyond one are not supported)"
            )
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise DatasetError(f"{name}: expected shape (n, K) or (n, K, 1); got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise DatasetError(f"{name}: expected {n} rows (one per logged round); got {arr.shape[0]}")
    return arr


def first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_ope_inputs(
    action: np.ndarray,
    reward: np.ndarray,
    pscore: np.ndarray,
    action_dist: np.ndarray,
    estimated_rewards: np.ndarray | None = None,
) -> LoggedFeedback:
    """Validate OPE inputs (OBP's ``check_ope_inputs`` and a few more checks).

    Raises
    ------
    ValueError
        Naming the argument, what was expected and the first offending row.
    """
    pi = as_2d("action_dist", action_dist)
    n, k = pi.shape
    if n == 0:
        raise DatasetError("action_dist: expected at least one logged round; got 0 rows")
    a = np.asarray(action)
    r = np.asarray(reward, dtype=float)
    p = np.asarray(pscore, dtype=float)
    for name, arr in (("action", a), ("reward", r), ("pscore", p)):
        if arr.shape != (n,):
            raise DatasetError(
                f"{name}: expected shape ({n},) like action_dist's rows; got {arr.shape}"
            )
    if not np.issubdtype(a.dtype, np.integer):
        raise DatasetError(f"action: expected integer dtype; got {a.dtype}")
    bad = (a < 0) | (a >= k)
    if bad.any():
        i = first_row(bad)
        raise DatasetError(f"action: every entry must be an integer in [0, {k}); row {i} is {a[i]}")
    if not np.all(np.isfinite(r)):
        raise DatasetError(
            f"reward: every entry must be finite; row {first_row(~np.isfinite(r))} is not"
        )
    bad = ~(p > 0)
    if bad.any():
        i = first_row(bad)
        raise DatasetError(f"pscore: every entry must be > 0; row {i} is {p[i]}")
    bad = ~(p <= 1.0 + 1e-9)
    if bad.any():
        i = first_row(bad)
        raise DatasetError(f"pscore: every entry must be a probability <= 1; row {i} is {p[i]}")
    bad = ~np.isfinite(pi).all(axis=1) | (pi < 0).any(axis=1)
    if bad.any():
        raise DatasetError(
            f"action_dist: entries must be finite and >= 0; row {first_row(bad)} is not"
        )
    sums = pi.sum(axis=1)
    bad = ~np.isclose(sums, 1.0)  # np.allclose's tolerances, as OBP
    if bad.any():
        i = first_row(bad)
        raise DatasetError(
            f"action_dist: every row must sum to 1 over the K actions; row {i} sums to {sums[i]}"
        )
    q = None
    if estimated_rewards is not None:
        q = as_2d("estimated_rewards", estimated_rewards, n)
        if q.shape != pi.shape:
            raise DatasetError(
                f"estimated_rewards: expected shape {pi.shape} like action_dist; got {q.shape}"
            )
        bad = (~np.isfinite(q) & (pi > 0)).any(axis=1)
        if bad.any():
            raise DatasetError(
                "estimated_rewards: must be finite wherever action_dist > 0; "
                f"row {first_row(bad)} is not"
            )
        q = np.where(np.isfinite(q), q, 0.0)
    return LoggedFeedback(a.astype(np.int64), r, p, pi, q)


def importance_weights(
    action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray
) -> np.ndarray:
    """``w_i = π_e(a_i | x_i) / pscore_i``, shape (n,); ``action_dist`` (n, K) or (n, K, 1)."""
    pi = as_2d("action_dist", action_dist)
    weights: np.ndarray = pi[np.arange(len(action)), action] / np.asarray(pscore, dtype=float)
    return weights


def check_logging_pmf(logging_pmf: Any, data: LoggedFeedback) -> np.ndarray:
    """The logger's whole pmf per row, shape ``(n, K)`` like ``data.action_dist``, whose
    probability of each logged action is that row's pscore (float32-logged pmfs pass)."""
    mu = as_2d("logging_pmf", logging_pmf, len(data.action))
    if mu.shape != data.action_dist.shape:
        raise DatasetError(
            f"logging_pmf: expected shape {data.action_dist.shape} like action_dist; got {mu.shape}"
        )
    bad = ~np.isclose(mu[np.arange(len(mu)), data.action], data.pscore, rtol=1e-4)
    if bad.any():
        i = first_row(bad)
        raise DatasetError(
            f"logging_pmf: its probability of the logged action must equal pscore; row {i} "
            f"has {mu[i, data.action[i]]} and pscore {data.pscore[i]}"
        )
    return mu
