"""Admission (router/traffic/admission.py): the adaptive limit, unit-tested on an injected clock
with given latency samples (no test here measures time), and the queue through the gateway.
Every admission key has a test that fails without it:

==================================  ==========================================================
admission.limiter                   test_the_fixed_limiter_holds_max_in_flight
admission.initial_limit             test_the_limit_grows_while_the_gateway_latency_holds
admission.smoothing                 test_the_limit_grows_while_the_gateway_latency_holds
admission.window_ms                 test_one_update_a_window_of_at_least_ten_samples
admission.min_limit                 test_the_limit_shrinks_when_the_gateway_latency_inflates
admission.latency_tolerance         test_latency_tolerance_sets_the_inflation_that_shrinks
max_in_flight                       test_the_limit_shrinks_when_the_gateway_latency_inflates
admission.queue_wait_ms             test_a_request_queued_past_its_bound_gets_503_retry_after,
                                    test_a_standing_queue_refuses_newcomers_at_once,
                                    test_a_saturated_worker_refuses_before_parsing
admission.queue_min_priority        test_high_priority_is_admitted_before_low (and test_traffic)
admission.lowest_priority_share     test_traffic.test_lowest_priority_share_sets_where_shedding_
==================================  ==========================================================
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest
from fakes import Clock, ListSink
from test_traffic import Upstream, chat, hold, make_config, tenant

from features.errors import OverloadedError
from router.app import create_app
from router.bundle import PolicyBundle
from router.config import AdmissionConfig
from router.prometheus import GatewayMetrics
from router.traffic.admission import WINDOW_MIN_SAMPLES, Admission, GradientLimit

MS = 1e-3


def limiter(max_limit: int = 200, **config: Any) -> tuple[GradientLimit, Clock]:
    clock = Clock()
    return GradientLimit(AdmissionConfig(**config), max_limit, clock), clock


def window(limit: GradientLimit, clock: Clock, latency_s: float, in_flight: int) -> None:
    """One window of samples all of ``latency_s`` with ``in_flight`` requests in flight."""
    for _ in range(WINDOW_MIN_SAMPLES - 1):
        assert not limit.sample(latency_s, in_flight)
    clock.now += limit.window_s
    assert limit.sample(latency_s, in_flight)


def test_the_limit_grows_while_the_gateway_latency_holds() -> None:
    for smoothing in (0.2, 0.5):
        limit, clock = limiter(initial_limit=25, smoothing=smoothing)
        assert limit.limit == 25
        window(limit, clock, 1 * MS, in_flight=25)
        # gradient 1: limit + queue_size (sqrt(25) = 5), smoothed
        assert limit.limit == pytest.approx(25 + smoothing * 5)
    # fewer than half the limit in flight: the load, not the limit, held the concurrency
    idle, clock = limiter(initial_limit=25)
    for _ in range(20):
        window(idle, clock, 1 * MS, in_flight=12)
    assert idle.limit == 25


def test_one_update_a_window_of_at_least_ten_samples() -> None:
    limit, clock = limiter(initial_limit=20, window_ms=500)
    assert not any(limit.sample(1 * MS, 20) for _ in range(100))  # 100 samples, no time passed
    clock.now += 0.499
    assert not limit.sample(1 * MS, 20)
    clock.now += 0.001
    assert limit.sample(1 * MS, 20)  # 500 ms after the window's first sample
    assert limit.limit > 20
    before = limit.limit
    clock.now += 10  # a long pause: the next window still needs its ten samples
    assert not any(limit.sample(1 * MS, 20) for _ in range(WINDOW_MIN_SAMPLES - 1))
    assert limit.limit == before
    assert limit.sample(1 * MS, 20)


def test_the_limit_shrinks_when_the_gateway_latency_inflates() -> None:
    limit, clock = limiter(max_limit=60, initial_limit=40, min_limit=12)
    for _ in range(30):
        window(limit, clock, 1 * MS, in_flight=60)
    assert limit.limit == 60  # capped at max_in_flight
    window(limit, clock, 10 * MS, in_flight=60)  # ten times the baseline: gradient 0.5
    assert limit.limit == pytest.approx(60 * 0.8 + 0.2 * (60 * 0.5 + math.sqrt(60)))
    lowest = []
    for _ in range(600):  # a minute of overload: the baseline does not learn it as normal
        window(limit, clock, 10 * MS, in_flight=60)
        lowest.append(limit.limit)
    assert lowest[50] == lowest[-1] == 12  # at min_limit within 5 s, and held, never below
    for _ in range(300):  # back to normal: the long average forgets the overload, it grows
        window(limit, clock, 1 * MS, in_flight=60)
    assert limit.limit == 60


def test_latency_tolerance_sets_the_inflation_that_shrinks() -> None:
    def after(tolerance: float) -> float:
        limit, clock = limiter(initial_limit=50, latency_tolerance=tolerance)
        for _ in range(10):
            window(limit, clock, 1 * MS, in_flight=0)  # the baseline, limit unchanged
        window(limit, clock, 1.4 * MS, in_flight=50)
        return limit.limit

    assert after(1.5) > 50  # 1.4 x the baseline is within 1.5: no queueing, it grows
    assert after(1.0) < 50  # not within 1.0: it shrinks


def admission(max_in_flight: int, clock: Clock | None = None, **config: Any) -> Admission:
    return Admission(max_in_flight, AdmissionConfig(**config), GatewayMetrics(), clock or Clock())


def test_the_fixed_limiter_holds_max_in_flight() -> None:
    clock = Clock()
    fixed = admission(30, clock, limiter="fixed", initial_limit=10)
    adaptive = admission(30, clock, initial_limit=10)
    assert (fixed.limit, adaptive.limit) == (30, 10)
    for slots in (fixed, adaptive):
        assert sum(slots.try_acquire(9) for _ in range(40)) == slots.limit
        for _ in range(20):  # requests leave the gateway after 50 ms each: heavy queueing
            for _ in range(WINDOW_MIN_SAMPLES):
                slots.observe(clock.now - 50 * MS)
            clock.now += 0.1
    assert fixed.limit == 30  # samples are ignored
    assert adaptive.limit > 10  # the baseline was set by the same latencies: it grew
    assert adaptive.metrics.admission_limit._value.get() == adaptive.limit


def test_a_standing_queue_refuses_newcomers_at_once() -> None:
    async def run() -> None:
        clock = Clock()
        slots = admission(1, clock, queue_wait_ms=10_000, queue_min_priority=0)
        await slots.acquire(9)
        first = asyncio.create_task(slots.acquire(9))
        await asyncio.sleep(0)
        assert not first.done() and len(slots._waiting) == 1
        clock.now += 4.9  # the head has waited less than half the bound: one more may wait
        second = asyncio.create_task(slots.acquire(9))
        await asyncio.sleep(0)
        assert not second.done()
        assert slots.saturated() is None  # a newcomer may still wait
        clock.now += 0.1  # half the bound: the queue is not draining, refuse at once
        with pytest.raises(OverloadedError, match="the queue is not draining"):
            await slots.acquire(9)
        assert "not draining" in (slots.saturated() or "")  # the route refuses unparsed
        with pytest.raises(OverloadedError, match="admitted below"):
            await slots.acquire(3)  # lower priorities are refused at once as well
        slots.release()
        await first
        slots.release()
        await second
        assert slots.in_flight == 1 and slots.saturated() is None  # the queue is empty
        fixed = admission(1, clock, limiter="fixed", queue_wait_ms=0)
        await fixed.acquire(9)
        assert fixed.saturated() is None  # the fixed limiter refuses as before: after parsing
        waits = slots.metrics.admission_waits
        assert waits.labels("refused_at_once")._value.get() == 2
        assert waits.labels("admitted")._value.get() == 2

    asyncio.run(run())


# ---- through the gateway ---------------------------------------------------------------------
def test_a_request_queued_past_its_bound_gets_503_retry_after(bundle: PolicyBundle) -> None:
    config = make_config([], max_in_flight=1, admission={"queue_wait_ms": 30})
    upstream = Upstream()
    app = create_app(config, bundle, ListSink(), transport=httpx.MockTransport(upstream))

    async def run() -> tuple[httpx.Response, httpx.Response]:
        upstream.gate = asyncio.Event()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http,
        ):
            held = asyncio.create_task(http.post(**chat()))
            await until(lambda: len(upstream.calls) == 1)
            try:  # waits for the held request's slot: 30 ms, then refused
                refused = await asyncio.wait_for(http.post(**chat()), 5)
            finally:
                upstream.gate.set()
            return await held, refused

    held, refused = asyncio.run(run())
    assert held.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "overloaded_error"
    assert "after waiting 30 ms (queue_wait_ms)" in error["message"]
    assert len(upstream.calls) == 1  # the refused request never reached an upstream


def test_a_saturated_worker_refuses_before_parsing(bundle: PolicyBundle) -> None:
    config = make_config([], max_in_flight=1, admission={"queue_wait_ms": 0})
    upstream = Upstream()
    app = create_app(config, bundle, ListSink(), transport=httpx.MockTransport(upstream))
    broken = {"url": "/v1/chat/completions", "content": b"{not json"}
    held, answers = hold(app, upstream, [chat()], [broken])
    assert held[0].status_code == 200
    assert answers[0].status_code == 503  # not the 400 of the body: it was never parsed
    assert answers[0].headers["retry-after"] == "1"
    assert "no priority is admitted" in answers[0].json()["error"]["message"]
    assert hold(app, upstream, [], [broken])[1][0].status_code == 400  # with room: parsed


def test_high_priority_is_admitted_before_low(bundle: PolicyBundle) -> None:
    config = make_config(
        [tenant("low", priority=4), tenant("high", priority=9)],
        max_in_flight=1,
        # both priorities may have the one slot and may wait: only the queue orders them
        admission={"queue_wait_ms": 10_000, "queue_min_priority": 4, "lowest_priority_share": 1},
    )
    upstream = Upstream()
    app = create_app(config, bundle, ListSink(), transport=httpx.MockTransport(upstream))
    gateway = app.state.gateway

    def said(who: str) -> dict[str, Any]:
        return chat(who, messages=[{"role": "user", "content": f"{who} " * 12}])

    async def run() -> list[httpx.Response]:
        upstream.gate = asyncio.Event()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http,
        ):
            tasks = [asyncio.create_task(http.post(**said("high")))]
            await until(lambda: len(upstream.calls) == 1)
            tasks.append(asyncio.create_task(http.post(**said("low"))))  # waits first
            await until(lambda: len(gateway.admission._waiting) == 1)
            tasks.append(asyncio.create_task(http.post(**said("high"))))
            await until(lambda: len(gateway.admission._waiting) == 2)
            upstream.gate.set()
            return list(await asyncio.gather(*tasks))

    answers = asyncio.run(run())
    assert [r.status_code for r in answers] == [200, 200, 200]
    order = [body["messages"][0]["content"].split()[0] for body in upstream.bodies]
    assert order == ["high", "high", "low"]  # the later high request went before the low one


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    """Wait for ``condition()`` (a test harness bound, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
