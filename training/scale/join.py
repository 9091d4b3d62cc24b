"""Step 2 of retraining at scale: the join of decisions with outcomes and feedback, bucket by
bucket of event-id hashes (the rules of :mod:`router.events.join`; overview in
:mod:`training.scale`). Each decision file's rows are then assembled by
:mod:`training.scale.assemble`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dask.base import compute
from dask.delayed import delayed

from features.errors import DatasetError
from router.policy.base import RewardSpec
from training.scale.assemble import assemble_rows, joined_counts
from training.scale.config import ScaleConfig
from training.scale.layout import SPEC_FIELDS, kind_files, part_name

_HASH_KEY = "0123456789123456"


def _bucket(ids: np.ndarray, n_buckets: int) -> np.ndarray:
    hashed = pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=_HASH_KEY)
    return (hashed % np.uint64(n_buckets)).astype(np.int64)


def _read_decisions_light(path: str, part: int, n_buckets: int) -> pd.DataFrame:
    table = pq.read_table(path, columns=["event_id", "timestamp", "seq"])
    ids = table["event_id"].to_numpy(zero_copy_only=False)
    return pd.DataFrame(
        {
            "bucket": _bucket(ids, n_buckets),
            "event_id": ids,
            "d_ts": table["timestamp"].to_numpy(),
            "d_seq": table["seq"].to_numpy(),
            "part": np.full(len(ids), part, dtype=np.int64),
            "pos": np.arange(len(ids), dtype=np.int64),
        }
    )


_FOLLOWER_META = pd.DataFrame(
    {
        "bucket": pd.Series(dtype="int64"),
        "event_id": pd.Series(dtype=object),
        "ts": pd.Series(dtype="float64"),
        "seq": pd.Series(dtype="int64"),
        "is_outcome": pd.Series(dtype=bool),
        "quality": pd.Series(dtype="float64"),
        "cost_usd": pd.Series(dtype="float64"),
        "latency_ms": pd.Series(dtype="float64"),
        "input_tokens": pd.Series(dtype="float64"),
        "output_tokens": pd.Series(dtype="float64"),
        "error_class": pd.Series(dtype=object),
        "fallback_used": pd.Series(dtype="float64"),
    }
)


def _read_followers(path: str, n_buckets: int) -> pd.DataFrame:
    is_outcome = Path(path).parent.name == "outcomes"
    table = pq.read_table(path)
    ids = table["event_id"].to_numpy(zero_copy_only=False)
    n = len(ids)
    nan = np.full(n, np.nan)

    def column(name: str) -> np.ndarray:
        return table[name].to_numpy(zero_copy_only=False) if is_outcome else nan

    frame = pd.DataFrame(
        {
            "bucket": _bucket(ids, n_buckets),
            "event_id": ids,
            "ts": table["timestamp"].to_numpy(),
            "seq": table["seq"].to_numpy(),
            "is_outcome": np.full(n, is_outcome),
            "quality": table["quality"].to_numpy(zero_copy_only=False).astype(float),
            "cost_usd": column("cost_usd").astype(float),
            "latency_ms": column("latency_ms").astype(float),
            "input_tokens": column("input_tokens").astype(float),
            "output_tokens": column("output_tokens").astype(float),
            "error_class": (
                table["error_class"].to_numpy(zero_copy_only=False)
                if is_outcome
                else np.full(n, None, dtype=object)
            ),
            "fallback_used": (
                table["fallback_used"].to_numpy(zero_copy_only=False).astype(float)
                if is_outcome
                else nan
            ),
        }
    )
    return frame


# one row per joined decision: its columns and their dtypes (Dask's meta is derived from it)
_AGG_DTYPES: dict[str, Any] = {
    "event_id": object,
    "part": "int64",
    "pos": "int64",
    "has_outcome": bool,
    "cost_usd": "float64",
    "latency_ms": "float64",
    "input_tokens": "float64",
    "output_tokens": "float64",
    "error_class": object,
    "fallback_used": "float64",
    "quality": "float64",
    "quality_imputed": bool,
    "n_feedback": "int64",
}
AGG_COLUMNS = tuple(_AGG_DTYPES)
AGG_META = pd.DataFrame({k: pd.Series(dtype=t) for k, t in _AGG_DTYPES.items()})


def _join_bucket(
    decisions: pd.DataFrame, followers: pd.DataFrame, window_s: float, default_quality: float
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rules of router.events.join on the events of one hash bucket of event ids."""
    decisions = decisions.reset_index(drop=True).sort_values("d_seq", kind="stable")
    duplicate = decisions["event_id"].duplicated()
    decisions = decisions[~duplicate]
    merged = followers.reset_index(drop=True).merge(
        decisions[["event_id", "d_ts"]], on="event_id", how="left"
    )
    orphan = merged["d_ts"].isna().to_numpy()
    late = ~orphan & (merged["ts"] > merged["d_ts"] + window_s).to_numpy()
    kept = merged[~orphan & ~late].sort_values(["ts", "seq"], kind="stable")
    outcomes = kept[kept["is_outcome"]].drop_duplicates("event_id", keep="first")
    observed = pd.concat(
        [outcomes[outcomes["quality"].notna()], kept[~kept["is_outcome"]]]
    ).sort_values(["ts", "seq"], kind="stable")
    grouped = observed.groupby("event_id", sort=False)["quality"]
    qualities = pd.DataFrame({"q": grouped.last(), "n_feedback": grouped.size()})
    outcome_columns = ["cost_usd", "latency_ms", "input_tokens", "output_tokens"]
    extra = ["error_class", "fallback_used"]
    joined = decisions[["event_id", "part", "pos"]].merge(
        outcomes[["event_id", *outcome_columns, *extra]].assign(has_outcome=True),
        on="event_id",
        how="left",
    )
    joined = joined.merge(qualities, left_on="event_id", right_index=True, how="left")
    imputed = joined["n_feedback"].isna()
    joined["has_outcome"] = joined["has_outcome"].notna().to_numpy()
    joined["quality"] = joined["q"].where(~imputed, default_quality).astype(float)
    joined["quality_imputed"] = imputed.to_numpy()
    joined["n_feedback"] = joined["n_feedback"].fillna(0).astype(np.int64)
    counts = {
        "n_late": int(late.sum()),
        "n_orphans": int(orphan.sum()),
        "n_duplicate_decisions": int(duplicate.sum()),
        "n_repeated_outcomes": int(kept["is_outcome"].sum() - len(outcomes)),
    }
    return joined[list(AGG_COLUMNS)], counts


def _join_bucket_rows(
    decisions: pd.DataFrame, followers: pd.DataFrame, window_s: float, default_quality: float
) -> pd.DataFrame:
    return _join_bucket(decisions, followers, window_s, default_quality)[0]


def _join_bucket_counts(
    decisions: pd.DataFrame, followers: pd.DataFrame, window_s: float, default_quality: float
) -> pd.DataFrame:
    counts = _join_bucket(decisions, followers, window_s, default_quality)[1]
    counts["n_outcome_events"] = int(followers["is_outcome"].sum())
    counts["n_feedback_events"] = int((~followers["is_outcome"]).sum())
    counts["n_decision_events"] = len(decisions)
    return pd.DataFrame({k: [v] for k, v in counts.items()})


@dataclass(frozen=True)
class JoinSummary:
    """Where the joined rows (``path``) and VW examples (``vw_path``) are; what was counted."""

    path: Path
    vw_path: Path
    counts: dict[str, int]
    models: list[str]
    feature_columns: list[str]
    reward: RewardSpec


def join_at_scale(
    root: str | Path,
    out: str | Path,
    config: ScaleConfig | None = None,
    models: Sequence[str] | None = None,
) -> JoinSummary:
    """Join a Parquet-layout log into model-ready files under ``out`` (module docstring).

    Runs on the current Dask scheduler. ``out/vw/part-<n>.txt``: the learnable rows' VW
    examples. ``out/rows/part-<n>.parquet``: one file per decision file, rows in decision
    order, columns: ``event_id, timestamp, chosen_model, chosen_index, chosen_probability,
    learnable, has_outcome, cost_usd, latency_ms, input_tokens, output_tokens, error_class,
    fallback_used, quality, quality_imputed, n_feedback, reward, holdout, vw_learnable`` and the
    features ``c_* (context), m_* (chosen model one-hot, in ``models`` order), a_* (its action
    features)``, float32.

    Raises
    ------
    DatasetError
        No decision files; a file missing a column; ragged context or action features.
    """
    config = config or ScaleConfig()
    root = Path(root)
    decision_files = kind_files(root, "decisions")
    if not decision_files:
        raise DatasetError(f"no events found at {root}: no decisions/*.parquet files")
    follower_files = kind_files(root, "outcomes") + kind_files(root, "feedback")
    n_features, n_action, spec = _shape_of(decision_files)
    if models is None:
        found = compute(*[delayed(_models_in)(str(p)) for p in decision_files])
        models = sorted(set().union(*found))
    models = list(models)
    n_parts = len(decision_files)
    n_buckets = max(1, n_parts)
    buckets = (*range(n_buckets), n_buckets - 1)
    light = dd.from_map(
        _read_decisions_light,
        [str(p) for p in decision_files],
        list(range(n_parts)),
        n_buckets=n_buckets,
        meta=_DECISION_LIGHT_META,
        enforce_metadata=False,
    ).set_index("bucket", divisions=buckets)
    if follower_files:
        followers = dd.from_map(
            _read_followers,
            [str(p) for p in follower_files],
            n_buckets=n_buckets,
            meta=_FOLLOWER_META,
            enforce_metadata=False,
        )
    else:
        followers = dd.from_pandas(_FOLLOWER_META, npartitions=1)
    followers = followers.set_index("bucket", divisions=buckets)
    args = (config.join_window_s, config.default_quality)
    rows = dd.map_partitions(
        _join_bucket_rows, light, followers, *args, meta=AGG_META, align_dataframes=False
    )
    counts_frame = dd.map_partitions(
        _join_bucket_counts, light, followers, *args, meta=_COUNTS_META, align_dataframes=False
    )
    aligned = rows.set_index("part", divisions=(*range(n_parts), n_parts - 1))
    out = Path(out)
    (out / "vw").mkdir(parents=True, exist_ok=True)
    assemble: dict[str, Any] = {
        "files": [str(p) for p in decision_files],
        "models": models,
        "reward": config.reward,
        "holdout_fraction": config.holdout_fraction,
        "n_features": n_features,
        "n_action": n_action,
    }
    meta = assemble_rows(
        AGG_META.set_index("part"), partition_info={"number": 0}, vw_dir=None, **assemble
    )
    joined = aligned.map_partitions(
        assemble_rows, meta=meta, enforce_metadata=False, vw_dir=str(out / "vw"), **assemble
    )
    write = joined.to_parquet(
        str(out / "rows"),
        write_index=False,
        compute=False,
        name_function=part_name,
        overwrite=False,
    )
    _, counts_parts = compute(write, counts_frame)
    counts = {k: int(v) for k, v in counts_parts.sum().items()}
    counts.update(joined_counts(out / "rows"))
    feature_columns = [c for c in meta.columns if c[:2] in ("c_", "m_", "a_")]
    return JoinSummary(
        out / "rows", out / "vw", counts, models, feature_columns, config.reward or spec
    )


_DECISION_LIGHT_META = pd.DataFrame(
    {
        "bucket": pd.Series(dtype="int64"),
        "event_id": pd.Series(dtype=object),
        "d_ts": pd.Series(dtype="float64"),
        "d_seq": pd.Series(dtype="int64"),
        "part": pd.Series(dtype="int64"),
        "pos": pd.Series(dtype="int64"),
    }
)
_COUNTS_META = pd.DataFrame(
    {
        k: pd.Series(dtype="int64")
        for k in (
            "n_late",
            "n_orphans",
            "n_duplicate_decisions",
            "n_repeated_outcomes",
            "n_outcome_events",
            "n_feedback_events",
            "n_decision_events",
        )
    }
)


def _models_in(path: str) -> set[str]:
    column = pq.read_table(path, columns=["chosen_model"])["chosen_model"]
    return {str(m) for m in pc.unique(column).to_pylist()}


def _shape_of(files: Sequence[Path]) -> tuple[int, int, RewardSpec]:
    """Context and action feature lengths and the logged reward spec of the first decision."""
    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(
                group, columns=["context_features", "action_features", *SPEC_FIELDS]
            )
            if len(table):
                row = table.slice(0, 1).to_pylist()[0]
                spec = RewardSpec(**{name: row[name] for name in SPEC_FIELDS})
                return len(row["context_features"]), len(row["action_features"][0]), spec
    raise DatasetError(f"no events found: the decision files {[str(f) for f in files]} are empty")
