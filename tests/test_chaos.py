"""The chaos benchmark's parts: the mock upstream's injected faults, the summary of a run, and
(slow) one real scenario end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from training.bench.chaos import _summary, chaos_table, run_scenario
from training.bench.mock_upstream import Faults, start_mock_upstream

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


def test_mock_upstream_delays_and_fails_as_told() -> None:
    async def go() -> list[tuple[int, float]]:
        server = await start_mock_upstream(faults=Faults(delay_ms=50, error_rate=0.5, seed=1))
        port = server.sockets[0].getsockname()[1]
        out = []
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                loop = asyncio.get_running_loop()
                start = loop.time()
                r = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
                out.append((r.status_code, loop.time() - start))
        server.close()
        return out

    results = asyncio.run(go())
    statuses = [s for s, _ in results]
    assert {200, 503} == set(statuses) and 4 <= statuses.count(503) <= 16
    assert min(t for _, t in results) >= 0.045
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)


def test_summary_counts_losses_shares_and_events(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / "events-20260101T000000Z-000001.jsonl").write_text(
        '{"kind":"decision","event_id":"d1"}\n{"kind":"outcome","event_id":"d1"}\n'
        '{"kind":"decision","event_id":"d2"}\n{"kind":"outc'  # a torn last line
    )
    records = [
        {"i": 0, "t": 0.1, "status": 200, "error": None, "model": "m", "decision_id": "d1",
         "latency_ms": 20.0},
        {"i": 1, "t": 2.0, "status": 200, "error": None, "model": "x", "decision_id": "d3",
         "latency_ms": 30.0},
        {"i": 2, "t": 2.5, "status": None, "error": "ConnectionResetError", "latency_ms": 5.0},
    ]  # fmt: skip
    row = _summary("model_down", records, 1.0, "m", 1.0, events, 1.5)
    assert row["served"] == 2 and row["errors"] == {"ConnectionResetError": 1}
    assert row["target_share"] == 0.5 and row["target_share_after_fault"] == 0.0
    assert row["served_without_decision_event"] == 1  # d3 answered, not in the log
    assert row["decisions_without_outcome"] == 1  # d2
    assert row["unreadable_event_lines"] == 1
    row["workers"] = 1
    assert "| model_down | 1 | 2/3 (66.67%) | ConnectionResetError 1 |" in chaos_table([row])


@pytest.mark.slow
def test_a_model_killed_mid_run_loses_no_request(bundle_dir: Path, tmp_path: Path) -> None:
    prompts = ["What is 2 + 2?", "Name a prime number.", "Translate 'cat' to French."]
    row = run_scenario(
        "model_down", str(EXAMPLE), str(bundle_dir), prompts, "Llama-2-7b-hf", 50, 4, tmp_path
    )
    assert row["served"] == row["requests"] == 200, row
    assert row["served_without_decision_event"] == 0 and row["decisions_without_outcome"] == 0
