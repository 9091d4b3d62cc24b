"""The OpenAI-compatible gateway: ``create_app`` builds everything; no import-time side effects.

Routes: ``POST /v1/chat/completions`` (``model: "auto"`` or a profile routes, a configured model
name passes through), ``GET /v1/models``, ``POST /v1/feedback``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``. Every routed request produces a decision event before its response and an
outcome event after; feedback joins on the decision id.

Streamed answers: the upstream is always asked for ``stream_options.include_usage`` (merged into
the caller's options); its final usage-only chunk gives the outcome's tokens and cost and is
relayed only when the caller asked for it. An upstream that sends no usage gets an estimate
(prompt ~ 4 characters per token, completion: the relayed text the same way); the outcome event
has no field to flag it (``router.events.models.OutcomeEvent`` forbids extra keys), so estimated
outcomes are counted per model in ``polyroute_usage_estimated_total``. When the caller goes
away mid-stream the upstream response is closed (shielded from the cancellation) and the outcome
is still logged, with ``error_class="client_disconnected"``.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Any, Protocol

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from router.bundle import PolicyBundle
from router.canary import Arm, CanaryController
from router.config import ModelConfig, RouterConfig, TenantConfig, load_config
from router.eligibility import RequestHints
from router.errors import (
    ConfigError,
    NoEligibleModelError,
    OverloadedError,
    PolyrouteError,
    RequestError,
)
from router.events.errors import EventLogError
from router.events.file_sink import FileEventSink
from router.events.models import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    OutcomeEvent,
    RewardSpecRecord,
)
from router.events.writer import BackgroundEventWriter
from router.metrics import GatewayMetrics, render
from router.pipeline import Decision, DecisionEngine
from router.reload import BundleSource, PolicyReloader
from router.upstream import (
    InstancePicker,
    StreamEnd,
    StreamRelay,
    UpstreamClient,
    UpstreamError,
    estimate_tokens,
)

MAX_BODY_BYTES = 1_000_000


class _FromConfig:
    """Default of :func:`create_app`'s sources: the registry named by the config."""


FROM_CONFIG = _FromConfig()
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
    """Request handling state, built once in :func:`create_app`.

    Decision ids are signed (``<uuid hex><first 16 hex of HMAC-SHA256(key, uuid)>``) so that
    any worker sharing ``decision_key`` accepts feedback for a decision another worker served;
    the in-memory ``recent`` map then only counts the feedback this worker saw.
    """

    def __init__(
        self,
        config: RouterConfig,
        bundle: PolicyBundle,
        sink: EventSink,
        seed: int,
        decision_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.decision_key = decision_key or secrets.token_bytes(32)
        self.seed = seed
        self._builds = 0
        self.engine = DecisionEngine(config, bundle, seed)  # swapped whole by hot reload
        self.sink = sink
        self.metrics = GatewayMetrics()
        self.metrics.policy_version.labels("champion", bundle.version).set(1)
        self.reloaders: dict[str, PolicyReloader] = {}
        canary = config.policy.canary if config.policy else None
        self.canary = (
            CanaryController(canary, self.metrics, lambda: self.engine.bundle.reward)
            if canary is not None
            else None
        )
        self.pickers = {m.name: InstancePicker(m) for m in config.models}
        self.tenants = {t.api_key_sha256: t for t in config.tenants}
        self.recent: OrderedDict[str, float] = OrderedDict()  # decision id -> feedback seen
        self.in_flight = 0  # routed requests being handled (until the response starts)
        self.client: UpstreamClient | None = None

    def build_engine(self, bundle: PolicyBundle) -> DecisionEngine:
        """A decision engine for ``bundle`` under this gateway's config (a fresh seed each)."""
        self._builds += 1
        return DecisionEngine(self.config, bundle, self.seed + 7919 * self._builds)

    def install(
        self, engine: DecisionEngine, arm: str = "champion", source_version: str | None = None
    ) -> None:
        """Make ``engine`` serve ``arm``: one reference swap; requests in flight keep theirs."""
        old = self.serving(arm)
        if arm == "champion":
            self.engine = engine
            if self.canary is not None:
                self.canary.restart()  # the comparison was against the old champion
                self.canary.set_champion_version(engine.bundle.version)
        elif arm == "challenger" and self.canary is not None:
            self.canary.set_challenger(engine, source_version)
        else:
            raise ValueError(f"unknown arm {arm!r} (or no canary configured)")
        if old is not None and old.bundle.version != engine.bundle.version:
            self.metrics.policy_version.labels(arm, old.bundle.version).set(0)
        serving = arm == "champion" or (self.canary is not None and self.canary.share > 0)
        self.metrics.policy_version.labels(arm, engine.bundle.version).set(int(serving))
        self.metrics.policy_reloads.labels(arm).inc()

    def serving(self, arm: str = "champion") -> DecisionEngine | None:
        if arm == "champion":
            return self.engine
        return self.canary.engine if self.canary is not None else None

    def add_reloader(self, source: BundleSource, poll_s: float, arm: str = "champion") -> None:
        self.reloaders[arm] = PolicyReloader(
            source,
            self.build_engine,
            lambda engine, version: self.install(engine, arm, version),
            lambda: self.serving(arm),
            self.metrics,
            poll_s,
            arm,
            retire=self.canary.clear if arm == "challenger" and self.canary is not None else None,
        )

    def admin(self, request: Request) -> None:
        """Admin routes need the admin key when the config sets one; without one they are open
        only on a service without tenants (local/dev), closed otherwise."""
        expected = self.config.admin_api_key_sha256
        if expected is None:
            if self.tenants:
                raise AuthError(
                    "admin routes are closed: tenants are configured but admin_api_key_sha256 "
                    "is not set"
                )
            return
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), expected):
            raise AuthError("authorization: missing or wrong admin API key")

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
        engine: DecisionEngine,
        decision: Decision,
        tenant: TenantConfig | None,
        hints: RequestHints,
        override: str | None,
        text: str,
    ) -> DecisionEvent:
        bundle = engine.bundle  # the engine that decided: its version, its features
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

    def _mac(self, raw_id: str) -> str:
        return hmac.new(self.decision_key, raw_id.encode(), hashlib.sha256).hexdigest()[:16]

    def signed(self, decision: Decision) -> Decision:
        """``decision`` with a decision id any worker with the same key recognises."""
        raw = decision.decision_id
        return replace(decision, decision_id=raw + self._mac(raw))

    def known(self, decision_id: str) -> bool:
        """Whether ``decision_id`` is one of ours (served by this worker or a sibling)."""
        if decision_id in self.recent:
            return True
        if len(decision_id) != 48 or not decision_id.isascii():
            return False
        raw, mac = decision_id[:-16], decision_id[-16:]
        return hmac.compare_digest(mac, self._mac(raw))

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
    decision_key: bytes | None = None,
    owns_sink: bool = False,
    source: BundleSource | _FromConfig | None = FROM_CONFIG,
    challenger_source: BundleSource | _FromConfig | None = FROM_CONFIG,
    freeze_gc: bool = False,
    source_version: str | None = None,
) -> FastAPI:
    """Build the gateway.

    Parameters
    ----------
    transport : httpx transport, optional
        For tests (default: the network).
    decision_key : bytes, optional
        HMAC key of the decision ids; workers serving the same traffic share it (default: a
        random key of this app).
    owns_sink : bool
        Close (drain) ``sink`` when the app shuts down: the app's builder made it for this app.
    source : BundleSource or None
        Hot reload: the champion policy follows this source (``router.reload``), polled every
        ``config.policy.poll_s`` seconds; ``bundle`` serves until the first successful load.
        Default: the MLflow registry alias of ``config.policy`` (no reloading without that
        section); None: no reloading.
    challenger_source : BundleSource or None
        The canary's challenger (``router.canary``; needs ``config.policy.canary``). Default:
        the registry alias of ``config.policy.canary``.
    source_version : str, optional
        The ``source`` version ``bundle`` was loaded from, when it was (the reloader's first
        poll then does not download and load the same version again).
    freeze_gc : bool
        At startup, after the warm-up decision, move every object alive (imports, config,
        policy, featurizer: ~200k objects) out of the garbage collector's reach
        (``gc.freeze``): a full collection over them takes ~100 ms, a stall every request in
        flight would wait for (it was the p99 of the overhead benchmark). Process-wide, so only
        for a process that serves this one app (``app_from_env`` sets it).
    """
    if isinstance(source, _FromConfig):
        source = registry_source(config)
    if isinstance(challenger_source, _FromConfig):
        challenger_source = registry_source(config, challenger=True)
    gateway = Gateway(config, bundle, sink, seed, decision_key)
    poll_s = config.policy.poll_s if config.policy else 10.0
    if source is not None:
        gateway.add_reloader(source, poll_s, "champion")
        gateway.reloaders["champion"].source_version = source_version
    if challenger_source is not None:
        if gateway.canary is None:
            raise ConfigError("policy.canary: a challenger source needs a canary config section")
        gateway.add_reloader(challenger_source, poll_s, "challenger")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.client = UpstreamClient(config.timeouts, transport)
        with suppress(PolyrouteError):  # lazy set-up of the first decision: not on a caller
            gateway.engine.decide("warm-up", 1, 4, 16, RequestHints())
        if freeze_gc:
            gc.collect()
            gc.freeze()
        for reloader in gateway.reloaders.values():
            reloader.start()
        try:
            yield
        finally:
            for reloader in gateway.reloaders.values():
                await anyio.to_thread.run_sync(reloader.stop)
            await gateway.client.aclose()
            close = getattr(sink, "close", None)
            if owns_sink and close is not None:
                close()  # drain: nothing accepted is lost on shutdown

    app = FastAPI(title="polyroute", lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(PolyrouteError)
    async def _handle(request: Request, exc: PolyrouteError) -> JSONResponse:
        gateway.metrics.errors.labels(type(exc).__name__).inc()
        response = _error(exc.status_code, str(exc), type(exc).__name__)
        if isinstance(exc, OverloadedError):
            response.headers["retry-after"] = "1"  # the OpenAI SDKs back off and retry
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready", "policy_version": gateway.engine.bundle.version}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload_now(request: Request) -> dict[str, Any]:
        """Poll the policy source(s) now (an operator who just moved an alias)."""
        gateway.admin(request)
        if not gateway.reloaders:
            raise NotFoundError("policy: no policy source is configured (config key 'policy')")
        report = {}
        for arm, reloader in gateway.reloaders.items():
            result = await anyio.to_thread.run_sync(reloader.check_now)
            serving = gateway.serving(arm)
            report[arm] = {
                "source_version": result.version,
                "changed": result.changed,
                "error": result.error,
                "serving_source_version": reloader.source_version,
                "serving_policy_version": serving.bundle.version if serving else None,
            }
        return report

    @app.get("/admin/canary")
    async def canary_status(request: Request) -> dict[str, Any]:
        """The canary: state, share, per-arm counts, rewards, error rates and why it stopped."""
        gateway.admin(request)
        if gateway.canary is None:
            raise NotFoundError("policy.canary: no canary is configured")
        return gateway.canary.status()

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
        if not gateway.known(decision_id):
            raise NotFoundError(f"decision_id: unknown decision {decision_id!r}")
        # rule: every feedback is logged; the latest one wins at the join
        sink.emit(FeedbackEvent(event_id=decision_id, quality=float(quality)))
        if gateway.canary is not None:
            gateway.canary.on_feedback(decision_id, float(quality))
        if decision_id not in gateway.recent:  # served by a sibling worker (or forgotten)
            gateway.remember(decision_id)
        gateway.recent[decision_id] += 1
        return {
            "decision_id": decision_id,
            "accepted": True,
            "n_feedback": int(gateway.recent[decision_id]),
        }

    async def chat(request: Request) -> Response:
        # admission: the event loop is single-threaded, so the check and the increment are atomic
        if gateway.in_flight >= config.max_in_flight:
            raise OverloadedError(
                f"overloaded: {gateway.in_flight} requests in flight (max_in_flight "
                f"{config.max_in_flight}); retry shortly"
            )
        gateway.in_flight += 1
        try:
            return await _chat(request)
        finally:
            gateway.in_flight -= 1

    async def _chat(request: Request) -> Response:
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
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError("stream: expected a boolean")
        if stream:
            _stream_options(body)  # checked before anything is logged
        input_tokens = estimate_tokens(text) or 1
        engine = gateway.engine  # read once: a hot reload may swap it while we await
        arm: Arm = "champion"
        canary = gateway.canary if override is None else None  # pass-through: no policy
        if canary is not None:
            arm = canary.choose()  # a coin independent of the request (keeps IPS valid)
            engine = canary.engine if arm == "challenger" and canary.engine else engine
        decision = engine.decide(
            text,
            n_turns,
            input_tokens,
            max_out,
            hints,
            tenant.data_classes if tenant else None,
        )
        decision = gateway.signed(decision)
        if override:
            decision = _force(decision, requested)
        # logged first: a decision the log refused (503) is not served and takes no feedback
        sink.emit(gateway.decision_event(engine, decision, tenant, hints, override, text))
        gateway.remember(decision.decision_id)
        if canary is not None:
            canary.on_decision(decision.decision_id, arm)
        gateway.metrics.decisions.labels(decision.chosen).inc()
        return await _dispatch(gateway, body, decision, start, stream, input_tokens)

    # a plain Starlette route: the endpoint takes the raw Request and returns a Response, so
    # FastAPI's per-request dependency solving and response validation would only cost time
    app.router.add_route("/v1/chat/completions", chat, methods=["POST"], include_in_schema=False)
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


class _RelayResponse(StreamingResponse):
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


def _stream_options(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The upstream body of a streamed call, and whether the caller asked for usage itself."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options: expected an object")
    wants_usage = options.get("include_usage", False)
    if not isinstance(wants_usage, bool):
        raise RequestError("stream_options.include_usage: expected a boolean")
    # always ask for usage (cost and tokens of the outcome); merged with the caller's options
    return {**body, "stream_options": {**options, "include_usage": True}}, wants_usage


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


async def _dispatch(
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
        body, wants_usage = _stream_options(body)
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
            return _RelayResponse(relay, status, {**headers, **passthrough})
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
    return _error(502, f"upstream failed: {last}", "upstream_error")


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
    try:
        gateway.sink.emit(outcome)
    except EventLogError:
        # the answer is already paid for and on its way: count the lost outcome, do not fail it
        gateway.metrics.errors.labels("outcome_not_logged").inc()


# ---- building the app from the environment (uvicorn workers) ------------------------------------
ENV_CONFIG = "POLYROUTE_CONFIG"
ENV_BUNDLE = "POLYROUTE_BUNDLE"
ENV_EVENTS_DIR = "POLYROUTE_EVENTS_DIR"
ENV_SEED = "POLYROUTE_SEED"
ENV_DECISION_KEY = "POLYROUTE_DECISION_KEY"
ENV_WORKERS = "POLYROUTE_WORKERS"


def build_sink(config: RouterConfig) -> BackgroundEventWriter:
    """The event sink the config names (file by default, or PostgreSQL)."""
    if config.events.sink == "postgres":
        from router.events.postgres_sink import PostgresEventSink

        env = config.events.postgres_dsn_env
        dsn = os.environ.get(env or "")
        if not dsn:
            raise ConfigError(f"events.postgres_dsn_env: environment variable {env!r} is not set")
        return PostgresEventSink(dsn, put_timeout_s=0.0)
    # put_timeout 0: emit runs on the event loop, so a full queue refuses (503) at once instead
    # of stalling every request in flight. Several workers may share the directory: a file sink
    # only ever writes files it created itself (opened "xb"), so no two processes interleave
    # lines in one file, and readers order events by timestamp at the join.
    return FileEventSink(config.events.directory, put_timeout_s=0.0)


def registry_source(config: RouterConfig, challenger: bool = False) -> BundleSource | None:
    """The MLflow registry source of the config's ``policy`` section (None without one): the
    champion's alias, or with ``challenger`` the canary's (None without a canary)."""
    if config.policy is None or (challenger and config.policy.canary is None):
        return None
    from training.registry import MlflowBundleSource  # imports mlflow: only when configured

    registry = config.policy.registry
    alias = config.policy.canary.alias if challenger and config.policy.canary else registry.alias
    source: BundleSource = MlflowBundleSource(registry.tracking_uri, registry.model_name, alias)
    return source


def initial_bundle(source: BundleSource) -> tuple[str, PolicyBundle]:
    """The version ``source`` points at now and its bundle, for a service started without a
    bundle directory."""
    version = source.current_version()
    if version is None:
        raise ConfigError(f"policy.registry: {source!r} has no version to serve yet")
    return version, source.load(version)


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (``polyroute serve --workers N``): each worker
    builds its own app, event sink and upstream pool from what the CLI put in the environment.

    ``POLYROUTE_CONFIG`` (router YAML) is required; ``POLYROUTE_BUNDLE`` (bundle directory) is
    the startup policy, required unless the config has a ``policy`` section (then the registry
    alias's current version serves from the start, and hot reload follows the alias);
    ``POLYROUTE_EVENTS_DIR`` overrides ``events.directory``; ``POLYROUTE_SEED``
    (default 0) seeds sampling, offset by the process id when ``POLYROUTE_WORKERS`` > 1 so
    that workers do not draw the same numbers; ``POLYROUTE_DECISION_KEY`` (hex) is the shared
    key of the decision ids (feedback may reach any worker).
    """
    if not os.environ.get(ENV_CONFIG):
        raise ConfigError(f"environment variable {ENV_CONFIG} must be set (polyroute serve does)")
    config = load_config(os.environ[ENV_CONFIG])
    events_dir = os.environ.get(ENV_EVENTS_DIR)
    if events_dir:
        events = config.events.model_copy(update={"directory": events_dir})
        config = config.model_copy(update={"events": events})
    source = registry_source(config)
    version = None
    if os.environ.get(ENV_BUNDLE):
        bundle = PolicyBundle.load(os.environ[ENV_BUNDLE])
    elif source is not None:
        version, bundle = initial_bundle(source)
    else:
        raise ConfigError(
            f"no policy: set {ENV_BUNDLE} (polyroute serve --bundle) or a 'policy' config section"
        )
    seed = int(os.environ.get(ENV_SEED) or 0)
    if int(os.environ.get(ENV_WORKERS) or 1) > 1:
        seed += os.getpid()
    key = os.environ.get(ENV_DECISION_KEY)
    sink = build_sink(config)
    try:
        return create_app(
            config,
            bundle,
            sink,
            seed=seed,
            decision_key=bytes.fromhex(key) if key else None,
            owns_sink=True,
            source=source,
            freeze_gc=True,
            source_version=version,
        )
    except BaseException:
        sink.close()
        raise
