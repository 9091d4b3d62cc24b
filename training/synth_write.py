"""Writers of synthetic-from-real event logs: the file sink's JSON lines and the Parquet layout
of :mod:`training.scale` (see :mod:`training.synth_events`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import DatasetError
from training.scale import DECISION_SCHEMA, FEEDBACK_SCHEMA, OUTCOME_SCHEMA, part_name
from training.synth_chunk import Followers

if TYPE_CHECKING:
    from training.synth_events import SynthSource, SynthStats

_PINNED = '"pinned"'


def _json_pieces(source: SynthSource) -> dict[str, list[str]]:
    if not source._json_cache:
        source._json_cache["context"] = [json.dumps(row) for row in source.contexts.tolist()]
        source._json_cache["action"] = [json.dumps(r) for r in source.action_features.tolist()]
        source._json_cache["model"] = [json.dumps(m) for m in source.models]
    return source._json_cache


def write_jsonl(
    path: Path,
    source: SynthSource,
    decisions: dict[str, Any],
    followers: Followers,
    events: dict[str, np.ndarray],
) -> None:
    pieces = _json_pieces(source)
    spec = json.dumps(source.reward.__dict__, separators=(",", ":"))
    head = (
        f'"tenant":"synthetic","profile":"default","policy_version":"{source.policy_version}",'
        f'"feature_version":"{source.feature_version}","reward_spec":{spec},'
        '"reward_spec_version":"1",'
    )
    eligible = decisions["eligible"]
    pmf = decisions["pmf"]
    # Python floats: repr() of numpy scalars is not JSON, and json.dumps uses repr
    d_id, d_ts = decisions["event_id"].tolist(), decisions["timestamp"].tolist()
    d_chosen, d_index = decisions["chosen"].tolist(), decisions["chosen_index"].tolist()
    d_prompt, d_pinned = decisions["prompt"].tolist(), decisions["override"].tolist()
    f_id, f_ts = followers.event_id.tolist(), followers.timestamp.tolist()
    f_cost, f_latency = followers.cost_usd.tolist(), followers.latency_ms.tolist()
    f_in, f_out = followers.input_tokens.tolist(), followers.output_tokens.tolist()
    f_quality = followers.quality.tolist()
    lines: list[str] = []
    kinds, rows = events["kind"].tolist(), events["row"].tolist()
    for position in events["order"].tolist():
        i = rows[position]
        kind = kinds[position]
        if kind == 0:
            cols = np.flatnonzero(eligible[i]).tolist()
            probabilities = pmf[i, cols].tolist()
            chosen = d_chosen[i]
            pinned = d_pinned[i]
            lines.append(
                f'{{"kind":"decision","event_id":"{d_id[i]}","timestamp":{d_ts[i]!r},{head}'
                f'"eligible_models":[{",".join(pieces["model"][c] for c in cols)}],'
                f'"action_features":[{",".join(pieces["action"][c] for c in cols)}],'
                f'"probabilities":{json.dumps(probabilities)},'
                f'"chosen_model":{pieces["model"][chosen]},'
                f'"chosen_index":{d_index[i]},'
                f'"chosen_probability":{float(pmf[i, chosen])!r},'
                f'"override_reason":{_PINNED if pinned else "null"},'
                f'"context_features":{pieces["context"][d_prompt[i]]},'
                f'"prompt":null,"learnable":{"false" if pinned else "true"}}}'
            )
        elif kind == 1:
            lines.append(
                f'{{"kind":"outcome","event_id":"{f_id[i]}","timestamp":{f_ts[i]!r},'
                f'"cost_usd":{f_cost[i]!r},"latency_ms":{f_latency[i]!r},'
                f'"input_tokens":{int(f_in[i])},"output_tokens":{int(f_out[i])},'
                '"error_class":null,"fallback_used":false,"quality":null,"attempts":null}'
            )
        else:
            lines.append(
                f'{{"kind":"feedback","event_id":"{f_id[i]}","timestamp":{f_ts[i]!r},'
                f'"quality":{f_quality[i]!r}}}'
            )
    with open(path, "x", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
        handle.write("\n")


def write_parquet(
    root: Path,
    number: int,
    source: SynthSource,
    decisions: dict[str, Any],
    followers: Followers,
    events: dict[str, np.ndarray],
) -> None:
    n = len(decisions["timestamp"])
    seq = events["seq"]
    eligible = decisions["eligible"]
    counts = eligible.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    rows, cols = np.nonzero(eligible)
    models = np.array(source.models, dtype=object)
    n_action = source.action_features.shape[1]
    action_rows = pa.FixedSizeListArray.from_arrays(
        pa.array(source.action_features[cols].ravel()), n_action
    )
    prompt = decisions["prompt"]
    n_features = source.contexts.shape[1]
    chosen = decisions["chosen"]
    pinned = decisions["override"]
    spec = source.reward
    table = pa.table(
        {
            "event_id": pa.array(decisions["event_id"], pa.string()),
            "timestamp": decisions["timestamp"],
            "seq": seq[:n],
            "tenant": pa.array(["synthetic"] * n, pa.string()),
            "profile": pa.array(["default"] * n, pa.string()),
            "policy_version": pa.array([source.policy_version] * n, pa.string()),
            "feature_version": pa.array([source.feature_version] * n, pa.string()),
            "reward_spec_version": pa.array(["1"] * n, pa.string()),
            "w_cost": np.full(n, spec.w_cost),
            "w_latency": np.full(n, spec.w_latency),
            "cost_scale": np.full(n, spec.cost_scale),
            "latency_scale": np.full(n, spec.latency_scale),
            "eligible_models": pa.ListArray.from_arrays(offsets, pa.array(models[cols])),
            "action_features": pa.ListArray.from_arrays(
                offsets, action_rows.cast(pa.list_(pa.float64()))
            ),
            "probabilities": pa.ListArray.from_arrays(
                offsets, pa.array(decisions["pmf"][rows, cols])
            ),
            "chosen_model": pa.array(models[chosen], pa.string()),
            "chosen_index": decisions["chosen_index"].astype(np.int64),
            "chosen_probability": decisions["pmf"][np.arange(n), chosen],
            "override_reason": pa.array(
                ["pinned" if p else None for p in pinned.tolist()], pa.string()
            ),
            "context_features": pa.FixedSizeListArray.from_arrays(
                pa.array(source.contexts[prompt].ravel()), n_features
            ).cast(pa.list_(pa.float64())),
            "prompt": pa.nulls(n, pa.string()),
        },
        schema=DECISION_SCHEMA,
    )
    pq.write_table(table, root / "decisions" / part_name(number))
    fseq = seq[n:]
    out = followers.is_outcome
    outcome_table = pa.table(
        {
            "event_id": pa.array(followers.event_id[out], pa.string()),
            "timestamp": followers.timestamp[out],
            "seq": fseq[out],
            "cost_usd": followers.cost_usd[out],
            "latency_ms": followers.latency_ms[out],
            "input_tokens": followers.input_tokens[out].astype(np.int64),
            "output_tokens": followers.output_tokens[out].astype(np.int64),
            "error_class": pa.nulls(int(out.sum()), pa.string()),
            "fallback_used": np.zeros(int(out.sum()), bool),
            "quality": pa.nulls(int(out.sum()), pa.float64()),
        },
        schema=OUTCOME_SCHEMA,
    )
    _write_sorted(outcome_table, root / "outcomes" / part_name(number))
    feedback_table = pa.table(
        {
            "event_id": pa.array(followers.event_id[~out], pa.string()),
            "timestamp": followers.timestamp[~out],
            "seq": fseq[~out],
            "quality": followers.quality[~out],
        },
        schema=FEEDBACK_SCHEMA,
    )
    _write_sorted(feedback_table, root / "feedback" / part_name(number))


def _write_sorted(table: pa.Table, path: Path) -> None:
    pq.write_table(table.sort_by("seq"), path)


def sample_records(path: str | Path, limit: int = 100) -> list[dict[str, Any]]:
    """The first ``limit`` records of the first JSON-lines file under ``path`` (for checks)."""
    files = sorted(Path(path).rglob("events-*.jsonl"))
    if not files:
        raise DatasetError(f"no events-*.jsonl files under {path}")
    records = []
    with open(files[0], encoding="utf-8") as handle:
        for line in handle:
            records.append(json.loads(line))
            if len(records) >= limit:
                break
    return records


def describe(stats: SynthStats) -> dict[str, Any]:
    """JSON-friendly summary of a generation run."""
    return {
        "n_decisions": stats.n_decisions,
        "n_outcomes": stats.n_outcomes,
        "n_feedback": stats.n_feedback,
        "n_events": stats.n_events,
        "n_files": stats.n_files,
        "seconds": round(stats.seconds, 2),
        "jsonl_dir": stats.jsonl_dir,
        "parquet_dir": stats.parquet_dir,
    }
