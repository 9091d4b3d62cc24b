"""The replay backend: recorded answers, usage and scores; prompt matching; faults; SSE; and the
official OpenAI SDK against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from loopback import serving

from features.errors import ConfigError
from training.datasets import RoutingDataset, load_dataset
from training.replay.outcomes import UNKNOWN_PROMPT_ANSWER
from training.replay.server import ReplayConfig, create_replay_app
from training.replay.wire import split_answer

TINY_MODELS = ("alpha", "beta")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> RoutingDataset:
    """3 prompts x 2 models with answers; beta never answered p3; alpha's p2 answer is null."""
    root: Path = tmp_path_factory.mktemp("tiny")
    pd.DataFrame(
        {
            "prompt_id": ["p1", "p2", "p3"],
            "task": ["math", "math", "law"],
            "prompt": ["What is 2 + 2?", "  Name a prime.\n", "Is a contract binding?"],
            "split": ["train", "train", "test"],
        }
    ).to_parquet(root / "prompts.parquet")
    pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2", "p3"],
            "model": ["alpha", "beta", "alpha", "beta", "alpha"],
            "score": [1.0, 0.0, 1.0, 0.5, 1.0],
            "cost_usd": [0.001, 0.0002, 0.002, 0.0003, 0.004],
            "input_tokens": [7, 7, 5, 5, 6],
            "output_tokens": [12, 30, 3, 8, 40],
            "latency_ms": [200.0, 120.0, 150.0, 90.0, 300.0],
            "response": [
                "The answer is 4, because two plus two makes four.",
                "It is 5.",
                None,
                "Seven is a prime.",
                "Usually, yes: offer, acceptance and consideration.",
            ],
        }
    ).to_parquet(root / "outcomes.parquet")
    pd.DataFrame(
        {
            "model": list(TINY_MODELS),
            "usd_per_mtok_in": [1.0, 0.2],
            "usd_per_mtok_out": [2.0, 0.4],
            "ttft_ms": [50.0, 30.0],
            "tokens_per_s": [100.0, 200.0],
            "context_tokens": [8192, 8192],
        }
    ).to_csv(root / "models.csv", index=False)
    return load_dataset(root)


def _client(dataset: RoutingDataset, **config: Any) -> TestClient:
    return TestClient(create_replay_app(dataset, ReplayConfig(**{"time_scale": 0.0, **config})))


def _chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def test_known_prompt_returns_recorded_answer_usage_and_score(tiny: RoutingDataset) -> None:
    client = _client(tiny)
    r = client.post("/v1/chat/completions", json=_chat("alpha", "What is 2 + 2?"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "alpha"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The answer is 4, because two plus two makes four.",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}
    assert float(r.headers["x-replay-score"]) == 1.0
    assert r.headers["x-replay-prompt-id"] == "p1"
    assert float(r.headers["x-replay-cost-usd"]) == pytest.approx(0.001)
    assert "x-replay-estimated" not in r.headers


def test_prompt_text_matched_after_stripping_and_with_a_system_message(
    tiny: RoutingDataset,
) -> None:
    client = _client(tiny)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name a prime.  "}]},
    ]
    r = client.post("/v1/chat/completions", json={"model": "beta", "messages": messages})
    assert r.json()["choices"][0]["message"]["content"] == "Seven is a prime."
    assert (r.headers["x-replay-prompt-id"], float(r.headers["x-replay-score"])) == ("p2", 0.5)


def test_null_recorded_answer_gives_a_labelled_note_and_keeps_the_recorded_score(
    tiny: RoutingDataset,
) -> None:
    r = _client(tiny).post("/v1/chat/completions", json=_chat("alpha", "Name a prime."))
    assert r.json()["choices"][0]["message"]["content"] == (
        "[replay: this dataset records no answer text. Recorded outcome: alpha answered prompt "
        "p2 (task math) in 3 tokens, graded correct (score 1).]"
    )
    assert r.json()["usage"]["completion_tokens"] == 3  # the recorded count, not the note's
    assert float(r.headers["x-replay-score"]) == 1.0


def test_match_by_metadata_prompt_id_wins_over_text(tiny: RoutingDataset) -> None:
    body = _chat("beta", "text that is in no dataset", metadata={"prompt_id": "p1"})
    r = _client(tiny).post("/v1/chat/completions", json=body)
    assert r.json()["choices"][0]["message"]["content"] == "It is 5."
    assert r.json()["usage"]["completion_tokens"] == 30
    assert (r.headers["x-replay-prompt-id"], float(r.headers["x-replay-score"])) == ("p1", 0.0)


def test_unknown_outcome_gives_placeholder_and_no_score(tiny: RoutingDataset) -> None:
    r = _client(tiny).post("/v1/chat/completions", json=_chat("beta", "Is a contract binding?"))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == (
        "[replay: no recorded answer for model beta on prompt p3]"
    )
    assert r.headers["x-replay-prompt-id"] == "p3"
    assert "x-replay-score" not in r.headers
    assert r.headers["x-replay-estimated"] == "true"


def test_unknown_prompt_gives_generic_answer_estimated_usage_and_no_score(
    tiny: RoutingDataset,
) -> None:
    prompt = "x" * 400
    r = _client(tiny).post("/v1/chat/completions", json=_chat("alpha", prompt))
    body = r.json()
    assert body["choices"][0]["message"]["content"] == UNKNOWN_PROMPT_ANSWER
    completion = round(len(UNKNOWN_PROMPT_ANSWER) / 4)
    assert body["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": completion,
        "total_tokens": 100 + completion,
    }
    assert "x-replay-score" not in r.headers and "x-replay-prompt-id" not in r.headers
    # latency from models.csv: ttft 50 ms + tokens / 100 tokens per second (time_scale 1 here)
    expected_ms = 50.0 + completion / 100.0 * 1000.0
    r1 = _client(tiny, time_scale=1.0).post("/v1/chat/completions", json=_chat("alpha", prompt))
    assert float(r1.headers["x-replay-latency-ms"]) == pytest.approx(expected_ms)


def test_bundled_dataset_notes_and_recorded_numbers(bundled: RoutingDataset) -> None:
    """A train prompt of the bundled sample: it records the outcome, not the text."""
    client = _client(bundled)
    row, col = 8, 3
    assert bundled.prompts["split"].iat[row] == "train"
    model = bundled.model_names[col]
    prompt = str(bundled.prompts["prompt"].iat[row])
    pid = str(bundled.prompts["prompt_id"].iat[row])
    r = client.post("/v1/chat/completions", json=_chat(model, prompt))
    assert r.status_code == 200
    graded = "correct" if bundled.quality[row, col] == 1.0 else "wrong"
    note = r.json()["choices"][0]["message"]["content"]
    assert note.startswith("[replay: this dataset records no answer text. Recorded outcome: ")
    assert f"{model} answered prompt {pid} " in note and f"graded {graded}" in note
    assert r.json()["usage"]["prompt_tokens"] == int(bundled.input_tokens[row, col])
    assert r.json()["usage"]["completion_tokens"] == int(bundled.output_tokens[row, col])
    assert float(r.headers["x-replay-score"]) == bundled.quality[row, col]
    assert float(r.headers["x-replay-cost-usd"]) == pytest.approx(bundled.cost[row, col])
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == bundled.model_names
    assert client.get("/healthz").json()["models"] == len(bundled.model_names) == 29


def test_bundled_unavailable_outcome_has_no_score(bundled: RoutingDataset) -> None:
    rows, cols = np.nonzero(~bundled.available)
    row, col = int(rows[0]), int(cols[0])
    pid = str(bundled.prompts["prompt_id"].iat[row])
    body = _chat(bundled.model_names[col], "any text", metadata={"prompt_id": pid})
    r = _client(bundled).post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["x-replay-prompt-id"] == pid
    assert "x-replay-score" not in r.headers


def test_unknown_model_is_404_with_openai_error_body(tiny: RoutingDataset) -> None:
    r = _client(tiny).post("/v1/chat/completions", json=_chat("gpt-9", "What is 2 + 2?"))
    assert r.status_code == 404
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]


@pytest.mark.parametrize(
    ("content", "param", "match"),
    [
        (b"{not json", None, "JSON"),
        (b"[1, 2]", None, "JSON object"),
        (json.dumps({"model": "alpha"}).encode(), "messages", "messages: required"),
        (json.dumps({"model": "alpha", "messages": "hi"}).encode(), "messages", "list"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model", "model"),
        (
            json.dumps({"model": "alpha", "messages": [{"content": "x"}]}).encode(),
            "messages[0]",
            "role",
        ),
        (
            json.dumps(
                {"model": "alpha", "messages": [{"role": "user"}], "max_tokens": -1}
            ).encode(),
            "max_tokens",
            "positive integer",
        ),
        (
            json.dumps({"model": "alpha", "messages": [{"role": "user"}], "metadata": 3}).encode(),
            "metadata",
            "object",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    tiny: RoutingDataset, content: bytes, param: str | None, match: str
) -> None:
    r = _client(tiny).post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert match in error["message"]


def test_outage_model_answers_503_others_still_work(tiny: RoutingDataset) -> None:
    client = _client(tiny, outage_models={"alpha"})
    r = client.post("/v1/chat/completions", json=_chat("alpha", "What is 2 + 2?"))
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert client.post("/v1/chat/completions", json=_chat("beta", "x")).status_code == 200


def test_error_rate_one_answers_500_and_seeded_rate_is_deterministic(
    tiny: RoutingDataset,
) -> None:
    r = _client(tiny, error_rate=1.0).post("/v1/chat/completions", json=_chat("alpha", "x"))
    assert r.status_code == 500
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    def statuses(seed: int) -> list[int]:
        client = _client(tiny, error_rate=0.5, seed=seed)
        body = _chat("beta", "x")
        return [client.post("/v1/chat/completions", json=body).status_code for _ in range(30)]

    first = statuses(3)
    assert first == statuses(3)
    assert set(first) == {200, 500}


def test_admin_faults_update_and_reject_bad_values(tiny: RoutingDataset) -> None:
    client = _client(tiny)
    assert client.get("/admin/faults").json() == {
        "error_rate": 0.0,
        "slowdown_ms": 0.0,
        "outage_models": [],
    }
    r = client.post("/admin/faults", json={"outage_models": ["beta"], "slowdown_ms": 5})
    assert r.json() == {"error_rate": 0.0, "slowdown_ms": 5.0, "outage_models": ["beta"]}
    assert client.post("/v1/chat/completions", json=_chat("beta", "x")).status_code == 503
    client.post("/admin/faults", json={"outage_models": [], "error_rate": 1})
    assert client.post("/v1/chat/completions", json=_chat("beta", "x")).status_code == 500
    for bad, field in [
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": "high"}, "error_rate"),
        ({"slowdown_ms": -1}, "slowdown_ms"),
        ({"outage_models": "beta"}, "outage_models"),
        ({"outage_models": ["gamma"]}, "outage_models"),
        ({"error_rat": 0.1}, "error_rat"),
    ]:
        r = client.post("/admin/faults", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["error"]["param"] == field
        assert field in r.json()["error"]["message"]
    # a rejected update changes nothing
    assert client.get("/admin/faults").json()["error_rate"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time_scale": -1.0}, "time_scale"),
        ({"error_rate": 2.0}, "error_rate"),
        ({"slowdown_ms": -5.0}, "slowdown_ms"),
        ({"outage_models": "alpha"}, "outage_models"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_replay_config_validation_names_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplayConfig(**kwargs)


def test_outage_of_a_model_absent_from_the_dataset_is_a_config_error(
    tiny: RoutingDataset,
) -> None:
    with pytest.raises(ConfigError, match="outage_models"):
        create_replay_app(tiny, ReplayConfig(outage_models={"gamma"}))


def test_time_scale_and_slowdown_are_slept(tiny: RoutingDataset) -> None:
    # recorded latency 200 ms x 0.5 + 50 ms slowdown
    client = _client(tiny, time_scale=0.5, slowdown_ms=50.0)
    start = time.perf_counter()
    r = client.post("/v1/chat/completions", json=_chat("alpha", "What is 2 + 2?"))
    assert r.status_code == 200
    assert time.perf_counter() - start >= 0.150
    assert float(r.headers["x-replay-latency-ms"]) == pytest.approx(100.0)


def _sse_payloads(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.strip()]


def test_stream_chunks_concatenate_to_the_answer_and_end_with_done(tiny: RoutingDataset) -> None:
    client = _client(tiny, time_scale=0.2)
    body = _chat("alpha", "Is a contract binding?", stream=True)
    body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert float(r.headers["x-replay-score"]) == 1.0
        text = r.read().decode()
    assert time.perf_counter() - start >= 0.300 * 0.2
    payloads = _sse_payloads(text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "Usually, yes: offer, acceptance and consideration."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 40


@pytest.mark.parametrize("text", ["", "one", "a b  c\n", "  lead", "x " * 100])
def test_split_answer_is_lossless_and_bounded(text: str) -> None:
    pieces = split_answer(text, max_chunks=8)
    assert "".join(pieces) == text
    assert len(pieces) <= 8


@pytest.fixture
def live_server(tiny: RoutingDataset) -> Iterator[str]:
    """The replay app on a real uvicorn server on loopback; yields its /v1 base URL."""
    app: FastAPI = create_replay_app(tiny, ReplayConfig(time_scale=0.0))
    with serving(app) as url:
        yield url


def test_openai_sdk_sync_and_streaming(live_server: str) -> None:
    client = openai.OpenAI(base_url=live_server, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "What is 2 + 2?"}]
    raw = client.chat.completions.with_raw_response.create(model="alpha", messages=messages)
    assert float(raw.headers["x-replay-score"]) == 1.0
    completion = raw.parse()
    assert completion.choices[0].message.content == (
        "The answer is 4, because two plus two makes four."
    )
    assert completion.usage is not None and completion.usage.total_tokens == 19

    raw_stream = client.chat.completions.with_raw_response.create(
        model="beta", messages=messages, stream=True
    )
    assert float(raw_stream.headers["x-replay-score"]) == 0.0
    parts = [c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices]
    assert "".join(parts) == "It is 5."

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gamma", messages=messages)
    assert [m.id for m in client.models.list()] == list(TINY_MODELS)


def test_bundled_sample_serves_real_answer_texts_on_its_test_prompts(
    bundled: RoutingDataset,
) -> None:
    """The sample's test prompts carry every model's real answer (the MMLU-Pro evaluation
    outputs, experiments/data/sample_responses.py): the replay serves that text with its
    recorded score."""
    assert bundled.responses is not None
    is_test = bundled.prompts["split"].to_numpy() == "test"
    has_text = np.vectorize(lambda t: isinstance(t, str))(bundled.responses)
    # every recorded outcome of a test prompt has its text; train prompts have none
    assert np.array_equal(has_text[is_test], bundled.available[is_test])
    assert not has_text[~is_test].any()
    test_rows = np.flatnonzero(is_test)
    client = _client(bundled)
    row = int(test_rows[0])
    prompt = str(bundled.prompts["prompt"].iat[row])
    for col, model in enumerate(bundled.model_names[:5]):
        r = client.post("/v1/chat/completions", json=_chat(model, prompt))
        assert r.status_code == 200
        answer = r.json()["choices"][0]["message"]["content"]
        assert answer == bundled.responses[row, col] and not answer.startswith("[replay")
        assert float(r.headers["x-replay-score"]) == bundled.quality[row, col]
