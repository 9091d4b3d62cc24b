"""What ``polyroute demo`` reports: a line per round, the single-model and oracle reference on
the test split, and the output files (JSON, Markdown, PNG)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from router.bundle import PolicyBundle
from training.datasets import RoutingDataset
from training.loop import RoundResult


def print_round(r: RoundResult) -> None:
    verdict = "PROMOTED" if r.promoted else "kept champion"
    print(
        f"round {r.round}: champion v{r.champion_version} served {r.served} requests, "
        f"mean reward {r.served_mean_reward:.3f} (test value {r.test_reward_before:.3f}); "
        f"candidate v{r.candidate_version}: DR delta {r.delta:+.3f} "
        f"[{r.low:+.3f}, {r.high:+.3f}], ESS {r.ess:.0f} -> {verdict} "
        f"(true test value {r.test_reward_candidate:.3f})",
        flush=True,
    )


def reference(data: RoutingDataset, models: list[str], bundle: PolicyBundle) -> dict[str, Any]:
    """Single models and the oracle on the test split, restricted to the demo's models."""
    test = data.split("test")
    spec = bundle.reward
    singles = {}
    for m in models:
        j = test.model_names.index(m)
        known = test.available[:, j]
        quality = float(np.nanmean(test.quality[known, j]))
        cost = float(np.nanmean(test.cost[known, j]))
        singles[m] = {
            "quality": quality,
            "cost": cost,
            "reward": quality - spec.w_cost * cost / spec.cost_scale,
        }
    columns = [test.model_names.index(m) for m in models]
    reward = test.quality[:, columns] - spec.w_cost * test.cost[:, columns] / spec.cost_scale
    oracle = float(np.nanmean(np.nanmax(np.where(test.available[:, columns], reward, np.nan), 1)))
    return {"singles": singles, "oracle_reward": oracle, "n_test": test.n_prompts}


def write_outputs(out_dir: Path, summary: dict[str, Any], trace: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2, default=float))
    rounds = summary["rounds"]
    # reward over time: served reward per round (and per request when traced), promotions marked
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if trace:
        rewards = np.array([t["reward"] for t in trace])
        window = max(25, len(rewards) // 40)
        smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
        steps = np.arange(window - 1, len(rewards))
        ax.plot(steps, smooth, lw=1, label=f"served ({window}-request average)")
    per = summary["config"]["requests_per_round"]
    centers = [(r["round"] + 0.5) * per for r in rounds]
    ax.plot(centers, [r["served_mean_reward"] for r in rounds], "o-", label="served, round mean")
    ax.plot(centers, [r["test_reward_before"] for r in rounds], "s--", label="champion, test value")
    for r in rounds:
        if r["promoted"]:
            ax.axvline((r["round"] + 1) * per, color="green", ls=":", lw=1)
    ax.axhline(summary["reference"]["oracle_reward"], color="grey", ls="--", lw=0.8, label="oracle")
    best = max(v["reward"] for v in summary["reference"]["singles"].values())
    ax.axhline(best, color="black", ls="-.", lw=0.8, label="best single model")
    ax.set_xlabel("requests")
    ax.set_ylabel("reward")
    ax.set_title("polyroute demo: reward over the loop (dotted: promotions)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "demo_reward.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, point in summary["reference"]["singles"].items():
        ax.scatter(point["cost"] * 1e6, point["quality"], color="grey", s=18)
        ax.annotate(name, (point["cost"] * 1e6, point["quality"]), fontsize=6)
    path = [(r["test_cost_before"] * 1e6, r["test_quality_before"]) for r in rounds]
    final = summary["final"]["final"]
    path.append((final[2] * 1e6, final[1]))
    xs, ys = zip(*path, strict=True)
    ax.plot(xs, ys, "o-", color="tab:blue", label="champion after each round")
    ax.scatter([xs[0]], [ys[0]], color="tab:red", zorder=3, label="start")
    curve = sorted(summary.get("curve", []), key=lambda p: p["cost"])
    if curve:
        ax.plot(
            [p["cost"] * 1e6 for p in curve],
            [p["quality"] for p in curve],
            "^-",
            color="tab:purple",
            label="policies re-learned from the loop's logs, w_cost 0-5",
        )
    ax.scatter([xs[-1]], [ys[-1]], color="tab:green", zorder=3, label="final champion")
    ax.set_xlabel("mean cost per request (micro-USD)")
    ax.set_ylabel("mean quality (test split)")
    ax.set_title("quality vs cost on the test split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "demo_quality_cost.png", dpi=120)
    plt.close(fig)

    command = " ".join(["polyroute", *sys.argv[1:]]) if sys.argv[0].endswith("polyroute") else ""
    lines = [
        f"# polyroute demo ({summary['mode']})",
        "",
        f"Command: `{command or 'training.demo.run_demo(...)'}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}; the same prompts, seeds and models give the same table "
        "up to the service's request interleaving.",
        "",
        f"Rounds of {per} requests among {len(summary['config']['models'])} models; gate: "
        f"{summary['config']['gate']}. Total {summary['seconds']:.0f} s.",
        "",
        "| round | champion | served | served mean reward | champion test value | candidate "
        "| DR delta [95% CI] | ESS | promoted | candidate test value |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | v{r['champion_version']} | {r['served']} | "
            f"{r['served_mean_reward']:.3f} | {r['test_reward_before']:.3f} | "
            f"v{r['candidate_version']} | {r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | "
            f"{r['ess']:.0f} | {'yes' if r['promoted'] else 'no'} | "
            f"{r['test_reward_candidate']:.3f} |"
        )
    final_v = summary["final"]
    lines += [
        "",
        "Reading it: the gate's DR estimate is the candidate's value on the logged traffic (the "
        "latest decisions of the round, held out from training); the test value is on prompts "
        "the loop never saw. The traffic draws the train split's prompts with replacement, so "
        "prompts recur; `train` drops from training every decision on a prompt that the "
        "held-out slice holds (`n_excluded_prompt_in_holdout` in its MLflow run), so the gate "
        "too judges each candidate on prompts it did not learn from.",
        f"Final champion test value {final_v['final'][0]:.3f} (quality {final_v['final'][1]:.3f}, "
        f"cost {final_v['final'][2] * 1e6:.1f} µUSD) vs the start "
        f"({summary.get('start', 'cold start')}) {final_v['cold'][0]:.3f} "
        f"(quality {final_v['cold'][1]:.3f}); best single model reward {best:.3f}; oracle "
        f"{summary['reference']['oracle_reward']:.3f}.",
    ]
    if curve:
        lines += [
            "",
            "Quality-cost curve on the test split: policies re-learned from all of the loop's "
            "logs with other cost weights (the logs keep the raw reward components).",
            "",
            "| w_cost | mean cost (µUSD) | mean quality |",
            "|---|---|---|",
            *[
                f"| {p['w_cost']:g} | {p['cost'] * 1e6:.1f} | {p['quality']:.3f} |"
                for p in summary["curve"]
            ],
        ]
    (out_dir / "demo.md").write_text("\n".join(lines) + "\n")
