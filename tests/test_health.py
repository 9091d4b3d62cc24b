"""Breakers, balancing, retries, fallbacks in the policy's order, deadlines, live latency and
profile weights at decision time (router.health, router.http.dispatch, router.pipeline)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from fakes import Clock, ListSink, completion
from fastapi import FastAPI
from fastapi.testclient import TestClient

from features.errors import ConfigError
from features.featurizer import FeaturizerConfig
from router.app import create_app
from router.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryBudget
from router.bundle import PolicyBundle
from router.config import BreakerConfig, RouterConfig, load_config
from router.eligibility import RequestHints
from router.events.join import charge_failures, join_events
from router.events.models import event_from_record
from router.health import HealthBoard
from router.pipeline import Decision, DecisionEngine
from training.bundle_train import train_bundle
from training.datasets import RoutingDataset

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


def answer(model: str) -> httpx.Response:
    return httpx.Response(200, json=completion(model, "ok"))


class Upstream:
    """Answers per instance host: ``down`` hosts refuse the connection, ``failing`` models
    answer 503 (with ``retry_after`` when set), as do the next ``fail_next`` calls, and ``slow``
    models sleep."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.failing: set[str] = set()
        self.slow: dict[str, float] = {}
        self.retry_after: str | None = None
        self.fail_next = 0  # the next calls answer 503, whatever the model
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        host = request.url.host
        self.calls.append((model, host))
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if model in self.slow:
            await asyncio.sleep(self.slow[model])
        if self.fail_next > 0:
            self.fail_next -= 1
            return httpx.Response(503, json={"error": {"message": "down"}})
        if model in self.failing:
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            return httpx.Response(503, json={"error": {"message": "down"}}, headers=headers)
        return answer(model)


def make_config(**resilience: Any) -> RouterConfig:
    data = load_config(EXAMPLE).model_dump()
    data["tenants"] = []
    data["fallback"] = []
    data["resilience"] = {**data["resilience"], **resilience}
    # the first model gets two instances (hosts a and b)
    first = data["models"][0]
    first["instances"] = [{"base_url": "http://a/v1"}, {"base_url": "http://b/v1"}]
    return RouterConfig.model_validate(data)


@pytest.fixture()
def upstream() -> Upstream:
    return Upstream()


def client_for(
    config: RouterConfig, bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> TestClient:
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    return TestClient(app)


def ask(client: TestClient, model: str = "auto") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    response: httpx.Response = client.post("/v1/chat/completions", json=body)
    return response


# ---- the breaker alone ----------------------------------------------------------------------
def breaker(**settings: Any) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerConfig(**settings)), clock


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    b, clock = breaker(min_requests=4, failure_rate=0.5, consecutive_failures=100)
    for ok in (True, False, True):
        b.record(ok, clock.now)
    assert b.state == CLOSED  # 3 calls < min_requests
    b.record(False, clock.now)
    assert b.state == OPEN and "failure rate 2/4" in b.reason


def test_breaker_forgets_failures_outside_its_window() -> None:
    b, clock = breaker(window_s=10, min_requests=4, failure_rate=0.5, consecutive_failures=100)
    b.record(False, clock.now)
    b.record(False, clock.now)
    clock.now += 11
    for _ in range(3):
        b.record(True, clock.now)
    b.record(False, clock.now)
    assert b.state == CLOSED  # 1 failure in 4 within the window


def test_breaker_half_open_probe_closes_or_reopens_with_backoff() -> None:
    b, clock = breaker(consecutive_failures=2, open_s=5, max_open_s=12, half_open_probes=1)
    b.record(False, clock.now)
    b.record(False, clock.now)
    assert b.state == OPEN and not b.allows(clock.now)
    clock.now += 5
    assert b.allows(clock.now) and b.state == HALF_OPEN
    b.started()
    assert not b.allows(clock.now)  # one probe at a time
    b.record(False, clock.now)  # the probe fails: open for twice as long
    assert b.state == OPEN and b.open_until == clock.now + 10
    clock.now += 10
    assert b.allows(clock.now)
    b.started()
    b.record(False, clock.now)
    assert b.open_until == clock.now + 12  # capped at max_open_s
    clock.now += 12
    assert b.allows(clock.now)
    b.started()
    b.record(True, clock.now)
    assert b.state == CLOSED and b.open_s == 5


def test_retry_after_opens_for_as_long_as_the_upstream_said() -> None:
    b, clock = breaker(open_s=5, max_open_s=60)
    b.record(False, clock.now, retry_after_s=30)
    assert b.state == OPEN and b.open_until == clock.now + 30


def test_retry_budget_bounds_retries_to_a_share_of_requests() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, clock=clock)
    budget.tokens = 0.0
    retries = 0
    for _ in range(100):
        budget.deposit()
        retries += budget.withdraw()
    assert retries == 20


# ---- the board: eligibility, balancing, latency outliers ------------------------------------
def test_a_failing_model_becomes_ineligible_and_the_pmf_is_over_the_others(
    bundle: PolicyBundle,
) -> None:
    config = make_config(breaker={"consecutive_failures": 3})
    clock = Clock()
    board = HealthBoard(config, clock)
    name = config.models[1].name
    url = config.models[1].endpoints()[0].base_url
    for _ in range(3):
        board.started(name, url)
        board.finished(name, url, False, 0.01)
    assert board.unhealthy() == {name}
    engine = DecisionEngine(config, bundle, seed=0)
    d = engine.decide("hello", 1, 10, 64, RequestHints(), None, board.unhealthy())
    assert name not in d.eligible and d.pmf.sum() == pytest.approx(1.0)
    assert d.removed["unhealthy (circuit open)"] == [name]
    clock.now += config.resilience.breaker.open_s
    assert board.unhealthy() == frozenset()  # half-open: eligible again, the next call probes
    assert board.pick(name) == url
    board.started(name, url)
    assert board.unhealthy() == {name}  # while its one probe is out
    assert board.pick(name) is None
    board.finished(name, url, True, 0.01)
    assert board.unhealthy() == frozenset() and board.state(name) == "closed"


def test_an_abandoned_probe_frees_its_slot() -> None:
    config = make_config(breaker={"consecutive_failures": 1})
    clock = Clock()
    board = HealthBoard(config, clock)
    name = config.models[1].name
    url = config.models[1].endpoints()[0].base_url
    board.started(name, url)
    board.finished(name, url, False, 0.01)
    clock.now += config.resilience.breaker.open_s
    assert board.pick(name) == url  # half-open: this call is the probe
    board.started(name, url)
    assert name in board.unhealthy()
    board.abandoned(name, url)  # its caller went away
    assert name not in board.unhealthy() and board.pick(name) == url
    assert board.models[name].instances[0].outstanding == 0


def test_a_model_is_unhealthy_only_when_every_instance_is_open() -> None:
    config = make_config(breaker={"consecutive_failures": 2})
    board = HealthBoard(config, Clock())
    name = config.models[0].name
    for _ in range(2):
        board.started(name, "http://a/v1")
        board.finished(name, "http://a/v1", False, 0.01)
        board.started(name, "http://b/v1")
        board.finished(name, "http://b/v1", True, 0.01)
    assert board.unhealthy() == frozenset()
    assert board.pick(name) == "http://b/v1"  # a is open
    for _ in range(2):
        board.started(name, "http://b/v1")
        board.finished(name, "http://b/v1", False, 0.01)
    assert name in board.unhealthy()


def test_p2c_prefers_the_faster_instance_and_round_robin_follows_weights() -> None:
    config = make_config()
    board = HealthBoard(config, Clock(), seed=1)
    name = config.models[0].name
    board.started(name, "http://a/v1")
    board.finished(name, "http://a/v1", True, 0.200)
    board.started(name, "http://b/v1")
    board.finished(name, "http://b/v1", True, 0.010)
    picks = Counter(board.pick(name) for _ in range(200))
    assert picks["http://b/v1"] == 200  # two candidates: the lower load always wins
    data = config.model_dump()
    data["resilience"]["balancing"] = "round_robin"
    data["models"][0]["instances"] = [
        {"base_url": "http://a/v1", "weight": 3},
        {"base_url": "http://b/v1", "weight": 1},
    ]
    rr = HealthBoard(RouterConfig.model_validate(data), Clock())
    picks = Counter(rr.pick(name) for _ in range(400))
    assert picks["http://a/v1"] == pytest.approx(300, abs=20)


def test_a_model_slower_than_its_peers_is_ejected_and_raises_its_latency_factor() -> None:
    config = make_config(slow_ratio=5.0, slow_min_calls=5)
    clock = Clock()
    board = HealthBoard(config, clock)
    names = [m.name for m in config.models[1:5]]
    for _ in range(10):
        for k, name in enumerate(names):
            url = config.model(name).endpoints()[0].base_url
            slow = k == 0
            board.started(name, url)
            board.finished(name, url, True, 1.0 if slow else 0.1, expected_ms=100.0)
            board.model_finished(name, True)
            clock.now += 0.05
    assert names[0] in board.unhealthy()
    assert "latency outlier" in board.models[names[0]].breaker.reason
    factors = board.latency_factors()
    assert factors is not None
    assert factors[board.names.index(names[0])] == pytest.approx(5.0)  # clipped at slow_ratio
    assert factors[board.names.index(names[1])] == pytest.approx(1.0)


def test_latency_factors_move_a_latency_weighted_policy_off_a_slowed_model(
    bundle: PolicyBundle,
) -> None:
    data = make_config().model_dump()
    data["profiles"]["fast"] = {"w_cost": 0.0, "w_latency": 1.0}
    config = RouterConfig.model_validate(data)
    engine = DecisionEngine(config, bundle, seed=0)
    base = engine.decide("hello there", 1, 10, 64, RequestHints(profile="fast"))
    top = base.eligible[int(np.argmax(base.pmf))]
    factors = np.ones(len(config.models))
    factors[[m.name for m in config.models].index(top)] = 10.0
    slowed = engine.decide(
        "hello there", 1, 10, 64, RequestHints(profile="fast"), None, (), factors
    )
    assert slowed.pmf[slowed.eligible.index(top)] < base.pmf[base.eligible.index(top)]


# ---- profiles: reward weights at decision time ----------------------------------------------
def test_profile_weights_apply_at_decision_time_and_are_logged(bundle: PolicyBundle) -> None:
    data = make_config().model_dump()
    data["profiles"]["frugal"] = {"w_cost": 50.0}
    data["profiles"]["lavish"] = {"w_cost": 0.0}
    config = RouterConfig.model_validate(data)
    engine = DecisionEngine(config, bundle, seed=0)
    frugal = engine.decide("Explain entropy.", 1, 10, 64, RequestHints(profile="frugal"))
    lavish = engine.decide("Explain entropy.", 1, 10, 64, RequestHints(profile="lavish"))
    assert frugal.reward.w_cost == 50.0 and lavish.reward.w_cost == 0.0

    def mean_price(d: Decision) -> float:
        prices = [
            config.model(m).usd_per_mtok_in + config.model(m).usd_per_mtok_out for m in d.eligible
        ]
        return float(np.dot(d.pmf, prices))

    assert mean_price(frugal) < mean_price(lavish)
    default = engine.decide("Explain entropy.", 1, 10, 64, RequestHints())
    assert default.reward.w_cost == bundle.reward.w_cost  # example default: w_cost 0.2


def test_a_policy_with_baked_in_weights_refuses_other_profile_weights(
    vw_bundle: PolicyBundle,
) -> None:
    data = make_config().model_dump()
    data["profiles"] = {"default": {}, "frugal": {"w_cost": vw_bundle.reward.w_cost + 1}}
    with pytest.raises(ConfigError, match=r"profiles\.frugal: w_cost / w_latency differ"):
        DecisionEngine(RouterConfig.model_validate(data), vw_bundle)
    data["profiles"]["frugal"] = {"w_cost": vw_bundle.reward.w_cost}  # the same: fine
    DecisionEngine(RouterConfig.model_validate(data), vw_bundle)


@pytest.fixture(scope="module")
def vw_bundle(tiny: RoutingDataset) -> PolicyBundle:
    return train_bundle(
        tiny, w_cost=0.2, policy_name="vw_squarecb",
        featurizer_config=FeaturizerConfig(n_components=16),
    )  # fmt: skip


# ---- the gateway: retries, fallbacks, deadlines ---------------------------------------------
@pytest.fixture()
def sink() -> ListSink:
    return ListSink()


@pytest.fixture()
def two_instance(bundle: PolicyBundle, sink: ListSink, upstream: Upstream) -> Iterator[TestClient]:
    config = make_config()
    with client_for(config, bundle, sink, upstream) as c:
        yield c


def test_an_instance_failure_is_retried_on_another_instance_of_the_model(
    two_instance: TestClient, sink: ListSink, upstream: Upstream
) -> None:
    config: RouterConfig = cast(FastAPI, two_instance.app).state.gateway.config
    name = config.models[0].name
    upstream.down = {"a"}
    for _ in range(6):
        response = ask(two_instance, name)  # pass-through: always this model
        assert response.status_code == 200, response.text
        assert response.headers["x-polyroute-model"] == name
    outcomes = sink.of("outcome")
    retried = [o for o in outcomes if o["attempts"]]
    assert retried, "host a was never tried first"
    for o in retried:
        assert [a["model"] for a in o["attempts"]] == [name, name]
        assert o["attempts"][0]["error_class"] == "connection"
        assert o["attempts"][1]["error_class"] is None
        assert o["fallback_used"] is False and o["error_class"] is None
    # a failure weighs in a's EWMA latency: balancing shuns it from then on
    assert upstream.calls.count((name, "a")) == 1
    assert upstream.calls[-5:] == [(name, "b")] * 5
    health = cast(FastAPI, two_instance.app).state.gateway.health
    assert health.state(name) == CLOSED  # the model is fine


def test_fallback_follows_the_policys_order_and_charges_the_chosen_model(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    config = make_config(breaker={"consecutive_failures": 1000, "min_requests": 1000})
    with client_for(config, bundle, sink, upstream) as client:
        upstream.fail_next = 1  # the chosen model's call fails, whichever model it is
        response = ask(client)
    decision = sink.of("decision")[-1]
    outcome = sink.of("outcome")[-1]
    chosen = decision["chosen_model"]
    assert response.status_code == 200
    order = np.argsort(-np.array(decision["probabilities"]), kind="stable")
    expected = [
        decision["eligible_models"][k] for k in order if decision["eligible_models"][k] != chosen
    ]
    assert response.headers["x-polyroute-model"] == expected[0]
    assert outcome["fallback_used"] is True
    assert outcome["attempts"][0] == {
        "model": chosen,
        "error_class": "http_503",
        "latency_ms": outcome["attempts"][0]["latency_ms"],
    }
    # the learner sees the chosen model's failure, not the fallback's answer
    frame = join_events([event_from_record(decision), event_from_record(outcome)])
    charged, unattributed = charge_failures(frame)
    assert unattributed == 0
    row = charged.iloc[0]
    assert row["quality"] == 0.0 and row["cost_usd"] == 0.0
    assert row["latency_ms"] == pytest.approx(outcome["attempts"][0]["latency_ms"])


def test_a_down_model_gets_no_more_traffic_once_its_breaker_opens(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    config = make_config(breaker={"consecutive_failures": 3, "open_s": 60})
    with client_for(config, bundle, sink, upstream) as client:
        first = ask(client).headers["x-polyroute-model"]
        upstream.failing = {first}
        statuses = [ask(client).status_code for _ in range(60)]
        gateway = cast(FastAPI, client.app).state.gateway
        assert gateway.health.state(first) == OPEN
        calls_before = sum(1 for m, _ in upstream.calls if m == first)
        later = [ask(client) for _ in range(40)]
        metrics = client.get("/metrics").text
    assert set(statuses) == {200} and {r.status_code for r in later} == {200}
    assert sum(1 for m, _ in upstream.calls if m == first) == calls_before
    assert all(first not in d["eligible_models"] for d in sink.of("decision")[-40:])
    assert f'polyroute_circuit_state{{model="{first}"}} 2.0' in metrics


def test_max_attempts_one_means_no_retry(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    config = make_config(max_attempts=1)
    with client_for(config, bundle, sink, upstream) as client:
        upstream.failing = {m.name for m in config.models}
        response = ask(client)
    assert response.status_code == 502
    assert len(upstream.calls) == 1
    assert sink.of("outcome")[-1]["error_class"] == "http_503"


def test_an_empty_retry_budget_stops_retries(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    config = make_config(retry_budget_ratio=0.0, retry_budget_min_per_s=0.0)
    with client_for(config, bundle, sink, upstream) as client:
        cast(FastAPI, client.app).state.gateway.health.budget.tokens = 0.0
        upstream.failing = {m.name for m in config.models}
        response = ask(client)
        metrics = client.get("/metrics").text
    assert response.status_code == 502 and len(upstream.calls) == 1
    assert 'polyroute_errors_total{kind="retry_budget_exhausted"} 1.0' in metrics


def test_the_overall_deadline_bounds_every_attempt(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    data = make_config().model_dump()
    data["timeouts"]["total_s"] = 0.3
    config = RouterConfig.model_validate(data)
    upstream.slow = {m.name: 5.0 for m in config.models}
    with client_for(config, bundle, sink, upstream) as client:
        response = ask(client)
    assert response.status_code == 502
    outcome = sink.of("outcome")[-1]
    assert outcome["error_class"] == "deadline"
    assert outcome["latency_ms"] < 1500


def test_retry_after_from_an_upstream_keeps_its_instance_out(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    config = make_config()
    name = config.models[2].name
    upstream.failing = {name}
    upstream.retry_after = "30"
    with client_for(config, bundle, sink, upstream) as client:
        response = ask(client, name)
        assert response.status_code == 502  # pass-through: no other model may answer
        breaker = cast(FastAPI, client.app).state.gateway.health.models[name].instances[0].breaker
        assert breaker.state == OPEN and breaker.reason == "retry-after"
        again = ask(client, name)
    assert again.status_code == 503 and int(again.headers["retry-after"]) >= 1
    assert "unavailable (circuit open)" in again.json()["error"]["message"]


def test_health_is_reported_to_the_admin(two_instance: TestClient) -> None:
    body = two_instance.get("/admin/health").json()
    assert body["unhealthy"] == []
    first = next(iter(body["models"].values()))
    assert first["state"] == "closed" and len(first["instances"]) == 2


def test_model_version_and_speeds_from_the_config_are_used(
    bundle: PolicyBundle, sink: ListSink, upstream: Upstream
) -> None:
    data = make_config().model_dump()
    name = data["models"][3]["name"]
    data["models"][3]["version"] = "2024-08-06"
    config = RouterConfig.model_validate(data)
    with client_for(config, bundle, sink, upstream) as client:
        response = ask(client, name)
        listed = client.get("/v1/models").json()["data"]
    assert response.headers["x-polyroute-model-version"] == "2024-08-06"
    assert {
        "id": name,
        "object": "model",
        "owned_by": "polyroute",
        "version": "2024-08-06",
    } in listed
    # ttft_ms / tokens_per_s: the decision's latency prediction follows the config's figures
    hints = RequestHints(max_latency_ms=30_000.0)
    data["models"][3]["ttft_ms"] = 60_000.0
    slow = DecisionEngine(RouterConfig.model_validate(data), bundle, seed=0)
    assert name in slow.decide("hi", 1, 10, 64, hints).removed["expected latency > 30000.0 ms"]
    data["models"][3]["ttft_ms"] = 1.0
    data["models"][3]["tokens_per_s"] = 1e6
    fast = DecisionEngine(RouterConfig.model_validate(data), bundle, seed=0)
    assert name in fast.decide("hi", 1, 10, 64, RequestHints(max_latency_ms=5.0)).eligible
