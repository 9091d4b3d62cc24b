"""A lean serving process (issue 11): what a serving worker imports, and the lean load paths
deciding exactly as the ones they replace.

The memory itself (RSS of a worker) is measured by experiments/bench/memory.py
(experiments/results/memory.md), not here: these tests check behaviour, not sizes or times.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer

from features.errors import PolicyError
from features.featurizer import RequestFeaturizer, analyze
from router.bundle import PolicyBundle
from router.events import read_events
from router.policy.actions import ActionCatalogue, read_table
from router.policy.quality import LINEAR_FILE, PREDICTOR_FILE, QualitySquareCBPolicy
from training.datasets import RoutingDataset

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "configs" / "router.example.yaml"

# never in a serving process: training and its tools, and what only fitting or other policies need
FORBIDDEN = (
    "training",
    "lightgbm",
    "dask",
    "matplotlib",
    "mlflow",  # no registry in the config: not even its client
    "sklearn",
    "scipy",
    "pandas",
    "pyarrow",
    "joblib",
    "vowpalwabbit",
    "mabwiser",
)

# ``polyroute serve`` with one worker: the command line's own process builds the app and serves
# it (uvicorn.run, replaced here by a test client that routes one request and stops)
SERVE_ONE_WORKER = r"""
import json, sys
import uvicorn
from starlette.testclient import TestClient

status = []
def run(app, **kwargs):
    with TestClient(app) as client:
        body = {"model": "auto", "messages": [{"role": "user", "content": sys.argv[4]}]}
        status.append(client.post("/v1/chat/completions", json=body).status_code)
uvicorn.run = run

from router.cli import main
code = main(["serve", "--config", sys.argv[1], "--bundle", sys.argv[2], "--events-dir",
             sys.argv[3], "--port", "1"])
print(json.dumps({"code": code, "status": status, "modules": sorted(sys.modules)}))
"""

# a ``polyroute serve --workers N`` worker: uvicorn imports the factory and calls it
SERVE_FACTORY = r"""
import json, os, sys
os.environ.update(POLYROUTE_CONFIG=sys.argv[1], POLYROUTE_EVENTS_DIR=sys.argv[3],
                  POLYROUTE_WORKERS="2")
if sys.argv[2]:  # else the config's registry alias serves
    os.environ["POLYROUTE_BUNDLE"] = sys.argv[2]
from router.app import app_from_env
from router.eligibility import RequestHints
app = app_from_env()
decision = app.state.gateway.engine.decide(sys.argv[4], 1, 50, 256, RequestHints())
print(json.dumps({"model": decision.chosen, "modules": sorted(sys.modules)}))
"""


def _config(tmp_path: Path, policy: dict[str, Any] | None = None) -> Path:
    """The example config, open (no tenants), its models behind a port nothing listens on;
    ``policy``: its registry section."""
    raw = yaml.safe_load(CONFIG.read_text())
    for model in raw["models"]:
        model["provider"]["base_url"] = "http://127.0.0.1:9/v1"
    raw["tenants"] = []
    if policy is not None:
        raw["policy"] = policy
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _child(
    script: str,
    tmp_path: Path,
    bundle: Path | None,
    prompt: str,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLYROUTE_HOME": str(tmp_path / "home")}
    events = tmp_path / "events"
    config = str(_config(tmp_path, policy))
    done = subprocess.run(
        [sys.executable, "-c", script, config, str(bundle or ""), str(events), prompt],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    tops = {m.split(".")[0] for m in result["modules"]}
    result["heavy"] = sorted(tops.intersection(FORBIDDEN))
    return result


def _legacy_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """The bundle as polyroute saved it before the prior's linear form was written."""
    legacy = Path(shutil.copytree(bundle_dir, tmp_path / "legacy"))
    (legacy / "policy" / LINEAR_FILE).unlink()
    return legacy


def test_serving_worker_imports_nothing_heavy(
    tmp_path: Path, bundle_dir: Path, small: RoutingDataset
) -> None:
    """``polyroute serve`` (one worker: the command line's process) routes a request without
    importing training, MLflow, LightGBM, Dask, plotting, scikit-learn, SciPy, pandas, pyarrow,
    joblib, Vowpal Wabbit or MABWiser."""
    prompt = str(small.prompts["prompt"].iloc[0])
    result = _child(SERVE_ONE_WORKER, tmp_path, bundle_dir, prompt)
    assert result["code"] == 0 and len(result["status"]) == 1
    assert result["heavy"] == []
    decisions = [e for e in read_events(tmp_path / "events") if e.kind == "decision"]
    assert len(decisions) == 1  # the request went through the decision path


def test_worker_factory_imports_nothing_heavy(
    tmp_path: Path, bundle_dir: Path, small: RoutingDataset
) -> None:
    """A ``--workers N`` worker (uvicorn calls ``router.app:app_from_env``) loads the bundle and
    decides without any of the heavy modules."""
    prompt = str(small.prompts["prompt"].iloc[1])
    result = _child(SERVE_FACTORY, tmp_path, bundle_dir, prompt)
    assert result["model"] in PolicyBundle.load(bundle_dir).catalogue.names
    assert result["heavy"] == []


def test_a_bundle_saved_before_still_serves_with_scikit_learn(
    tmp_path: Path, bundle_dir: Path, small: RoutingDataset
) -> None:
    """A bundle without the prior's arrays (saved by an older polyroute) still loads and decides:
    its pickle is unpickled, and the guard above sees scikit-learn come in with it."""
    legacy = _legacy_copy(bundle_dir, tmp_path)
    prompt = str(small.prompts["prompt"].iloc[1])
    result = _child(SERVE_FACTORY, tmp_path, legacy, prompt)
    assert result["model"] in PolicyBundle.load(bundle_dir).catalogue.names
    assert "sklearn" in result["heavy"] and "joblib" in result["heavy"]


@pytest.mark.slow
def test_worker_following_the_registry_imports_no_mlflow_server(
    tmp_path: Path, bundle_dir: Path, small: RoutingDataset
) -> None:
    """A worker that serves the registry's ``@champion`` (embedded SQLite store) imports the
    MLflow client, and with it what the client imports (pandas, pyarrow, SciPy: the part of
    issue 11's 150 MB this does not meet, experiments/results/memory.md), but none of MLflow's
    server, training, scikit-learn or the other policies' libraries."""
    from training.model_registry import register_champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bundle = PolicyBundle.load(bundle_dir)
    register_champion(bundle, "test", tracking_uri=uri)
    policy = {"registry": {"tracking_uri": uri}, "poll_s": 3600}
    prompt = str(small.prompts["prompt"].iloc[2])
    result = _child(SERVE_FACTORY, tmp_path, None, prompt, policy)
    assert result["model"] in bundle.catalogue.names
    assert "mlflow" in result["heavy"]  # the registry source's client: it did serve from MLflow
    assert [m for m in result["modules"] if m.startswith("mlflow.server")] == []
    allowed = {"mlflow", "pandas", "pyarrow", "scipy"}  # the MLflow client's own imports
    assert set(result["heavy"]) <= allowed, result["heavy"]


def test_lean_prior_decides_bit_for_bit_as_the_unpickled_one(
    tmp_path: Path, bundle_dir: Path, small: RoutingDataset, caplog: pytest.LogCaptureFixture
) -> None:
    """The prior's saved linear form gives the same pmfs, bit for bit, as the linear form of the
    unpickled scikit-learn predictor, on real prompts, before and after learning."""
    lean = PolicyBundle.load(bundle_dir)
    with caplog.at_level(logging.WARNING, logger="router.policy.quality"):
        legacy = PolicyBundle.load(_legacy_copy(bundle_dir, tmp_path))
    assert LINEAR_FILE in caplog.text  # the old bundle is served, with a warning
    assert isinstance(lean.policy, QualitySquareCBPolicy)
    assert isinstance(legacy.policy, QualitySquareCBPolicy)
    assert lean.policy._predictor is None  # still pickled
    assert legacy.policy._predictor is not None
    names = lean.catalogue.names
    unseen = [*names[:3], "a-model-the-prior-never-saw"]  # the prior's mean for that one
    for i, text in enumerate(small.prompts["prompt"].tolist()[:60]):
        x = lean.featurizer.transform_one(text)
        actions = lean.catalogue.actions(x, 100.0, names[i % 7 :])
        extra = lean.catalogue.actions_with_costs(np.full(4, 1e-3), np.full(4, 900.0), names[:3])
        extra.append(type(extra[0])(unseen[-1], extra[0].features, 1e-3, 900.0))
        for acts in (actions, extra):
            p_lean = lean.policy.predict_one(x, acts)
            p_legacy = legacy.policy.predict_one(x, acts)
            assert np.array_equal(p_lean, p_legacy)
        k = i % len(actions)
        for bundle in (lean, legacy):
            bundle.policy.learn_one(x, actions, k, 0.5, 0.3)
    assert lean.policy._predictor is None  # deciding and learning never unpickled it


def test_lean_prior_keeps_its_predictor(tmp_path: Path, bundle_dir: Path) -> None:
    """The pickled predictor is still there for whatever asks for it (unpickled on first use)
    and saved again unchanged; a re-saved bundle loads lean again."""
    lean = PolicyBundle.load(bundle_dir)
    assert isinstance(lean.policy, QualitySquareCBPolicy)
    resaved = lean.save(tmp_path / "resaved")
    pickled = (bundle_dir / "policy" / PREDICTOR_FILE).read_bytes()
    assert (resaved / "policy" / PREDICTOR_FILE).read_bytes() == pickled
    predictor = lean.policy.predictor
    assert predictor is not None and predictor.models_ == lean.catalogue.names
    w, b = predictor.linear_form() or (None, None)
    assert w is not None and b is not None
    with np.load(bundle_dir / "policy" / LINEAR_FILE) as arrays:
        assert np.array_equal(arrays["weights"], w) and np.array_equal(arrays["bias"], b)
    again = PolicyBundle.load(resaved)
    assert isinstance(again.policy, QualitySquareCBPolicy) and again.policy._predictor is None
    assert again.version == lean.version


def test_a_damaged_linear_prior_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    damaged = Path(shutil.copytree(bundle_dir, tmp_path / "damaged"))
    path = damaged / "policy" / LINEAR_FILE
    with np.load(path) as arrays:
        parts = dict(arrays)
    parts["bias"] = parts["bias"][:-1]
    np.savez(path, **parts)
    with pytest.raises(PolicyError, match="do not match"):
        PolicyBundle.load(damaged)


def test_catalogue_read_without_pandas_equals_read_with_pandas(bundle_dir: Path) -> None:
    """``ActionCatalogue.load`` (csv module) builds the same arrays, bit for bit, as the
    catalogue built from ``pandas.read_csv`` of the same file, and saves the same table."""
    path = bundle_dir / "catalogue"
    lean = ActionCatalogue.load(path)
    with_pandas = ActionCatalogue(pd.read_csv(path / "catalogue.csv"))
    assert lean.names == with_pandas.names
    for name in ("static_features", "_price_in", "_price_out", "_ttft", "_speed"):
        assert np.array_equal(getattr(lean, name), getattr(with_pandas, name)), name
    pd.testing.assert_frame_equal(lean.models, pd.read_csv(path / "catalogue.csv"))


def test_catalogue_csv_errors_name_the_problem(tmp_path: Path, bundle_dir: Path) -> None:
    table = (bundle_dir / "catalogue" / "catalogue.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([table[0].replace("ttft_ms", "ttft"), *table[1:]]) + "\n")
    with pytest.raises(PolicyError, match=r"missing column\(s\) \['ttft_ms'\]"):
        read_table(bad)
    row = table[1].split(",")
    row[2] = "cheap"
    bad.write_text("\n".join([table[0], ",".join(row)]) + "\n")
    with pytest.raises(PolicyError, match="usd_per_mtok_out='cheap' is not a number"):
        read_table(bad)


def test_numpy_transform_equals_scikit_learn_on_real_prompts(
    bundle_dir: Path, bundled: RoutingDataset
) -> None:
    """The serving transform (numpy only) of a saved featurizer against scikit-learn's
    TfidfVectorizer + the SVD projection, on the bundled sample's test prompts: equal to a few
    ulp (not bit for bit: the sparse product sums in another order)."""
    featurizer = RequestFeaturizer.load(bundle_dir / "featurizer")
    texts = bundled.split("test").prompts["prompt"].tolist()
    vocabulary = {t.decode(): i for t, i in featurizer.vocabulary_.items()}
    reference = TfidfVectorizer(
        analyzer=lambda t: [w.decode() for w in analyze(t, featurizer.config.max_chars)],
        vocabulary=vocabulary,
        sublinear_tf=True,
        lowercase=False,
    )
    reference.idf_ = featurizer.idf_[:-1]
    projection = featurizer.projection_[:-1]
    lsa = np.asarray(reference.transform(texts) @ projection)
    ours = featurizer.transform(texts)[:, : projection.shape[1]]
    assert np.abs(lsa).max() > 0.1  # real embeddings, not zeros
    np.testing.assert_allclose(ours, lsa, rtol=0, atol=1e-14)
