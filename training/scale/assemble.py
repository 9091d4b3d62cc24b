"""Step 2, per decision file: the joined rows with their features, and the VW examples of the
learnable ones (written by the shared formatter, :func:`router.policy.vw_text.examples_text`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.errors import DatasetError, ServiceError
from router.policy.base import RewardSpec
from router.policy.vw_text import examples_text
from training.scale.layout import SPEC_FIELDS


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


def assemble_rows(
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
        raise ServiceError(f"join: partition {number} received rows of another decision file")
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
        *SPEC_FIELDS,
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
        column: np.ndarray = table[name].to_numpy()
        return column

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
        examples = examples_text(
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


def joined_counts(out: Path) -> dict[str, int]:
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
