"""Benchmark plots (PNG): quality-cost curves and bandit replay (regret, reward over time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from training.metrics import upper_hull
from training.simulate import ReplayTrace

_SHOWN = (
    "direct",
    "knn10",
    "per_task_static",
    "bandit:squarecb_quality",
    "bandit:squarecb_quality_warm25",
    "bandit:vw_squarecb",
    "bandit:epsilon_greedy",
    "bandit:linucb",
)


def plot_curves(
    summary: dict[str, Any], single: dict[str, tuple[float, float]], path: Path
) -> Path:
    """Quality vs mean cost per request: routers' hulls, single models, oracle."""
    fig, ax = plt.subplots(figsize=(9, 6))
    for name, entry in summary["routers"].items():
        if name not in _SHOWN or len(entry["curve"]) < 2:
            continue
        pts = [tuple(p) for p in entry["curve"]]
        hull = upper_hull(pts)
        line = ax.plot(*zip(*hull, strict=True), label=f"{name} (AIQ {entry['aiq']:.3f})")[0]
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, s=6, color=line.get_color(), alpha=0.35)
    oracle = upper_hull([tuple(p) for p in summary["oracle"]["curve"]])
    ax.plot(
        *zip(*oracle, strict=True),
        "k--",
        lw=1,
        label=f"oracle (AIQ {summary['oracle']['aiq']:.3f})",
    )
    zero = upper_hull(list(single.values()))
    ax.plot(
        *zip(*zero, strict=True),
        ":",
        color="grey",
        label=f"zero router (AIQ {summary['zero_router_aiq']:.3f})",
    )
    for model, (c, q) in single.items():
        ax.scatter([c], [q], marker="x", color="grey", s=20)
        ax.annotate(model.split("/")[-1], (c, q), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{summary['dataset']}: quality-cost on the test split (n={summary['n_test']})")
    ax.axvline(summary["c_lo"], color="grey", lw=0.5)
    ax.axvline(summary["c_hi"], color="grey", lw=0.5)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_replay(summary: dict[str, Any], traces: dict[str, ReplayTrace], path: Path) -> Path:
    """Cumulative regret and moving-average reward over the replay stream."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, trace in traces.items():
        left.plot(trace.cumulative_regret, label=name)
        right.plot(trace.moving_average_reward(), label=name)
    lam = summary["bandit_replay"]["trace_lambda"]
    left.set_title(f"cumulative regret vs per-prompt oracle (w_cost={lam:.3g})")
    left.set_xlabel("prompts seen")
    right.set_title("reward, moving average over 200 prompts")
    right.set_xlabel("prompts seen")
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
