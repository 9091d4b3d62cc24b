"""Calling the chosen model: fallbacks in order, plain or streamed answers, and the outcome
event (tokens, cost, latency, error) however the call ends."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import anyio
from fastapi.responses import JSONResponse, Response, StreamingResponse

from features.errors import EventLogError, NoEligibleModelError, UpstreamError
from router.config import ModelConfig
from router.events.models import OutcomeEvent
from router.http.errors import error_response
from router.http.gateway import Gateway
from router.http.request import stream_options
from router.pipeline import Decision
from router.upstream import StreamEnd, StreamRelay, estimate_tokens


def force(decision: Decision, model: str) -> Decision:
    """The caller named the model: serve it if the rules allow it, else say which rule refused."""
    if model not in decision.eligible:
        rules = [rule for rule, models in decision.removed.items() if model in models]
        raise NoEligibleModelError(
            f"model: {model!r} may not serve this request ({'; '.join(rules)})"
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


async def dispatch(
    gateway: Gateway,
    body: dict[str, Any],
    decision: Decision,
    start: float,
    stream: bool,
    input_tokens_estimate: int,
) -> Response:
    config = gateway.config
    assert gateway.client is not None
    order = [decision.chosen] + [
        m for m in config.fallback if m != decision.chosen and m in decision.eligible
    ]
    wants_usage = True
    if stream:
        body, wants_usage = stream_options(body)
    last: UpstreamError | None = None
    for attempt, name in enumerate(order):
        model = config.model(name)
        overhead_ms = (time.perf_counter() - start) * 1000
        call_start = time.perf_counter()
        try:
            if stream:
                upstream = await gateway.client.stream(model, gateway.pickers[name].next(), body)
            else:
                reply = await gateway.client.complete(model, gateway.pickers[name].next(), body)
        except UpstreamError as exc:
            gateway.metrics.errors.labels(exc.kind).inc()
            last = exc
            continue
        headers = {
            "x-polyroute-model": name,
            "x-polyroute-decision-id": decision.decision_id,
            "x-polyroute-overhead-ms": f"{overhead_ms:.3f}",
        }
        gateway.metrics.overhead.observe(overhead_ms / 1000)
        if stream:
            passthrough = {k: v for k, v in upstream.headers.items() if k.startswith("x-replay-")}
            status = upstream.status_code

            def on_end(
                end: StreamEnd,
                model: ModelConfig = model,
                status: int = status,
                fallback: bool = attempt > 0,
            ) -> None:
                tokens = _tokens(end.usage)
                if tokens is None:  # no usage from the upstream: estimate (counted in metrics)
                    gateway.metrics.usage_estimated.labels(model.name).inc()
                    tokens = (input_tokens_estimate, estimate_tokens(end.text))
                error = end.error or (f"http_{status}" if status >= 400 else None)
                cost = _cost(model, *tokens)
                _outcome(gateway, decision, model.name, tokens, end.seconds, fallback, error, cost)

            relay = StreamRelay(name, upstream, not wants_usage, on_end, call_start)
            return RelayResponse(relay, status, {**headers, **passthrough})
        tokens = _tokens(reply.body.get("usage") if isinstance(reply.body, dict) else None)
        tokens = tokens or (0, 0)
        cost = _cost(model, *tokens)
        headers["x-polyroute-cost-usd"] = f"{cost:.8f}"
        headers.update({k: v for k, v in reply.headers.items() if k.startswith("x-replay-")})
        _outcome(
            gateway,
            decision,
            name,
            tokens,
            time.perf_counter() - call_start,
            attempt > 0,
            f"http_{reply.status}" if reply.status >= 400 else None,
            cost,
        )
        if reply.content:  # relay the upstream's bytes: no second JSON serialisation
            return Response(
                reply.content,
                status_code=reply.status,
                headers=headers,
                media_type="application/json",
            )
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)
    _outcome(
        gateway,
        decision,
        decision.chosen,
        (0, 0),
        time.perf_counter() - start,
        len(order) > 1,
        last.kind if last else "unknown",
    )
    return error_response(502, f"upstream failed: {last}", "upstream_error")


def _outcome(
    gateway: Gateway,
    decision: Decision,
    model: str,
    tokens: tuple[int, int],
    seconds: float,
    fallback: bool,
    error: str | None,
    cost: float = 0.0,
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
    )
    if gateway.canary is not None:
        gateway.canary.on_outcome(decision.decision_id, error, cost, seconds * 1000)
    gateway.settle(decision.decision_id, cost)  # the tenant's budget: the actual cost
    try:
        gateway.sink.emit(outcome)
    except EventLogError:
        # the answer is already paid for and on its way: count the lost outcome, do not fail it
        gateway.metrics.errors.labels("outcome_not_logged").inc()
