"""Training on large logs through Dask (training.scale) and the synthetic-from-real logs.

The Dask join must give what the in-memory join gives (router.events.join), the VW examples
must be the ones ``learn_one`` builds, and the trained models must learn something.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.errors import DatasetError
from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.events import read_events
from router.events.join import join_events
from router.events.models import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    OutcomeEvent,
    event_from_record,
    event_to_record,
)
from router.policy.base import Action, RewardSpec
from router.policy.vw import VWSquareCBPolicy
from router.policy.vw_text import example_lines
from training.datasets import RoutingDataset
from training.scale import (
    ScaleConfig,
    ScaleResult,
    compact_events,
    iter_vw_examples,
    join_at_scale,
    learn_vw_stream,
    train_at_scale,
)
from training.synth_events import (
    SynthConfig,
    SynthSource,
    SynthStats,
    prepare_source,
    write_synthetic_events,
)

distributed = pytest.importorskip("distributed")

N_DECISIONS = 4000


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture(scope="module")
def source(bundled: RoutingDataset) -> SynthSource:
    train = bundled.split("train").prompts["prompt"].tolist()
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=32)).fit(train)
    return prepare_source(bundled, featurizer=featurizer)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, source: SynthSource) -> tuple[Path, SynthStats]:
    out = tmp_path_factory.mktemp("synth")
    config = SynthConfig(n_decisions=N_DECISIONS, chunk_decisions=1500, seed=1)
    return out, write_synthetic_events(out, config, source)


@pytest.fixture(scope="module")
def reference(log: tuple[Path, SynthStats]) -> pd.DataFrame:
    return join_events(read_events(log[0] / "jsonl"))


@pytest.fixture(scope="module")
def result(
    log: tuple[Path, SynthStats], client: object, tmp_path_factory: pytest.TempPathFactory
) -> ScaleResult:
    config = ScaleConfig(n_estimators=60, workdir=str(tmp_path_factory.mktemp("work")))
    return train_at_scale(log[0], config, client=client)


def _joined(result: ScaleResult) -> pd.DataFrame:
    return pd.read_parquet(result.joined_path)


# ---- the synthetic log -------------------------------------------------------------------------


def test_synthetic_log_is_in_the_file_sink_format(
    log: tuple[Path, SynthStats], reference: pd.DataFrame
) -> None:
    out, stats = log
    events = list(read_events(out / "jsonl"))  # validates every record with pydantic
    assert len(events) == stats.n_events
    assert sum(isinstance(e, DecisionEvent) for e in events) == N_DECISIONS
    with open(sorted((out / "jsonl").glob("events-*.jsonl"))[0], encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    for record in records:  # exactly the record layout the sink writes
        assert event_to_record(event_from_record(record)) == record
    assert {r["kind"] for r in records} == {"decision", "outcome", "feedback"}
    timestamps = [e.timestamp for e in events]
    assert timestamps == sorted(timestamps)
    # what the generator promises to exercise
    assert reference["quality_imputed"].any() and (reference["n_feedback"] == 2).any()
    assert reference.attrs["n_late"] > 0 and (~reference["learnable"]).any()
    assert (~reference["has_outcome"]).any()


def test_synth_refuses_to_append_and_checks_its_config(
    log: tuple[Path, SynthStats], source: SynthSource
) -> None:
    with pytest.raises(DatasetError, match="already holds files"):
        write_synthetic_events(log[0], SynthConfig(n_decisions=10), source)
    with pytest.raises(ValueError, match="min_eligible"):
        SynthConfig(min_eligible=0)
    with pytest.raises(ValueError, match="formats"):
        SynthConfig(formats=("csv",))


# ---- the join ----------------------------------------------------------------------------------

_COMPARED = [
    "has_outcome",
    "cost_usd",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "quality",
    "quality_imputed",
    "n_feedback",
    "reward",
    "learnable",
    "chosen_model",
    "chosen_probability",
]


def _assert_same_join(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got["event_id"].tolist() == expected["event_id"].tolist()  # same rows, same order
    for column in _COMPARED:
        a, b = got[column].to_numpy(), expected[column].to_numpy()
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            np.testing.assert_allclose(
                a.astype(float), b.astype(float), rtol=0, atol=1e-12, err_msg=column
            )
        else:
            assert a.tolist() == b.tolist(), column


def test_dask_join_equals_in_memory_join(result: ScaleResult, reference: pd.DataFrame) -> None:
    _assert_same_join(_joined(result), reference)
    assert result.counts["n_late"] == reference.attrs["n_late"]
    assert result.counts["n_orphans"] == reference.attrs["n_orphans"]
    assert result.counts["n_joined"] == len(reference)
    assert result.counts["n_imputed"] == int(reference["quality_imputed"].sum())


def _edge_case_events() -> list[DecisionEvent | OutcomeEvent | FeedbackEvent]:
    spec = {"w_cost": 0.5, "w_latency": 0.1, "cost_scale": 0.01, "latency_scale": 1000.0}

    def decision(event_id: str, t: float, **extra: object) -> DecisionEvent:
        fields: dict[str, object] = {
            "event_id": event_id,
            "timestamp": t,
            "tenant": "t",
            "policy_version": "p",
            "feature_version": "f",
            "reward_spec": spec,
            "eligible_models": ["a b", "c|d"],
            "action_features": [[0.1, 0.0, 1.0, 2.0, 3.0], [0.2, 0.3, 1.5, 2.5, 3.5]],
            "probabilities": [0.25, 0.75],
            "chosen_model": "c|d",
            "chosen_index": 1,
            "chosen_probability": 0.75,
            "context_features": [0.0, 1.5, -2.25e-7, 3.0],
            **extra,
        }
        return DecisionEvent.model_validate(fields)

    pinned = {
        "probabilities": [0.0, 1.0],
        "chosen_probability": 1.0,
        "override_reason": "pinned",
    }
    return [
        FeedbackEvent(event_id="orphan", timestamp=5.0, quality=1.0),
        decision("plain", 10.0),
        OutcomeEvent(event_id="plain", timestamp=11.0, cost_usd=0.002, latency_ms=900.0),
        decision("rated", 20.0),
        OutcomeEvent(
            event_id="rated", timestamp=21.0, cost_usd=0.001, latency_ms=50.0, quality=0.2
        ),
        OutcomeEvent(event_id="rated", timestamp=22.0, cost_usd=9.0, latency_ms=9.0, quality=0.9),
        FeedbackEvent(event_id="rated", timestamp=30.0, quality=0.4),
        FeedbackEvent(event_id="rated", timestamp=30.0, quality=0.6),  # tie: later input wins
        FeedbackEvent(event_id="rated", timestamp=20.0 + 3601.0, quality=0.0),  # late
        decision("lost", 40.0),
        FeedbackEvent(event_id="lost", timestamp=41.0, quality=0.7),  # no outcome
        decision("pinned", 50.0, **pinned),
        OutcomeEvent(event_id="pinned", timestamp=51.0, cost_usd=0.0, latency_ms=10.0),
        decision("plain", 60.0),  # a repeated decision id: the first is kept
        OutcomeEvent(event_id="early", timestamp=65.0, cost_usd=0.0, latency_ms=1.0),
        decision("early", 70.0),  # its outcome came first (clock skew): still joined
    ]


def _write_jsonl(directory: Path, events: Sequence[Event]) -> None:
    directory.mkdir(parents=True)
    lines = [json.dumps(event_to_record(e)) for e in events]
    half = len(lines) // 2  # two files: the join must find followers across files
    (directory / "events-20260101T000000Z-000001.jsonl").write_text("\n".join(lines[:half]) + "\n")
    (directory / "events-20260101T000000Z-000002.jsonl").write_text("\n".join(lines[half:]) + "\n")


def test_join_rules_on_edge_cases(tmp_path: Path, client: object) -> None:
    events = _edge_case_events()
    _write_jsonl(tmp_path / "log", events)
    counts = compact_events(tmp_path / "log", tmp_path / "parquet")
    assert counts["decisions"] == 6 and counts["torn_lines"] == 0
    summary = join_at_scale(tmp_path / "parquet", tmp_path / "joined", ScaleConfig())
    got = pd.read_parquet(summary.path)
    expected = join_events(events)
    _assert_same_join(got, expected)
    assert summary.counts["n_late"] == expected.attrs["n_late"] == 1
    assert summary.counts["n_orphans"] == expected.attrs["n_orphans"] == 1
    assert summary.counts["n_duplicate_decisions"] == 1
    rated = got.set_index("event_id").loc["rated"]
    assert rated["quality"] == 0.6 and rated["n_feedback"] == 3  # outcome's + two in window
    # the VW examples: only learnable rows with an outcome, exactly learn_one's text
    examples = list(iter_vw_examples(summary.vw_path))
    learnable = expected[expected["learnable"] & expected["has_outcome"]]
    assert len(examples) == len(learnable) == 3
    for text, row in zip(examples, learnable.itertuples(), strict=True):
        assert text == _learn_one_text(row)  # the same text, character for character


def test_reward_is_recomputed_with_given_weights(
    log: tuple[Path, SynthStats], client: object, tmp_path: Path
) -> None:
    spec = RewardSpec(w_cost=1.0, w_latency=0.5, cost_scale=0.001, latency_scale=2000.0)
    summary = join_at_scale(log[0] / "parquet", tmp_path / "j", ScaleConfig(reward=spec))
    got = pd.read_parquet(summary.path)
    expected = spec.reward(got["quality"], got["cost_usd"], got["latency_ms"])
    np.testing.assert_allclose(got["reward"], expected, atol=1e-12)
    assert summary.reward == spec


# ---- the models --------------------------------------------------------------------------------


def test_reward_model_beats_the_mean_on_held_out_rows(result: ScaleResult) -> None:
    metrics = result.metrics
    assert metrics["n_holdout"] > 200
    assert metrics["holdout_mse"] < 0.95 * metrics["holdout_mse_mean"]
    assert result.reward_model.n_features_in_ == len(result.feature_columns)
    assert {"join", "reward_model", "vw", "total"} <= set(result.timings_s)


def _learn_one_text(row: Any) -> str:
    """What VWSquareCBPolicy.learn_one feeds VW for a joined row: the online formatter's text
    (router.policy.vw_text.example_lines), which the vectorised one must reproduce."""
    actions = [
        Action(model, np.asarray(features, dtype=float))
        for model, features in zip(row.eligible_models, row.action_features, strict=True)
    ]
    context = np.asarray(row.context_features)
    chosen, probability = row.chosen_index, row.chosen_probability
    return "\n".join(example_lines(context, actions, chosen, probability, row.reward))


def test_vw_examples_are_learn_ones(result: ScaleResult, reference: pd.DataFrame) -> None:
    learnable = reference[reference["learnable"] & reference["has_outcome"]]
    examples = list(iter_vw_examples(result.joined_path.parent / "vw"))
    assert len(examples) == len(learnable) == result.counts["n_vw_learned"]
    for text, row in zip(examples, learnable.itertuples(), strict=True):
        assert text == _learn_one_text(row)  # the same text, character for character


def test_streamed_vw_equals_learn_one(result: ScaleResult, reference: pd.DataFrame) -> None:
    learnable = reference[reference["learnable"] & reference["has_outcome"]].iloc[:1500]
    rows = list(learnable.itertuples())
    # a small gamma keeps the pmf sensitive to the learned scores
    native, python, online = (VWSquareCBPolicy(gamma_scale=1.0) for _ in range(3))
    vw_dir = result.joined_path.parent / "vw"
    learn_vw_stream(vw_dir, native, native=True)
    learn_vw_stream(vw_dir, python, native=False)
    row: Any  # a row of itertuples: its fields are the frame's columns
    for row in reference[reference["learnable"] & reference["has_outcome"]].itertuples():
        actions = [
            Action(m, np.asarray(f))
            for m, f in zip(row.eligible_models, row.action_features, strict=True)
        ]
        online.learn_one(
            np.asarray(row.context_features),
            actions,
            row.chosen_index,
            row.chosen_probability,
            row.reward,
        )
    for row in rows[:40]:
        actions = [
            Action(m, np.asarray(f))
            for m, f in zip(row.eligible_models, row.action_features, strict=True)
        ]
        context = np.asarray(row.context_features)
        expected = online.predict_one(context, actions)
        np.testing.assert_allclose(native.predict_one(context, actions), expected, atol=1e-6)
        np.testing.assert_allclose(python.predict_one(context, actions), expected, atol=1e-6)


def test_vw_policy_improves_over_uniform(result: ScaleResult, source: SynthSource) -> None:
    truth = source.true_reward()
    greedy, uniform = [], []
    for p in range(0, len(truth), 4):
        cols = np.flatnonzero(source.available[p])
        actions = [Action(source.models[j], source.action_features[j]) for j in cols]
        pmf = result.policy.predict_one(source.contexts[p], actions)
        greedy.append(truth[p, cols[int(np.argmax(pmf))]])
        uniform.append(truth[p, cols].mean())
    assert np.mean(greedy) > np.mean(uniform) + 0.03


# ---- errors ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(
    tmp_path: Path, log: tuple[Path, SynthStats], client: object
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no events found at"):
        train_at_scale(tmp_path / "empty", client=client)

    broken = tmp_path / "broken"
    for kind in ("decisions", "outcomes", "feedback"):
        (broken / kind).mkdir(parents=True)
        for path in (log[0] / "parquet" / kind).glob("*.parquet"):
            table = pq.read_table(path)
            if kind == "decisions":
                table = table.drop_columns(["chosen_probability"])
            pq.write_table(table, broken / kind / path.name)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['chosen_probability'\]"):
        join_at_scale(broken, tmp_path / "out")

    logs = tmp_path / "jsonl"
    logs.mkdir()
    (logs / "events-20260101T000000Z-000001.jsonl").write_text('{"kind": "decision"\n{}\n')
    with pytest.raises(DatasetError, match=r"000001.jsonl:1: malformed event line"):
        compact_events(logs, tmp_path / "compacted")
    (logs / "events-20260101T000000Z-000001.jsonl").write_text('{"kind": "outcome"}\n{}\n')
    with pytest.raises(DatasetError, match=r"missing field\(s\) \['event_id'"):
        compact_events(logs, tmp_path / "compacted2")

    ragged = [e for e in _edge_case_events() if isinstance(e, DecisionEvent)][:2]
    ragged[1] = ragged[1].model_copy(update={"event_id": "x", "context_features": [1.0]})
    _write_jsonl(tmp_path / "ragged", ragged)
    compact_events(tmp_path / "ragged", tmp_path / "ragged_parquet")
    with pytest.raises(DatasetError, match="context_features: expected 4 values per row"):
        join_at_scale(tmp_path / "ragged_parquet", tmp_path / "ragged_out")

    with pytest.raises(ValueError, match="holdout_fraction"):
        ScaleConfig(holdout_fraction=1.5)
    with pytest.raises(ValueError, match="join_window_s"):
        ScaleConfig(join_window_s=-1)
