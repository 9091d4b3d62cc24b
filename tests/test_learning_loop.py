"""The learning loop: train from logs, gate, register, roll back (MLflow: SQLite, PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from services import unavailable

from features.errors import DatasetError, PolicyError
from router.bundle import PolicyBundle
from router.events import FileEventSink, read_events
from router.events.join import join_events
from router.events.models import Event
from router.policy.base import Policy, RewardSpec
from training import model_registry
from training.bundle_train import train_bundle
from training.datasets import RoutingDataset
from training.loop_turn import RetrainConfig, retrain
from training.promote import GateConfig
from training.simulate import expected_point
from training.traffic import simulate_events
from training.train import (
    load_events,
    parse_since,
    prompt_keys,
    select_learnable,
    train_from_logs,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# a routing profile of six models (cheap to strong): enough overlap for off-policy evaluation
# of a near-greedy candidate on a few hundred held-out decisions of a uniform logger
SIX = [
    "gemini-1.5-flash-002",
    "DeepSeek-Coder-V2",
    "Meta-Llama-3_1-70B-Instruct",
    "gemini-1.5-pro-002",
    "Phi-3-mini-4k-instruct",
    "Mistral-7B-Instruct-v0.2",
]


@pytest.fixture(scope="module")
def cold(small: RoutingDataset) -> PolicyBundle:
    """A new deployment: features and cost model fitted, the policy knows nothing yet."""
    return train_bundle(
        small, cold_start=True, policy_name="vw_squarecb", policy_params={"learning_rate": 0.5}
    )


@pytest.fixture(scope="module")
def logs(
    tmp_path_factory: pytest.TempPathFactory, cold: PolicyBundle, bundled: RoutingDataset
) -> Path:
    """3,000 decisions of the cold-start policy among six models of the bundled train split,
    90% of them rated."""
    directory = tmp_path_factory.mktemp("events")
    with FileEventSink(directory, queue_size=50_000, put_timeout_s=5.0) as sink:
        for event in simulate_events(
            cold, bundled.split("train"), 3000, seed=3, feedback_share=0.9, models=SIX
        ):
            sink.emit(event)
    return directory


@pytest.fixture()
def sqlite_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("POLYROUTE_HOME", str(tmp_path))
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture()
def postgres_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL database as MLflow's tracking and registry store."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    name = f"polyroute_mlflow_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    monkeypatch.setenv("POLYROUTE_HOME", str(tmp_path))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


# ---- pieces -------------------------------------------------------------------------------
def test_parse_since_forms() -> None:
    assert parse_since(None) is None
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000.0
    with pytest.raises(DatasetError, match="--since: expected"):
        parse_since("yesterday")


def test_load_events_names_a_bad_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        list(load_events(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="no event files"):
        list(load_events(tmp_path))


def test_since_selects_by_decision_time_without_orphans(logs: Path) -> None:
    everything = join_events(read_events(logs))
    cut = float(everything["timestamp"].quantile(0.6))
    joined = join_events(load_events(logs, since=cut))
    assert len(joined) == int((everything["timestamp"] >= cut).sum()) > 0
    assert joined["timestamp"].min() >= cut
    assert joined.attrs["n_orphans"] == 0  # outcomes of earlier decisions were left out
    assert joined["has_outcome"].all()


def test_since_keeps_feedback_from_a_file_that_sorts_first(tmp_path: Path, logs: Path) -> None:
    """Two workers' files: one holds a feedback whose decision is in the other, later-sorting
    file. Selecting by decision time must keep it."""
    from router.events.models import FeedbackEvent, event_to_record

    events = list(read_events(logs))
    decision = next(e for e in reversed(events) if e.kind == "decision")
    rest = [e for e in events if e.event_id == decision.event_id and e.kind == "outcome"]
    late = FeedbackEvent(event_id=decision.event_id, timestamp=decision.timestamp + 5, quality=0.75)

    def write(name: str, items: Sequence[Event]) -> None:
        lines = [json.dumps(event_to_record(e)) for e in items]
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    write("events-20260101T000000Z-000001-a.jsonl", [late])
    write("events-20260101T000000Z-000002-b.jsonl", [decision, *rest])
    joined = join_events(load_events(tmp_path, since=decision.timestamp))
    assert list(joined["event_id"]) == [decision.event_id]
    assert joined["quality"].iloc[0] == 0.75 and not joined["quality_imputed"].iloc[0]


def test_select_learnable_counts_what_it_leaves_out(logs: Path, cold: PolicyBundle) -> None:
    joined = join_events(read_events(logs))
    joined.loc[joined.index[:5], "has_outcome"] = False
    joined.loc[joined.index[5:8], "feature_version"] = "features-other"
    spec = RewardSpec(w_cost=0.5, cost_scale=cold.reward.cost_scale)
    rows = select_learnable(joined, cold.featurizer.version_, spec, cold.catalogue.names)
    assert rows.excluded == {"no_outcome": 5, "other_feature_version": 3}
    assert len(rows.frame) == len(joined) - 8
    # the reward is recomputed from the raw components with the requested weights
    f = rows.frame
    expected = f["quality"] - 0.5 * f["cost_usd"] / spec.cost_scale
    np.testing.assert_allclose(f["reward"], expected, atol=1e-12)
    imputed = f["quality_imputed"].to_numpy()
    assert imputed.any() and (f.loc[imputed, "quality"] == 0.0).all()  # the default quality


def test_training_from_logs_learns(logs: Path, cold: PolicyBundle, bundled: RoutingDataset) -> None:
    result = train_from_logs(read_events(logs), cold, holdout=0.3, seed=0)
    n_train, n_holdout = result.stats["n_train"], result.stats["n_holdout"]
    assert isinstance(n_train, int) and isinstance(n_holdout, int)
    # the traffic repeats prompts (3,000 requests over the train split's prompts): the
    # decisions on prompts of the held-out slice are dropped from training, and counted
    dropped = result.stats["n_excluded_prompt_in_holdout"]
    assert isinstance(dropped, int) and dropped > 0
    assert n_train + n_holdout + dropped == result.stats["n_learnable"]
    held = result.holdout_rows.frame
    assert held["timestamp"].min() >= result.train_rows.frame["timestamp"].max()
    assert not set(prompt_keys(held)) & set(prompt_keys(result.train_rows.frame))
    # served on unseen prompts (the test split, full information), the candidate earns more
    # reward than the cold-start policy that produced the logs
    test = bundled.split("test").subset(np.arange(300))
    test = dataclasses.replace(test, available=test.available & np.isin(test.model_names, SIX))
    x = cold.featurizer.transform(test.prompts["prompt"].tolist())
    tokens = np.nanmax(test.input_tokens, axis=1)
    costs = cold.catalogue.expected_cost(x, tokens)
    latencies = cold.catalogue.expected_latency(x)
    spec = cold.reward

    def value(policy: Policy) -> float:
        cost, quality = expected_point(policy, test, x, cold.catalogue, costs, latencies)
        return quality - spec.w_cost * cost / spec.cost_scale

    assert value(result.candidate.policy) > value(cold.policy) + 0.02
    # the reward model predicts the reward of those choices better than the mean does
    q = result.reward_model.predict_all(held, result.candidate.catalogue.names)
    index = {m: j for j, m in enumerate(result.candidate.catalogue.names)}
    chosen_q = q[np.arange(len(held)), [index[m] for m in held["chosen_model"]]]
    mse_model = float(np.mean((chosen_q - held["reward"]) ** 2))
    mse_mean = float(np.mean((result.train_rows.frame["reward"].mean() - held["reward"]) ** 2))
    assert mse_model < mse_mean


def test_too_few_rows_is_a_clear_error(logs: Path, cold: PolicyBundle) -> None:
    events = list(read_events(logs))[:30]
    with pytest.raises(DatasetError, match="learnable decisions"):
        train_from_logs(events, cold)


# ---- registry, gate, rollback ---------------------------------------------------------------
def _loop(uri: str, logs: Path, cold: PolicyBundle, tmp_path: Path) -> None:
    base = cold.save(tmp_path / "base")
    config = RetrainConfig(
        events=str(logs),
        tracking_uri=uri,
        base_bundle=str(base),
        report_dir=str(tmp_path / "reports"),
        n_bootstrap=200,
        gate=GateConfig(margin=0.0, min_ess=50),
    )
    first = retrain(config)
    # the cold-start champion is registered first (version 1), the candidate is version 2
    assert first.champion_version == "1" and first.version == "2"
    assert first.decision.promote, first.decision.reason
    assert first.decision.low > 0.0
    assert model_registry.alias_version("champion", tracking_uri=uri) == "2"
    assert first.report.is_file() and "<html" in first.report.read_text()[:200].lower()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(first.run_id)
    assert run.data.tags["gate.decision"] == "promoted"
    assert run.data.params["join_window_s"] == "3600.0"
    assert run.data.metrics["n_train"] > 0 and "candidate.ess" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert "estimates.csv" in artifacts
    report_files = [a.path for a in client.list_artifacts(first.run_id, "evaluation")]
    assert any(p.endswith(".html") for p in report_files)
    loaded = model_registry.load_bundle("2", tracking_uri=uri)
    assert loaded.version != cold.version  # the candidate, not the champion it started from
    assert client.get_model_version(model_registry.MODEL_NAME, "2").tags["bundle_version"] == (
        loaded.version
    )
    learned_until = loaded.provenance["trained_through"]

    # a gate that cannot be met: the candidate stays @challenger and the reason says why
    strict = RetrainConfig(**{**config.__dict__, "gate": GateConfig(min_ess=1e9)})
    second = retrain(strict)
    # warm-started from v2, it learns only what v2 has not: decisions after its training window
    all_decisions = join_events(read_events(logs))
    assert second.stats["n_decisions"] == int((all_decisions["timestamp"] > learned_until).sum())
    assert float(client.get_run(second.run_id).data.params["since"]) > learned_until
    assert not second.decision.promote
    assert "effective sample size" in second.decision.reason
    assert model_registry.alias_version("champion", tracking_uri=uri) == "2"
    assert model_registry.alias_version("challenger", tracking_uri=uri) == second.version
    version = client.get_model_version(model_registry.MODEL_NAME, second.version)
    assert "effective sample size" in version.tags["challenger.reason"]

    # rollback: @champion goes back to the cold start, then there is nothing further back
    assert model_registry.rollback(tracking_uri=uri) == ("2", "1")
    assert model_registry.alias_version("champion", tracking_uri=uri) == "1"
    assert model_registry.champion_history(tracking_uri=uri) == ["1"]
    with pytest.raises(PolicyError, match="no earlier champion"):
        model_registry.rollback(tracking_uri=uri)


@pytest.mark.slow
def test_retrain_gate_and_rollback_sqlite(
    sqlite_uri: str, logs: Path, cold: PolicyBundle, tmp_path: Path
) -> None:
    _loop(sqlite_uri, logs, cold, tmp_path)


@pytest.mark.slow
def test_retrain_gate_and_rollback_postgres(
    postgres_uri: str, logs: Path, cold: PolicyBundle, tmp_path: Path
) -> None:
    _loop(postgres_uri, logs, cold, tmp_path)


def test_retrain_without_champion_or_base_says_what_to_do(sqlite_uri: str, logs: Path) -> None:
    with pytest.raises(PolicyError, match="--base"):
        retrain(RetrainConfig(events=str(logs), tracking_uri=sqlite_uri))


def test_pyfunc_model_routes_prompts(sqlite_uri: str, cold: PolicyBundle) -> None:
    import mlflow

    with model_registry.start_training_run(sqlite_uri, "pyfunc"):
        version = model_registry.log_bundle(cold)
    model = mlflow.pyfunc.load_model(f"models:/{model_registry.MODEL_NAME}/{version}")
    out = model.predict(pd.DataFrame({"prompt": ["What is 2 + 2?", "Name a prime > 10."]}))
    assert list(out.columns) == ["model", "probability", "pmf"]
    assert set(out["model"]) <= set(cold.catalogue.names)
    pmf = json.loads(out["pmf"].iloc[0])
    assert abs(sum(pmf.values()) - 1.0) < 1e-6
    source = model_registry.MlflowBundleSource(sqlite_uri)
    assert source.current_version() is None  # no alias yet
    model_registry.set_alias("champion", version, "test", tracking_uri=sqlite_uri)
    assert source.current_version() == version
    assert source.load(version).version == cold.version


# ---- the gate, unit by unit ---------------------------------------------------------------------
class FakeEvaluation:
    def __init__(self, ess: float, delta: float, low: float, high: float, same: bool = True):
        self.diagnostics = {"candidate": {"ess": ess}, "champion": {"ess": 1000.0}}
        self._imp = {"delta": delta, "low": low, "high": high, "alpha": 0.05}
        self._imp["same_reward_spec"] = same

    def improvement(self, candidate: str, baseline: str, estimator: str = "dr") -> dict[str, Any]:
        return self._imp


@pytest.mark.parametrize(
    ("evaluation", "config", "promote", "reason"),
    [
        (FakeEvaluation(500, 0.05, 0.01, 0.09), GateConfig(), True, "above margin"),
        (FakeEvaluation(50, 0.05, 0.01, 0.09), GateConfig(), False, "effective sample size 50"),
        (FakeEvaluation(500, 0.05, -0.01, 0.09), GateConfig(), False, "lower bound -0.0100"),
        (FakeEvaluation(500, 0.05, 0.01, 0.09), GateConfig(margin=0.02), False, "margin +0.0200"),
        (FakeEvaluation(500, 0.05, 0.01, 0.09, same=False), GateConfig(), False, "reward specs"),
    ],
)
def test_gate_decisions(
    evaluation: FakeEvaluation, config: GateConfig, promote: bool, reason: str
) -> None:
    from training.promote import gate

    decision = gate(evaluation, config=config)
    assert decision.promote is promote
    assert reason in decision.reason


class FixedEvaluation(FakeEvaluation):
    """Better than the champion; against "always a" / "always b" as given."""

    def __init__(self, vs_fixed: dict[str, tuple[float, float, float]], values: dict[str, float]):
        super().__init__(500, 0.05, 0.01, 0.09)
        self.vs_fixed, self.values = vs_fixed, values
        self.diagnostics |= {name: {"ess": 400.0} for name in values}

    def improvement(self, candidate: str, baseline: str, estimator: str = "dr") -> dict[str, Any]:
        if baseline in self.vs_fixed:
            delta, low, high = self.vs_fixed[baseline]
            return {"delta": delta, "low": low, "high": high, "alpha": 0.05}
        return super().improvement(candidate, baseline, estimator)

    def table(self, target: str = "reward") -> pd.DataFrame:
        index = pd.MultiIndex.from_tuples([(n, "dr") for n in self.values])
        return pd.DataFrame({"value": list(self.values.values())}, index=index)


def test_the_gate_refuses_a_candidate_worse_than_the_best_fixed_model() -> None:
    from training.promote import best_fixed, gate

    values = {"fixed:a": 0.60, "fixed:b": 0.70}
    worse = FixedEvaluation(
        {"fixed:a": (0.05, 0.01, 0.09), "fixed:b": (-0.05, -0.09, -0.01)}, values
    )
    assert best_fixed(worse) == "fixed:b"
    decision = gate(worse)
    assert not decision.promote and "worse than 'fixed:b'" in decision.reason
    # no clear difference from the best fixed model: promoted, and the reason says so
    tied = FixedEvaluation({"fixed:a": (0.1, 0.06, 0.14), "fixed:b": (0.0, -0.03, 0.03)}, values)
    decision = gate(tied)
    assert decision.promote and "not worse than 'fixed:b'" in decision.reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_ess": 0}, "--min-ess"),
        ({"margin": float("nan")}, "--margin"),
        ({"estimator": "dros"}, "--estimator"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_gate_config_errors_name_the_option(kwargs: dict[str, Any], match: str) -> None:
    from features.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        GateConfig(**kwargs)


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.1])
def test_retrain_config_checks_the_holdout(holdout: float) -> None:
    from features.errors import ConfigError

    with pytest.raises(ConfigError, match="--holdout"):
        RetrainConfig(events="x", holdout=holdout)


def test_pending_feedback_is_left_out_not_imputed(logs: Path, cold: PolicyBundle) -> None:
    joined = join_events(read_events(logs))
    horizon = float(joined["timestamp"].quantile(0.5))
    rows = select_learnable(
        joined, cold.featurizer.version_, cold.reward, cold.catalogue.names, horizon
    )
    late_unrated = joined["quality_imputed"] & (joined["timestamp"] > horizon)
    assert rows.excluded["pending_feedback"] == int(late_unrated.sum()) > 0
    kept = rows.frame
    assert not (kept["quality_imputed"] & (kept["timestamp"] > horizon)).any()
    assert (kept["quality_imputed"] & (kept["timestamp"] <= horizon)).any()  # past the window


def test_skip_unrated_leaves_every_unrated_decision_out(logs: Path, cold: PolicyBundle) -> None:
    """With ``skip_unrated`` no decision without feedback is learned as ``default_quality``,
    however old; without it, those past the join window are (the default rule)."""
    joined = join_events(read_events(logs))
    unrated = int(joined["quality_imputed"].sum())
    assert unrated > 0
    skipped = train_from_logs(joined, cold, join_window_s=0.0, skip_unrated=True, seed=0)
    assert skipped.stats["n_excluded_pending_feedback"] == unrated
    for rows in (skipped.train_rows, skipped.holdout_rows):
        assert not rows.frame["quality_imputed"].any()
    # (a joined frame is not joined again: join_window_s only sets the horizon here, so the
    # whole simulated log is past it)
    imputed = train_from_logs(joined, cold, join_window_s=0.0, fit_reward_model=False, seed=0)
    pending = imputed.stats.get("n_excluded_pending_feedback", 0)
    assert isinstance(pending, int) and pending <= 1  # the last instant only
    assert imputed.holdout_rows.frame["quality_imputed"].any()
    # off-policy evaluation applies the same rule (`polyroute evaluate --skip-unrated`)
    from training.ope_logged import evaluate_policies

    evaluation = evaluate_policies(
        joined, {"cold": cold}, n_bootstrap=20, join_window_s=0.0, skip_unrated=True
    )
    assert evaluation.n_excluded["pending_feedback"] == unrated


def test_rollback_walks_back_from_the_last_entry(sqlite_uri: str, cold: PolicyBundle) -> None:
    with model_registry.start_training_run(sqlite_uri, "history"):
        one = model_registry.log_bundle(cold)
        two = model_registry.log_bundle(cold)
    for version in (one, two, one):  # an operator moved @champion back by hand
        model_registry.set_alias("champion", version, "test", tracking_uri=sqlite_uri)
    assert model_registry.champion_history(tracking_uri=sqlite_uri) == [one, two, one]
    model_registry.set_alias("challenger", one, "test", tracking_uri=sqlite_uri)
    assert model_registry.rollback(tracking_uri=sqlite_uri) == (one, two)
    # the rolled-back version is not left canaried
    assert model_registry.alias_version("challenger", tracking_uri=sqlite_uri) is None


@pytest.mark.slow
def test_offline_loop_and_its_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rounds of the closed loop with simulated traffic: the demo's outputs are written."""
    from training.demo import run_demo
    from training.loop import LoopConfig

    monkeypatch.setenv("POLYROUTE_HOME", str(tmp_path))
    config = LoopConfig(
        rounds=2, requests_per_round=400, gate=GateConfig(min_ess=20), n_bootstrap=100, n_test=200
    )
    summary = run_demo(tmp_path / "out", tmp_path / "work", config, offline=True)
    assert summary["start"] == "prior"
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all(np.isfinite(r["test_reward_candidate"]) for r in summary["rounds"])
    assert len(summary["curve"]) == 7
    for name in ("demo.md", "demo.json", "demo_reward.png", "demo_quality_cost.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # a second run may empty the work dir it made, never someone else's
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    from features.errors import ConfigError

    with pytest.raises(ConfigError, match="refusing to delete"):
        run_demo(tmp_path / "out", tmp_path / "mine", config, offline=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # --cold: the untrained VW start, far below the shipped prior on the same test prompts
    one = LoopConfig(
        rounds=1, requests_per_round=400, gate=GateConfig(min_ess=20), n_bootstrap=100, n_test=200
    )
    cold = run_demo(tmp_path / "out-cold", tmp_path / "work-cold", one, offline=True, cold=True)
    assert cold["start"] == "cold start"
    assert cold["final"]["cold"][0] < summary["final"]["cold"][0] - 0.05
