"""Parameters (:class:`ScaleConfig`) and result (:class:`ScaleResult`) of
:func:`training.scale.train_at_scale`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.errors import ConfigError
from router.policy.base import RewardSpec
from router.policy.vw import VWSquareCBPolicy


@dataclass(frozen=True)
class ScaleConfig:
    """Parameters of :func:`train_at_scale`.

    Parameters
    ----------
    join_window_s, default_quality : float
        The join rules' window and the quality of a decision without any (router.events.join).
    reward : RewardSpec or None
        Weights to recompute every reward with; None uses each decision's logged spec.
    holdout_fraction : float
        Share of decisions (by hash of the event id) held out to score the reward model.
    n_estimators, num_leaves, learning_rate : LightGBM parameters of the reward model.
    n_workers, worker_memory : the LocalCluster started when no client is given.
    vw_learning_rate : float
        Of a fresh VW policy. Not the warm-start default 2.0: with importance weights up to
        1 / p it overshoots (on a synthetic log, one pass at 0.5 or 2.0 did worse than uniform
        routing, 0.1 clearly better).
    vw_native_parser : bool
        Feed VW's own parser through a named pipe (faster) instead of ``Workspace.learn``.
    workdir : where compacted and joined files go (default: a fresh temporary directory).
    """

    join_window_s: float = 3600.0
    default_quality: float = 0.0
    reward: RewardSpec | None = None
    holdout_fraction: float = 0.1
    n_estimators: int = 100
    num_leaves: int = 63
    learning_rate: float = 0.1
    seed: int = 0
    n_workers: int = 2
    worker_memory: str = "4GiB"
    vw_native_parser: bool = True
    vw_learning_rate: float = 0.1
    workdir: str | None = None

    def __post_init__(self) -> None:
        if self.join_window_s < 0:
            raise ConfigError(f"join_window_s must be >= 0, got {self.join_window_s}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.n_estimators < 1 or self.num_leaves < 2:
            raise ConfigError("n_estimators must be >= 1 and num_leaves >= 2")
        if self.n_workers < 1:
            raise ConfigError(f"n_workers must be >= 1, got {self.n_workers}")


@dataclass
class ScaleResult:
    """What :func:`train_at_scale` produced.

    Attributes
    ----------
    reward_model : lightgbm.LGBMRegressor
        Local copy of the Dask-trained model; columns :attr:`feature_columns`.
    policy : VWSquareCBPolicy
    timings_s : dict
        Seconds per phase (``compact``, ``join``, ``reward_model``, ``vw``) and ``total``.
    counts : dict
        Events read, joined rows, learnable rows, VW examples, late, orphans, imputed, ...
    metrics : dict
        Held-out MSE of the reward model and of predicting the training mean.
    memory_mb : dict
        Peak resident memory of the client process, the workers and both together.
    """

    reward_model: Any
    policy: VWSquareCBPolicy
    feature_columns: list[str]
    models: list[str]
    joined_path: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly timings, counts, metrics and memory."""
        return {
            "timings_s": {k: round(v, 2) for k, v in self.timings_s.items()},
            "counts": self.counts,
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "memory_mb": {k: round(v, 1) for k, v in self.memory_mb.items()},
            "joined_path": str(self.joined_path),
        }
