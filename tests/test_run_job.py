"""``polyroute run``: which dataset it plays, the config it builds, and what ``polyroute policy``
reports about it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import cast

import pytest

from router.cli.run import (
    SERVING_FILE,
    _first_answer,
    bundle_dir,
    choose_dataset,
    run_config,
)
from router.config import load_config
from training.datasets import load_dataset

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


def test_choose_dataset(tmp_path: Path) -> None:
    assert choose_dataset("some/dir", beside=tmp_path) == "some/dir"
    assert choose_dataset(None, beside=tmp_path) == "bundled"
    for name in ("prompts.parquet", "outcomes.parquet"):
        (tmp_path / name).write_bytes(b"")
    assert choose_dataset(None, beside=tmp_path) == str(tmp_path)


def test_first_answer_waits_for_ready_then_prints_the_routed_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``run`` prints the first routed answer once /readyz answers 200 (not before), with the
    model the gateway chose; a refused request prints its status, not a traceback."""
    import httpx

    seen: list[str] = []
    ready = iter([503, 503, 200])

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/readyz":
            return httpx.Response(next(ready))
        assert json.loads(request.content) == {
            "model": "auto",
            "messages": [{"role": "user", "content": "2 + 2?"}],
        }
        message = {"role": "assistant", "content": "4. The answer is (A)."}
        answer = {"choices": [{"message": message}]}
        return httpx.Response(200, json=answer, headers={"x-polyroute-model": "m1"})

    _first_answer("http://gw", "2 + 2?", transport=httpx.MockTransport(gateway))
    assert seen == ["/readyz", "/readyz", "/readyz", "/v1/chat/completions"]
    out = capsys.readouterr().out
    assert "routed to m1, which answered:\n  '4. The answer is (A).'" in out

    def refusing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200)
        return httpx.Response(503, json={"error": {"message": "every model is unavailable"}})

    _first_answer("http://gw", "2 + 2?", transport=httpx.MockTransport(refusing))
    assert "first routed request: HTTP 503: " in capsys.readouterr().out


def test_bundle_cache_per_dataset(tmp_path: Path) -> None:
    assert bundle_dir(tmp_path, "bundled") == tmp_path / "bundle"
    one, two = bundle_dir(tmp_path, "/a/routerbench"), bundle_dir(tmp_path, "/b/routerbench")
    assert one != two and one.name.startswith("bundle-routerbench-")


def test_run_config_on_the_bundled_sample_keeps_the_example_models(tmp_path: Path) -> None:
    raw = load_config(EXAMPLE).model_dump()
    config = run_config(raw, load_dataset("bundled"), "http://127.0.0.1:9100/v1", tmp_path)
    assert [m.name for m in config.models] == [m["name"] for m in raw["models"]]
    assert {m.provider.base_url for m in config.models} == {"http://127.0.0.1:9100/v1"}
    assert config.tenants == [] and config.events.directory == str(tmp_path)


def test_run_config_on_another_dataset_uses_its_models(tmp_path: Path) -> None:
    """A dataset with other models (here three of the sample's) gets them from its models.csv;
    profile model lists and fallbacks keep only those."""
    import pandas as pd

    from training.datasets import bundled_path

    keep = ["gemini-1.5-flash-002", "Meta-Llama-3_1-8B-Instruct", "Yi-6B"]
    source, root = bundled_path(), tmp_path / "three"
    root.mkdir()
    pd.read_parquet(source / "prompts.parquet").to_parquet(root / "prompts.parquet")
    outcomes = pd.read_parquet(source / "outcomes.parquet")
    outcomes[outcomes["model"].isin(keep)].to_parquet(root / "outcomes.parquet")
    models = pd.read_csv(source / "models.csv")
    models[models["model"].isin(keep)].to_csv(root / "models.csv", index=False)
    data = load_dataset(root)
    raw = load_config(EXAMPLE).model_dump()
    config = run_config(raw, data, "http://127.0.0.1:8100/v1", tmp_path)
    assert sorted(m.name for m in config.models) == sorted(keep)
    price = models.set_index("model").at[config.models[0].name, "usd_per_mtok_in"]
    assert config.models[0].usd_per_mtok_in == float(cast(float, price))
    assert config.fallback == ["gemini-1.5-flash-002"]
    assert config.profiles["open-weights-only"].models == ["Meta-Llama-3_1-8B-Instruct"]


def test_policy_reports_what_run_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli.loop import _policy_status

    monkeypatch.setenv("POLYROUTE_HOME", str(tmp_path))
    serving = {"bundle": str(tmp_path / "bundle"), "policy_version": "v1"}
    (tmp_path / SERVING_FILE).write_text(json.dumps(serving))
    args = argparse.Namespace(
        model_name="polyroute-policy", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    assert _policy_status(args) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["champion"] is None
    assert status["serving_now"] == serving
    assert "no @champion" in status["note"]
