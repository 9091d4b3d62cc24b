"""The benchmark end to end through the CLI, on a small slice of the bundled real data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from router.cli import main
from training.datasets import bundled_path
from training.metrics import aiq

ROUTER_KEYS = {
    "aiq",
    "cost_at_95",
    "cost_at_97",
    "cost_at_100",
    "max_quality",
    "mean_cost",
    "curve",
}


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 train + 120 test prompts of the bundled sample, written in the dataset format."""
    src, out = bundled_path(), tmp_path_factory.mktemp("slice")
    prompts = pd.read_parquet(src / "prompts.parquet")
    keep = pd.concat(
        [prompts[prompts.split == "train"].head(300), prompts[prompts.split == "test"].head(120)]
    )
    keep.to_parquet(out / "prompts.parquet", index=False)
    outcomes = pd.read_parquet(src / "outcomes.parquet")
    outcomes[outcomes.prompt_id.isin(keep.prompt_id)].to_parquet(
        out / "outcomes.parquet", index=False
    )
    (out / "models.csv").write_text((src / "models.csv").read_text())
    return out


@pytest.fixture(scope="module")
def run(slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("bench")
    code = main(
        [
            "benchmark",
            "--dataset", str(slice_dir),
            "--json", str(work / "result.json"),
            "--plots", str(work / "plots"),
            "--bandits", "vw_squarecb,epsilon_greedy",
            "--bandit-lambdas", "2",
            "--rounds", "2",
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}",
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return json.loads((work / "result.json").read_text()), work


@pytest.mark.slow  # the whole benchmark on a slice: a minute of CPU
def test_json_has_the_documented_keys(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    for key in ("dataset", "n_test", "best_single", "oracle", "routers", "c_lo", "c_hi"):
        assert key in result
    assert result["n_test"] == 120
    for name in ("direct", "knn10", "per_task_static", "random", "best_single", "cheapest",
                 "zero_router", "bandit:vw_squarecb", "bandit:epsilon_greedy"):  # fmt: skip
        assert set(result["routers"][name]) >= ROUTER_KEYS, name
    assert {"apgr", "cpt_50", "cpt_80"} <= set(result["routers"]["direct"])
    # the serving policy's learning-loop replays, cold and warm: each curve has a point per
    # decision-time trade-off of the grid (not one replay per point)
    for name in ("bandit:squarecb_quality", "bandit:squarecb_quality_warm25"):
        assert len(result["routers"][name]["curve"]) >= 20, name
    warm = result["bandit_replay"]["policies"]["squarecb_quality_warm25"]
    assert warm["n_labelled"] + warm["n_partial_feedback"] == 300
    assert 0 < warm["n_labelled"] < 150


@pytest.mark.slow  # the whole benchmark on a slice: a minute of CPU
def test_aiq_is_recomputable_from_the_json(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    for entry in [*result["routers"].values(), result["oracle"]]:
        curve = [tuple(p) for p in entry["curve"]]
        assert entry["aiq"] == pytest.approx(aiq(curve, result["c_lo"], result["c_hi"]), abs=1e-12)


@pytest.mark.slow  # the whole benchmark on a slice: a minute of CPU
def test_results_are_ordered_as_expected(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    routers = result["routers"]
    assert result["oracle"]["aiq"] > routers["direct"]["aiq"] > routers["random"]["aiq"]
    assert routers["best_single"]["cost_at_100"] == pytest.approx(1.0)
    assert routers["zero_router"]["max_quality"] == pytest.approx(result["best_single"]["quality"])


@pytest.mark.slow  # the whole benchmark on a slice: a minute of CPU
def test_plots_and_mlflow_run_are_written(run: tuple[dict[str, Any], Path]) -> None:
    import mlflow

    result, work = run
    assert (work / "plots" / "curves.png").stat().st_size > 10_000
    assert (work / "plots" / "replay.png").stat().st_size > 10_000
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["polyroute-benchmark"])
    assert len(runs) == 1
    assert runs["metrics.direct.aiq"].iloc[0] == pytest.approx(result["routers"]["direct"]["aiq"])


def test_bad_dataset_gives_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["benchmark", "--dataset", str(tmp_path / "missing"), "--no-mlflow"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_pair_model_is_named(slice_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["benchmark", "--dataset", str(slice_dir), "--strong", "gpt-9", "--bandits", "",
                 "--no-mlflow", "--quiet"])  # fmt: skip
    assert code == 2
    assert "gpt-9" in capsys.readouterr().err


def test_bench_features_reports_percentiles(
    slice_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench-features", "--dataset", str(slice_dir), "--repeats", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["n_calls"] == 120
    assert 0 < row["p50_us"] <= row["p95_us"] <= row["p99_us"] <= row["max_us"]


def test_bundle_command_writes_a_loadable_bundle(
    slice_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.bundle import PolicyBundle

    assert main(["bundle", "--dataset", str(slice_dir), "--out", str(tmp_path / "b")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert PolicyBundle.load(tmp_path / "b").version == row["version"]
    assert row["models"] == 29
