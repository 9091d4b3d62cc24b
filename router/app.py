"""The OpenAI-compatible gateway: ``create_app`` builds everything; no import-time side effects.

Routes: ``POST /v1/chat/completions`` (``model: "auto"`` or a profile routes, a configured model
name passes through), ``GET /v1/models``, ``POST /v1/feedback``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``. Every routed request produces a decision event before its response and an
outcome event after; feedback joins on the decision id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.bundle import PolicyBundle
from router.config import RouterConfig, TenantConfig
from router.eligibility import RequestHints
from router.errors import NoEligibleModelError, PolyrouteError, RequestError
from router.events.errors import EventLogError
from router.events.models import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    OutcomeEvent,
    RewardSpecRecord,
)
from router.metrics import GatewayMetrics
from router.pipeline import Decision, DecisionEngine
from router.upstream import InstancePicker, UpstreamClient, UpstreamError

MAX_BODY_BYTES = 1_000_000
RECENT_DECISIONS = 100_000  # decisions kept in memory to validate feedback ids


class EventSink(Protocol):
    """``router.events`` sinks (file, PostgreSQL) satisfy it."""

    def emit(self, event: Event) -> None: ...


class AuthError(RequestError):
    status_code = 401


class NotFoundError(RequestError):
    status_code = 404


class BodyTooLargeError(RequestError):
    status_code = 413


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _text_of(messages: list[Any]) -> tuple[str, int]:
    parts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(f"messages.{i}: expected an object with 'role' and 'content'")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        if content is not None and not isinstance(content, str):
            raise RequestError(f"messages.{i}.content: expected a string or content parts")
        parts.append(content or "")
    return "\n".join(parts), len(messages)


class Gateway:
    """Request handling state, built once in :func:`create_app`."""

    def __init__(
        self, config: RouterConfig, bundle: PolicyBundle, sink: EventSink, seed: int
    ) -> None:
        self.config = config
        self.engine = DecisionEngine(config, bundle, seed)
        self.sink = sink
        self.metrics = GatewayMetrics()
        self.metrics.policy_version.labels(bundle.version).set(1)
        self.pickers = {m.name: InstancePicker(m) for m in config.models}
        self.tenants = {t.api_key_sha256: t for t in config.tenants}
        self.recent: OrderedDict[str, float] = OrderedDict()  # decision id -> feedback seen
        self.client: UpstreamClient | None = None

    def tenant(self, request: Request) -> TenantConfig | None:
        if not self.tenants:
            return None  # no tenants configured: open access (local/dev setups)
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip()
        tenant = self.tenants.get(hashlib.sha256(key.encode()).hexdigest()) if key else None
        if tenant is None:
            raise AuthError("authorization: missing or unknown API key")
        return tenant

    def hints(
        self, request: Request, body: dict[str, Any], tenant: TenantConfig | None
    ) -> RequestHints:
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise RequestError("metadata: expected an object")

        def pick(name: str) -> Any:
            return request.headers.get(f"x-polyroute-{name.replace('_', '-')}", meta.get(name))

        model = body.get("model", "auto")
        if not isinstance(model, str):
            raise RequestError("model: expected a string")
        for name in ("profile", "data_class"):
            if pick(name) is not None and not isinstance(pick(name), str):
                raise RequestError(f"{name}: expected a string")
        profile = pick("profile") or (model if model in self.config.profiles else None)
        profile = profile or (tenant.default_profile if tenant else "default")
        try:
            max_cost = pick("max_cost")
            max_latency = pick("max_latency")
            return RequestHints(
                profile=str(profile),
                data_class=pick("data_class"),
                max_cost_usd=float(max_cost) if max_cost is not None else None,
                max_latency_ms=float(max_latency) if max_latency is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise RequestError(f"max_cost / max_latency: expected numbers ({exc})") from exc

    def decision_event(
        self,
        decision: Decision,
        tenant: TenantConfig | None,
        hints: RequestHints,
        override: str | None,
        text: str,
    ) -> DecisionEvent:
        bundle = self.engine.bundle
        pmf = decision.pmf.tolist()
        if override:  # the policy did not choose: log the one-hot pmf actually used
            pmf = [1.0 if i == decision.chosen_index else 0.0 for i in range(len(pmf))]
        return DecisionEvent(
            event_id=decision.decision_id,
            tenant=tenant.name if tenant else "anonymous",
            profile=hints.profile,
            policy_version=bundle.version,
            feature_version=bundle.featurizer.version_,
            reward_spec=RewardSpecRecord(**bundle.reward.__dict__),
            eligible_models=decision.eligible,
            action_features=decision.action_features.tolist(),
            probabilities=pmf,
            chosen_model=decision.chosen,
            chosen_index=decision.chosen_index,
            chosen_probability=pmf[decision.chosen_index],
            override_reason=override,
            context_features=decision.context.tolist(),
            prompt=text if self.config.events.log_prompts else None,
        )

    def remember(self, decision_id: str) -> None:
        self.recent[decision_id] = 0
        if len(self.recent) > RECENT_DECISIONS:
            self.recent.popitem(last=False)


def create_app(
    config: RouterConfig,
    bundle: PolicyBundle,
    sink: EventSink,
    seed: int = 0,
    transport: Any = None,
) -> FastAPI:
    """Build the gateway. ``transport``: an httpx transport for tests (default: the network)."""
    gateway = Gateway(config, bundle, sink, seed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.client = UpstreamClient(config.timeouts, transport)
        yield
        await gateway.client.aclose()

    app = FastAPI(title="polyroute", lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(PolyrouteError)
    async def _handle(request: Request, exc: PolyrouteError) -> JSONResponse:
        gateway.metrics.errors.labels(type(exc).__name__).inc()
        return _error(exc.status_code, str(exc), type(exc).__name__)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready", "policy_version": bundle.version}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = ["auto", *config.profiles, *(m.name for m in config.models)]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "owned_by": "polyroute"} for n in names],
        }

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        decision_id = body.get("decision_id")
        if not isinstance(decision_id, str):
            raise RequestError("decision_id: required string")
        quality = body.get("quality")
        if not isinstance(quality, int | float) or not 0.0 <= float(quality) <= 1.0:
            return _error(
                422,
                f"quality: expected a number in [0, 1], got {quality!r}",
                "invalid_request_error",
                "quality",
            )  # type: ignore[return-value]
        if decision_id not in gateway.recent:
            raise NotFoundError(f"decision_id: unknown decision {decision_id!r}")
        # rule: every feedback is logged; the latest one wins at the join
        sink.emit(FeedbackEvent(event_id=decision_id, quality=float(quality)))
        gateway.recent[decision_id] += 1
        return {
            "decision_id": decision_id,
            "accepted": True,
            "n_feedback": int(gateway.recent[decision_id]),
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        start = time.perf_counter()
        body = await _json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages: required non-empty list")
        tenant = gateway.tenant(request)
        hints = gateway.hints(request, body, tenant)
        text, n_turns = _text_of(messages)
        requested = body.get("model", "auto")
        override = None
        if requested not in ("auto", *config.profiles):
            if requested not in gateway.pickers:
                raise NotFoundError(
                    f"model: unknown model {requested!r}; use 'auto', a profile or a model "
                    "listed by /v1/models"
                )
            override = "pass-through: the caller named the model"
        max_out = body.get("max_tokens") or body.get("max_completion_tokens") or 512
        if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out < 1:
            raise RequestError(f"max_tokens: expected a positive integer, got {max_out!r}")
        decision = gateway.engine.decide(
            text,
            n_turns,
            max(1, len(text) // 4),
            max_out,
            hints,
            tenant.data_classes if tenant else None,
        )
        if override:
            decision = _force(decision, requested)
        # logged first: a decision the log refused (503) is not served and takes no feedback
        sink.emit(gateway.decision_event(decision, tenant, hints, override, text))
        gateway.remember(decision.decision_id)
        gateway.metrics.decisions.labels(decision.chosen).inc()
        return await _dispatch(gateway, body, decision, start, bool(body.get("stream")))

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length and int(length) > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"body: {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: chunked uploads too
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError(f"body: over the {MAX_BODY_BYTES}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"body: malformed JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise RequestError("body: expected a JSON object")
    return body


def _force(decision: Decision, model: str) -> Decision:
    """The caller named the model: serve it if the rules allow it, else say which rule refused."""
    if model not in decision.eligible:
        rules = [rule for rule, models in decision.removed.items() if model in models]
        raise NoEligibleModelError(
            f"model: {model!r} may not serve this request ({'; '.join(rules)})"
        )
    return replace(
        decision, chosen=model, chosen_index=decision.eligible.index(model), probability=1.0
    )


async def _dispatch(
    gateway: Gateway, body: dict[str, Any], decision: Decision, start: float, stream: bool
) -> Response:
    config = gateway.config
    assert gateway.client is not None
    order = [decision.chosen] + [
        m for m in config.fallback if m != decision.chosen and m in decision.eligible
    ]
    last: UpstreamError | None = None
    for attempt, name in enumerate(order):
        model = config.model(name)
        overhead_ms = (time.perf_counter() - start) * 1000
        call_start = time.perf_counter()
        try:
            if stream:
                upstream, chunks = await gateway.client.stream(
                    model, gateway.pickers[name].next(), body
                )
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

            return StreamingResponse(
                _relay(gateway, decision, name, upstream, chunks, call_start, attempt > 0),
                status_code=upstream.status_code,
                media_type="text/event-stream",
                headers={**headers, **passthrough},
            )
        usage = reply.body.get("usage") if isinstance(reply.body, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        tokens_in = usage.get("prompt_tokens") or 0
        tokens_out = usage.get("completion_tokens") or 0
        cost = (tokens_in * model.usd_per_mtok_in + tokens_out * model.usd_per_mtok_out) / 1e6
        headers["x-polyroute-cost-usd"] = f"{cost:.8f}"
        headers.update({k: v for k, v in reply.headers.items() if k.startswith("x-replay-")})
        _outcome(
            gateway,
            decision,
            name,
            usage,
            time.perf_counter() - call_start,
            attempt > 0,
            f"http_{reply.status}" if reply.status >= 400 else None,
            cost,
        )
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)
    _outcome(
        gateway,
        decision,
        decision.chosen,
        None,
        time.perf_counter() - start,
        len(order) > 1,
        last.kind if last else "unknown",
    )
    return _error(502, f"upstream failed: {last}", "upstream_error")


async def _relay(
    gateway: Gateway,
    decision: Decision,
    name: str,
    upstream: Any,
    chunks: AsyncIterator[bytes],
    call_start: float,
    fallback: bool,
) -> AsyncIterator[bytes]:
    """Relay an upstream SSE stream byte for byte; the outcome is logged when it ends."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await upstream.aclose()
        _outcome(gateway, decision, name, None, time.perf_counter() - call_start, fallback, None)


def _outcome(
    gateway: Gateway,
    decision: Decision,
    model: str,
    usage: dict[str, Any] | None,
    seconds: float,
    fallback: bool,
    error: str | None,
    cost: float = 0.0,
) -> None:
    gateway.metrics.upstream_latency.labels(model).observe(seconds)
    gateway.metrics.cost.labels(model).inc(cost)
    gateway.metrics.requests.labels("chat", "error" if error else "ok").inc()
    try:
        _emit_outcome(gateway, decision, usage, seconds, fallback, error, cost)
    except EventLogError:
        # the answer is already paid for and on its way: count the lost outcome, do not fail it
        gateway.metrics.errors.labels("outcome_not_logged").inc()


def _emit_outcome(
    gateway: Gateway,
    decision: Decision,
    usage: dict[str, Any] | None,
    seconds: float,
    fallback: bool,
    error: str | None,
    cost: float,
) -> None:
    gateway.sink.emit(
        OutcomeEvent(
            event_id=decision.decision_id,
            cost_usd=cost,
            latency_ms=seconds * 1000,
            input_tokens=int((usage or {}).get("prompt_tokens") or 0),
            output_tokens=int((usage or {}).get("completion_tokens") or 0),
            error_class=error,
            fallback_used=fallback,
        )
    )
