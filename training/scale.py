"""Retraining on event logs larger than memory, with Dask (DESIGN.md §4, "training on large logs").

Pipeline (:func:`train_at_scale`), each step partition by partition; nothing ``.compute()``\\ s
the log into one pandas frame:

1. **Compact** (JSON-lines logs only): each ``events-*.jsonl`` file of the file sink becomes one
   Parquet file per kind (:func:`compact_events`; layout below), one Dask task per file.
2. **Join** (:func:`join_at_scale`) with the rules of :mod:`router.events.join`: the *light*
   columns (event id, timestamps, outcome fields, quality) of decisions and followers
   (outcomes + feedback) are shuffled into the same hash buckets of the event id
   (``set_index`` on the bucket with fixed divisions, so bucket b is partition b of both),
   joined bucket by bucket in pandas (window, first outcome, latest quality, default quality,
   late and orphan counts), shuffled back to the decision file they came from and
   assembled there with the *heavy* columns (context and action features), which never move.
   The reward is recomputed from the raw components (``quality - w_cost * cost / cost_scale -
   w_latency * latency / latency_scale``) with given weights, or each decision's logged spec.
   Output per decision file: a Parquet file of model-ready columns (context features ``c_*``,
   the chosen model one-hot ``m_*``, its action features ``a_*``, the reward) and a text file
   of the learnable rows' VW examples, formatted by vectorised Arrow kernels on the workers.
3. **Reward model**: :class:`lightgbm.dask.DaskLGBMRegressor` on ``c_* + m_* + a_*`` against the
   reward, on the Dask cluster (data-parallel; each worker holds only its share of the rows),
   scored on a held-out share of decisions (by hash of the event id).
4. **VW policy**: the example files are streamed in decision order (constant memory) into the
   :class:`~router.policy.vw.VWSquareCBPolicy`'s workspace, by VW's own parser through a
   named pipe (:func:`learn_vw_stream`); the examples are the ones ``learn_one`` builds (label
   ``0:-reward:probability`` on the chosen action, so VW weights by the inverse of the logged
   probability; tests check the text and the learned model against ``learn_one``). Rows whose
   ``override_reason`` is set (not learnable) or without an outcome are skipped. One pass,
   single-threaded: VW learns sequentially.

Memory: the client holds one decision file's worth at most (the VW pass holds only VW);
workers hold the light columns being shuffled, one decision file's heavy columns while they
assemble it, and, during the reward model, their share of the training matrix (LightGBM
trains data-parallel in memory, so that share is what bounds the rows per worker).

Parquet layout of a log (``<root>/{decisions,outcomes,feedback}/part-<n>.parquet``)
--------------------------------------------------------------------------------------
The records of :mod:`router.events.models`, columnar (:data:`DECISION_SCHEMA`,
:data:`OUTCOME_SCHEMA`, :data:`FEEDBACK_SCHEMA`): the reward spec is flattened to ``w_cost,
w_latency, cost_scale, latency_scale``; ``seq`` is each event's position in the log's write
order (the join's tie-break; ``file index * 2**32 + line`` after compaction). Decision files
should be in write order (time order) and of similar size: they are the unit of work.

Limits (documented, not silent): a repeated decision id is dropped (first in ``seq`` order
kept, as in the in-memory join) and counted in ``n_duplicate_decisions``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from router.errors import DatasetError
from router.events.file_sink import event_files
from router.events.models import RewardSpecRecord
from router.policy.actions import ACTION_FEATURES
from router.policy.base import RewardSpec
from router.policy.vw import VWSquareCBPolicy

logger = logging.getLogger(__name__)

PARQUET_KINDS = ("decisions", "outcomes", "feedback")
DECISION_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("timestamp", pa.float64()),
        ("seq", pa.int64()),
        ("tenant", pa.string()),
        ("profile", pa.string()),
        ("policy_version", pa.string()),
        ("feature_version", pa.string()),
        ("reward_spec_version", pa.string()),
        ("w_cost", pa.float64()),
        ("w_latency", pa.float64()),
        ("cost_scale", pa.float64()),
        ("latency_scale", pa.float64()),
        ("eligible_models", pa.list_(pa.string())),
        ("action_features", pa.list_(pa.list_(pa.float64()))),
        ("probabilities", pa.list_(pa.float64())),
        ("chosen_model", pa.string()),
        ("chosen_index", pa.int64()),
        ("chosen_probability", pa.float64()),
        ("override_reason", pa.string()),
        ("context_features", pa.list_(pa.float64())),
        ("prompt", pa.string()),
    ]
)
OUTCOME_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("timestamp", pa.float64()),
        ("seq", pa.int64()),
        ("cost_usd", pa.float64()),
        ("latency_ms", pa.float64()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("error_class", pa.string()),
        ("fallback_used", pa.bool_()),
        ("quality", pa.float64()),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("timestamp", pa.float64()),
        ("seq", pa.int64()),
        ("quality", pa.float64()),
    ]
)
_SCHEMAS = dict(zip(PARQUET_KINDS, (DECISION_SCHEMA, OUTCOME_SCHEMA, FEEDBACK_SCHEMA), strict=True))
_RECORD_KINDS = {"decision": "decisions", "outcome": "outcomes", "feedback": "feedback"}
_SPEC_FIELDS = ("w_cost", "w_latency", "cost_scale", "latency_scale")
_HASH_KEY = "0123456789123456"


def part_name(number: int) -> str:
    """File name of the ``number``-th Parquet part (sorts in write order)."""
    return f"part-{number:06d}.parquet"


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
        1 / p (about 25 here) it overshoots; on a 4,000-decision synthetic log the greedy choice
        after one pass reached mean reward 0.49 at 0.1 but 0.24 at 0.5 and 2.0 (uniform: 0.28).
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
            raise ValueError(f"join_window_s must be >= 0, got {self.join_window_s}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.n_estimators < 1 or self.num_leaves < 2:
            raise ValueError("n_estimators must be >= 1 and num_leaves >= 2")
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")


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


# ---- 1. JSON lines -> Parquet ------------------------------------------------------------------


def compact_events(jsonl_dir: str | Path, out: str | Path) -> dict[str, int]:
    """Convert a file sink directory to the Parquet layout, one Dask task per file.

    Runs on the current Dask scheduler (a ``distributed.Client`` if one is active).

    Returns
    -------
    dict
        Events written per kind and skipped torn lines.

    Raises
    ------
    DatasetError
        No event files in ``jsonl_dir``; a malformed line that is not the last of its file; a
        record missing a field or of an unknown kind (named with file and line).
    """
    files = event_files(jsonl_dir)
    if not files:
        raise DatasetError(f"no events found at {jsonl_dir}: expected events-*.jsonl files")
    root = Path(out)
    for kind in PARQUET_KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
    tasks = [dask.delayed(_compact_file)(str(p), i, str(root)) for i, p in enumerate(files)]
    totals: dict[str, int] = {}
    for counts in dask.compute(*tasks):
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _compact_file(path: str, number: int, root: str) -> dict[str, int]:
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in PARQUET_KINDS}
    torn = 0
    for number_in_file, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number_in_file}"
        try:
            record = json.loads(raw)
        except ValueError as exc:
            if number_in_file == len(lines):
                logger.warning("skipping torn last line of %s", where)
                torn += 1
                continue
            raise DatasetError(f"{where}: malformed event line: {exc}") from exc
        kind = _RECORD_KINDS.get(record.pop("kind", None))
        if kind is None:
            raise DatasetError(f"{where}: kind: expected one of {sorted(_RECORD_KINDS)}")
        record["seq"] = (number << 32) + number_in_file
        if kind == "decisions":
            spec = {**RewardSpecRecord().model_dump(), **(record.pop("reward_spec", None) or {})}
            record.update({name: spec[name] for name in _SPEC_FIELDS})
            record.pop("learnable", None)
        missing = [name for name in _REQUIRED[kind] if name not in record]
        if missing:
            raise DatasetError(f"{where}: {kind} record is missing field(s) {missing}")
        rows[kind].append(record)
    for kind, records in rows.items():
        table = pa.Table.from_pylist(records, schema=_SCHEMAS[kind])
        pq.write_table(table, Path(root) / kind / part_name(number))
    return {**{kind: len(r) for kind, r in rows.items()}, "torn_lines": torn}


_REQUIRED = {
    "decisions": (
        "event_id",
        "timestamp",
        "eligible_models",
        "action_features",
        "probabilities",
        "chosen_model",
        "chosen_index",
        "chosen_probability",
        "context_features",
    ),
    "outcomes": ("event_id", "timestamp", "cost_usd", "latency_ms"),
    "feedback": ("event_id", "timestamp", "quality"),
}


# ---- 2. the join ---------------------------------------------------------------------------------


def locate_events(path: str | Path) -> tuple[str, Path]:
    """``("parquet", root)`` or ``("jsonl", directory)`` for an event log at ``path``.

    Accepts a Parquet layout root, a file sink directory, or a directory holding ``parquet/``
    or ``jsonl/`` (as :mod:`training.synth_events` writes).

    Raises
    ------
    DatasetError
        When ``path`` holds neither.
    """
    base = Path(path)
    for root in (base, base / "parquet"):
        if any((root / "decisions").glob("*.parquet")):
            return "parquet", root
    for directory in (base, base / "jsonl"):
        if directory.is_dir() and event_files(directory):
            return "jsonl", directory
    raise DatasetError(
        f"no events found at {base}: expected decisions/*.parquet (Parquet layout) or "
        "events-*.jsonl files (file sink), directly or under parquet/ or jsonl/"
    )


def _kind_files(root: Path, kind: str) -> list[Path]:
    files = sorted((root / kind).glob("*.parquet"))
    required = {
        "decisions": (*_REQUIRED["decisions"], "seq", *_SPEC_FIELDS, "override_reason"),
        "outcomes": (*_REQUIRED["outcomes"], "seq", "input_tokens", "output_tokens", "quality"),
        "feedback": (*_REQUIRED["feedback"], "seq"),
    }[kind]
    for path in files:
        names = pq.read_schema(path).names
        missing = [c for c in required if c not in names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} of the {kind} layout")
    return files


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
_AGG_COLUMNS = tuple(_AGG_DTYPES)
_AGG_META = pd.DataFrame({k: pd.Series(dtype=t) for k, t in _AGG_DTYPES.items()})


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
    return joined[list(_AGG_COLUMNS)], counts


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
    decision_files = _kind_files(root, "decisions")
    if not decision_files:
        raise DatasetError(f"no events found at {root}: no decisions/*.parquet files")
    follower_files = _kind_files(root, "outcomes") + _kind_files(root, "feedback")
    n_features, n_action, spec = _shape_of(decision_files)
    if models is None:
        found = dask.compute(*[dask.delayed(_models_in)(str(p)) for p in decision_files])
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
        _join_bucket_rows, light, followers, *args, meta=_AGG_META, align_dataframes=False
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
    meta = _assemble(
        _AGG_META.set_index("part"), partition_info={"number": 0}, vw_dir=None, **assemble
    )
    joined = aligned.map_partitions(
        _assemble, meta=meta, enforce_metadata=False, vw_dir=str(out / "vw"), **assemble
    )
    write = joined.to_parquet(
        str(out / "rows"),
        write_index=False,
        compute=False,
        name_function=part_name,
        overwrite=False,
    )
    _, counts_parts = dask.compute(write, counts_frame)
    counts = {k: int(v) for k, v in counts_parts.sum().items()}
    counts.update(_joined_counts(out / "rows"))
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
                group, columns=["context_features", "action_features", *_SPEC_FIELDS]
            )
            if len(table):
                row = table.slice(0, 1).to_pylist()[0]
                spec = RewardSpec(**{name: row[name] for name in _SPEC_FIELDS})
                return len(row["context_features"]), len(row["action_features"][0]), spec
    raise DatasetError(f"no events found: the decision files {[str(f) for f in files]} are empty")


def _matrix(column: pa.ChunkedArray | pa.Array, width: int, what: str) -> np.ndarray:
    """A list column whose lists all have ``width`` floats, as an (n, width) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != width).any():
        raise DatasetError(f"{what}: expected {width} values per row, found {sorted(set(lengths))}")
    return np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False), float).reshape(
        -1, width
    )


def _assemble(
    aggregated: pd.DataFrame,
    partition_info: dict[str, Any] | None = None,
    *,
    files: Sequence[str],
    models: Sequence[str],
    reward: RewardSpec | None,
    holdout_fraction: float,
    n_features: int,
    n_action: int,
    vw_dir: str | None,
) -> pd.DataFrame:
    """Joined rows of one decision file: its aggregated join results plus its heavy columns.

    Writes the learnable rows' VW examples to ``vw_dir/part-<number>.txt`` (blank-line
    separated, decision order); a re-run task rewrites the same file.
    """
    number = int(partition_info["number"]) if partition_info else 0
    path = files[number]
    if len(aggregated) and (aggregated.index.to_numpy() != number).any():
        raise RuntimeError(f"join: partition {number} received rows of another decision file")
    aggregated = aggregated.sort_values("pos")
    columns = [
        "event_id",
        "timestamp",
        "chosen_model",
        "chosen_index",
        "chosen_probability",
        "override_reason",
        "eligible_models",
        "action_features",
        "context_features",
        *_SPEC_FIELDS,
    ]
    table = pq.read_table(path, columns=columns).take(pa.array(aggregated["pos"].to_numpy()))
    n = len(table)
    context = _matrix(table["context_features"], n_features, f"{path}: context_features")
    actions = table["action_features"].combine_chunks()
    per_action = _matrix(pc.list_flatten(actions), n_action, f"{path}: action_features")
    counts = pc.list_value_length(actions).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    chosen_index = table["chosen_index"].to_numpy()
    if n and ((chosen_index < 0) | (chosen_index >= counts)).any():
        raise DatasetError(f"{path}: chosen_index outside the eligible models of its decision")
    chosen_flat = offsets[:-1] + chosen_index

    def spec_column(name: str) -> np.ndarray:
        if reward is not None:
            return np.full(n, getattr(reward, name))
        return table[name].to_numpy()

    quality = aggregated["quality"].to_numpy(float)
    cost = aggregated["cost_usd"].to_numpy(float)
    latency = aggregated["latency_ms"].to_numpy(float)
    reward_values = (
        quality
        - spec_column("w_cost") * cost / spec_column("cost_scale")
        - spec_column("w_latency") * latency / spec_column("latency_scale")
    )
    has_outcome = aggregated["has_outcome"].to_numpy(bool)
    learnable = table["override_reason"].is_null().to_numpy(zero_copy_only=False)
    probability = table["chosen_probability"].to_numpy()
    ids = table["event_id"].to_numpy(zero_copy_only=False)
    chosen_model = table["chosen_model"].to_numpy(zero_copy_only=False)
    code = pd.Categorical(chosen_model, categories=list(models)).codes
    if (code < 0).any():
        raise DatasetError(
            f"{path}: chosen models {sorted(set(chosen_model[code < 0]))} are not in the model list"
        )
    one_hot = np.zeros((n, len(models)), np.float32)
    one_hot[np.arange(n), code] = 1.0
    hold = (pd.util.hash_array(ids.astype(object)) % np.uint64(10_000)) < holdout_fraction * 10_000
    use = has_outcome & learnable & np.isfinite(reward_values)
    if vw_dir is not None:
        rows = np.flatnonzero(use)
        sub_counts = counts[rows]
        sub_offsets = np.concatenate([[0], np.cumsum(sub_counts)]).astype(np.int64)
        flat_rows = np.repeat(offsets[:-1][rows] - sub_offsets[:-1], sub_counts) + np.arange(
            sub_offsets[-1]
        )
        examples = _vw_examples(
            context[rows],
            table["eligible_models"].combine_chunks().take(pa.array(rows)),
            per_action[flat_rows],
            sub_offsets,
            sub_offsets[:-1] + chosen_index[rows],
            -reward_values[rows],
            probability[rows],
        )
        with open(Path(vw_dir) / f"part-{number:06d}.txt", "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(example)
                handle.write("\n\n")
    frame = pd.DataFrame(
        {
            "event_id": ids,
            "timestamp": table["timestamp"].to_numpy(),
            "chosen_model": chosen_model,
            "chosen_index": chosen_index,
            "chosen_probability": probability,
            "learnable": learnable,
            "has_outcome": has_outcome,
            "cost_usd": cost,
            "latency_ms": latency,
            "input_tokens": aggregated["input_tokens"].to_numpy(float),
            "output_tokens": aggregated["output_tokens"].to_numpy(float),
            "error_class": aggregated["error_class"].to_numpy(object),
            "fallback_used": aggregated["fallback_used"].to_numpy(float),
            "quality": quality,
            "quality_imputed": aggregated["quality_imputed"].to_numpy(bool),
            "n_feedback": aggregated["n_feedback"].to_numpy(np.int64),
            "reward": reward_values,
            "holdout": np.asarray(hold, bool),
            "vw_learnable": use,
        }
    )
    features = pd.DataFrame(
        np.hstack(
            [context.astype(np.float32), one_hot, per_action[chosen_flat].astype(np.float32)]
        ),
        columns=[
            *(f"c_{i}" for i in range(n_features)),
            *(f"m_{j}" for j in range(len(models))),
            *(f"a_{k}" for k in range(n_action)),
        ],
    )
    return pd.concat([frame, features], axis=1)


def _joined_counts(out: Path) -> dict[str, int]:
    columns = ["has_outcome", "learnable", "quality_imputed", "vw_learnable"]
    totals = {"n_joined": 0, "n_with_outcome": 0, "n_learnable": 0, "n_imputed": 0, "n_vw": 0}
    for path in sorted(out.glob("*.parquet")):
        table = pq.read_table(path, columns=columns)
        totals["n_joined"] += len(table)
        totals["n_with_outcome"] += int(pc.sum(table["has_outcome"]).as_py() or 0)
        totals["n_learnable"] += int(pc.sum(table["learnable"]).as_py() or 0)
        totals["n_imputed"] += int(pc.sum(table["quality_imputed"]).as_py() or 0)
        totals["n_vw"] += int(pc.sum(table["vw_learnable"]).as_py() or 0)
    return totals


# ---- VW example text, vectorised (the lines VWSquareCBPolicy._learn_one builds) -----------------


_POW10 = 10.0 ** np.arange(0, 309)


def _round6(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to 6 significant digits, as ``float(f"{v:.6g}")`` gives.

    ``round(v * 10**k) / 10**k`` with an exact power of ten is the correctly rounded decimal
    (up to ties), so VW parses the same float from our text as from ``_context_line``'s.
    """
    x = np.asarray(values, dtype=float)
    out = x.copy()
    ok = np.flatnonzero(np.isfinite(x) & (x != 0))
    v = x[ok]
    shift = 5 - np.floor(np.log10(np.abs(v))).astype(np.int64)
    up = shift >= 0
    scale = _POW10[np.minimum(np.abs(shift), 308)]
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.round(v * scale) / scale
        down = np.flatnonzero(~up)
        rounded[down] = np.round(v[down] / scale[down]) * scale[down]
    rounded = np.where(np.isfinite(rounded) & (np.abs(shift) <= 308), rounded, v)
    out[ok] = rounded
    return out


def _numbers(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(_round6(values)), pa.string())


def _prefixed(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(prefix), _numbers(values), pa.scalar(""))


def _vw_examples(
    context: np.ndarray,
    eligible: pa.ListArray,
    per_action: np.ndarray,
    offsets: np.ndarray,
    chosen_flat: np.ndarray,
    label_cost: np.ndarray,
    probability: np.ndarray,
) -> list[str]:
    """One multi-line ADF example per row (shared line, then one line per eligible model).

    Same features as ``VWSquareCBPolicy._learn_one``: zero context features are left out,
    numbers have 6 significant digits, model names have whitespace, ``|`` and ``:`` replaced.
    A few vectorised Arrow kernels over all values of the partition (no Python loop per row).
    """
    n, width = context.shape
    if n == 0:
        return []
    flat = context.ravel()
    nonzero = flat != 0
    index = np.tile(np.arange(width, dtype=np.int32), n)[nonzero]
    prefixes = pc.take(pa.array([f"{j}:" for j in range(width)]), pa.array(index))
    pairs = pc.binary_join_element_wise(prefixes, _numbers(flat[nonzero]), pa.scalar(""))
    per_row = np.concatenate([[0], np.cumsum(nonzero.reshape(n, width).sum(axis=1))])
    shared = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(per_row.astype(np.int32)), pairs), " "
    )
    shared = pc.binary_join_element_wise(pa.scalar("shared |c"), shared, pa.scalar(" "))
    names = pc.replace_substring_regex(pc.list_flatten(eligible), r"[\s|:]", "_")
    numeric = [
        _prefixed(f"{name}:", per_action[:, k])
        for k, name in zip(range(per_action.shape[1]), ACTION_FEATURES, strict=False)
    ]
    head = pc.binary_join_element_wise(pa.scalar("|a m="), names, pa.scalar(""))
    lines = pc.binary_join_element_wise(head, *numeric, pa.scalar(" "))
    labels = pc.binary_join_element_wise(
        pa.scalar("0"), _numbers(label_cost), _numbers(probability), pa.scalar(":")
    )
    label_at = np.full(len(names), None, dtype=object)
    label_at[chosen_flat] = labels.to_numpy(zero_copy_only=False)
    lines = pc.binary_join_element_wise(
        pa.array(label_at, pa.string()), lines, pa.scalar(" "), null_handling="skip"
    )
    action_block = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), lines), "\n"
    )
    text = pc.binary_join_element_wise(shared, action_block, pa.scalar("\n"))
    return list(text.to_pylist())


# ---- 3. reward model, 4. VW policy ---------------------------------------------------------------


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
    sums = dask.compute(*[dask.delayed(_reward_sum)(path) for path in files])
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
    frame = table.to_pandas()
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


def iter_vw_examples(vw_dir: str | Path) -> Iterator[str]:
    """The learnable rows' VW examples in decision order, read one line at a time."""
    for path in sorted(Path(vw_dir).glob("part-*.txt")):
        with open(path, encoding="utf-8") as handle:
            lines: list[str] = []
            for line in handle:
                if line == "\n":
                    if lines:
                        yield "".join(lines).rstrip("\n")
                    lines = []
                else:
                    lines.append(line)
            if lines:
                yield "".join(lines).rstrip("\n")


def learn_vw_stream(vw_dir: str | Path, policy: VWSquareCBPolicy, native: bool = True) -> None:
    """Stream the joined examples, in decision order, into ``policy``'s VW workspace.

    ``native``: VW's own parser reads the example files through a named pipe fed by ``cat``
    (constant memory; about half the time of parsing each example from Python). Otherwise
    each example goes through ``Workspace.learn`` as ``VWSquareCBPolicy.learn_one`` does.
    Both give the same model (``tests/test_scale.py``).
    """
    files = sorted(Path(vw_dir).glob("part-*.txt"))
    if not native or not hasattr(os, "mkfifo"):
        workspace = policy.workspace
        for text in iter_vw_examples(vw_dir):
            workspace.learn(text)
        _resync(policy, workspace)
        return
    from vowpalwabbit import Workspace

    with tempfile.TemporaryDirectory(prefix="polyroute-vw-") as tmp:
        pipe = Path(tmp) / "examples"
        os.mkfifo(pipe)
        if hasattr(policy, "vw_"):  # continue from the policy's current weights
            model = Path(tmp) / "start.vw"
            policy.vw_.save(str(model))
            arguments = f"--quiet -i {model}"
        else:
            arguments = policy._arguments()
        # the writer opens the pipe in its own process: opening blocks until VW reads
        feeder = subprocess.Popen(["sh", "-c", 'cat "$@" > "$0"', str(pipe), *map(str, files)])
        try:
            workspace = Workspace(f"{arguments} -d {pipe}")
            workspace.run_parser()
        except BaseException:
            feeder.kill()  # it may wait forever to open a pipe nobody reads
            feeder.wait()
            raise
        code = feeder.wait()
        if code != 0:
            raise RuntimeError(f"feeding VW examples from {vw_dir} failed (cat exit {code})")
        _resync(policy, workspace)


def _resync(policy: VWSquareCBPolicy, workspace: Any) -> None:
    """Give ``policy`` the trained workspace the way loading a saved policy does, so that its
    derived state (SquareCB's example counter, the serving fast path) follows the weights."""
    with tempfile.TemporaryDirectory(prefix="polyroute-vw-") as tmp:
        workspace.save(str(Path(tmp) / "policy.vw"))
        policy._load_state(Path(tmp))


# ---- orchestration -------------------------------------------------------------------------------


class PeakMemory:
    """Samples the resident memory of this process and its children (Dask workers) in a thread.

    Attributes after exit: ``client_mb``, ``workers_mb`` (peak of their sum), ``total_mb``
    (peak of client + workers at one instant).
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.client_mb = self.workers_mb = self.total_mb = 0.0
        self.phases: dict[str, float] = {}  # phase -> peak total MB while it ran
        self._phase_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        process = psutil.Process()
        client = process.memory_info().rss
        workers = 0
        for child in process.children(recursive=True):
            try:
                workers += child.memory_info().rss
            except psutil.Error:
                continue
        mb = 1024.0 * 1024.0
        self.client_mb = max(self.client_mb, client / mb)
        self.workers_mb = max(self.workers_mb, workers / mb)
        self.total_mb = max(self.total_mb, (client + workers) / mb)
        self._phase_peak = max(self._phase_peak, (client + workers) / mb)

    def end_phase(self, name: str) -> None:
        """Record the peak total since the previous phase ended under ``name``."""
        self.sample()
        self.phases[name] = self._phase_peak
        self._phase_peak = 0.0


def train_at_scale(
    path: str | Path,
    config: ScaleConfig | None = None,
    client: Any = None,
    policy: VWSquareCBPolicy | None = None,
    models: Sequence[str] | None = None,
) -> ScaleResult:
    """Retrain the reward model and the VW policy from an event log of any size.

    Parameters
    ----------
    path : str or Path
        A Parquet-layout log or a file sink directory (:func:`locate_events`).
    config : ScaleConfig, optional
    client : distributed.Client, optional
        Default: a ``LocalCluster`` of ``config.n_workers`` single-threaded worker processes,
        closed at the end.
    policy : VWSquareCBPolicy, optional
        Continue training this policy (e.g. the champion bundle's); default a fresh one with
        the reward spec in force and ``config.seed``.
    models : list of str, optional
        The one-hot's model order; default: the chosen models found in the log, sorted.

    Raises
    ------
    DatasetError
        No events at ``path``, or malformed ones (named by file and column).
    """
    from distributed import Client, LocalCluster

    config = config or ScaleConfig()
    kind, source = locate_events(path)
    base = Path(config.workdir) if config.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="polyroute-scale-", dir=base))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    own = client is None
    cluster = None
    with PeakMemory() as memory:
        if own:
            cluster = LocalCluster(
                n_workers=config.n_workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=config.worker_memory,
                dashboard_address=None,
            )
            client = Client(cluster)
            timings["cluster_start"] = time.perf_counter() - start
            memory.end_phase("cluster_start")
        try:
            with client.as_current():
                counts: dict[str, int] = {}
                root = source
                if kind == "jsonl":
                    tick = time.perf_counter()
                    root = run_dir / "parquet"
                    compacted = compact_events(source, root)
                    counts["torn_lines"] = compacted["torn_lines"]
                    timings["compact"] = time.perf_counter() - tick
                    memory.end_phase("compact")
                tick = time.perf_counter()
                join = join_at_scale(root, run_dir / "joined", config, models)
                counts.update(join.counts)
                timings["join"] = time.perf_counter() - tick
                memory.end_phase("join")
                tick = time.perf_counter()
                reward_model, metrics = train_reward_model(
                    join.path, join.feature_columns, config, client
                )
                timings["reward_model"] = time.perf_counter() - tick
                memory.end_phase("reward_model")
        finally:
            if own:
                client.close()
                if cluster is not None:
                    cluster.close()
        tick = time.perf_counter()
        policy = policy or VWSquareCBPolicy(
            reward=join.reward, seed=config.seed, learning_rate=config.vw_learning_rate
        )
        learn_vw_stream(join.vw_path, policy, config.vw_native_parser)
        counts["n_vw_learned"] = counts["n_vw"]
        timings["vw"] = time.perf_counter() - tick
        memory.end_phase("vw")
    timings["total"] = time.perf_counter() - start
    return ScaleResult(
        reward_model=reward_model,
        policy=policy,
        feature_columns=join.feature_columns,
        models=join.models,
        joined_path=join.path,
        timings_s=timings,
        counts=counts,
        metrics=metrics,
        memory_mb={
            "client_peak": memory.client_mb,
            "workers_peak": memory.workers_mb,
            "total_peak": memory.total_mb,
            **{f"{name}_peak": peak for name, peak in memory.phases.items()},
        },
    )


def remove_run(result: ScaleResult) -> None:
    """Delete the run's intermediate Parquet (compacted and joined), keeping the models."""
    shutil.rmtree(result.joined_path.parent.parent, ignore_errors=True)


__all__ = [
    "DECISION_SCHEMA",
    "FEEDBACK_SCHEMA",
    "OUTCOME_SCHEMA",
    "PARQUET_KINDS",
    "JoinSummary",
    "PeakMemory",
    "ScaleConfig",
    "ScaleResult",
    "compact_events",
    "iter_vw_examples",
    "join_at_scale",
    "learn_vw_stream",
    "locate_events",
    "part_name",
    "remove_run",
    "train_at_scale",
    "train_reward_model",
]
