"""Traffic (router/traffic/): rate limits, daily budgets and priorities, on the in-memory store
and on the real Redis; every config key has a test that fails without it:

==================================  ==========================================================
tenants.*.requests_per_minute       test_requests_per_minute_refuses_with_retry_after
tenants.*.tokens_per_minute         test_tokens_per_minute_counts_input_and_max_output
tenants.*.budget_usd_per_day        test_budget_*
tenants.*.priority                  test_priorities_shed_the_lowest_first_and_hints_only_lower
admission.lowest_priority_share     test_lowest_priority_share_sets_where_shedding_starts
admission.queue_wait_ms             test_high_priorities_wait_for_a_slot_up_to_queue_wait_ms
admission.queue_min_priority        test_only_priorities_from_queue_min_priority_wait
traffic.store                       test_redis_store_shares_limits_between_gateways
traffic.key_prefix                  test_redis_store_shares_limits_between_gateways
traffic.redis_url_env               test_redis_url_comes_from_the_named_variable
traffic.timeout_ms                  test_a_hung_redis_fails_after_timeout_ms
==================================  ==========================================================

Two gateway processes against the real Redis: tests/test_traffic_replicas.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from fakes import Clock, ListSink
from fastapi import FastAPI
from fastapi.testclient import TestClient
from loopback import free_port
from services import REDIS, require_tcp
from test_gateway import EXAMPLE, FakeUpstream

from features.errors import BudgetExceededError, ConfigError, OverloadedError, TrafficStoreError
from router.app import create_app
from router.bundle import PolicyBundle
from router.config import AdmissionConfig, RouterConfig, TrafficConfig, load_config
from router.eligibility import BUDGET_RULE, EligibilityRules, RequestHints
from router.pipeline import DecisionEngine
from router.prometheus import GatewayMetrics
from router.traffic import build_store
from router.traffic.admission import Admission
from router.traffic.redis_store import RedisStore
from router.traffic.store import MemoryStore, RateLimit, TrafficStore

CHEAP, MID, PRICEY = "Phi-3-mini-4k-instruct", "Meta-Llama-3_1-8B-Instruct", "gemini-1.5-pro-002"
PRICES = {CHEAP: 1.0, MID: 2.0, PRICEY: 10.0}  # USD per million tokens, in and out
TEXT = "x" * 48  # 12 estimated input tokens (4 characters a token)
MAX_OUT = 88  # so a request counts 100 tokens: its maximum cost is 100 * price / 1e6 USD


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenant(name: str, **limits: Any) -> dict[str, Any]:
    """A tenant whose API key is its name."""
    return {"name": name, "api_key_sha256": sha(name), **limits}


def make_config(tenants: list[dict[str, Any]], **top: Any) -> RouterConfig:
    """Three models of the example (cheap, mid, pricey) at round prices, no fallback."""
    data = load_config(EXAMPLE).model_dump()
    models = [m for m in data["models"] if m["name"] in PRICES]
    for m in models:
        m["usd_per_mtok_in"] = m["usd_per_mtok_out"] = PRICES[m["name"]]
        m["context_tokens"] = 8192
    data.update(models=models, profiles={"default": {"w_cost": 0.2}}, fallback=[],
                data_classes={}, tenants=tenants, **top)  # fmt: skip
    return RouterConfig.model_validate(data)


class Upstream(FakeUpstream):
    """test_gateway's upstream answering with ``usage`` tokens; with ``gate`` set, every call
    waits for it (requests held in flight)."""

    def __init__(self, usage: tuple[int, int] = (12, MAX_OUT)) -> None:
        super().__init__()
        self.usage = usage
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:  # type: ignore[override]
        response = super().__call__(request)  # counts the call
        if self.gate is not None:
            await self.gate.wait()
        if response.status_code != 200:
            return response
        prompt, completion = self.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        return httpx.Response(200, json={**response.json(), "usage": usage})


def chat(
    key: str | None = None, model: str = "auto", max_tokens: int = MAX_OUT, **extra: Any
) -> dict[str, Any]:
    """Keyword arguments of a chat POST as ``key``'s tenant."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    body = {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": TEXT}], **extra}  # fmt: skip
    return {"url": "/v1/chat/completions", "json": body, "headers": headers}


@pytest.fixture()
def served(bundle: PolicyBundle) -> Iterator[Callable[..., Any]]:
    """``served(config, upstream)``: a TestClient of a gateway (closed after the test)."""
    clients: list[TestClient] = []

    def make(
        config: RouterConfig, upstream: Upstream | None = None, sink: Any = None
    ) -> TestClient:
        app = create_app(config, bundle, sink or ListSink(),
                         transport=httpx.MockTransport(upstream or Upstream()))  # fmt: skip
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def budget_of(client: TestClient, name: str) -> tuple[int, int]:
    """(spent, reserved) nano-USD of tenant ``name`` today, read from its gateway's store."""
    traffic = cast(FastAPI, client.app).state.gateway.traffic
    day, _ = traffic._budget_day()
    key = f"{traffic.config.traffic.key_prefix}:{{{name}}}:budget:{day}"
    taken = client.portal.call(traffic.store.take, [], key)  # type: ignore[union-attr]
    return taken.spent_nusd, taken.reserved_nusd


# ---- the in-memory store: GCRA and budgets --------------------------------------------------
def test_gcra_admits_a_minute_at_once_then_refills_at_the_rate() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    five = RateLimit("rpm", 60 / 5, 1)  # 5 a minute: one every 12 s
    taken = [asyncio.run(store.take([five], None)) for _ in range(6)]
    assert [t.refused for t in taken] == [-1] * 5 + [0]
    assert taken[-1].retry_after_s == pytest.approx(12)
    clock.now += 11.9
    assert asyncio.run(store.take([five], None)).refused == 0
    clock.now += 0.1
    assert asyncio.run(store.take([five], None)).refused == -1  # exactly one more after 12 s
    assert asyncio.run(store.take([five], None)).refused == 0


def test_gcra_charges_all_limits_or_none() -> None:
    store = MemoryStore(Clock())
    requests, tokens = RateLimit("rpm", 60 / 10, 1), RateLimit("tpm", 60 / 100, 60)
    assert asyncio.run(store.take([requests, tokens], None)).refused == -1
    refused = asyncio.run(store.take([requests, tokens], None))
    assert refused.refused == 1 and refused.retry_after_s == pytest.approx(20 * 0.6)
    # the refused call did not charge the request limit: 9 more requests of 10 pass
    passed = [asyncio.run(store.take([requests], None)).refused for _ in range(10)]
    assert passed == [-1] * 9 + [0]


# ---- the store contract, on both stores ----------------------------------------------------
def redis_url() -> str:
    require_tcp("Redis", *REDIS)
    return f"redis://{REDIS[0]}:{REDIS[1]}/0"


Body = Callable[[TrafficStore, str], Awaitable[Any]]


@pytest.fixture(params=["memory", "redis"])
def with_store(request: pytest.FixtureRequest, redis_prefix: str) -> Callable[[Body], Any]:
    """``with_store(body)`` runs ``await body(store, prefix)`` on a started store."""
    url = redis_url() if request.param == "redis" else None

    def run(body: Body) -> Any:
        async def main() -> Any:
            store: TrafficStore = RedisStore(url, 2.0) if url else MemoryStore()
            await store.start()
            try:
                return await body(store, redis_prefix)
            finally:
                await store.aclose()

        return asyncio.run(main())

    return run


def test_store_rate_limits_are_exact(with_store: Callable[[Body], Any]) -> None:
    async def body(store: TrafficStore, prefix: str) -> None:
        # a token-weighted limit of 600 a minute (one token every 0.1 s), spent at once
        tokens = RateLimit(f"{prefix}:tpm", 60 / 600, 600)
        first = await store.take([tokens], None)
        assert first.refused == -1
        one = RateLimit(f"{prefix}:tpm", 60 / 600, 60)
        refused = await store.take([one], None)
        assert refused.refused == 0 and 5.5 < refused.retry_after_s <= 6.0
        await asyncio.sleep(0.15)  # 1.5 tokens come back: 1 passes, the second does not
        small = RateLimit(f"{prefix}:tpm", 60 / 600, 1)
        assert [(await store.take([small], None)).refused for _ in range(2)] == [-1, 0]
        # all or none across two limits: the request limit is not charged when tokens refuse
        requests = RateLimit(f"{prefix}:rpm", 60 / 2, 1)
        assert (await store.take([requests, one], None)).refused == 1
        assert [(await store.take([requests], None)).refused for _ in range(3)] == [-1, -1, 0]

    with_store(body)


def test_store_budget_reserve_and_settle_are_atomic(with_store: Callable[[Body], Any]) -> None:
    async def body(store: TrafficStore, prefix: str) -> None:
        key = f"{prefix}:{{t}}:budget:2030-01-01"
        limit = 10 * 7_000
        results = await asyncio.gather(*(store.reserve(key, 7_000, limit) for _ in range(25)))
        assert sum(r.ok for r in results) == 10  # concurrency cannot overspend
        taken = await store.take([], key)
        assert (taken.spent_nusd, taken.reserved_nusd) == (0, limit)
        await store.settle(key, 7_000, 5_000)  # the actual cost
        await store.settle(key, 7_000, 0)  # a failed call: released
        taken = await store.take([], key)
        assert (taken.spent_nusd, taken.reserved_nusd) == (5_000, limit - 14_000)
        again = await store.reserve(key, 14_000 + 2_000, limit)
        assert not again.ok and (again.spent_nusd, again.reserved_nusd) == (5_000, limit - 14_000)
        assert (await store.reserve(key, 14_000 - 5_000, limit)).ok

    with_store(body)


# ---- eligibility: the budget rule ----------------------------------------------------------
def test_budget_rule_removes_models_over_the_remaining_budget(bundle: PolicyBundle) -> None:
    config = make_config([])
    rules = EligibilityRules(config)
    # maximum cost of 12 input + 88 output tokens: cheap 1e-4, mid 2e-4, pricey 1e-3 USD
    kept = rules.apply(RequestHints(), 12, 88, budget_remaining_usd=2.5e-4)
    assert kept.models == [m.name for m in config.models if m.name != PRICEY]
    assert kept.removed == {BUDGET_RULE: [PRICEY]}
    assert rules.apply(RequestHints(), 12, 88).models == [m.name for m in config.models]
    with pytest.raises(BudgetExceededError, match=r"cheapest: 'Phi-3-mini-4k-instruct'"):
        rules.apply(RequestHints(), 12, 88, budget_remaining_usd=0.5e-4)
    # before the policy chooses: the pmf is over the models the budget allows
    engine = DecisionEngine(config, bundle)
    for _ in range(20):
        decision = engine.decide(TEXT, 1, 12, 88, RequestHints(), budget_remaining_usd=1.5e-4)
        assert decision.eligible == [CHEAP] and decision.chosen == CHEAP
        assert decision.pmf.tolist() == [1.0]


# ---- budgets through the gateway (in-memory store) ------------------------------------------
def test_budget_steers_the_policy_to_models_it_can_pay_for(served: Callable[..., Any]) -> None:
    sink = ListSink()
    client = served(make_config([tenant("t", budget_usd_per_day=5e-4)]), sink=sink)
    response = client.post(**chat("t"))
    assert response.status_code == 200, response.text
    (decision,) = sink.of("decision")
    assert PRICEY not in decision["eligible_models"] and len(decision["eligible_models"]) == 2
    assert sum(decision["probabilities"]) == pytest.approx(1.0)
    chosen = response.headers["x-polyroute-model"]
    assert budget_of(client, "t") == (round(100 * PRICES[chosen] * 1000), 0)  # settled


def test_budget_settles_the_actual_cost_and_refuses_when_spent(served: Callable[..., Any]) -> None:
    upstream = Upstream(usage=(12, 10))  # the answer is shorter than max_tokens
    client = served(make_config([tenant("t", budget_usd_per_day=3.5e-4)]), upstream)
    for _ in range(3):
        assert client.post(**chat("t", model=CHEAP, max_tokens=88)).status_code == 200
    assert budget_of(client, "t") == (3 * 22_000, 0)  # 22 tokens at 1 USD/Mtok, each
    upstream.usage = (12, 88)
    served_ = [client.post(**chat("t", model=CHEAP)).status_code for _ in range(4)]
    assert served_ == [200, 200, 429, 429]  # 66k + 2 * 100k; another 100k would pass 350k
    refused = client.post(**chat("t"))
    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    for part in ("budget_usd_per_day of 0.00035 USD", "tenant 't'", "0.000266 USD spent",
                 "0.000000 USD reserved", "T00:00:00Z (UTC midnight"):  # fmt: skip
        assert part in message, message
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "budget_exceeded_error"
    midnight = 86_400 - time.time() % 86_400
    assert abs(int(refused.headers["retry-after"]) - midnight) < 5
    assert budget_of(client, "t") == (266_000, 0)
    # the next UTC day has a fresh budget
    traffic = client.app.state.gateway.traffic
    traffic._clock = lambda: time.time() + 86_400
    assert client.post(**chat("t")).status_code == 200
    metrics = client.get("/metrics").text
    assert 'polyroute_budget_refused_total{tenant="t"} 3.0' in metrics


def test_budget_is_released_when_the_call_fails(served: Callable[..., Any]) -> None:
    upstream = Upstream()
    upstream.down = set(PRICES)
    client = served(make_config([tenant("t", budget_usd_per_day=1.0)]), upstream)
    assert client.post(**chat("t")).status_code == 502
    assert budget_of(client, "t") == (0, 0)


def test_budget_settles_a_streamed_answer_when_it_ends(served: Callable[..., Any]) -> None:
    client = served(make_config([tenant("t", budget_usd_per_day=1.0)]), FakeUpstream())
    kwargs = chat("t", model=CHEAP, stream=True)
    with client.stream("POST", kwargs.pop("url"), **kwargs) as response:
        assert response.status_code == 200
        assert budget_of(client, "t") == (0, 100_000)  # reserved while it streams
        response.read()
    # settled with the usage the upstream reported (100 prompt + 10 completion tokens)
    assert budget_of(client, "t") == (110_000, 0)


def test_budget_refuses_a_named_model_it_cannot_pay_for(served: Callable[..., Any]) -> None:
    client = served(make_config([tenant("t", budget_usd_per_day=5e-4)]))
    refused = client.post(**chat("t", model=PRICEY))
    assert refused.status_code == 429
    assert f"model '{PRICEY}'" in refused.json()["error"]["message"]
    assert client.post(**chat("t", model=CHEAP)).status_code == 200


def hold(
    app: Any, upstream: Upstream, held: list[dict[str, Any]], then: list[dict[str, Any]]
) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """Send ``held`` at once with the upstream stopped, wait until they reach it (or are
    answered), send ``then`` one by one, release the upstream: (held answers, then answers)."""

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        upstream.gate = asyncio.Event()
        upstream.calls.clear()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http,
        ):
            tasks = [asyncio.create_task(http.post(**kw)) for kw in held]
            deadline = time.monotonic() + 10
            while len(upstream.calls) + sum(t.done() for t in tasks) < len(held):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            try:
                later = [await asyncio.wait_for(http.post(**kw), 5) for kw in then]
            finally:
                upstream.gate.set()
            return list(await asyncio.gather(*tasks)), later

    return asyncio.run(run())


def test_budget_reservations_stop_concurrent_overspend(bundle: PolicyBundle) -> None:
    config = make_config([tenant("t", budget_usd_per_day=3.5e-4)])
    upstream, sink = Upstream(), ListSink()
    app = create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))
    first, _ = hold(app, upstream, [chat("t", model=CHEAP) for _ in range(6)], [])
    assert sorted(r.status_code for r in first) == [200] * 3 + [429] * 3
    assert len(upstream.calls) == 3  # three reservations of 1e-4 held the budget
    refused = next(r for r in first if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"  # the requests in flight may free room
    assert "may free room sooner" in refused.json()["error"]["message"]


# ---- rate limits through the gateway -------------------------------------------------------
def test_requests_per_minute_refuses_with_retry_after(served: Callable[..., Any]) -> None:
    client = served(make_config([tenant("a", requests_per_minute=3), tenant("b")]))
    assert [client.post(**chat("a")).status_code for _ in range(4)] == [200, 200, 200, 429]
    refused = client.post(**chat("a"))
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limited_error"
    assert "tenant 'a'" in error["message"] and "requests_per_minute of 3" in error["message"]
    assert 15 <= int(refused.headers["retry-after"]) <= 20  # one request every 20 s
    assert 15_000 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert all(client.post(**chat("b")).status_code == 200 for _ in range(5))  # no limit
    metrics = client.get("/metrics").text
    assert 'polyroute_rate_limited_total{limit="requests_per_minute",tenant="a"} 2.0' in metrics


def test_tokens_per_minute_counts_input_and_max_output(served: Callable[..., Any]) -> None:
    client = served(make_config([tenant("a", tokens_per_minute=250)]))
    # 12 input + 88 max output: 100 tokens a request; 250 a minute
    assert [client.post(**chat("a")).status_code for _ in range(3)] == [200, 200, 429]
    refused = client.post(**chat("a"))
    assert "tokens_per_minute of 250" in refused.json()["error"]["message"]
    assert 10 <= int(refused.headers["retry-after"]) <= 12  # 50 tokens over, 0.24 s each
    assert client.post(**chat("a", max_tokens=38)).status_code == 200  # 50 tokens fit
    too_big = client.post(**chat("a", max_tokens=300))
    assert too_big.status_code == 400  # more than a minute's tokens: retrying cannot help
    assert "tokens_per_minute of 250" in too_big.json()["error"]["message"]


class ExplodingStore(MemoryStore):
    async def take(self, *args: Any) -> Any:
        raise AssertionError("the store was used")

    async def reserve(self, *args: Any) -> Any:
        raise AssertionError("the store was used")


def test_no_limits_means_no_work_on_the_request_path(served: Callable[..., Any]) -> None:
    config = make_config([tenant("a"), tenant("b", priority=9)])
    client = served(config)
    gateway = client.app.state.gateway
    gateway.traffic.store = ExplodingStore()
    assert client.post(**chat("a")).status_code == 200
    assert gateway.traffic.limits_of(config.tenants[0]) is None


# ---- priorities ------------------------------------------------------------------------------
def admission(max_in_flight: int, **config: Any) -> Admission:
    return Admission(max_in_flight, AdmissionConfig(**config), GatewayMetrics())


def test_lowest_priority_share_sets_where_shedding_starts() -> None:
    half = admission(10, lowest_priority_share=0.5)
    assert half.limit_of(0) == 5 and half.limit_of(9) == 10
    assert [half.try_acquire(0) for _ in range(6)] == [True] * 5 + [False]
    assert half.try_acquire(9)  # priority 9 may use every slot
    fifth = admission(10, lowest_priority_share=0.2)
    assert [fifth.try_acquire(0) for _ in range(3)] == [True, True, False]
    everyone = admission(10, lowest_priority_share=1.0)
    assert sum(everyone.try_acquire(0) for _ in range(11)) == 10


def test_high_priorities_wait_for_a_slot_up_to_queue_wait_ms() -> None:
    async def run() -> None:
        slots = admission(1, queue_wait_ms=300, queue_min_priority=5)
        await slots.acquire(9)
        low, high = asyncio.create_task(slots.acquire(6)), asyncio.create_task(slots.acquire(9))
        await asyncio.sleep(0.05)
        assert not low.done() and not high.done()
        slots.release()  # the highest waiting priority gets the slot
        await asyncio.sleep(0.01)
        assert high.done() and not low.done() and slots.in_flight == 1
        started = time.monotonic()
        with pytest.raises(OverloadedError, match="after waiting 300 ms"):
            await low
        assert 0.15 < time.monotonic() - started < 1.0  # refused after the bound, not before
        slots.release()
        assert slots.in_flight == 0
        waits = slots.metrics.admission_waits
        assert waits.labels("admitted")._value.get() == 1
        assert waits.labels("timed_out")._value.get() == 1
        never = admission(1, queue_wait_ms=0)
        await never.acquire(9)
        started = time.monotonic()
        with pytest.raises(OverloadedError):
            await never.acquire(9)  # no waiting without queue_wait_ms
        assert time.monotonic() - started < 0.05

    asyncio.run(run())


def test_only_priorities_from_queue_min_priority_wait() -> None:
    async def run(min_priority: int) -> float:
        slots = admission(1, queue_wait_ms=200, queue_min_priority=min_priority)
        await slots.acquire(9)
        started = time.monotonic()
        with pytest.raises(OverloadedError):
            await slots.acquire(4)
        return time.monotonic() - started

    assert asyncio.run(run(5)) < 0.05  # priority 4 < 5: refused at once
    assert asyncio.run(run(4)) > 0.15  # priority 4 >= 4: waited


def test_priorities_shed_the_lowest_first_and_hints_only_lower(bundle: PolicyBundle) -> None:
    config = make_config(
        [tenant("low", priority=2), tenant("high", priority=9)],
        max_in_flight=4,
        admission={"lowest_priority_share": 0.5},
    )  # priority 2 is admitted below 4 * (0.5 + 0.5 * 2 / 9) = 2.4 in flight; priority 9, 4
    upstream = Upstream()
    app = create_app(config, bundle, ListSink(), transport=httpx.MockTransport(upstream))
    later = [
        chat("low"),  # 3 in flight: shed
        chat("low", headers={"x-polyroute-priority": "9"}),  # cannot raise its priority
        chat("high", metadata={"priority": 0}),  # may lower its own: shed
        chat("high", headers={"x-polyroute-priority": "x"}),  # invalid: 400
    ]
    held, answers = hold(app, upstream, [chat("high") for _ in range(3)], later)
    assert [r.status_code for r in held] == [200] * 3
    assert [r.status_code for r in answers] == [503, 503, 503, 400]
    assert "priority 2 is admitted below 2.44" in answers[0].json()["error"]["message"]
    assert answers[0].headers["retry-after"] == "1"
    assert "priority: expected an integer from 0 to 9" in answers[3].json()["error"]["message"]
    # priority 9 has the fourth slot; a fifth request is shed
    held, answers = hold(app, upstream, [chat("high") for _ in range(4)], [chat("high")])
    assert [r.status_code for r in held] == [200] * 4
    assert [r.status_code for r in answers] == [503]


# ---- Redis: selection, sharing, failures -----------------------------------------------------
def test_redis_url_comes_from_the_named_variable(
    monkeypatch: pytest.MonkeyPatch, bundle: PolicyBundle
) -> None:
    monkeypatch.delenv("MY_REDIS", raising=False)
    traffic = TrafficConfig(store="redis", redis_url_env="MY_REDIS")
    with pytest.raises(ConfigError, match="environment variable MY_REDIS is not set"):
        build_store(traffic)
    with pytest.raises(ConfigError, match="MY_REDIS"):
        create_app(make_config([], traffic=traffic.model_dump()), bundle, ListSink())
    monkeypatch.setenv("MY_REDIS", "redis://127.0.0.1:1/3")
    store = build_store(traffic)
    assert isinstance(store, RedisStore) and store.url == "redis://127.0.0.1:1/3"
    assert isinstance(build_store(TrafficConfig()), MemoryStore)


def test_redis_store_shares_limits_between_gateways(
    monkeypatch: pytest.MonkeyPatch, served: Callable[..., Any], redis_prefix: str
) -> None:
    prefix = redis_prefix
    monkeypatch.setenv("POLYROUTE_REDIS_URL", redis_url())
    tenants = [tenant("a", requests_per_minute=3)]

    def pair(store: str, key_prefix: str) -> list[int]:
        traffic = {"store": store, "key_prefix": key_prefix}
        a, b = (served(make_config(tenants, traffic=traffic)) for _ in range(2))
        return [c.post(**chat("a")).status_code for c in (a, b, a, b)]

    assert pair("memory", prefix) == [200] * 4  # each gateway counts on its own
    assert pair("redis", prefix) == [200, 200, 200, 429]  # one limit for both
    assert pair("redis", prefix + "-other") == [200, 200, 200, 429]  # another prefix: fresh
    import redis

    client = redis.Redis(*REDIS)
    assert client.exists(f"{prefix}:{{a}}:rpm") and client.exists(f"{prefix}-other:{{a}}:rpm")
    client.close()


def test_redis_down_fails_rate_limits_open_and_budgets_closed(
    monkeypatch: pytest.MonkeyPatch, served: Callable[..., Any]
) -> None:
    monkeypatch.setenv("POLYROUTE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # refused
    config = make_config(
        [tenant("rated", requests_per_minute=1), tenant("paying", budget_usd_per_day=1.0)],
        traffic={"store": "redis"},
    )
    client = served(config)
    assert [client.post(**chat("rated")).status_code for _ in range(2)] == [200, 200]
    refused = client.post(**chat("paying"))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    message = refused.json()["error"]["message"]
    assert "budgets fail closed" in message and "tenant 'paying'" in message
    metrics = client.get("/metrics").text
    assert 'polyroute_traffic_store_errors_total{action="admitted",op="take"} 2.0' in metrics
    assert 'polyroute_traffic_store_errors_total{action="refused",op="take"} 1.0' in metrics


def test_a_hung_redis_fails_after_timeout_ms() -> None:
    hung = socket.socket()  # accepts connections (the backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"

    async def elapsed(timeout_ms: float) -> float:
        store = build_store(TrafficConfig(store="redis", timeout_ms=timeout_ms))
        await store.start()
        started = time.monotonic()
        with pytest.raises(TrafficStoreError, match="Redis"):
            await store.take([RateLimit("k", 1.0, 1)], None)
        await store.aclose()
        return time.monotonic() - started

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("POLYROUTE_REDIS_URL", url)
            short, longer = asyncio.run(elapsed(100)), asyncio.run(elapsed(600))
    finally:
        hung.close()
    assert 0.09 < short < 0.5 and 0.55 < longer < 1.5


def test_redis_budget_through_the_gateway(
    monkeypatch: pytest.MonkeyPatch, served: Callable[..., Any], redis_prefix: str
) -> None:
    monkeypatch.setenv("POLYROUTE_REDIS_URL", redis_url())
    traffic = {"store": "redis", "key_prefix": redis_prefix}
    config = make_config([tenant("t", budget_usd_per_day=2.5e-4)], traffic=traffic)
    client = served(config)
    statuses = [client.post(**chat("t", model=CHEAP)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    deadline = time.monotonic() + 5  # Redis settlements run in the background
    while budget_of(client, "t") != (200_000, 0):
        assert time.monotonic() < deadline, budget_of(client, "t")
        time.sleep(0.02)
