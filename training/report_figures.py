"""The figures of the off-policy evaluation report (:mod:`training.report`), each a PNG as base64
for a data URI: estimated quality vs cost per policy, the forest plot of the estimates, and the
logged traffic per model over time. The candidate, the champion and the baselines have their
own colours in every figure.
"""

from __future__ import annotations

import base64
import io
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from training.ope_result import PolicyEvaluation

_CANDIDATE, _CHAMPION, _BASELINE = "#0969da", "#8250df", "#8c959f"


def _mpl(text: str) -> str:
    """A label matplotlib draws literally (``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _color(
    evaluation: PolicyEvaluation, policy: str, champion: str | None, candidate: str | None
) -> str | None:
    if policy == candidate:
        return _CANDIDATE
    if policy == champion:
        return _CHAMPION
    if evaluation.diagnostics[policy].get("kind") == "baseline":
        return _BASELINE
    return None


def _records(evaluation: PolicyEvaluation) -> dict[tuple[str, str, str], dict[str, float]]:
    """(policy, estimator, target) -> {value, boot_low, ...}."""
    return cast(
        dict[tuple[str, str, str], dict[str, float]],
        evaluation.estimates.to_dict(orient="index"),
    )


def plot_quality_cost(
    evaluation: PolicyEvaluation,
    estimator: str,
    order: list[str],
    champion: str | None,
    candidate: str | None,
) -> str:
    """Estimated mean quality vs mean cost per policy with bootstrap whiskers (base64 PNG)."""
    est = _records(evaluation)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for policy in order:
        q = est[(policy, estimator, "quality")]
        c = est[(policy, estimator, "cost_usd")]
        color = _color(evaluation, policy, champion, candidate)
        ax.errorbar(
            [c["value"]],
            [q["value"]],
            xerr=[[max(c["value"] - c["boot_low"], 0)], [max(c["boot_high"] - c["value"], 0)]],
            yerr=[[max(q["value"] - q["boot_low"], 0)], [max(q["boot_high"] - q["value"], 0)]],
            fmt="o",
            color=color,
            capsize=3,
            ms=7 if policy in (champion, candidate) else 5,
            label=_mpl(policy),
        )
        ax.annotate(
            _mpl(policy),
            (c["value"], q["value"]),
            xytext=(6, 5),
            textcoords="offset points",
            fontsize=8,
            color=color or "black",
        )
    ax.set_xlabel(f"estimated mean cost per request (USD), {estimator}")
    ax.set_ylabel(f"estimated mean quality, {estimator}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def plot_forest(
    evaluation: PolicyEvaluation,
    order: list[str],
    champion: str | None,
    candidate: str | None,
    target: str = "reward",
) -> str:
    """Estimates with bootstrap intervals, one row per (policy, estimator) (base64 PNG)."""
    table = evaluation.table(target)
    estimators = list(dict.fromkeys(table.index.get_level_values("estimator")))
    rows = [(p, e) for p in order for e in estimators]
    fig, ax = plt.subplots(figsize=(8.5, 0.8 + 0.22 * len(rows)))
    markers = dict(zip(estimators, "osD^vP*", strict=False))
    records = _records(evaluation)
    for y, (policy, e) in enumerate(rows):
        row = records[(policy, e, target)]
        color = _color(evaluation, policy, champion, candidate) or "#24292f"
        ax.plot([row["boot_low"], row["boot_high"]], [y, y], color=color, lw=1.6)
        ax.plot([row["value"]], [y], markers.get(e, "o"), color=color, ms=5)
    if champion is not None and (champion, "dr", target) in records:
        ax.axvline(records[(champion, "dr", target)]["value"], color=_CHAMPION, ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_mpl(f"{p} · {e}") for p, e in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"estimated mean {target}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_traffic(evaluation: PolicyEvaluation) -> str | None:
    """Stacked area of the logged per-model share over time (base64 PNG), None without data."""
    share = evaluation.traffic
    if share.empty:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    colors = [plt.get_cmap("tab20")(i % 20) for i in range(share.shape[1])]
    labels = [_mpl(str(m)) for m in share.columns]
    times = share.index.tz_convert(None) if hasattr(share.index, "tz_convert") else share.index
    if len(share) == 1:
        bottom = 0.0
        for j, label in enumerate(labels):
            value = float(share.to_numpy()[0, j])
            ax.bar([0], [value], bottom=bottom, color=colors[j], label=label)
            bottom += value
        ax.set_xticks([0], [str(share.index[0])])
    else:
        ax.stackplot(times, share.to_numpy().T, labels=labels, colors=colors)
        ax.set_xlim(times.min(), times.max())
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of decisions")
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 + len(labels) // 18)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


__all__ = ["plot_forest", "plot_quality_cost", "plot_traffic"]
