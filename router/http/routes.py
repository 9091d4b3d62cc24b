"""The gateway's routes: ``POST /v1/chat/completions``, ``GET /v1/models``,
``POST /v1/feedback``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``,
``POST /admin/reload`` and ``GET /admin/canary``; and the handler of the error tree."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from features.errors import BudgetExceededError, NotFoundError, PolyrouteError, RequestError
from router.canary import Arm
from router.eligibility import BUDGET_RULE
from router.events.models import FeedbackEvent
from router.http.dispatch import dispatch, fallback_order, force, unfinished
from router.http.errors import error_of, error_response
from router.http.gateway import Gateway
from router.http.request import ChatRequest, json_body, parse_chat, shown
from router.prometheus import render
from router.traffic.limits import effective_priority

logger = logging.getLogger(__name__)

LOGGED = "polyroute.decision"  # the request scope's key of its decision, once logged
CHAT = "/v1/chat/completions"


def add_routes(app: FastAPI, gateway: Gateway) -> None:
    """Register the routes (and the error handler) of ``gateway`` on ``app``."""
    config = gateway.config

    @app.exception_handler(PolyrouteError)
    async def _handle(request: Request, exc: PolyrouteError) -> Response:
        gateway.metrics.errors.labels(type(exc).__name__).inc()
        return error_of(exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        """Starlette's own refusals (no such route, method not allowed) in OpenAI's shape."""
        response = error_response(exc.status_code, f"{request.url.path}: {exc.detail}")
        response.headers.update(exc.headers or {})  # Allow, of a 405
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        """Any other route's bug: a JSON 500, counted (Starlette still re-raises it to the
        server, which logs it). The chat route answers its own (:func:`_chat`)."""
        gateway.metrics.errors.labels("internal_error").inc()
        return internal_error()

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

    @app.get("/admin/health")
    async def health(request: Request) -> dict[str, Any]:
        """Every model's and instance's breaker, live latency and load."""
        gateway.admin(request)
        return {
            "unhealthy": sorted(gateway.health.unhealthy()),
            "models": gateway.health.snapshot(),
        }

    @app.get("/admin/canary")
    async def canary_status(request: Request) -> dict[str, Any]:
        """The canary: state, share, per-arm counts, rewards, error rates and why it stopped."""
        gateway.admin(request)
        if gateway.canary is None:
            raise NotFoundError("policy.canary: no canary is configured")
        return gateway.canary.status()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        routed = [
            {"id": n, "object": "model", "owned_by": "polyroute"}
            for n in ["auto", *config.profiles]
        ]
        models = [
            {"id": m.name, "object": "model", "owned_by": "polyroute", "version": m.version}
            for m in config.models
        ]
        return {"object": "list", "data": routed + models}

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        decision_id = body.get("decision_id")
        if not isinstance(decision_id, str):
            raise RequestError("decision_id: required string", "decision_id")
        quality = body.get("quality")
        # a real number (bool is an int in Python, not a quality), finite (NaN fails the range)
        if (
            isinstance(quality, bool)
            or not isinstance(quality, int | float)
            or not 0.0 <= quality <= 1.0
        ):
            raise RequestError(
                f"quality: expected a number in [0, 1], got {shown(quality)}", "quality"
            )
        if not gateway.known(decision_id):
            raise NotFoundError(
                f"decision_id: unknown decision {shown(decision_id)}", "decision_id"
            )
        # rule: every feedback is logged; the latest one wins at the join
        gateway.sink.emit(FeedbackEvent(event_id=decision_id, quality=float(quality)))
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
        start = time.perf_counter()
        admission = gateway.admission
        body = await json_body(request)
        call = parse_chat(request, body, config, gateway.health.models, gateway.tenant)
        # admission by priority: the event loop is single-threaded, so check and count are one
        priority = effective_priority(call.tenant, call.hints)
        if not admission.try_acquire(priority):
            await admission.acquire(priority)  # waits, or refuses with 503
        try:
            since = await admission.admitted()  # the adaptive limit's sample starts here
            return await _chat(request, call, start, since)
        except BaseException as exc:  # free unless raised
            return failed(request, exc, time.perf_counter() - start)
        finally:
            admission.release()

    def failed(request: Request, exc: BaseException, seconds: float) -> Response:
        """A chat call that raised: a logged decision gets its outcome (no decision is left
        without one); a domain error goes to the error table, a bug is answered here, a JSON 500
        counted as ``internal_error``."""
        decision = request.scope.get(LOGGED)
        if decision is not None:
            error = "internal_error" if isinstance(exc, Exception) else "cancelled"
            unfinished(gateway, decision, seconds, error)
        if isinstance(exc, PolyrouteError) or not isinstance(exc, Exception):
            raise exc  # the error table answers it (or the task is being cancelled)
        logger.error("chat request failed", exc_info=exc)
        gateway.metrics.errors.labels("internal_error").inc()
        return internal_error(decision.decision_id if decision is not None else None)

    async def _chat(request: Request, call: ChatRequest, start: float, since: float) -> Response:
        traffic = gateway.traffic
        limits = traffic.limits_of(call.tenant)  # None: no limits, nothing to do here
        admitted = None
        if limits is not None:  # rate limits (429) and the budget left
            admitted = await traffic.admit(limits, call.input_tokens, call.max_out)
        engine = gateway.engine  # read once: a hot reload may swap it while we await
        arm: Arm = "champion"
        canary = gateway.canary if call.override is None else None  # pass-through: no policy
        if canary is not None:
            arm = canary.choose()  # a coin independent of the request (keeps IPS valid)
            engine = canary.engine if arm == "challenger" and canary.engine else engine
        try:
            decision = engine.decide(
                call.text,
                call.n_turns,
                call.input_tokens,
                call.max_out,
                call.hints,
                call.tenant.data_classes if call.tenant else None,
                gateway.health.unhealthy(),
                gateway.health.latency_factors(),
                budget_remaining_usd=admitted.remaining_usd if admitted else None,
            )
        except BudgetExceededError as exc:  # no eligible model's maximum cost fits
            assert admitted is not None
            raise traffic.over_budget(admitted, str(exc).removeprefix("budget: ")) from exc
        decision = gateway.signed(decision)
        if call.override:
            if admitted is not None and call.requested in decision.removed.get(BUDGET_RULE, ()):
                raise traffic.over_budget(
                    admitted, f"model {call.requested!r}'s maximum cost for this request is over "
                    "what is left"
                )  # fmt: skip
            decision = force(decision, call.requested)
        reservation = None
        if admitted is not None:  # hold the request's maximum cost until its outcome
            # every model dispatch may try: the chosen one, then its fallbacks in order
            models = [decision.chosen]
            if call.override is None:
                models = fallback_order(decision, config.fallback)
                models = models[: config.resilience.max_attempts]
            reservation = await traffic.reserve(admitted, models, call.input_tokens, call.max_out)
        if reservation is not None:
            gateway.reservations[decision.decision_id] = reservation
        try:
            # logged first: a decision the log refused (503) is not served and takes no feedback
            gateway.sink.emit(
                gateway.decision_event(
                    engine, decision, call.tenant, call.hints, call.override, call.text
                )
            )
            request.scope[LOGGED] = decision  # from here on, a failure must log its outcome
            gateway.remember(decision.decision_id)
            if canary is not None:
                canary.on_decision(decision.decision_id, arm)
            gateway.metrics.decisions.labels(decision.chosen).inc()
            gateway.admission.observe(since)  # the gateway's own time ends: the upstream's
            return await dispatch(
                gateway,
                call.body,
                decision,
                start,
                call.stream,
                call.input_tokens,
                fallback=call.override is None,  # a caller who named the model gets that model
            )
        except BaseException:
            gateway.settle(decision.decision_id, 0.0)  # no outcome came: release the budget
            raise

    # a plain Starlette route: the endpoint takes the raw Request and returns a Response, so
    # FastAPI's per-request dependency solving and response validation would only cost time
    app.router.add_route(CHAT, chat, methods=["POST"], include_in_schema=False)
    app.add_middleware(RefuseWhenSaturated, gateway=gateway)


class RefuseWhenSaturated:
    """ASGI middleware: a chat request that no priority could have a slot for, nor wait for
    (:meth:`~router.traffic.admission.Admission.saturated`), is refused (503 + Retry-After)
    before anything parses it, authenticates it or routes it. Under overload refusals are most
    of the traffic, and Starlette's routing, request object and exception handling cost several
    times the refusal itself (0.55 ms a refusal through them, 0.10-0.16 ms without, measured
    in-process on the shared 2-core machine): what refusals do not spend, accepted requests
    get."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT and scope["method"] == "POST":
            why = self.gateway.admission.saturated()
            if why is not None:
                exc = self.gateway.admission.refusal(None, why)
                self.gateway.metrics.errors.labels(type(exc).__name__).inc()
                await error_of(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def internal_error(decision_id: str | None = None) -> Response:
    """The answer to a bug: OpenAI's 500 shape, nothing of the exception (it is logged)."""
    where = f" (decision {decision_id})" if decision_id else ""
    return error_response(500, f"internal error{where}; it is logged", code="internal_error")
