"""The benchmark's terminal table (rich)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "never"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def benchmark_table(summary: dict[str, Any]) -> Table:
    best = summary["best_single"]
    table = Table(
        title=(
            f"{summary['dataset']} test split (n={summary['n_test']}): best single "
            f"{best['model']} quality {best['quality']:.3f}; cost@x = cost / its cost"
        )
    )
    for column in (
        "router",
        "AIQ",
        "cost@95%",
        "cost@97%",
        "cost@100%",
        "max quality",
        "APGR",
        "CPT(50%)",
        "CPT(80%)",
    ):
        table.add_column(column, justify="left" if column == "router" else "right")
    rows = dict(summary["routers"])
    rows["oracle"] = summary["oracle"]
    for name, entry in sorted(rows.items(), key=lambda kv: -kv[1]["aiq"]):
        table.add_row(
            name,
            _fmt(entry["aiq"]),
            _fmt(entry["cost_at_95"]),
            _fmt(entry["cost_at_97"]),
            _fmt(entry["cost_at_100"]),
            _fmt(entry["max_quality"]),
            _fmt(entry.get("apgr", "")),
            _fmt(entry.get("cpt_50", "")),
            _fmt(entry.get("cpt_80", "")),
        )
    return table


def markdown_table(summary: dict[str, Any]) -> str:
    """The benchmark table as Markdown (for committed result summaries)."""
    best = summary["best_single"]
    lines = [
        f"### {summary['dataset']} (test prompts: {summary['n_test']}; best single: "
        f"{best['model']}, quality {best['quality']:.3f}, mean cost ${best['cost']:.6f})",
        "",
        "| router | AIQ | cost@95% | cost@97% | cost@100% | max quality | APGR | CPT(50%) "
        "| CPT(80%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = dict(summary["routers"])
    rows["oracle"] = summary["oracle"]
    for name, entry in sorted(rows.items(), key=lambda kv: -kv[1]["aiq"]):
        cells = [entry["aiq"], entry["cost_at_95"], entry["cost_at_97"], entry["cost_at_100"]]
        cells += [entry["max_quality"], entry.get("apgr", ""), entry.get("cpt_50", "")]
        cells += [entry.get("cpt_80", "")]
        lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |")
    replay = summary["bandit_replay"]
    lines += ["", f"Bandit replay trade-offs (w_cost): {[round(x, 4) for x in replay['lambdas']]}"]
    for name, info in replay["policies"].items():
        loop = (
            f" (learning loop: {info['n_labelled']} prompts labelled, {info['n_partial_feedback']} "
            f"with partial feedback in {info['rounds']} retraining rounds)"
            if "rounds" in info
            else ""
        )
        lines.append(
            f"- {name}: AIQ / direct AIQ = {info['aiq_ratio_to_direct']:.3f}, final cumulative "
            f"regret {info['final_cumulative_regret']:.1f} at w_cost={replay['trace_lambda']:.3g}, "
            f"{info['seconds']:.0f} s{loop}"
        )
    timings = ", ".join(f"{k} {v:.0f}" for k, v in summary["timings_s"].items())
    lines += ["", f"Timings (s): {timings}", ""]
    lines += [f"- {note}" for note in summary["dataset_notes"]]
    return "\n".join(lines) + "\n"
