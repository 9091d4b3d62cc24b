"""Event models, the file sink, the join and the DSJSON export (fed to a real VW parser)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pydantic
import pytest
import vowpalwabbit

from features.errors import DatasetError, PolyrouteError
from router.events import (
    DecisionEvent,
    Event,
    EventLogError,
    EventLogFullError,
    FeedbackEvent,
    FileEventSink,
    OutcomeEvent,
    event_from_record,
    export_dsjson,
    join_events,
    read_events,
    to_dsjson,
)
from router.events.codec import CompactEncoder
from router.events.file_sink import event_files
from router.http.errors import status_of


def decision(i: int = 0, **overrides: Any) -> DecisionEvent:
    fields: dict[str, Any] = {
        "event_id": f"{i:032x}",
        "timestamp": 1_700_000_000.0 + i,
        "tenant": "acme",
        "profile": "default",
        "policy_version": "vw-3",
        "feature_version": "f-1",
        "reward_spec": {"w_cost": 1.0, "w_latency": 0.5, "cost_scale": 0.01, "latency_scale": 1e3},
        "eligible_models": ["small", "medium", "large"],
        "action_features": [[0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1.1, 1.2, 1.3, 1.4], [2, 2, 2, 2, 2]],
        "probabilities": [0.2, 0.5, 0.3],
        "chosen_model": "medium",
        "chosen_index": 1,
        "chosen_probability": 0.5,
        "context_features": [0.25, -1.5, 0.0, 3.0],
    }
    fields.update(overrides)
    return DecisionEvent(**fields)


def outcome(i: int = 0, **overrides: Any) -> OutcomeEvent:
    fields: dict[str, Any] = {
        "event_id": f"{i:032x}",
        "timestamp": 1_700_000_000.0 + i + 1.5,
        "cost_usd": 0.002,
        "latency_ms": 800.0,
        "input_tokens": 120,
        "output_tokens": 40,
    }
    fields.update(overrides)
    return OutcomeEvent(**fields)


OVERRIDE = {
    "override_reason": "tenant pinned",
    "probabilities": [0.0, 1.0, 0.0],
    "chosen_probability": 1.0,
}


# ---- models ------------------------------------------------------------------------------
def test_round_trip_through_json() -> None:
    events: list[Event] = [
        decision(),
        decision(1, **OVERRIDE),
        outcome(error_class="Timeout", fallback_used=True),
        FeedbackEvent(event_id=f"{0:032x}", quality=0.75),
    ]
    for event in events:
        back = event_from_record(json.loads(json.dumps(event.to_dict())))
        assert back == event
        assert type(back) is type(event)
    assert decision().learnable and not decision(1, **OVERRIDE).learnable
    assert events[1].to_dict()["learnable"] is False


def test_defaults_give_uuid4_hex_id_and_time() -> None:
    event = OutcomeEvent(cost_usd=0.0, latency_ms=1.0)
    assert len(event.event_id) == 32 and int(event.event_id, 16) >= 0
    assert event.timestamp > 1.6e9


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"chosen_probability": 0.0, "probabilities": [0.5, 0.0, 0.5]}, "chosen_probability"),
        ({"chosen_probability": 0.4}, "chosen_probability"),
        ({"probabilities": [0.2, 0.5]}, "probabilities"),
        ({"probabilities": [0.3, 0.5, 0.3]}, "probabilities"),
        ({"chosen_index": 3}, "chosen_index"),
        ({"chosen_model": "large"}, "chosen_model"),
        ({"action_features": [[1.0], [2.0]]}, "action_features"),
        ({"eligible_models": []}, "eligible_models"),
        ({"override_reason": "pinned"}, "chosen_probability"),
        ({"tenant": None}, "tenant"),
        ({"context_features": [float("nan")]}, "context_features"),
        ({"reward_spec": {"w_cost": -1.0}}, "w_cost"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_decision_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        decision(**overrides)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"kind": "outcome", "cost_usd": -1.0, "latency_ms": 1.0}, "cost_usd"),
        ({"kind": "outcome", "cost_usd": 1.0}, "latency_ms"),
        ({"kind": "feedback", "event_id": "x"}, "quality"),
        ({"kind": "nonsense"}, "kind"),
        ({"cost_usd": 1.0}, "kind"),
    ],
)
def test_invalid_record_names_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises((pydantic.ValidationError, DatasetError), match=field):
        event_from_record(record)


def test_learnable_flag_must_agree_with_override() -> None:
    record = decision().to_dict()
    record["learnable"] = False
    with pytest.raises(pydantic.ValidationError, match="learnable"):
        event_from_record(record)


# ---- file sink ---------------------------------------------------------------------------
def test_close_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    sink = FileEventSink(tmp_path, fsync="never", queue_size=10_000)
    sent = [outcome(i) for i in range(5_000)]
    for event in sent:
        sink.emit(event)
    sink.close()
    back = list(read_events(tmp_path))
    assert len(back) == 5_000
    assert [e.event_id for e in back] == [e.event_id for e in sent]
    with pytest.raises(EventLogError, match="closed"):
        sink.emit(outcome())
    sink.close()  # idempotent


def test_flush_writes_everything_accepted(tmp_path: Path) -> None:
    with FileEventSink(tmp_path, fsync="always") as sink:
        for i in range(50):
            sink.emit(decision(i))
        sink.flush()
        assert len(list(read_events(tmp_path))) == 50


def test_rotation_at_max_bytes_format1(tmp_path: Path) -> None:
    line_bytes = len(json.dumps(decision().to_dict(), separators=(",", ":"))) + 1
    max_bytes = 10 * line_bytes + 5  # room for 10 lines per file
    with FileEventSink(tmp_path, max_bytes=max_bytes, fsync="interval", format="json") as sink:
        for i in range(35):
            sink.emit(decision(i))
    files = event_files(tmp_path)
    assert len(files) == 4
    assert all(f.stat().st_size <= max_bytes for f in files)
    assert [f.stat().st_size // line_bytes for f in files] == [10, 10, 10, 5]
    assert [e.event_id for e in read_events(tmp_path)] == [decision(i).event_id for i in range(35)]


def test_rotation_starts_each_compact_file_with_its_frames(tmp_path: Path) -> None:
    encoder = CompactEncoder()
    frame_bytes = len(encoder.encode(decision(0)).splitlines(keepends=True)[0])
    line_bytes = len(encoder.encode(decision(0)))  # the frame is known now: one line
    assert line_bytes < frame_bytes
    max_bytes = frame_bytes + 10 * line_bytes + 5  # a frame and 10 decisions per file
    with FileEventSink(tmp_path / "log", max_bytes=max_bytes, fsync="never") as sink:
        for i in range(35):
            sink.emit(decision(i))
    files = event_files(tmp_path / "log")
    assert [f.stat().st_size for f in files] == [
        frame_bytes + n * line_bytes for n in (10, 10, 10, 5)
    ]
    ids = [decision(i).event_id for i in range(35)]
    assert [e.event_id for e in read_events(tmp_path / "log")] == ids
    for n, path in enumerate(files):  # every file reads alone: it holds its own frame
        alone = tmp_path / f"alone{n}"
        alone.mkdir()
        (alone / path.name).write_bytes(path.read_bytes())
        assert [e.event_id for e in read_events(alone)] == ids[10 * n : 10 * n + 10]


def test_full_queue_raises_and_loses_nothing_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileEventSink(tmp_path, queue_size=5, put_timeout_s=0.02, fsync="never")
    release, stalled = threading.Event(), threading.Event()
    original = sink._write_line

    def blocked_write(line: bytes) -> None:
        stalled.set()
        release.wait(timeout=10)
        original(line)

    monkeypatch.setattr(sink, "_write_line", blocked_write)
    accepted: list[str] = []
    sink.emit(outcome(0))
    accepted.append(outcome(0).event_id)
    assert stalled.wait(timeout=5)  # the writer holds event 0 and is stuck
    refused = None
    for i in range(1, 20):
        try:
            sink.emit(outcome(i))
        except EventLogFullError as exc:
            refused = exc
            break
        accepted.append(outcome(i).event_id)
    assert refused is not None and "full" in str(refused)
    assert isinstance(refused, PolyrouteError) and status_of(refused) == 503
    assert len(accepted) == 1 + 5  # the one being written plus a full queue
    release.set()
    sink.close()
    assert [e.event_id for e in read_events(tmp_path)] == accepted


def test_writer_failure_is_loud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = FileEventSink(tmp_path, fsync="never")

    def broken(line: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sink, "_write_line", broken)
    sink.emit(outcome(0))
    with pytest.raises(EventLogError, match="disk full"):
        sink.flush()
    with pytest.raises(EventLogError, match="disk full"):
        sink.emit(outcome(1))
    with pytest.raises(EventLogError, match="disk full"):
        sink.close()


def test_torn_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FileEventSink(tmp_path, fsync="never") as sink:
        for i in range(3):
            sink.emit(decision(i))
    (path,) = event_files(tmp_path)
    with open(path, "ab") as handle:  # a crash in the middle of a write
        handle.write(json.dumps(decision(3).to_dict()).encode()[:57])
    with caplog.at_level(logging.WARNING, logger="router.events.file_sink"):
        back = list(read_events(tmp_path))
    assert len(back) == 3
    assert "torn last line 5" in caplog.text  # after a frame line and three decisions
    # a new sink never appends to the torn file, so its events read back after it
    with FileEventSink(tmp_path, fsync="never") as sink:
        sink.emit(decision(4))
    assert [e.event_id for e in read_events(tmp_path)][-1] == decision(4).event_id


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events-20260101T000000Z-000001.jsonl"
    good = json.dumps(decision().to_dict())
    path.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(DatasetError, match=r"000001\.jsonl:2"):
        list(read_events(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fsync": "sometimes"}, "fsync"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"queue_size": 0}, "queue_size"),
        ({"fsync_interval_s": 0}, "fsync_interval_s"),
    ],
)
def test_invalid_sink_settings(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FileEventSink(tmp_path, **kwargs)


# ---- join --------------------------------------------------------------------------------
def test_join_missing_quality_gets_default_and_flag() -> None:
    events: list[Event] = [decision(0), decision(1), outcome(0), outcome(1, quality=0.9)]
    frame = join_events(events, default_quality=0.25).set_index("event_id")
    first, second = frame.loc[decision(0).event_id], frame.loc[decision(1).event_id]
    assert first["quality"] == 0.25 and bool(first["quality_imputed"])
    assert first["n_feedback"] == 0
    assert second["quality"] == 0.9 and not bool(second["quality_imputed"])
    # reward = q - w_cost * cost / cost_scale - w_latency * latency / latency_scale
    assert first["reward"] == pytest.approx(0.25 - 1.0 * 0.002 / 0.01 - 0.5 * 800 / 1000)


def test_join_latest_feedback_wins() -> None:
    eid = decision(0).event_id
    t0 = decision(0).timestamp
    events: list[Event] = [
        decision(0),
        FeedbackEvent(event_id=eid, timestamp=t0 + 30, quality=0.2),  # the correction, later
        outcome(0, quality=0.5),
        FeedbackEvent(event_id=eid, timestamp=t0 + 10, quality=0.9),
    ]
    row = join_events(events).iloc[0]
    assert row["quality"] == 0.2
    assert row["n_feedback"] == 3
    assert not bool(row["quality_imputed"])


def test_join_window_and_missing_outcome_never_drop_a_decision() -> None:
    eid = decision(0).event_id
    t0 = decision(0).timestamp
    events: list[Event] = [
        FeedbackEvent(event_id=eid, timestamp=t0 + 7200, quality=1.0),  # too late
        decision(0),
        decision(1),  # no outcome at all
        outcome(0),
        FeedbackEvent(event_id="f" * 32, quality=1.0),  # orphan
    ]
    frame = join_events(events, join_window_s=3600, default_quality=0.0)
    assert list(frame["event_id"]) == [decision(0).event_id, decision(1).event_id]
    assert list(frame["quality_imputed"]) == [True, True]
    assert list(frame["has_outcome"]) == [True, False]
    assert frame["reward"].isna().tolist() == [False, True]
    assert frame.attrs == {"n_late": 1, "n_orphans": 1}


# ---- DSJSON ------------------------------------------------------------------------------
def test_dsjson_line_layout() -> None:
    line = json.loads(to_dsjson(decision(0), 0.75))
    assert line["_label_cost"] == -0.75
    assert line["_label_probability"] == 0.5
    assert (line["_label_Action"], line["_labelIndex"]) == (2, 1)
    assert line["a"] == [2, 1, 3]  # chosen first, 1-based
    assert line["p"] == [0.5, 0.2, 0.3]  # aligned with "a"
    assert line["c"]["c"] == {"0": 0.25, "1": -1.5, "2": 0.0, "3": 3.0}
    assert [next(iter(m["a"])) for m in line["c"]["_multi"]] == ["m=small", "m=medium", "m=large"]
    with pytest.raises(DatasetError, match="override_reason"):
        to_dsjson(decision(1, **OVERRIDE), 1.0)


def test_dsjson_export_is_read_by_vw(tmp_path: Path) -> None:
    events: list[Any] = []
    for i in range(30):
        chosen = i % 3
        pmf = [0.1, 0.1, 0.1]
        pmf[chosen] = 0.8
        events.append(
            decision(
                i,
                chosen_index=chosen,
                chosen_model=["small", "medium", "large"][chosen],
                probabilities=pmf,
                chosen_probability=0.8,
            )
        )
        events.append(outcome(i, quality=i / 30))
    events += [decision(100, **OVERRIDE), outcome(100), decision(101)]  # skipped: 1 + 1
    out = tmp_path / "train.dsjson"
    stats = export_dsjson(events, out)
    assert (stats.written, stats.skipped_not_learnable, stats.skipped_no_reward) == (30, 1, 1)

    vw = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    lines = out.read_text().splitlines()
    assert len(lines) == 30
    for i, line in enumerate(lines):
        examples = vw.parse(line)
        assert len(examples) == 1 + 3  # shared + one per eligible model
        labels = [e.get_label(vowpalwabbit.LabelType.CONTEXTUAL_BANDIT) for e in examples]
        labelled = [k for k, label in enumerate(labels[1:]) if label.costs]
        assert labelled == [i % 3]
        cost = labels[1 + i % 3].costs[0]
        expected_reward = i / 30 - 1.0 * 0.002 / 0.01 - 0.5 * 800 / 1000
        assert cost.action == i % 3 + 1
        assert cost.cost == pytest.approx(-expected_reward, abs=1e-6)
        assert cost.probability == pytest.approx(0.8)
        vw.learn(examples)
        vw.finish_example(examples)
    assert vw.get_weighted_examples() == 30
    vw.finish()
