"""The gateway end to end: OpenAI SDK (sync, async, streaming) against the server on loopback,
upstreams mocked in process (httpx.MockTransport) so that every answer is known."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes import USAGE, ListSink, completion
from fastapi.testclient import TestClient
from loopback import serving

from features.errors import EventLogFullError
from router.app import create_app
from router.bundle import PolicyBundle
from router.config import RouterConfig, load_config
from router.events.models import Emitted
from training.datasets import RoutingDataset

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


class FakeUpstream:
    """An OpenAI-compatible upstream; ``down`` models answer 503. Streams end with OpenAI's
    usage-only chunk when asked (``stream_options.include_usage``) unless ``stream_usage`` is
    False (an upstream that ignores the option)."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.stream_usage = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        self.calls.append(model)
        self.bodies.append(body)
        if model in self.down:
            return httpx.Response(503, json={"error": {"message": "down"}})
        text = f"answer from {model}"
        if body.get("stream"):
            chunks: list[dict[str, Any]] = [
                {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            if self.stream_usage and (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({"choices": [], "usage": USAGE})
            payload = "".join(
                "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                       "created": 1, "model": model, **c}) + "\n\n"
                for c in chunks
            ) + "data: [DONE]\n\n"  # fmt: skip
            return httpx.Response(200, content=payload.encode(),
                                  headers={"content-type": "text/event-stream"})  # fmt: skip
        return httpx.Response(
            200,
            json=completion(model, text),
            headers={"x-replay-score": "1.0"},
        )


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    data = load_config(EXAMPLE).model_dump()
    data["tenants"] = []  # open access for most tests; auth is tested with the example's tenant
    return RouterConfig.model_validate(data)


@pytest.fixture()
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture()
def sink() -> ListSink:
    return ListSink()


@pytest.fixture()
def client(
    config: RouterConfig, bundle: PolicyBundle, sink: ListSink, upstream: FakeUpstream
) -> Iterator[TestClient]:
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        yield c


def ask(client: TestClient, **extra: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}], **extra}
    response: httpx.Response = client.post("/v1/chat/completions", json=body)
    return response


def test_routed_answer_with_headers_and_events(client: TestClient, sink: ListSink) -> None:
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


def test_concrete_model_passes_through(
    client: TestClient, sink: ListSink, upstream: FakeUpstream
) -> None:
    response = ask(client, model="gemini-1.5-flash-002")
    assert response.headers["x-polyroute-model"] == "gemini-1.5-flash-002"
    assert upstream.calls == ["gemini-1.5-flash-002"]
    (decision,) = sink.of("decision")
    assert decision["override_reason"].startswith("pass-through")
    assert decision["chosen_probability"] == 1.0 and decision["learnable"] is False


def test_pass_through_still_obeys_compliance(client: TestClient, sink: ListSink) -> None:
    response = ask(client, model="Meta-Llama-3_1-8B", metadata={"data_class": "phi"})
    assert response.status_code == 422
    assert "data class 'phi'" in response.json()["error"]["message"]
    assert sink.of("decision") == []


def test_fallback_when_the_chosen_model_is_down(
    client: TestClient, sink: ListSink, upstream: FakeUpstream, config: RouterConfig
) -> None:
    upstream.down = {m.name for m in config.models} - set(config.fallback[:1])
    response = ask(client)
    assert response.status_code == 200
    assert response.headers["x-polyroute-model"] == config.fallback[0]
    chosen_first = sink.of("decision")[-1]["chosen_model"]
    assert sink.of("outcome")[-1]["fallback_used"] == (chosen_first != config.fallback[0])


def test_all_upstreams_down_is_a_502_and_is_logged(
    client: TestClient, sink: ListSink, upstream: FakeUpstream, config: RouterConfig
) -> None:
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
def test_bad_requests_get_clear_errors(
    client: TestClient, sink: ListSink, payload: bytes, status: int, match: str
) -> None:
    ask(client)  # something already logged ...
    before = list(sink.events)
    response = client.post("/v1/chat/completions", content=payload,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == status
    import re

    assert re.search(match, response.json()["error"]["message"])
    assert sink.events == before  # ... is still there, and nothing half-logged was added


def test_oversized_body_is_refused(client: TestClient) -> None:
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    response = client.post("/v1/chat/completions", json=big)
    assert response.status_code == 413


def test_feedback_rules(client: TestClient, sink: ListSink) -> None:
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
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "quality"


def test_models_health_metrics(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "auto" in ids and "gemini-1.5-pro-002" in ids and "budget" in ids
    assert client.get("/healthz").json() == {"status": "ok"}
    ask(client)
    text = client.get("/metrics").text
    assert "polyroute_decisions_total" in text
    assert "polyroute_router_overhead_seconds_bucket" in text


def test_tenant_auth(bundle: PolicyBundle, sink: ListSink, upstream: FakeUpstream) -> None:
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
def server(
    config: RouterConfig, bundle: PolicyBundle, sink: ListSink, upstream: FakeUpstream
) -> Iterator[str]:
    with serving(create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))) as url:
        yield url


def test_openai_sdk_sync_async_and_streaming(
    server: str, sink: ListSink, config: RouterConfig
) -> None:
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
    chunks = list(stream)
    # the gateway asked the upstream for usage; the caller did not, so it sees no usage chunk
    assert all(chunk.choices for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
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
    streamed = sink.of("decision")[1]
    (outcome,) = [o for o in sink.of("outcome") if o["event_id"] == streamed["event_id"]]
    assert (outcome["input_tokens"], outcome["output_tokens"]) == (100, 10)  # upstream usage
    model = config.model(streamed["chosen_model"])
    expected = (100 * model.usd_per_mtok_in + 10 * model.usd_per_mtok_out) / 1e6
    assert outcome["cost_usd"] == pytest.approx(expected) and expected > 0
    assert outcome["error_class"] is None


class RefusingSink(ListSink):
    """Refuses the kinds in ``refuse`` as a full event queue would."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__()
        self.refuse = refuse

    def emit(self, event: Emitted) -> None:
        if event.kind in self.refuse:
            raise EventLogFullError("event log queue full")
        super().emit(event)


def test_a_decision_the_log_refuses_is_not_served(
    config: RouterConfig, bundle: PolicyBundle, upstream: FakeUpstream
) -> None:
    sink = RefusingSink({"decision"})
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        response = ask(c)
        assert response.status_code == 503
        assert upstream.calls == []  # never sent upstream: nothing served unlogged


def test_an_outcome_the_log_refuses_does_not_fail_the_answer(
    config: RouterConfig, bundle: PolicyBundle, upstream: FakeUpstream
) -> None:
    sink = RefusingSink({"outcome"})
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app) as c:
        response = ask(c)
        assert response.status_code == 200
        assert 'polyroute_errors_total{kind="outcome_not_logged"} 1.0' in c.get("/metrics").text


def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stream_usage_relayed_when_the_caller_asks(
    server: str, sink: ListSink, upstream: FakeUpstream
) -> None:
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Count to three."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    assert upstream.bodies[-1]["stream_options"] == {"include_usage": True}
    wait_for(lambda: len(sink.of("outcome")) == 1)
    assert sink.of("outcome")[0]["output_tokens"] == 10


def test_stream_options_are_merged_and_checked(client: TestClient, upstream: FakeUpstream) -> None:
    body = {"stream": True, "stream_options": {"include_usage": False, "x_vendor": 1}}
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        relayed = r.read()
    assert upstream.bodies[-1]["stream_options"] == {"include_usage": True, "x_vendor": 1}
    assert b'"usage"' not in relayed and relayed.endswith(b"data: [DONE]\n\n")
    assert ask(client, stream=True, stream_options=[1]).status_code == 400
    assert ask(client, stream="yes").status_code == 400


def test_stream_without_upstream_usage_is_estimated(
    client: TestClient, sink: ListSink, upstream: FakeUpstream, config: RouterConfig
) -> None:
    upstream.stream_usage = False  # an upstream that ignores stream_options
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "auto",
            "stream": True,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        },
    ) as r:
        r.read()
        chosen = r.headers["x-polyroute-model"]
    (outcome,) = sink.of("outcome")
    answer = f"answer from {chosen}"
    assert outcome["output_tokens"] == -(-len(answer) // 4) > 0  # ~4 characters per token
    assert outcome["input_tokens"] > 0 and outcome["cost_usd"] > 0
    metrics = client.get("/metrics").text
    assert f'polyroute_usage_estimated_total{{model="{chosen}"}} 1.0' in metrics


class SlowStream(httpx.AsyncByteStream):
    """An upstream SSE body that trickles chunks for a long time and records being closed."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> Any:
        chunk = {"choices": [{"index": 0, "delta": {"content": "tick "}, "finish_reason": None}]}
        for _ in range(500):
            self.sent += 1
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await asyncio.sleep(0.02)

    async def aclose(self) -> None:
        self.closed = True


def test_client_disconnect_closes_upstream_and_logs_outcome(
    config: RouterConfig, bundle: PolicyBundle, sink: ListSink
) -> None:
    streams: list[SlowStream] = []

    def slow(request: httpx.Request) -> httpx.Response:
        streams.append(SlowStream())
        return httpx.Response(
            200, stream=streams[-1], headers={"content-type": "text/event-stream"}
        )

    app = create_app(config, bundle, sink, transport=httpx.MockTransport(slow))
    with serving(app) as url, httpx.Client(timeout=10) as http:
        body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with http.stream("POST", f"{url}/chat/completions", json=body) as response:
            assert response.status_code == 200
            first = next(response.iter_raw())
            assert first.startswith(b"data: ")
        # the client has closed the connection after the first chunk
        wait_for(lambda: len(sink.of("outcome")) == 1)
        (outcome,) = sink.of("outcome")
        assert outcome["error_class"] == "client_disconnected"
        assert outcome["event_id"] == sink.of("decision")[0]["event_id"]
        assert outcome["output_tokens"] > 0  # estimated from what was relayed
        (stream,) = streams
        assert stream.closed and stream.sent < 500


class ProcessLog:
    """A subprocess's output, read as it comes by a thread (a pipe nobody reads fills up and
    blocks the process), waited on for lines of its log."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, count: int, timeout_s: float) -> None:
        """Until ``count`` lines contain ``needle``; fails at once if the process exits."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while sum(needle in line for line in self.lines) < count:
                assert self.process.poll() is None, "exited:\n" + "\n".join(self.lines)
                left = deadline - time.monotonic()
                assert left > 0, f"no {count} x {needle!r} in {timeout_s} s:\n" + "\n".join(
                    self.lines
                )
                self._changed.wait(min(left, 0.5))

    def close(self) -> None:
        self._reader.join(timeout=10)


def test_serve_with_two_workers(
    tmp_path: Path, config: RouterConfig, bundle: PolicyBundle, small: RoutingDataset
) -> None:
    """``polyroute serve --workers 2`` as a real process: routed answers, health, feedback
    accepted by whichever worker gets it, one event file per worker (never shared)."""
    import os
    import subprocess
    import sys

    import yaml
    from loopback import free_port

    from router.events import read_events
    from router.events.file_sink import event_files
    from training.replay.server import ReplayConfig, create_replay_app

    bundle_dir = bundle.save(tmp_path / "bundle")
    with serving(create_replay_app(small, ReplayConfig(time_scale=0))) as replay_url:
        raw = config.model_dump(mode="json")
        for model in raw["models"]:
            model["provider"]["base_url"] = replay_url
        (tmp_path / "router.yaml").write_text(yaml.safe_dump(raw))
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "router.cli",
            "serve",
            "--config",
            str(tmp_path / "router.yaml"),
            "--bundle",
            str(bundle_dir),
            "--port",
            str(port),
            "--workers",
            "2",
            "--events-dir",
            str(tmp_path / "events"),
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log = ProcessLog(process)
        base = f"http://127.0.0.1:{port}"
        try:
            # ready when both workers have finished their startup (each logs it once): the
            # /healthz of the first ready worker says nothing of the second, and a fixed
            # deadline of a few seconds is too short for a loaded machine (the workers import
            # and load the bundle at the same time); generous, as it only bounds a failure
            log.wait_for("Application startup complete.", count=2, timeout_s=240)
            assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            ids = []
            with httpx.Client(base_url=base, timeout=30) as http:
                for i in range(12):
                    raw_reply = client.chat.completions.with_raw_response.create(
                        model="auto", messages=[{"role": "user", "content": f"Question {i}?"}]
                    )
                    assert raw_reply.parse().choices[0].message.content
                    ids.append(raw_reply.headers["x-polyroute-decision-id"])
                for decision_id in ids:  # a new connection each: any worker may answer
                    fb = httpx.post(
                        f"{base}/v1/feedback",
                        json={"decision_id": decision_id, "quality": 1.0},
                        timeout=30,
                    )
                    assert fb.status_code == 200, fb.text
                assert http.get("/readyz").json()["policy_version"] == bundle.version
            # every worker's counters in one scrape, whichever worker answers it
            for _ in range(4):
                scrape = httpx.get(f"{base}/metrics", timeout=30).text
                served = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in scrape.splitlines()
                    if line.startswith("polyroute_decisions_total{")
                )
                assert served == 12
        finally:
            process.terminate()
            process.wait(timeout=120)  # the workers flush their event files as they stop
            log.close()
    assert process.returncode == 0, log.text()
    events = list(read_events(tmp_path / "events"))
    assert sum(e.kind == "decision" for e in events) == 12, log.text()
    assert sum(e.kind == "outcome" for e in events) == 12, log.text()
    assert sum(e.kind == "feedback" for e in events) == 12, log.text()
    assert event_files(tmp_path / "events")  # one file per worker that wrote (never shared)


def test_feedback_reaches_a_sibling_worker(
    config: RouterConfig, bundle: PolicyBundle, upstream: FakeUpstream
) -> None:
    """Decision ids are signed with the workers' shared key: a worker that did not serve the
    decision still accepts its feedback; one with another key does not."""
    key = bytes(range(32))
    sinks = [ListSink(), ListSink(), ListSink()]
    apps = [
        create_app(
            config, bundle, sinks[i], transport=httpx.MockTransport(upstream), decision_key=k
        )
        for i, k in enumerate([key, key, bytes(32)])
    ]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b, TestClient(apps[2]) as other:
        decision_id = ask(a).headers["x-polyroute-decision-id"]
        assert len(decision_id) == 48
        feedback = {"decision_id": decision_id, "quality": 0.5}
        assert b.post("/v1/feedback", json=feedback).status_code == 200
        assert other.post("/v1/feedback", json=feedback).status_code == 404
        forged = decision_id[:-1] + ("1" if decision_id.endswith("0") else "0")
        assert b.post("/v1/feedback", json={**feedback, "decision_id": forged}).status_code == 404
        odd = {**feedback, "decision_id": "ü" * 48}
        assert b.post("/v1/feedback", json=odd).status_code == 404
        assert sinks[1].of("feedback")[0]["event_id"] == decision_id


class BrokenStream(httpx.AsyncByteStream):
    """An upstream SSE body that breaks off after one chunk."""

    async def __aiter__(self) -> Any:
        chunk = {"choices": [{"index": 0, "delta": {"content": "half an"}, "finish_reason": None}]}
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        raise httpx.ReadError("connection reset by peer")


def test_upstream_breaking_off_mid_stream_is_told_and_logged(
    config: RouterConfig, bundle: PolicyBundle, sink: ListSink
) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=BrokenStream(),
                              headers={"content-type": "text/event-stream"})  # fmt: skip

    app = create_app(config, bundle, sink, transport=httpx.MockTransport(broken))
    with serving(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="broke off the stream"):
            list(stream)
        wait_for(lambda: len(sink.of("outcome")) == 1)
    assert sink.of("outcome")[0]["error_class"] == "stream_connection"


def test_sse_reader_reassembles_events_and_strips_the_usage_chunk() -> None:
    from router.upstream import SSEUsageReader

    events = [
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    raw += b"data: [DONE]\r\n\r\n"
    for strip in (True, False):
        reader = SSEUsageReader(strip_usage_chunk=strip)
        out = b"".join(reader.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
        out += reader.flush()
        assert reader.usage == {"prompt_tokens": 3, "completion_tokens": 2}
        assert reader.text == "Hello"
        assert out.endswith(b"data: [DONE]\n\n") and out.count(b"data: ") == 4 - strip
        assert (b'"completion_tokens"' in out) is not strip


def test_requests_over_max_in_flight_get_503_and_are_not_logged(
    config: RouterConfig, bundle: PolicyBundle
) -> None:
    """Admission control: the third concurrent request of a gateway capped at two is refused at
    once (503, Retry-After) without a decision event; the two in flight are served."""
    import asyncio

    capped = RouterConfig.model_validate({**config.model_dump(), "max_in_flight": 2})
    sink = ListSink()
    fake = FakeUpstream()

    async def run() -> list[httpx.Response]:
        release = asyncio.Event()
        arrived = 0

        async def slow_upstream(request: httpx.Request) -> httpx.Response:
            nonlocal arrived
            arrived += 1
            await release.wait()
            return fake(request)

        app = create_app(capped, bundle, sink, transport=httpx.MockTransport(slow_upstream))
        body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http,
        ):
            first = [
                asyncio.create_task(http.post("/v1/chat/completions", json=body)) for _ in range(2)
            ]
            while arrived < 2:
                await asyncio.sleep(0.01)
            try:  # refused at once, or it would wait for the upstream: fail, do not hang
                refused = await asyncio.wait_for(
                    http.post("/v1/chat/completions", json=body), timeout=5
                )
            finally:
                release.set()
            return [refused, *await asyncio.gather(*first)]

    refused, *served = asyncio.run(run())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "max_in_flight 2" in refused.json()["error"]["message"]
    assert [r.status_code for r in served] == [200, 200]
    assert len(sink.of("decision")) == 2  # the refused request left nothing in the log
