"""Step 3 of retraining at scale: the LightGBM reward model, trained data-parallel on the Dask
cluster and scored on held-out decisions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from dask.base import compute
from dask.delayed import delayed

from features.errors import DatasetError
from training.scale.config import ScaleConfig


def train_reward_model(
    joined: Path, feature_columns: Sequence[str], config: ScaleConfig, client: Any
) -> tuple[Any, dict[str, float]]:
    """Fit a :class:`lightgbm.dask.DaskLGBMRegressor` on the non-held-out joined rows.

    Returns
    -------
    model : lightgbm.LGBMRegressor
        The trained model, as a local (non-Dask) estimator.
    metrics : dict
        ``holdout_mse``, ``holdout_mse_mean`` (predicting the training mean), ``holdout_r2``,
        ``n_train``, ``n_holdout``.
    """
    from lightgbm.dask import DaskLGBMRegressor

    columns = list(feature_columns)
    files = [str(p) for p in sorted(Path(joined).glob("*.parquet"))]
    if not files:
        raise DatasetError(f"no joined rows at {joined}")
    meta = pd.DataFrame({c: pd.Series(dtype="float32") for c in columns})
    meta["reward"] = pd.Series(dtype="float64")
    # one partition per file and no column projection, so X and y split the same way
    # (read_parquet fuses partitions differently for X's 150 columns and y's one)
    train = dd.from_map(_read_rows, files, features=columns, held_out=False, meta=meta)
    held = dd.from_map(_read_rows, files, features=columns, held_out=True, meta=meta)
    estimator = DaskLGBMRegressor(
        client=client,
        n_estimators=config.n_estimators,
        num_leaves=config.num_leaves,
        learning_rate=config.learning_rate,
        random_state=config.seed,
        verbose=-1,
    )
    estimator.fit(train[columns], train["reward"])
    model = estimator.to_local()
    sums = compute(*[delayed(_reward_sum)(path) for path in files])
    n_train = sum(n for n, _ in sums)
    mean = sum(total for _, total in sums) / max(n_train, 1)
    scored = (
        held.map_partitions(
            _score, model, columns, mean, meta={"n": "int64", "se": "float64", "se_mean": "float64"}
        )
        .sum()
        .compute()
    )
    n_hold = int(scored["n"])
    metrics = {"n_train": float(n_train), "n_holdout": float(n_hold), "train_mean": mean}
    if n_hold:
        mse, mse_mean = float(scored["se"]) / n_hold, float(scored["se_mean"]) / n_hold
        metrics.update(
            holdout_mse=mse,
            holdout_mse_mean=mse_mean,
            holdout_r2=1.0 - mse / mse_mean if mse_mean > 0 else 0.0,
        )
    return model, metrics


def _reward_sum(path: str) -> tuple[int, float]:
    """Number and sum of the training rewards of one joined file."""
    table = pq.read_table(path, columns=["reward", "holdout"])
    reward = table["reward"].to_numpy(zero_copy_only=False)
    keep = np.isfinite(reward) & ~table["holdout"].to_numpy(zero_copy_only=False)
    return int(keep.sum()), float(reward[keep].sum())


def _read_rows(path: str, features: list[str], held_out: bool) -> pd.DataFrame:
    # the argument is not called ``columns``: from_map would take that for a projection
    table = pq.read_table(path, columns=[*features, "reward", "holdout"])
    frame: pd.DataFrame = table.to_pandas()
    keep = frame["reward"].notna() & (frame["holdout"] == held_out)
    return frame.loc[keep, [*features, "reward"]].reset_index(drop=True)


def _score(part: pd.DataFrame, model: Any, columns: list[str], mean: float) -> pd.DataFrame:
    if not len(part):
        return pd.DataFrame({"n": [0], "se": [0.0], "se_mean": [0.0]})
    truth = part["reward"].to_numpy()
    # one thread: OpenMP pools of concurrent worker threads otherwise spin against each other
    predicted = model.predict(part[columns], num_threads=1)
    return pd.DataFrame(
        {
            "n": [len(part)],
            "se": [float(((predicted - truth) ** 2).sum())],
            "se_mean": [float(((mean - truth) ** 2).sum())],
        }
    )
