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
