"""The HTML evaluation report (training/report.py): one self-contained, escaped file."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import SimulatedLog, build_simulated_log

from features.featurizer import RequestFeaturizer
from router.events.join import join_events
from router.policy.actions import ActionCatalogue
from training.datasets import RoutingDataset
from training.ope_logged import PolicyEvaluation, evaluate_policies
from training.report import log_report_to_mlflow, write_report

EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def simulated(
    bundled: RoutingDataset,
    small: RoutingDataset,
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> SimulatedLog:
    return build_simulated_log(bundled, small, fitted)  # shared with test_evaluate.py


@pytest.fixture(scope="module")
def small_evaluation(simulated: SimulatedLog) -> PolicyEvaluation:
    joined = join_events(simulated.events).iloc[:700]
    policies = {EVIL: simulated.bundles["oracle"], "champion $x$": simulated.bundles["direct"]}
    return evaluate_policies(joined, policies, n_bootstrap=100, seed=1)


def test_report_is_one_self_contained_escaped_file(
    small_evaluation: PolicyEvaluation, tmp_path: Path
) -> None:
    out = write_report(
        small_evaluation,
        tmp_path / "nested" / "report.html",
        title="OPE <b>week 48</b>",
        champion="champion $x$",
        candidate=EVIL,
        extra={"run": "<img src=x onerror=alert(1)>"},
    )
    assert out == tmp_path / "nested" / "report.html"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    html = out.read_text()
    # escaped everywhere: no executable markup from names, titles or extras
    assert "<script>" not in html and "<img src=x" not in html and "<b>week" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "OPE &lt;b&gt;week 48&lt;/b&gt;" in html
    # the sections, in order
    ids = ["verdict", "quality-cost", "estimates", "traffic", "diagnostics", "data"]
    positions = [html.index(f'id="{i}"') for i in ids]
    assert positions == sorted(positions)
    for text in ("Effective sample size", "paired", "Per-model counts", "Switch-DR"):
        assert text.lower() in html.lower()
    # figures are inline PNGs; nothing is fetched at view time
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html
    # the verdict names both and gives the interval
    verdict = html[html.index('id="verdict"') : html.index('id="quality-cost"')]
    assert (
        "champion $x$" in verdict and "interval" in verdict and "effective sample size" in verdict
    )


def test_report_without_candidate_and_with_warnings(
    small_evaluation: PolicyEvaluation, tmp_path: Path
) -> None:
    small_evaluation.diagnostics["uniform"]["warnings"] = ["effective sample size 3 < 100"]
    try:
        html = write_report(small_evaluation, tmp_path / "r.html").read_text()
    finally:
        small_evaluation.diagnostics["uniform"]["warnings"] = []
    assert "No candidate named" in html
    assert 'class="warn"' in html and "effective sample size 3 &lt; 100" in html


def test_report_verdict_ess_gate(small_evaluation: PolicyEvaluation, tmp_path: Path) -> None:
    html = write_report(
        small_evaluation, tmp_path / "r.html", candidate=EVIL, champion="champion $x$", min_ess=1e9
    ).read_text()
    assert "Not enough evidence" in html and 'class="verdict unsure"' in html


def test_log_report_to_mlflow(small_evaluation: PolicyEvaluation, tmp_path: Path) -> None:
    import mlflow

    path = write_report(small_evaluation, tmp_path / "report.html")
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_report_to_mlflow(path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("report-test")
        with mlflow.start_run() as run:
            log_report_to_mlflow(path)
        client = mlflow.MlflowClient()
        names = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
        assert names == ["evaluation/report.html"]
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None resets it (stub: str|Path)


def test_cli_evaluate_writes_the_report(
    simulated: SimulatedLog,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.cli import main
    from router.events import FileEventSink

    decisions = {e.event_id for e in simulated.events[:1500:3]}  # 500 decisions
    with FileEventSink(tmp_path / "events", fsync="never") as sink:
        for event in simulated.events:
            if event.event_id in decisions:
                sink.emit(event)
    simulated.bundles["oracle"].save(tmp_path / "oracle")
    simulated.bundles["direct"].save(tmp_path / "direct")
    out = tmp_path / "report.html"
    code = main(
        [
            "evaluate",
            "--events", str(tmp_path / "events"),
            "--candidate", str(tmp_path / "oracle"),
            "--champion", str(tmp_path / "direct"),
            "--out", str(out),
            "--n-bootstrap", "50",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "500 decisions evaluated" in printed
    assert "candidate - champion (DR reward)" in printed and f"wrote {out}" in printed
    assert 'id="verdict"' in out.read_text()
    assert main(["evaluate", "--events", str(tmp_path / "none"), "--out", str(out)]) == 2
