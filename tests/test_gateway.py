"""The gateway end to end: OpenAI SDK (sync, async, streaming) against the server on loopback,
upstreams mocked in process (httpx.MockTransport) so that every answer is known."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from loopback import serving

from router.app import create_app
from router.bundle import PolicyBundle, train_bundle
from router.config import RouterConfig, load_config
from router.events.errors import EventLogFullError
from router.events.models import Event
from training.datasets import RoutingDataset

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


class ListSink:
    """Collects events in memory (the file and PostgreSQL sinks are tested on their own)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events if e.kind == kind]


class FakeUpstream:
    """An OpenAI-compatible upstream; ``down`` models answer 503."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        self.calls.append(model)
        if model in self.down:
            return httpx.Response(503, json={"error": {"message": "down"}})
        text = f"answer from {model}"
        if body.get("stream"):
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            payload = "".join(
                "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                       "created": 1, "model": model, **c}) + "\n\n"
                for c in chunks
            ) + "data: [DONE]\n\n"  # fmt: skip
            return httpx.Response(200, content=payload.encode(),
                                  headers={"content-type": "text/event-stream"})  # fmt: skip
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
            },
            headers={"x-replay-score": "1.0"},
        )


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    data = load_config(EXAMPLE).model_dump()
    data["tenants"] = []  # open access for most tests; auth is tested with the example's tenant
    return RouterConfig.model_validate(data)


@pytest.fixture(scope="module")
def bundle(small: RoutingDataset) -> PolicyBundle:
    return train_bundle(small, w_cost=0.2)


@pytest.fixture()
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture()
def sink() -> ListSink:
    return ListSink()


@pytest.fixture()
def client(config, bundle, sink, upstream) -> Iterator[TestClient]:
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        yield c


def ask(client: TestClient, **extra: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}], **extra}
    return client.post("/v1/chat/completions", json=body)


def test_routed_answer_with_headers_and_events(client, sink) -> None:
    response = ask(client)
    assert response.status_code == 200, response.text
    chosen = response.headers["x-polyroute-model"]
    assert response.json()["choices"][0]["message"]["content"] == f"answer from {chosen}"
    assert float(response.headers["x-polyroute-overhead-ms"]) > 0
    assert float(response.headers["x-polyroute-cost-usd"]) > 0
    (decision,) = sink.of("decision")
    (outcome,) = sink.of("outcome")
    assert (
        decision["event_id"] == outcome["event_id"] == response.headers["x-polyroute-decision-id"]
    )
    assert decision["chosen_model"] == chosen and 0 < decision["chosen_probability"] <= 1
    assert sum(decision["probabilities"]) == pytest.approx(1.0)
    assert decision["eligible_models"][decision["chosen_index"]] == chosen
    assert decision["learnable"] is True and decision["prompt"] is None
    assert outcome["input_tokens"] == 100 and outcome["error_class"] is None


def test_concrete_model_passes_through(client, sink, upstream) -> None:
    response = ask(client, model="gemini-1.5-flash-002")
    assert response.headers["x-polyroute-model"] == "gemini-1.5-flash-002"
    assert upstream.calls == ["gemini-1.5-flash-002"]
    (decision,) = sink.of("decision")
    assert decision["override_reason"].startswith("pass-through")
    assert decision["chosen_probability"] == 1.0 and decision["learnable"] is False


def test_pass_through_still_obeys_compliance(client, sink) -> None:
    response = ask(client, model="Meta-Llama-3_1-8B", metadata={"data_class": "phi"})
    assert response.status_code == 422
    assert "data class 'phi'" in response.json()["error"]["message"]
    assert sink.of("decision") == []


def test_fallback_when_the_chosen_model_is_down(client, sink, upstream, config) -> None:
    upstream.down = {m.name for m in config.models} - set(config.fallback[:1])
    response = ask(client)
    assert response.status_code == 200
    assert response.headers["x-polyroute-model"] == config.fallback[0]
    chosen_first = sink.of("decision")[-1]["chosen_model"]
    assert sink.of("outcome")[-1]["fallback_used"] == (chosen_first != config.fallback[0])


def test_all_upstreams_down_is_a_502_and_is_logged(client, sink, upstream, config) -> None:
    upstream.down = {m.name for m in config.models}
    response = ask(client)
    assert response.status_code == 502
    assert "upstream failed" in response.json()["error"]["message"]
    assert sink.of("outcome")[-1]["error_class"] == "http_503"


@pytest.mark.parametrize(
    ("payload", "status", "match"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b'{"model": "auto"}', 400, "messages: required"),
        (b'{"model": "auto", "messages": ["hi"]}', 400, r"messages\.0"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "gpt-9"),
        (
            b'{"model": "auto", "max_tokens": "abc", '
            b'"messages": [{"role": "user", "content": "x"}]}',
            400,
            "max_tokens: expected a positive integer",
        ),
        (
            b'{"model": "auto", "metadata": {"data_class": ["x"]}, '
            b'"messages": [{"role": "user", "content": "x"}]}',
            400,
            "data_class: expected a string",
        ),
        (
            b'{"model": ["x"], "messages": [{"role": "user", "content": "x"}]}',
            400,
            "model: expected",
        ),
        (
            b'{"model": "auto", "metadata": {"profile": "vip"}, '
            b'"messages": [{"role": "user", "content": "x"}]}',
            400,
            "unknown profile 'vip'",
        ),
    ],
)
def test_bad_requests_get_clear_errors(client, sink, payload, status, match) -> None:
    ask(client)  # something already logged ...
    before = list(sink.events)
    response = client.post("/v1/chat/completions", content=payload,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == status
    import re

    assert re.search(match, response.json()["error"]["message"])
    assert sink.events == before  # ... is still there, and nothing half-logged was added


def test_oversized_body_is_refused(client) -> None:
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    response = client.post("/v1/chat/completions", json=big)
    assert response.status_code == 413


def test_feedback_rules(client, sink) -> None:
    decision_id = ask(client).headers["x-polyroute-decision-id"]
    ok = client.post("/v1/feedback", json={"decision_id": decision_id, "quality": 0.8})
    assert ok.status_code == 200 and ok.json()["n_feedback"] == 1
    again = client.post("/v1/feedback", json={"decision_id": decision_id, "quality": 1.0})
    assert again.json()["n_feedback"] == 2  # both logged; the latest wins at the join
    assert [e["quality"] for e in sink.of("feedback")] == [0.8, 1.0]
    assert (
        client.post("/v1/feedback", json={"decision_id": "nope", "quality": 1}).status_code == 404
    )
    bad = client.post("/v1/feedback", json={"decision_id": decision_id, "quality": 1.5})
    assert bad.status_code == 422 and "quality" in bad.json()["error"]["message"]


def test_models_health_metrics(client) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "auto" in ids and "gemini-1.5-pro-002" in ids and "budget" in ids
    assert client.get("/healthz").json() == {"status": "ok"}
    ask(client)
    text = client.get("/metrics").text
    assert "polyroute_decisions_total" in text
    assert "polyroute_router_overhead_seconds_bucket" in text


def test_tenant_auth(bundle, sink, upstream) -> None:
    app = create_app(load_config(EXAMPLE), bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        assert ask(c).status_code == 401
        good = c.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer secret"},
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert good.status_code == 200


@pytest.fixture()
def server(config, bundle, sink, upstream) -> Iterator[str]:
    with serving(create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))) as url:
        yield url


def test_openai_sdk_sync_async_and_streaming(server, sink) -> None:
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Name a prime number."}]
    )
    completion = raw.parse()
    assert (
        completion.choices[0].message.content == f"answer from {raw.headers['x-polyroute-model']}"
    )
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Count to three."}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("answer from ")

    async def run_async() -> str:
        async with openai.AsyncOpenAI(base_url=server, api_key="unused", max_retries=0) as aclient:
            reply = await aclient.chat.completions.create(
                model="budget", messages=[{"role": "user", "content": "hello"}]
            )
            return reply.choices[0].message.content or ""

    assert asyncio.run(run_async()).startswith("answer from ")
    assert len(sink.of("decision")) == 3
    deadline = time.monotonic() + 5
    while len(sink.of("outcome")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the streamed call logs its outcome when the stream closes
    assert len(sink.of("outcome")) == 3


class RefusingSink(ListSink):
    """Refuses the kinds in ``refuse`` as a full event queue would."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__()
        self.refuse = refuse

    def emit(self, event: Event) -> None:
        if event.kind in self.refuse:
            raise EventLogFullError("event log queue full")
        super().emit(event)


def test_a_decision_the_log_refuses_is_not_served(config, bundle, upstream) -> None:
    sink = RefusingSink({"decision"})
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        response = ask(c)
        assert response.status_code == 503
        assert upstream.calls == []  # never sent upstream: nothing served unlogged


def test_an_outcome_the_log_refuses_does_not_fail_the_answer(config, bundle, upstream) -> None:
    sink = RefusingSink({"outcome"})
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        response = ask(c)
        assert response.status_code == 200
        assert 'polyroute_errors_total{kind="outcome_not_logged"} 1.0' in c.get("/metrics").text
