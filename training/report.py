"""The off-policy evaluation report: one self-contained HTML file (inline CSS, PNG figures as
base64 data URIs; nothing is fetched when it is opened).

Sections: a verdict banner (candidate vs champion: the paired improvement with its interval and
the effective-sample-size check the promotion gate applies), estimated quality vs cost per
policy, the estimator tables and a forest plot, logged traffic per model over time, and the
diagnostics (ESS, max weight, per-model counts) with their warnings. All text goes through
jinja2's autoescaping, so policy and model names cannot inject markup. This module assembles the
page; :mod:`training.report_figures` draws its figures.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from features.errors import ServiceError
from training import ope_support
from training.ope_result import TARGETS, PolicyEvaluation
from training.report_figures import _records, plot_forest, plot_quality_cost, plot_traffic

_TEMPLATE = "evaluation_report.html.j2"
_TARGET_TITLES = {
    "reward": "Reward",
    "quality": "Quality",
    "cost_usd": "Cost per request (USD)",
}


def _fmt(value: float, target: str) -> str:
    if math.isinf(value):
        return f"{'+' if value > 0 else '-'}inf"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}" if target == "cost_usd" else f"{value:.4f}"


def _ordered(
    evaluation: PolicyEvaluation, champion: str | None, candidate: str | None
) -> list[str]:
    names = evaluation.policies
    first = [p for p in (candidate, champion) if p is not None and p in names]
    kind = {p: evaluation.diagnostics[p].get("kind", "policy") for p in names}
    others = [p for p in names if p not in first and kind[p] != "baseline"]
    return first + others + [p for p in names if p not in first and kind[p] == "baseline"]


def _point_estimator(evaluation: PolicyEvaluation, preferred: str) -> str:
    available: list[str] = list(
        dict.fromkeys(evaluation.estimates.index.get_level_values("estimator"))
    )
    for e in (preferred, "dr", "snipw", "ipw"):
        if e in available:
            return e
    return available[0]


# ---- page parts -------------------------------------------------------------------------------
def _verdict(
    evaluation: PolicyEvaluation,
    champion: str | None,
    candidate: str | None,
    estimator: str,
    min_ess: float,
) -> dict[str, Any]:
    level = f"{100 * (1 - evaluation.alpha):.0f}%"
    if candidate is None or candidate not in evaluation.diagnostics:
        table = evaluation.table("reward").xs(estimator, level="estimator")["value"]
        best = str(table.idxmax())
        return {
            "css": "info",
            "headline": "No candidate named: estimates only",
            "line": f"Highest {estimator} reward estimate: {best} ({table.max():.4f})",
            "detail": "",
            "checks": [],
        }
    baseline = champion if champion in evaluation.diagnostics else "logging"
    if baseline not in evaluation.diagnostics:
        baseline = next(p for p in evaluation.policies if p != candidate)
    imp = evaluation.improvement(candidate, baseline, estimator=estimator)
    quality = evaluation.improvement(candidate, baseline, estimator=estimator, target="quality")
    cost = evaluation.improvement(candidate, baseline, estimator=estimator, target="cost_usd")
    ess = float(evaluation.diagnostics[candidate]["ess"])
    ess_ok = ess >= min_ess
    role = "champion" if baseline == champion else "baseline"
    who = baseline if baseline == role else f"{role} {baseline}"
    word = str(imp["verdict"])
    if not ess_ok:
        css, headline = "unsure", f"Not enough evidence to judge {candidate} against {baseline}"
    else:
        css = {ope_support.BETTER: "good", ope_support.WORSE: "bad"}.get(word, "unsure")
        headline = ope_support.describe(word, candidate, who, evaluation.equivalence)
    expected = float(evaluation.diagnostics[candidate].get("ess_expected", ess))
    checks = [
        {
            "ok": expected >= min_ess,
            "text": f"expected effective sample size of {candidate} under the logger's pmf: "
            f"{expected:.0f} (support where it departs from the logger)",
        },
        {
            "ok": ess_ok,
            "text": f"effective sample size of {candidate}: {ess:.0f} "
            f"({'≥' if ess_ok else '<'} {min_ess:.0f} required for promotion)",
        },
        {
            "ok": imp["low"] > 0,
            "text": f"lower bound of the {level} interval {imp['low']:+.4f} "
            f"{'>' if imp['low'] > 0 else '≤'} 0",
        },
        {
            "ok": bool(imp["same_reward_spec"]),
            "text": "same reward spec for both"
            if imp["same_reward_spec"]
            else "different reward specs: compare quality and cost rather than reward",
        },
    ]
    warnings = evaluation.diagnostics[candidate].get("warnings") or []
    checks += [{"ok": False, "text": w} for w in warnings]
    return {
        "css": css,
        "headline": headline,
        "line": (
            f"{estimator.upper()} reward improvement {imp['delta']:+.4f}, {level} interval "
            f"[{imp['low']:+.4f}, {imp['high']:+.4f}] (support-aware; paired bootstrap "
            f"[{imp['boot_low']:+.4f}, {imp['boot_high']:+.4f}], n = {imp['n']})"
        ),
        "detail": (
            f"Quality {quality['delta']:+.4f} [{quality['low']:+.4f}, {quality['high']:+.4f}]; "
            f"cost per request {cost['delta']:+.3g} USD [{cost['low']:+.3g}, {cost['high']:+.3g}]."
        ),
        "checks": checks,
    }


def _tables(
    evaluation: PolicyEvaluation, order: list[str], champion: str | None, candidate: str | None
) -> list[dict[str, Any]]:
    blocks = []
    records = _records(evaluation)
    estimators = list(dict.fromkeys(evaluation.estimates.index.get_level_values("estimator")))
    for target in TARGETS:
        rows = []
        for policy in order:
            cells = []
            for e in estimators:
                r = records[(policy, e, target)]
                cells.append(
                    {
                        "text": f"{_fmt(r['value'], target)} "
                        f"[{_fmt(r['low'], target)}, {_fmt(r['high'], target)}]",
                        "title": f"bootstrap [{_fmt(r['boot_low'], target)}, "
                        f"{_fmt(r['boot_high'], target)}]; Gaussian "
                        f"[{_fmt(r['gauss_low'], target)}, {_fmt(r['gauss_high'], target)}]",
                    }
                )
            css = "candidate" if policy == candidate else "champion" if policy == champion else ""
            rows.append({"policy": policy, "cells": cells, "css": css})
        blocks.append({"title": _TARGET_TITLES[target], "estimators": estimators, "rows": rows})
    return blocks


def _diagnostic_rows(
    evaluation: PolicyEvaluation, order: list[str], champion: str | None, candidate: str | None
) -> list[dict[str, Any]]:
    rows = []
    for policy in order:
        d = evaluation.diagnostics[policy]
        warnings = list(d.get("warnings") or [])
        css = "warn" if warnings else ""
        css = css or (
            "candidate" if policy == candidate else "champion" if policy == champion else ""
        )
        rows.append(
            {
                "policy": policy,
                "ess": f"{float(d['ess']):.0f}",
                "ess_ratio": f"{float(d['ess_ratio']):.3f}",
                "max_weight": f"{float(d['max_weight']):.2f}",
                "above": str(d.get("n_weight_above_lambda", "")),
                "deficit": f"{float(d.get('support_deficit', 0.0)):.3f}",
                "warnings": warnings,
                "css": css,
            }
        )
    return rows


def write_report(
    evaluation: PolicyEvaluation,
    path: str | Path,
    *,
    title: str = "polyroute off-policy evaluation",
    champion: str | None = None,
    candidate: str | None = None,
    extra: dict[str, Any] | None = None,
    estimator: str = "dr",
    min_ess: float = 100.0,
) -> Path:
    """Write the HTML report of ``evaluation`` to ``path`` (one file) and return the path.

    Parameters
    ----------
    champion, candidate : policy names in ``evaluation`` for the verdict banner; without a
        champion the candidate is compared with the logging policy.
    extra : shown as key/value rows in the Data section (e.g. run ids, bundle versions).
    estimator : the estimator of the verdict and the quality-cost plot (falls back to SNIPW).
    min_ess : the effective sample size the verdict requires (the promotion gate's).
    """
    out = Path(path)
    point = _point_estimator(evaluation, estimator)
    order = _ordered(evaluation, champion, candidate)
    figures = {
        "quality_cost": plot_quality_cost(evaluation, point, order, champion, candidate),
        "forest": plot_forest(evaluation, order, champion, candidate),
        "traffic": plot_traffic(evaluation),
    }
    models = evaluation.models
    share_policies = [p for p in order if evaluation.diagnostics[p].get("kind") != "baseline"]
    share_policies = [p for p in (candidate, champion) if p in share_policies] or share_policies[:3]
    model_rows = []
    first = evaluation.diagnostics[order[0]] if order else {}
    counts = first.get("action_counts") or {}
    for m in models:
        shares = [
            f"{evaluation.diagnostics[p].get('target_share', {}).get(m, 0.0):.3f}"
            for p in share_policies
        ]
        model_rows.append({"model": m, "count": counts.get(m, 0), "shares": shares})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template(_TEMPLATE).render(
        title=title,
        n=evaluation.n,
        n_excluded_total=sum(evaluation.n_excluded.values()),
        n_policies=len(order),
        level=f"{100 * (1 - evaluation.alpha):.0f}%",
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        verdict=_verdict(evaluation, champion, candidate, point, min_ess),
        point_estimator=point,
        figures=figures,
        tables=_tables(evaluation, order, champion, candidate),
        traffic_bucket=evaluation.traffic.attrs.get("bucket", "time"),
        diagnostics=_diagnostic_rows(evaluation, order, champion, candidate),
        share_policies=share_policies,
        model_rows=model_rows,
        excluded=sorted(evaluation.n_excluded.items()),
        extra=[(str(k), str(v)) for k, v in (extra or {}).items()],
        notes=evaluation.notes,
        n_bootstrap=evaluation.n_bootstrap,
        seed=evaluation.seed,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def log_report_to_mlflow(path: str | Path, artifact_path: str = "evaluation") -> None:
    """Log the report file as an artifact of the active MLflow run.

    Raises
    ------
    ServiceError
        A RuntimeError: when no MLflow run is active (start one with ``mlflow.start_run()``).
    """
    import mlflow  # lazily: the report itself does not need MLflow

    if mlflow.active_run() is None:
        raise ServiceError("log_report_to_mlflow: no active MLflow run; call mlflow.start_run()")
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


__all__ = [
    "log_report_to_mlflow",
    "write_report",
]
