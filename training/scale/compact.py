"""Step 1 of retraining at scale: a file sink's JSON lines to the Parquet layout, one Dask task
per file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from dask.base import compute
from dask.delayed import delayed

from features.errors import DatasetError, MissingFrameError
from router.events.codec import RecordReader
from router.events.file_sink import event_files, event_lines
from router.events.models import RewardSpecRecord
from training.scale.layout import (
    PARQUET_KINDS,
    RECORD_KINDS,
    REQUIRED,
    SCHEMAS,
    SPEC_FIELDS,
    part_name,
)

logger = logging.getLogger(__name__)


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
        raise DatasetError(f"no events found at {jsonl_dir}: expected events-*.jsonl[.zst] files")
    root = Path(out)
    for kind in PARQUET_KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
    tasks = [delayed(_compact_file)(str(p), i, str(root)) for i, p in enumerate(files)]
    totals: dict[str, int] = {}
    for counts in compute(*tasks):
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _compact_file(path: str, number: int, root: str) -> dict[str, int]:
    lines = event_lines(path)
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in PARQUET_KINDS}
    torn = 0
    reader = RecordReader()  # format 1 and 2 lines (router.events.codec)
    for number_in_file, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number_in_file}"
        try:
            expanded = reader.expand(json.loads(raw))
        except MissingFrameError as exc:  # corruption, even on the last line
            raise DatasetError(f"{where}: {exc}") from exc
        except ValueError as exc:  # JSON, or a malformed frame or decision (DatasetError)
            if number_in_file == len(lines):
                logger.warning("skipping torn last line of %s", where)
                torn += 1
                continue
            raise DatasetError(f"{where}: malformed event line: {exc}") from exc
        if expanded is None:  # a frame: its decisions carry it
            continue
        record = expanded
        kind = RECORD_KINDS.get(record.pop("kind", None))
        if kind is None:
            raise DatasetError(f"{where}: kind: expected one of {sorted(RECORD_KINDS)}")
        record["seq"] = (number << 32) + number_in_file
        if kind == "decisions":
            spec = {**RewardSpecRecord().model_dump(), **(record.pop("reward_spec", None) or {})}
            record.update({name: spec[name] for name in SPEC_FIELDS})
            record.pop("learnable", None)
        missing = [name for name in REQUIRED[kind] if name not in record]
        if missing:
            raise DatasetError(f"{where}: {kind} record is missing field(s) {missing}")
        rows[kind].append(record)
    for kind, records in rows.items():
        table = pa.Table.from_pylist(records, schema=SCHEMAS[kind])
        pq.write_table(table, Path(root) / kind / part_name(number))
    return {**{kind: len(r) for kind, r in rows.items()}, "torn_lines": torn}
