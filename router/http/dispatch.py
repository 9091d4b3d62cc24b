"""Calling the chosen model: retries on other instances, fallbacks in the policy's order, plain or
streamed answers, and the outcome event (tokens, cost, latency, error, the chain of attempts)
however the call ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import anyio
import httpx
import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse

from features.errors import (
    EventLogError,
    ModelsUnavailableError,
    NoEligibleModelError,
    UpstreamError,
)
from router.config import ModelConfig
from router.eligibility import UNHEALTHY
from router.events.models import Attempt, OutcomeEvent
from router.http.errors import error_response
from router.http.gateway import Gateway
from router.http.request import stream_options
from router.pipeline import Decision
from router.upstream import StreamEnd, StreamRelay, UpstreamReply, estimate_tokens


def force(decision: Decision, model: str) -> Decision:
    """The caller named the model: serve it if the rules allow it, else say which rule refused."""
    if model not in decision.eligible:
        rules = [rule for rule, models in decision.removed.items() if model in models]
        if rules == [UNHEALTHY]:
            raise ModelsUnavailableError(f"model: {model!r} is unavailable (circuit open)")
        raise NoEligibleModelError(
            f"model: {model!r} may not serve this request ({'; '.join(rules)})", "model"
        )
    return replace(
        decision, chosen=model, chosen_index=decision.eligible.index(model), probability=1.0
    )


class RelayResponse(StreamingResponse):
    """A streamed answer whose upstream is closed and whose outcome is logged however the
    response ends: complete, upstream broken off, or client gone (Starlette then cancels the
    sending task, possibly before the body iterator ever started, so its own ``finally`` is not
    enough)."""

    def __init__(self, relay: StreamRelay, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(
            relay.chunks(), status_code=status_code, media_type="text/event-stream", headers=headers
        )
        self.relay = relay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
                await self.relay.close()


def _cost(model: ModelConfig, tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * model.usd_per_mtok_in + tokens_out * model.usd_per_mtok_out) / 1e6


def _tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI ``usage`` object, None when it has none."""
    if not isinstance(usage, dict):
        return None
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
        return None
    return max(0, tokens_in), max(0, tokens_out)


def fallback_order(decision: Decision, static: list[str]) -> list[str]:
    """The models to try, in order: the chosen one, then the config's ``fallback`` list, then
    every other eligible model by the policy's own preference (its probabilities, highest
    first)."""
    order = [decision.chosen]
    for name in static:
        if name in decision.eligible and name not in order:
            order.append(name)
    if len(decision.eligible) > len(order):
        ranked = np.argsort(-decision.pmf, kind="stable")
        order.extend(decision.eligible[k] for k in ranked if decision.eligible[k] not in order)
    return order


def _order(decision: Decision, static: list[str] | None) -> Iterator[str]:
    """The chosen model, then (``static`` not None) the rest of :func:`fallback_order`, worked
    out only if the chosen model fails: most requests never pay for the sort."""
    yield decision.chosen
    if static is not None:
        yield from fallback_order(decision, static)[1:]


class _Stop(Exception):
    """No further attempt: the retry budget or the deadline is spent."""


async def dispatch(
    gateway: Gateway,
    body: dict[str, Any],
    decision: Decision,
    start: float,
    stream: bool,
    input_tokens_estimate: int,
    fallback: bool = True,
) -> Response:
    """Call the chosen model; on an upstream failure retry another instance of it, then fall
    back to the next model (:func:`fallback_order`) while ``resilience.max_attempts``, the
    retry budget and ``timeouts.total_s`` allow. A streamed answer can be retried only before
    its first byte (``UpstreamClient.stream`` fails before any is relayed). ``fallback=False``
    (the caller named the model): other instances only, never another model."""
    config = gateway.config
    client = gateway.client
    health = gateway.health
    assert client is not None
    max_attempts = config.resilience.max_attempts
    deadline = start + config.timeouts.total_s
    wants_usage = True
    if stream:
        body, wants_usage = stream_options(body)
    health.budget.deposit()
    attempts: list[Attempt] = []
    last: UpstreamError | None = None
    first_call: float | None = None
    order = _order(decision, config.fallback if fallback and max_attempts > 1 else None)
    try:
        for name in order:
            if len(attempts) >= max_attempts:
                break
            if attempts and name != decision.chosen and name in health.unhealthy():
                continue  # opened while we tried the others
            model = config.model(name)
            tried: list[str] = []
            answered = False
            try:
                while len(attempts) < max_attempts:
                    url = health.pick(name, tried)
                    if url is None:
                        if not attempts and not tried:  # chosen while open (race): say so
                            last = UpstreamError(name, "circuit_open", "no instance available")
                            attempts.append(
                                Attempt(model=name, error_class="circuit_open", latency_ms=0)
                            )
                        break
                    if attempts and not health.budget.withdraw():
                        gateway.metrics.errors.labels("retry_budget_exhausted").inc()
                        raise _Stop
                    now = time.perf_counter()
                    remaining = deadline - now
                    if remaining <= 0:
                        last = UpstreamError(name, "deadline", "timeouts.total_s passed")
                        raise _Stop
                    tried.append(url)
                    first_call = now if first_call is None else first_call
                    # the prediction before live factors: health judges latency against it
                    expected: float | None = None
                    if name == decision.chosen:
                        expected = decision.expected_latency_ms / decision.latency_factor
                    overhead_ms = (now - start) * 1000
                    health.started(name, url)
                    try:
                        async with asyncio.timeout(remaining):
                            if stream:
                                upstream = await client.stream(model, url, body)
                            else:
                                reply = await client.complete(model, url, body)
                    except (UpstreamError, TimeoutError) as exc:
                        seconds = time.perf_counter() - now
                        if isinstance(exc, TimeoutError):
                            exc = UpstreamError(name, "deadline", "timeouts.total_s passed")
                        health.finished(name, url, False, seconds, retry_after_s=exc.retry_after_s)
                        gateway.metrics.errors.labels(exc.kind).inc()
                        attempts.append(
                            Attempt(model=name, error_class=exc.kind, latency_ms=seconds * 1000)
                        )
                        last = exc
                        continue
                    except BaseException:  # cancelled (the caller left): not the upstream's fault
                        health.abandoned(name, url)
                        answered = True  # nothing to hold against the model
                        raise
                    answered = True
                    if stream:  # the stream's end tells the model's breaker
                        return _streamed(
                            gateway,
                            decision,
                            model,
                            url,
                            upstream,
                            wants_usage,
                            input_tokens_estimate,
                            now,
                            first_call,
                            overhead_ms,
                            attempts,
                            expected,
                        )
                    seconds = time.perf_counter() - now
                    health.finished(name, url, True, seconds, expected)
                    health.model_finished(name, True)
                    return _answered(
                        gateway, decision, model, reply, seconds, first_call, overhead_ms, attempts
                    )
            finally:
                if tried and not answered:  # every instance tried failed
                    health.model_finished(name, False)

    except _Stop:
        pass
    _outcome(
        gateway,
        decision,
        decision.chosen,
        (0, 0),
        time.perf_counter() - (first_call or start),
        len({a.model for a in attempts}) > 1,
        last.kind if last else "unknown",
        attempts=attempts if len(attempts) > 1 else None,
    )
    if last is not None and last.kind == "circuit_open" and len(attempts) == 1:
        return error_response(503, f"upstream unavailable: {last}", "upstream_error")
    return error_response(502, f"upstream failed: {last}", "upstream_error")


def _answered(
    gateway: Gateway,
    decision: Decision,
    model: ModelConfig,
    reply: UpstreamReply,
    seconds: float,
    first_call: float,
    overhead_ms: float,
    attempts: list[Attempt],
) -> Response:
    name = model.name
    headers = _headers(gateway, decision, name, overhead_ms)
    tokens = _tokens(reply.body.get("usage") if isinstance(reply.body, dict) else None)
    tokens = tokens or (0, 0)
    cost = _cost(model, *tokens)
    headers["x-polyroute-cost-usd"] = f"{cost:.8f}"
    headers.update({k: v for k, v in reply.headers.items() if k.startswith("x-replay-")})
    if attempts:
        attempts.append(Attempt(model=name, latency_ms=seconds * 1000))
    _outcome(
        gateway,
        decision,
        name,
        tokens,
        time.perf_counter() - first_call,
        name != decision.chosen,
        f"http_{reply.status}" if reply.status >= 400 else None,
        cost,
        attempts or None,
    )
    if reply.content:  # relay the upstream's bytes: no second JSON serialisation
        return Response(
            reply.content, status_code=reply.status, headers=headers, media_type="application/json"
        )
    return JSONResponse(reply.body, status_code=reply.status, headers=headers)


def _streamed(
    gateway: Gateway,
    decision: Decision,
    model: ModelConfig,
    url: str,
    upstream: httpx.Response,
    wants_usage: bool,
    input_tokens_estimate: int,
    call_start: float,
    first_call: float,
    overhead_ms: float,
    attempts: list[Attempt],
    expected_ms: float | None,
) -> Response:
    name = model.name
    headers = _headers(gateway, decision, name, overhead_ms)
    passthrough = {k: v for k, v in upstream.headers.items() if k.startswith("x-replay-")}
    status = upstream.status_code

    def on_end(end: StreamEnd) -> None:
        tokens = _tokens(end.usage)
        if tokens is None:  # no usage from the upstream: estimate (counted in metrics)
            gateway.metrics.usage_estimated.labels(name).inc()
            tokens = (input_tokens_estimate, estimate_tokens(end.text))
        error = end.error or (f"http_{status}" if status >= 400 else None)
        # the instance failed only if the upstream broke off; a caller who left is not its fault
        broken = end.error is not None and end.error.startswith("stream_")
        gateway.health.finished(name, url, not broken, end.seconds, expected_ms)
        gateway.health.model_finished(name, not broken)
        chain = None
        if attempts:
            chain = [
                *attempts,
                Attempt(model=name, error_class=error, latency_ms=end.seconds * 1000),
            ]
        cost = _cost(model, *tokens)
        seconds = end.seconds + (call_start - first_call)
        _outcome(
            gateway, decision, name, tokens, seconds, name != decision.chosen, error, cost, chain
        )

    relay = StreamRelay(name, upstream, not wants_usage, on_end, call_start)
    return RelayResponse(relay, status, {**headers, **passthrough})


def _headers(
    gateway: Gateway, decision: Decision, model: str, overhead_ms: float
) -> dict[str, str]:
    gateway.metrics.overhead.observe(overhead_ms / 1000)
    return {
        "x-polyroute-model": model,
        "x-polyroute-model-version": gateway.versions[model],
        "x-polyroute-decision-id": decision.decision_id,
        "x-polyroute-overhead-ms": f"{overhead_ms:.3f}",
    }


def _outcome(
    gateway: Gateway,
    decision: Decision,
    model: str,
    tokens: tuple[int, int],
    seconds: float,
    fallback: bool,
    error: str | None,
    cost: float = 0.0,
    attempts: list[Attempt] | None = None,
) -> None:
    gateway.metrics.upstream_latency.labels(model).observe(seconds)
    gateway.metrics.cost.labels(model).inc(cost)
    gateway.metrics.requests.labels("chat", "error" if error else "ok").inc()
    outcome = OutcomeEvent(
        event_id=decision.decision_id,
        cost_usd=cost,
        latency_ms=seconds * 1000,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        error_class=error,
        fallback_used=fallback,
        attempts=attempts,
    )
    if gateway.canary is not None:
        gateway.canary.on_outcome(decision.decision_id, error, cost, seconds * 1000)
    gateway.settle(decision.decision_id, cost)  # the tenant's budget: the actual cost
    try:
        gateway.sink.emit(outcome)
    except EventLogError:
        # the answer is already paid for and on its way: count the lost outcome, do not fail it
        gateway.metrics.errors.labels("outcome_not_logged").inc()


def unfinished(gateway: Gateway, decision: Decision, seconds: float, error: str) -> None:
    """Log the outcome of a logged decision whose :func:`dispatch` raised instead of returning
    a response (dispatch logs an outcome only on its way to a response): no decision is left
    without an outcome."""
    _outcome(gateway, decision, decision.chosen, (0, 0), seconds, False, error)
