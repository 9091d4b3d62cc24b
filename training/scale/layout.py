"""The Parquet layout of an event log, and finding a log on disk.

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

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import DatasetError
from router.events.file_sink import event_files

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
SCHEMAS = dict(zip(PARQUET_KINDS, (DECISION_SCHEMA, OUTCOME_SCHEMA, FEEDBACK_SCHEMA), strict=True))
RECORD_KINDS = {"decision": "decisions", "outcome": "outcomes", "feedback": "feedback"}
SPEC_FIELDS = ("w_cost", "w_latency", "cost_scale", "latency_scale")
_HASH_KEY = "0123456789123456"


def part_name(number: int) -> str:
    """File name of the ``number``-th Parquet part (sorts in write order)."""
    return f"part-{number:06d}.parquet"


REQUIRED = {
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
        "events-*.jsonl[.zst] files (file sink), directly or under parquet/ or jsonl/"
    )


def kind_files(root: Path, kind: str) -> list[Path]:
    files = sorted((root / kind).glob("*.parquet"))
    required = {
        "decisions": (*REQUIRED["decisions"], "seq", *SPEC_FIELDS, "override_reason"),
        "outcomes": (*REQUIRED["outcomes"], "seq", "input_tokens", "output_tokens", "quality"),
        "feedback": (*REQUIRED["feedback"], "seq"),
    }[kind]
    for path in files:
        names = pq.read_schema(path).names
        missing = [c for c in required if c not in names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} of the {kind} layout")
    return files
