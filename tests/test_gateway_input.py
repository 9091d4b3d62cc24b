"""No 5xx from input: whatever a caller sends, the gateway answers a 4xx in OpenAI's error shape
naming the field (or serves it), and never leaves a logged decision without its outcome.

Regression tests for each crash and inconsistency found by hand, then a property-based fuzz of
the chat and feedback routes (hypothesis) against the in-process app and a mock upstream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fakes import ListSink
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_gateway import EXAMPLE, FakeUpstream

from router.app import create_app
from router.bundle import PolicyBundle
from router.config import RouterConfig, load_config
from router.http.request import MAX_DEPTH

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    data = load_config(EXAMPLE).model_dump()
    data["tenants"] = []
    # no latency-outlier ejection: the mock upstream answers in microseconds, so one scheduler
    # pause on a loaded CI machine made a model "10x slower than its peers", its breaker opened
    # and a request whose rules left only that model got a (correct) 503
    data["resilience"]["slow_ratio"] = None
    return RouterConfig.model_validate(data)


@pytest.fixture(scope="module")
def sink() -> ListSink:
    return ListSink()


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture(scope="module")
def client(
    config: RouterConfig, bundle: PolicyBundle, sink: ListSink, upstream: FakeUpstream
) -> Iterator[TestClient]:
    """One app for the module (the fuzz sends hundreds of requests); events accumulate."""
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, raw: bytes | str, path: str = CHAT, **headers: str) -> httpx.Response:
    content = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    response: httpx.Response = client.post(
        path, content=content, headers={"content-type": "application/json", **headers}
    )
    return response


def chat(**fields: str) -> str:
    """A chat body whose ``fields`` are raw JSON text (so that NaN, 1e999 and lone surrogate
    escapes reach the gateway as a caller would send them)."""
    parts = {"model": '"auto"', "messages": json.dumps(HI), **fields}
    return "{" + ",".join(f'"{k}":{v}' for k, v in parts.items()) + "}"


def orphans(sink: ListSink) -> set[str]:
    """Decisions logged without an outcome."""
    decided = {e["event_id"] for e in sink.of("decision")}
    return decided - {e["event_id"] for e in sink.of("outcome")}


def check_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    """``response`` is ``status`` with OpenAI's error body naming ``param``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"]
    return error


# ---- the crashes of the report --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": r'[{"role": "user", "content": "hi \ud800"}]'}, "messages.0.content"),
        (  # streamed
            {"messages": r'[{"role": "user", "content": "hi \udfff"}]', "stream": "true"},
            "messages.0.content",
        ),
        (  # content parts
            {"messages": r'[{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]'},
            "messages.0.content.0.text",
        ),
        (  # pass-through: the policy does not even run
            {
                "model": '"gemini-1.5-flash-002"',
                "messages": r'[{"role": "user", "content": "hi \ud800"}]',
            },
            "messages.0.content",
        ),
        ({"user": r'"\ud800x"'}, "user"),  # a field only relayed
        ({"metadata": r'{"\ud800": "x"}'}, "metadata"),  # an object key
        ({"temperature": "NaN"}, "temperature"),
        ({"top_p": "Infinity"}, "top_p"),
        ({"top_p": "-Infinity"}, "top_p"),
        ({"top_p": "1e999"}, "top_p"),
        ({"logit_bias": '{"50256": -1e999}'}, "logit_bias.50256"),
        ({"metadata": '{"max_cost": 1e400}'}, "metadata.max_cost"),
        ({"tools": '[{"x": [1, 2, NaN]}]'}, "tools.0.x.2"),
    ],
)
def test_unencodable_values_are_refused_naming_the_path(
    client: TestClient, sink: ListSink, fields: dict[str, str], param: str
) -> None:
    before = len(sink.events)
    error = check_error(post(client, chat(**fields)), 400, param)
    assert error["type"] == "invalid_request_error" and error["message"].startswith(param)
    assert len(sink.events) == before  # refused before anything was decided or logged


def test_utf8_encoded_lone_surrogate_bytes_are_refused(client: TestClient) -> None:
    # not an escape: the surrogate's own (invalid) UTF-8 bytes, which Python's parser accepts
    raw = b'{"model": "auto", "messages": [{"role": "user", "content": "hi \xed\xa0\x80"}]}'
    check_error(post(client, raw), 400, "messages.0.content")


def test_paired_surrogate_escapes_are_text(client: TestClient, upstream: FakeUpstream) -> None:
    response = post(client, chat(messages=r'[{"role": "user", "content": "\ud83d\ude00"}]'))
    assert response.status_code == 200, response.text
    assert upstream.bodies[-1]["messages"][0]["content"] == "\U0001f600"


def test_nesting_is_bounded(client: TestClient, upstream: FakeUpstream) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    check_error(post(client, chat(x=deep)), 400, None)
    # the body is level 1: "x" may hold MAX_DEPTH - 1 levels, and one more is refused
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert post(client, chat(x=ok)).status_code == 200
    error = check_error(post(client, chat(x="[" + ok + "]")), 400, "x" + ".0" * (MAX_DEPTH - 1))
    assert f"deeper than {MAX_DEPTH}" in error["message"]


# ---- one error shape ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "kind", "param"),
    [
        (b"{not json", 400, "invalid_request_error", None),
        (b"\xff\xfe\xfa", 400, "invalid_request_error", None),
        (b'{"model": "auto"}', 400, "invalid_request_error", "messages"),
        (b'{"messages": ["hi"]}', 400, "invalid_request_error", "messages.0"),
        (
            b'{"messages": [{"role": "user", "content": 3}]}',
            400,
            "invalid_request_error",
            "messages.0.content",
        ),
        (
            b'{"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            b'{"max_completion_tokens": true, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request_error",
            "max_completion_tokens",
        ),
        (
            b'{"stream": 1, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request_error",
            "stream",
        ),
        (
            b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "not_found_error",
            "model",
        ),
        (
            b'{"model": "Meta-Llama-3_1-8B", "metadata": {"data_class": "phi"}, '
            b'"messages": [{"role": "user", "content": "x"}]}',
            422,
            "invalid_request_error",
            "model",
        ),
        (
            b'{"metadata": {"profile": "vip"}, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request_error",
            "metadata.profile",
        ),
    ],
)
def test_every_refusal_has_the_openai_shape(
    client: TestClient, raw: bytes, status: int, kind: str, param: str
) -> None:
    error = check_error(post(client, raw), status, param)
    assert error["type"] == kind
    assert "[" not in (error["param"] or "")  # dotted paths only: messages.0, not messages[0]


def test_other_statuses_have_the_openai_shape(
    client: TestClient, bundle: PolicyBundle, upstream: FakeUpstream
) -> None:
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    error = check_error(client.post(CHAT, json=big), 413, None)
    assert error["type"] == "invalid_request_error" and error["code"] == "body_too_large_error"
    check_error(post(client, b"{}", "/v1/nowhere"), 404, None)
    assert check_error(client.get(CHAT), 405, None)["type"] == "invalid_request_error"
    app = create_app(
        load_config(EXAMPLE), bundle, ListSink(), transport=httpx.MockTransport(upstream)
    )
    with TestClient(app) as c:
        error = check_error(c.post(CHAT, json={"messages": HI}), 401, None)
        assert error["type"] == "authentication_error" and error["code"] == "auth_error"
        data = {"messages": HI, "metadata": {"data_class": "eu-personal"}}  # not the tenant's
        refused = c.post(CHAT, json=data, headers={"authorization": "Bearer secret"})
        assert "may not send" in check_error(refused, 400, "metadata.data_class")["message"]


# ---- hints and feedback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-polyroute-max-cost", "-1"),
        ("x-polyroute-max-cost", "nan"),
        ("x-polyroute-max-cost", "inf"),
        ("x-polyroute-max-cost", "cheap"),
        ("x-polyroute-max-latency", "0"),
        ("x-polyroute-max-latency", "-Infinity"),
        ("x-polyroute-priority", "10"),
        ("x-polyroute-priority", "-1"),
        ("x-polyroute-priority", "high"),
        ("x-polyroute-profile", "vip"),
        ("x-polyroute-data-class", "secret"),
    ],
)
def test_bad_hint_headers_are_400_naming_the_header(
    client: TestClient, header: str, value: str
) -> None:
    check_error(post(client, chat(), **{header: value}), 400, header)


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ('{"max_cost": -1}', "metadata.max_cost"),
        ('{"max_cost": true}', "metadata.max_cost"),
        ('{"max_cost": "nan"}', "metadata.max_cost"),
        ('{"max_cost": [1]}', "metadata.max_cost"),
        ('{"max_cost": ' + "9" * 400 + "}", "metadata.max_cost"),  # an int no double holds
        ('{"max_latency": 0}', "metadata.max_latency"),
        ('{"priority": 2.5}', "metadata.priority"),
        ('{"priority": true}', "metadata.priority"),
        ('{"priority": "٣"}', "metadata.priority"),  # a digit, but not 0-9
        ('{"profile": 3}', "metadata.profile"),
        ('{"data_class": ["phi"]}', "metadata.data_class"),
        ("[]", "metadata"),
    ],
)
def test_bad_hints_in_metadata_are_400_naming_the_field(
    client: TestClient, metadata: str, param: str
) -> None:
    check_error(post(client, chat(metadata=metadata)), 400, param)


def test_good_hints_are_served(client: TestClient, sink: ListSink) -> None:
    for headers in ({"x-polyroute-max-cost": "1.5", "x-polyroute-priority": "7"}, {}):
        response = post(client, chat(metadata='{"max_latency": "60000", "priority": 0}'), **headers)
        assert response.status_code == 200, response.text
    # a zero cost limit is a valid limit no model meets: the rules say so (422)
    error = check_error(post(client, chat(metadata='{"max_cost": 0}')), 422, None)
    assert "expected cost > 0.0 USD" in error["message"]


@pytest.mark.parametrize(
    "quality", ["true", "false", '"0.5"', "null", "NaN", "1e999", "-0.1", "1.5", "[1]", "1" * 400]
)
def test_feedback_quality_must_be_a_number_in_range(client: TestClient, quality: str) -> None:
    decision_id = post(client, chat()).headers["x-polyroute-decision-id"]
    raw = f'{{"decision_id": "{decision_id}", "quality": {quality}}}'
    check_error(post(client, raw, "/v1/feedback"), 400, "quality")


@pytest.mark.parametrize("quality", ["0", "1", "0.25", "1e-3"])
def test_feedback_quality_accepted(client: TestClient, quality: str) -> None:
    decision_id = post(client, chat()).headers["x-polyroute-decision-id"]
    raw = f'{{"decision_id": "{decision_id}", "quality": {quality}}}'
    assert post(client, raw, "/v1/feedback").status_code == 200


# ---- a bug still answers JSON, is counted, and finishes its decision -------------------------


def test_a_bug_after_the_decision_is_a_json_500_with_an_outcome(
    config: RouterConfig, bundle: PolicyBundle
) -> None:
    sink = ListSink()
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(FakeUpstream()))
    with TestClient(app, raise_server_exceptions=False) as c:
        gateway = app.state.gateway

        async def broken(*args: Any) -> Any:
            raise RuntimeError("a bug in the upstream client")

        gateway.client.complete = broken
        error = check_error(post(c, chat()), 500, None)
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert "a bug" not in error["message"]  # nothing of the exception reaches the caller
        (decision,) = sink.of("decision")
        (outcome,) = sink.of("outcome")
        assert outcome["event_id"] == decision["event_id"]
        assert outcome["error_class"] == "internal_error"
        assert 'polyroute_errors_total{kind="internal_error"} 1.0' in c.get("/metrics").text


def test_a_bug_before_the_decision_is_a_json_500_and_logs_nothing(
    config: RouterConfig, bundle: PolicyBundle
) -> None:
    sink = ListSink()
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(FakeUpstream()))
    with TestClient(app, raise_server_exceptions=False) as c:

        def broken(*args: Any) -> Any:
            raise ZeroDivisionError("a bug in the policy")

        app.state.gateway.engine.decide = broken
        check_error(post(c, chat()), 500, None)
        assert sink.events == []
        assert 'polyroute_errors_total{kind="internal_error"} 1.0' in c.get("/metrics").text


# ---- property-based fuzz ---------------------------------------------------------------------


class Raw:
    """JSON text inserted as it is (what ``json.dumps`` cannot or will not write)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def encode(value: Any, ascii_only: bool) -> bytes:
    """``value`` as a caller's bytes: NaN and Infinity as Python writes them, lone surrogates
    as ``\\ud800`` escapes (``ascii_only``) or as their own bytes, :class:`Raw` text as is."""
    raws: list[str] = []

    def default(o: Any) -> str:
        raws.append(o.text)
        return f"@raw{len(raws) - 1}@"

    text = json.dumps(value, default=default, ensure_ascii=ascii_only)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@raw{i}@"', raw, 1)
    return text.encode("utf-8", "surrogatepass")


def nest(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


LONE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(max_size=20) | st.text(st.characters() | LONE, max_size=8)
HOSTILE = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 400, "1" * 5000]).map(
        Raw
    ),
    st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH, MAX_DEPTH + 5, 2_000, 100_000]).map(nest),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
)
SCALAR = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(-2, 2) | TEXT | HOSTILE
ANY = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


MODELS = ["auto", "budget", "quality-first", "gemini-1.5-flash-002", "Meta-Llama-3_1-8B", "gpt-9"]


def chat_bodies(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Chat bodies over the schema. ``wild``: any field may hold anything (hostile values, wrong
    types, deep nesting) and text may hold lone surrogates; else the values are of the right
    type (most such requests are served, some refused by a rule or an out-of-range value)."""
    text = TEXT if wild else st.text(max_size=20)
    anything = ANY if wild else st.none()

    def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(good, good, ANY) if wild else good

    message = st.fixed_dictionaries(
        {"role": field(st.sampled_from(["user", "system", "assistant"]))},
        optional={
            "content": field(
                text
                | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": field(text)}))
            ),
            "name": anything,
        },
    )
    metadata = st.fixed_dictionaries(
        {},
        optional={
            "max_cost": field(st.floats(0, 1) | st.sampled_from(["0.01", "-1", "nan"])),
            "max_latency": field(st.floats(1, 1e5) | st.just("0")),
            "priority": field(st.integers(-1, 10) | st.sampled_from(["3", "10", "x"])),
            "profile": field(st.sampled_from(["default", "budget", "vip"])),
            "data_class": field(st.sampled_from(["phi", "eu-personal", "secret"])),
            "user_tag": anything,
        },
    )
    return st.fixed_dictionaries(
        {"messages": field(st.lists(field(message), min_size=1, max_size=3))},
        optional={
            "model": field(st.sampled_from(MODELS)),
            "metadata": field(metadata),
            "max_tokens": field(st.integers(1, 4096)),
            "max_completion_tokens": field(st.integers(1, 4096)),
            "stream": field(st.booleans()),
            "stream_options": field(st.fixed_dictionaries({"include_usage": field(st.booleans())})),
            "temperature": field(st.floats(0, 2)),
            "top_p": field(st.floats(0, 1)),
            "tools": anything,
            "user": anything,
        },
    )


HEADER_VALUES = st.sampled_from(
    ["-1", "nan", "inf", "1e999", "0", "5", "0.01", "", "budget", "phi"]
)
HEADERS = st.dictionaries(
    st.sampled_from(
        [
            f"x-polyroute-{h}"
            for h in ("max-cost", "max-latency", "priority", "profile", "data-class")
        ]
    ),
    HEADER_VALUES | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    max_size=3,
)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def check_answer(response: httpx.Response, sink: ListSink) -> None:
    """No 5xx; every refusal in OpenAI's shape; no decision without an outcome."""
    event(f"status {response.status_code}")  # pytest --hypothesis-show-statistics
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert error["param"] is None or isinstance(error["param"], str)
    assert not orphans(sink)


@FUZZ
@given(
    body=st.one_of(chat_bodies(wild=False), chat_bodies(wild=True), ANY),
    headers=HEADERS,
    ascii_only=st.booleans(),
)
def test_fuzz_chat_never_fails_and_never_orphans(
    client: TestClient, sink: ListSink, body: Any, headers: dict[str, str], ascii_only: bool
) -> None:
    response = post(client, encode(body, ascii_only), **headers)
    check_answer(response, sink)


@FUZZ
@given(
    decision_id=st.one_of(st.just("served"), st.just("0" * 48), ANY),
    quality=st.one_of(st.floats(0, 1), st.integers(0, 1), ANY),
    ascii_only=st.booleans(),
)
def test_fuzz_feedback_never_fails(
    client: TestClient, sink: ListSink, decision_id: Any, quality: Any, ascii_only: bool
) -> None:
    if decision_id == "served":
        decision_id = sink.of("decision")[-1]["event_id"] if sink.of("decision") else "none"
    body = encode({"decision_id": decision_id, "quality": quality}, ascii_only)
    response = post(client, body, "/v1/feedback")
    check_answer(response, sink)
    good = isinstance(quality, int | float) and not isinstance(quality, bool)
    if response.status_code == 200:
        assert good and 0 <= quality <= 1 and math.isfinite(quality)
