"""The compact event files (format 2 of ``router.events.codec``) carry what the full records
(format 1) did: the same joined rows and training rows (probabilities and context features to
float32 rounding), and logs written before it still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.errors import DatasetError
from router.events import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    FileEventSink,
    OutcomeEvent,
    join_events,
    read_events,
)
from router.events.codec import CompactEncoder
from router.events.models import Attempt, DecisionRecord, Emitted, RewardSpecRecord
from router.policy.base import RewardSpec
from training.scale.compact import compact_events
from training.train import select_learnable

FORMAT1 = Path(__file__).parent / "fixtures" / "events_format1"
MODELS = ["small", "medium", "large", "xl"]
F32_COLUMNS = ("probabilities", "context_features")


def _f32(values: list[float]) -> list[float]:
    rounded: list[float] = np.asarray(values, dtype=np.float32).astype(float).tolist()
    return rounded


def _log(n: int = 60, seed: int = 7) -> list[Emitted]:
    """A varied log: two tenants and profiles, three eligible sets, overrides, prompts, no
    outcome, fallbacks with their chain, repeated and late feedback; half the decisions in the
    gateway's ``DecisionRecord`` form."""
    rng = np.random.default_rng(seed)
    statics = rng.normal(size=(len(MODELS), 5))
    spec = RewardSpecRecord(w_cost=0.3, w_latency=0.1, cost_scale=0.02, latency_scale=1000.0)
    events: list[Emitted] = []
    for i in range(n):
        eligible = [MODELS, MODELS[:3], MODELS[1:]][i % 3]
        k = len(eligible)
        columns = [MODELS.index(m) for m in eligible]
        pmf = rng.dirichlet(np.ones(k))
        chosen = int(rng.integers(k))
        override = "pinned" if i % 11 == 5 else None
        if override:
            pmf = np.eye(k)[chosen]
        t0 = 1_764_547_200.0 + 0.37 * i
        fields: dict[str, Any] = {
            "event_id": f"{i:048x}",
            "timestamp": t0,
            "tenant": ["acme", "globex"][i % 2],
            "profile": ["default", "cheap"][i % 4 // 2],
            "policy_version": "bundle-1" if i < n // 2 else "bundle-2",
            "feature_version": "feat-1",
            "reward_spec": spec,
            "eligible_models": eligible,
            "chosen_index": chosen,
            "chosen_probability": float(pmf[chosen]),
            "override_reason": override,
            "prompt": "Say hello" if i % 7 == 3 else None,
        }
        context = rng.normal(scale=[0.05] * 10 + [3.0] * 3)
        context[-1] = 0.0
        if i % 2:
            events.append(
                DecisionRecord(
                    action_features=statics[columns],
                    probabilities=pmf,
                    context_features=context,
                    **fields,
                )
            )
        else:
            events.append(
                DecisionEvent(
                    action_features=statics[columns].tolist(),
                    probabilities=pmf.tolist(),
                    chosen_model=eligible[chosen],
                    context_features=context.tolist(),
                    **fields,
                )
            )
        eid = fields["event_id"]
        if i % 13 == 4:
            continue  # no outcome
        attempts = None
        if i % 9 == 2:
            attempts = [
                Attempt(model=eligible[chosen], error_class="http_503", latency_ms=120.5),
                Attempt(model="fallback", latency_ms=800.25),
            ]
        events.append(
            OutcomeEvent(
                event_id=eid,
                timestamp=t0 + 1.5,
                cost_usd=float(rng.uniform(0, 0.01)),
                latency_ms=float(rng.uniform(100, 2000)),
                input_tokens=int(rng.integers(1, 500)),
                output_tokens=int(rng.integers(0, 500)),
                error_class="http_503" if attempts else None,
                fallback_used=attempts is not None,
                quality=0.5 if i % 5 == 0 else None,
                attempts=attempts,
            )
        )
        if i % 3 == 0:
            events.append(FeedbackEvent(event_id=eid, timestamp=t0 + 30, quality=0.9))
        if i % 6 == 0:
            events.append(FeedbackEvent(event_id=eid, timestamp=t0 + 60, quality=0.1))
        if i % 8 == 1:  # outside the join window
            events.append(FeedbackEvent(event_id=eid, timestamp=t0 + 7200, quality=1.0))
    return events


def _write(events: list[Emitted], directory: Path, form: str, **kwargs: Any) -> Path:
    with FileEventSink(directory, fsync="never", format=form, **kwargs) as sink:  # type: ignore[arg-type]
        for event in events:
            sink.emit(event)
    return directory


def _events(emitted: list[Emitted]) -> list[Event]:
    return [e.to_event() if isinstance(e, DecisionRecord) else e for e in emitted]


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the float32 columns rounded as the compact form stores them."""
    out = frame.copy()
    for column in F32_COLUMNS:
        out[column] = out[column].map(_f32)
    return out


def test_compact_log_joins_and_trains_as_the_full_records(tmp_path: Path) -> None:
    emitted = _log()
    compact = _write(emitted, tmp_path / "compact", "compact", max_bytes=6_000)  # rotates
    full = _write(emitted, tmp_path / "full", "json")
    assert len(list(compact.iterdir())) > 3  # several files, each with its own frames

    # format 1 reads back exactly what was emitted
    reference = join_events(_events(emitted), join_window_s=3600)
    from_full = join_events(read_events(full), join_window_s=3600)
    pd.testing.assert_frame_equal(from_full, reference)
    assert from_full.attrs == reference.attrs == {"n_late": 7, "n_orphans": 0}

    # format 2: the same rows, exactly, but probabilities and context features (float32)
    from_compact = join_events(read_events(compact), join_window_s=3600)
    pd.testing.assert_frame_equal(from_compact, _rounded(reference))
    assert from_compact.attrs == reference.attrs
    changed = from_compact["context_features"].map(np.array) - reference["context_features"].map(
        np.array
    )
    assert 0 < max(np.abs(d).max() for d in changed) < 1e-6  # really rounded, and only so
    # what importance weights divide by is exact
    assert from_compact["chosen_probability"].tolist() == reference["chosen_probability"].tolist()

    # the training rows: same rows, same recomputed rewards, same exclusions
    spec = RewardSpec(w_cost=0.3, w_latency=0.1, cost_scale=0.02, latency_scale=1000.0)
    rows_full = select_learnable(from_full, "feat-1", spec, [*MODELS, "fallback"])
    rows_compact = select_learnable(from_compact, "feat-1", spec, [*MODELS, "fallback"])
    assert len(rows_full.frame) > 30
    assert rows_compact.excluded == rows_full.excluded
    assert set(rows_full.excluded) >= {"rule_override", "no_outcome"}
    pd.testing.assert_frame_equal(rows_compact.frame, _rounded(rows_full.frame))


def test_compact_log_compacts_to_the_same_parquet(tmp_path: Path) -> None:
    emitted = _log(30)
    tables = {}
    for form in ("compact", "json"):
        _write(emitted, tmp_path / form, form)
        counts = compact_events(tmp_path / form, tmp_path / f"{form}.parquet")
        assert (counts["decisions"], counts["torn_lines"]) == (30, 0)
        tables[form] = pd.read_parquet(tmp_path / f"{form}.parquet" / "decisions")
    assert tables["compact"].columns.tolist() == tables["json"].columns.tolist()
    expected = _rounded(
        tables["json"].assign(**{c: tables["json"][c].map(list) for c in F32_COLUMNS})
    )
    got = tables["compact"].assign(**{c: tables["compact"][c].map(list) for c in F32_COLUMNS})
    # seq (file, line) keeps the write order; frame lines shift the line numbers, not the order
    assert got["seq"].rank().tolist() == expected["seq"].rank().tolist()
    others = [c for c in got.columns if c not in (*F32_COLUMNS, "action_features", "seq")]
    pd.testing.assert_frame_equal(got[others], expected[others])
    assert got[list(F32_COLUMNS)].to_dict() == expected[list(F32_COLUMNS)].to_dict()
    assert [np.vstack(a).tolist() for a in got["action_features"]] == [
        np.vstack(a).tolist() for a in tables["json"]["action_features"]
    ]


def test_format1_log_on_disk_still_reads(tmp_path: Path) -> None:
    # written by the file sink before the compact format (commit 7e59a79), kept byte for byte
    events = list(read_events(FORMAT1))
    assert [e.kind for e in events] == [
        "decision", "outcome", "feedback", "decision", "outcome", "decision"
    ]  # fmt: skip
    first, second, pinned = (e for e in events if isinstance(e, DecisionEvent))
    assert first.context_features == [0.25, -1.5, 0.0, 3.0, 1e-3 / 3]  # float64, exact
    assert (second.prompt, second.chosen_model, second.probabilities) == (
        "Say hello", "large", [1 / 3, 2 / 3]
    )  # fmt: skip
    assert not pinned.learnable and first.learnable
    frame = join_events(events)
    assert frame["quality"].tolist()[:2] == [0.75, 0.0]
    assert frame["chosen_error_class"].tolist()[1] == "http_503"

    # a directory with an old file and a new one reads both, in write order
    mixed = tmp_path / "mixed"
    shutil.copytree(FORMAT1, mixed)
    with FileEventSink(mixed, fsync="never") as sink:
        sink.emit(first.model_copy(update={"event_id": "f" * 48}))
    assert [e.event_id for e in read_events(mixed)][-2:] == [pinned.event_id, "f" * 48]
    assert sorted(mixed.iterdir())[0].name == "events-20261201T000000Z-000001.jsonl"


def test_bundled_sized_decision_fits_in_a_kilobyte() -> None:
    # the shape of the bundled default: 29 models, 5 action features, 113 context features
    rng = np.random.default_rng(0)
    models = [f"Meta-Llama-3_1-{i}B-Instruct" for i in range(29)]
    pmf = rng.dirichlet(np.ones(29))
    record = DecisionRecord(
        event_id="b" * 48,
        tenant="anonymous",
        profile="default",
        policy_version="bundle-2e9ef41e434d",
        feature_version="feat-2-45226b54a080",
        reward_spec=RewardSpecRecord(w_cost=0.2, cost_scale=0.0005717391666666666),
        eligible_models=models,
        action_features=rng.normal(size=(29, 5)),
        probabilities=pmf,
        chosen_index=3,
        chosen_probability=float(pmf[3]),
        context_features=rng.normal(scale=0.03, size=113),
    )
    encoder = CompactEncoder()
    first = encoder.encode(record)  # the frame, then the decision
    line = encoder.encode(record)
    assert first.endswith(line) and first.count(b"\n") == 2
    assert len(line) <= 1000
    assert len(json.dumps(record.to_dict(), separators=(",", ":"))) > 6000


def test_values_beyond_float32_are_written_in_full(tmp_path: Path) -> None:
    big = _log(1)[0]
    assert isinstance(big, DecisionEvent)
    big = big.model_copy(update={"context_features": [1e300, 1e-3 / 3]})
    _write([big], tmp_path, "compact")
    (back,) = read_events(tmp_path)
    assert back == big  # exact: that line is a full record


def test_decision_without_its_frame_is_corruption(tmp_path: Path) -> None:
    _write(_log(3), tmp_path, "compact")
    n_events = len(_log(3))
    assert len(list(read_events(tmp_path))) == n_events
    (path,) = tmp_path.iterdir()
    lines = path.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[0])["kind"] == "frame"
    path.write_bytes(b"".join(lines[1:]))  # the first frame lost
    with pytest.raises(DatasetError, match=r"000001\.jsonl:1: .*frame"):
        list(read_events(tmp_path))
    path.write_bytes(b"".join(lines) + lines[0][:40])  # a torn last line (a frame): skipped
    assert len(list(read_events(tmp_path))) == n_events


def test_compaction_skips_a_malformed_last_line_but_not_a_lost_frame(tmp_path: Path) -> None:
    """A malformed last line may be a torn write (skipped); a decision whose frame no earlier
    line defines is corruption (MissingFrameError), on the last line too."""
    _write(_log(3), tmp_path / "log", "compact")
    (path,) = (tmp_path / "log").iterdir()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines) + b'{"kind":"frame","frame":"x"}\n')  # JSON, bad frame
    counts = compact_events(tmp_path / "log", tmp_path / "a.parquet")
    assert (counts["decisions"], counts["torn_lines"]) == (3, 1)
    decision = json.loads(lines[1])
    assert decision["kind"] == "decision" and "frame" in decision
    lost = json.dumps({**decision, "frame": 999}).encode() + b"\n"
    path.write_bytes(b"".join(lines) + lost)
    with pytest.raises(DatasetError, match=r"000001\.jsonl:\d+: frame: .*999"):
        compact_events(tmp_path / "log", tmp_path / "b.parquet")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"probabilities": np.array([0.5, 0.6])}, "probabilities"),
        ({"probabilities": np.array([0.5])}, "probabilities"),
        ({"probabilities": np.array([np.nan, 1.0])}, "probabilities"),
        ({"probabilities": np.array([-0.25, 1.25]), "chosen_probability": 1.25}, "probabilities"),
        ({"chosen_index": 2}, "chosen_index"),
        ({"chosen_probability": 0.4}, "chosen_probability"),
        ({"override_reason": "pinned"}, "chosen_probability"),
        ({"eligible_models": ["a", "a"]}, "eligible_models"),
        ({"action_features": np.ones((3, 2))}, "action_features"),
        ({"context_features": np.array([np.nan])}, "context_features"),
        ({"event_id": ""}, "event_id"),
    ],
)
def test_decision_record_checks_the_event_invariants(overrides: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {
        "event_id": "e" * 48,
        "tenant": "acme",
        "profile": "default",
        "policy_version": "p",
        "feature_version": "f",
        "reward_spec": RewardSpecRecord(),
        "eligible_models": ["a", "b"],
        "action_features": np.ones((2, 2)),
        "probabilities": np.array([0.25, 0.75]),
        "chosen_index": 1,
        "chosen_probability": 0.75,
        "context_features": np.array([0.5, -1.0]),
    }
    assert DecisionRecord(**fields).to_event().chosen_model == "b"
    with pytest.raises(ValueError, match=field):
        DecisionRecord(**{**fields, **overrides})
