"""The replay backend: an OpenAI-compatible server that plays the models of a routing dataset.

Each dataset model answers as it did when the dataset was recorded: its answer text (or, when
the dataset records none, a labelled note of the recorded outcome), its token counts, its
latency (times ``time_scale``) and, in ``x-replay-*`` headers, its cost and true score, so a
router can be tested on real recorded outcomes without real LLM endpoints. Faults (seeded
random 500s, 503 outages, extra delay) can be injected at start or at run time through
``/admin/faults``.

Endpoints
---------
``POST /v1/chat/completions``
    OpenAI chat completions, JSON or SSE (``stream: true``). The prompt is matched by
    ``metadata.prompt_id``, else by its text (see :class:`RecordedOutcomes`).
``GET /v1/models``, ``GET /healthz``
``GET /admin/faults``, ``POST /admin/faults``
    Read or partially update ``error_rate``, ``slowdown_ms``, ``outage_models``.

Response headers: ``x-replay-prompt-id`` (when matched), ``x-replay-score`` (only when the
outcome is recorded), ``x-replay-cost-usd``, ``x-replay-latency-ms`` (simulated, before
faults), ``x-replay-estimated: true`` when tokens, latency and cost are estimates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from features.errors import ConfigError, FaultError
from training.datasets import RoutingDataset, load_dataset
from training.replay.faults import FaultState, check_models, check_number
from training.replay.outcomes import RecordedOutcomes, ReplayOutcome
from training.replay.wire import (
    ChatRequest,
    ReplayRequestError,
    chunk_body,
    completion_body,
    content_text,
    error_body,
    parse_chat_request,
    split_answer,
    sse_event,
    usage_body,
)

logger = logging.getLogger(__name__)


@dataclass
class ReplayConfig:
    """Settings of a replay backend.

    Parameters
    ----------
    time_scale : float, default 1.0
        Multiplies recorded latencies; 0 answers at once (no sleeping).
    error_rate : float in [0, 1], default 0.0
        Probability that a completion request answers HTTP 500.
    slowdown_ms : float, default 0.0
        Extra delay on every completion answer, in ms, not scaled by ``time_scale``.
    outage_models : collection of str, default empty
        Models answering HTTP 503; normalised to a frozenset.
    seed : int, default 0
        Seed of the random error draws.
    """

    time_scale: float = 1.0
    error_rate: float = 0.0
    slowdown_ms: float = 0.0
    outage_models: Collection[str] = field(default_factory=frozenset)
    seed: int = 0

    def __post_init__(self) -> None:
        # FaultError is a ValueError naming the field, as the other config dataclasses raise
        self.time_scale = check_number("time_scale", self.time_scale, 0.0)
        self.error_rate = check_number("error_rate", self.error_rate, 0.0, 1.0)
        self.slowdown_ms = check_number("slowdown_ms", self.slowdown_ms, 0.0)
        self.outage_models = check_models("outage_models", self.outage_models)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FaultError("seed", f"expected an integer, got {self.seed!r}")


def _openai_error(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def _headers(outcome: ReplayOutcome, latency_ms: float) -> dict[str, str]:
    headers = {
        "x-replay-cost-usd": repr(outcome.cost_usd),
        "x-replay-latency-ms": f"{latency_ms:.3f}",
    }
    if outcome.prompt_id is not None:
        headers["x-replay-prompt-id"] = outcome.prompt_id
    if outcome.score is not None:
        headers["x-replay-score"] = repr(outcome.score)
    if not outcome.recorded:
        headers["x-replay-estimated"] = "true"
    return headers


async def _pause(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000.0)


def create_replay_app(dataset: RoutingDataset, config: ReplayConfig) -> FastAPI:
    """Build the replay server for ``dataset``; all state lives in this app.

    Parameters
    ----------
    dataset : RoutingDataset
        The models to play; ``dataset.responses`` gives their answers when present.
    config : ReplayConfig

    Returns
    -------
    fastapi.FastAPI

    Raises
    ------
    ConfigError
        When ``config.outage_models`` names a model the dataset does not have.
    """
    outcomes = RecordedOutcomes(dataset)
    try:
        faults = FaultState(
            config.error_rate,
            config.slowdown_ms,
            config.outage_models,
            config.seed,
            outcomes.model_names,
        )
    except FaultError as exc:
        raise ConfigError(str(exc)) from exc
    time_scale = config.time_scale
    app = FastAPI(title=f"polyroute replay: {dataset.name}")
    app.state.faults = faults
    app.state.outcomes = outcomes

    @app.exception_handler(ReplayRequestError)
    async def _refused(request: Request, exc: ReplayRequestError) -> JSONResponse:
        return _openai_error(
            exc.status_code, exc.message, "invalid_request_error", exc.param, exc.code
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "dataset": dataset.name,
            "prompts": dataset.n_prompts,
            "models": len(outcomes.model_names),
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": f"replay:{dataset.name}"}
                for name in outcomes.model_names
            ],
        }

    @app.get("/admin/faults")
    async def get_faults() -> dict[str, Any]:
        return faults.snapshot()

    @app.post("/admin/faults")
    async def set_faults(request: Request) -> Response:
        try:
            changes = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReplayRequestError(f"body: expected a JSON object ({exc})", None, 422) from exc
        if not isinstance(changes, dict):
            raise ReplayRequestError("body: expected a JSON object", None, 422)
        try:
            faults.update(changes)
        except FaultError as exc:
            raise ReplayRequestError(str(exc), exc.field, 422) from exc
        logger.info("replay faults now %s", faults.snapshot())
        return JSONResponse(faults.snapshot())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        chat = parse_chat_request(await request.body())
        if not outcomes.has_model(chat.model):
            raise ReplayRequestError(
                f"model: {chat.model!r} is not a model of dataset {dataset.name!r}; "
                "see GET /v1/models",
                "model",
                404,
                "model_not_found",
            )
        # an endpoint that is down refuses at once, before any slowdown
        if chat.model in faults.outage_models:
            return _openai_error(
                503,
                f"{chat.model} is unavailable (replay outage)",
                "server_error",
                None,
                "model_unavailable",
            )
        fail = faults.draw_error()
        slowdown_ms = faults.slowdown_ms
        if fail:
            await _pause(slowdown_ms)
            return _openai_error(
                500, "injected replay error (error_rate)", "server_error", None, "replay_fault"
            )
        prompt_text = "\n".join(content_text(m.get("content")) for m in chat.messages)
        row = outcomes.find_row(chat.prompt_id, chat.messages)
        outcome = outcomes.outcome(chat.model, row, prompt_text)
        latency_ms = outcome.latency_ms * time_scale
        headers = _headers(outcome, latency_ms)
        if chat.stream:
            return StreamingResponse(
                _stream(chat, outcome, time_scale, slowdown_ms),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        await _pause(latency_ms + slowdown_ms)
        body = completion_body(
            _completion_id(),
            int(time.time()),
            chat.model,
            outcome.answer,
            usage_body(outcome.prompt_tokens, outcome.completion_tokens),
        )
        return JSONResponse(body, headers=headers)

    return app


def _completion_id() -> str:
    return f"chatcmpl-replay-{uuid.uuid4().hex[:24]}"


async def _stream(
    chat: ChatRequest, outcome: ReplayOutcome, time_scale: float, slowdown_ms: float
) -> AsyncIterator[bytes]:
    """SSE frames: role delta after ttft (+ slowdown), content chunks spread over the rest of
    the recorded latency, the ``stop`` chunk, an optional usage chunk, then ``[DONE]``."""
    completion_id, created = _completion_id(), int(time.time())
    pieces = split_answer(outcome.answer)
    per_piece_ms = (outcome.latency_ms - outcome.ttft_ms) * time_scale / max(1, len(pieces))
    await _pause(outcome.ttft_ms * time_scale + slowdown_ms)
    yield sse_event(
        chunk_body(completion_id, created, chat.model, {"role": "assistant", "content": ""})
    )
    for piece in pieces:
        await _pause(per_piece_ms)
        yield sse_event(chunk_body(completion_id, created, chat.model, {"content": piece}))
    yield sse_event(chunk_body(completion_id, created, chat.model, {}, finish_reason="stop"))
    if chat.include_usage:
        usage = usage_body(outcome.prompt_tokens, outcome.completion_tokens)
        yield sse_event(chunk_body(completion_id, created, chat.model, {}, usage=usage))
    yield sse_event("[DONE]")


def serve_replay(dataset_path: str, host: str, port: int, config: ReplayConfig) -> None:
    """Load a routing dataset and serve its models until interrupted.

    Parameters
    ----------
    dataset_path : str
        A routing dataset directory, or ``"bundled"``.
    host, port
        Where to listen.
    config : ReplayConfig
    """
    dataset = load_dataset(dataset_path)
    for note in dataset.notes:
        logger.info("dataset %s: %s", dataset.name, note)
    app = create_replay_app(dataset, config)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
