"""The load benchmark (training/bench/load.py): the capacity rule and, end to end on loopback, one
short run with its overload point before and after (marked slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_gateway import EXAMPLE

from training.bench.load import capacity, load_markdown, load_table, run_load


def row(rate: float, p99: float | None, direct: int = 0, routed: int = 0) -> dict[str, Any]:
    return {
        "rate_rps": rate,
        "routed_p99_ms": p99,
        "errors_direct": direct,
        "errors_routed": routed,
    }


def test_capacity_is_the_highest_rate_under_the_bound_without_errors() -> None:
    rows = [row(100, 3), row(200, 12), row(400, 49.9, routed=1), row(800, 60)]
    assert capacity(rows, 50) == 200  # 400 had a routed error, 800 is over the bound
    assert capacity(rows, 10) == 100
    assert capacity([row(100, 3, direct=2), row(200, None)], 50) is None
    assert capacity([*rows[:3], row(800, 49)], 50) == 800  # not the first failure: the highest


@pytest.mark.slow
def test_one_run_prints_rates_capacity_memory_and_overload(
    bundle_dir: Path, tmp_path: Path
) -> None:
    result = run_load(
        str(EXAMPLE), str(bundle_dir), [20.0, 40.0], 1.0, tmp_path, overload_factor=2.0
    )
    assert [r["rate_rps"] for r in result["rates"]] == [20.0, 40.0]
    assert result["overload_rps"] == 2 * (result["capacity_rps"] or 20.0)
    assert [r["admission"] for r in result["overload"]] == [
        "configured",
        "baseline {'limiter': 'fixed', 'queue_wait_ms': 50.0}",
    ]
    for r in result["overload"]:
        assert r["total_rps"] == result["overload_rps"]  # the router alone
        assert r["direct_p50_ms"] is None
        assert 0 < r["accepted_share"] + r["refused_share"] <= 1
        assert r["router_cpu_ms_per_req"] > 0
    assert 50 < result["router_rss_mb_start"] <= result["router_rss_mb_end"] * 1.5
    assert len(result["load_average_start"]) == len(result["load_average_end"]) == 3
    table = load_table(result)
    assert "| 20 |" in table and "| configured |" in table and "Gateway RSS" in table
    result["command"] = "polyroute bench-load --rates 20,40"
    text = load_markdown(result)
    assert text.startswith("Command: `polyroute bench-load --rates 20,40`") and table in text
    assert f"load average (1/5/15 min) {result['load_average_start']} at the start" in text
