"""Reading a request: the JSON body (size-limited) and a chat call parsed into a frozen
:class:`ChatRequest`. Every refusal is a :class:`~features.errors.RequestError` naming the field,
raised before anything is decided or logged."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from features.errors import BodyTooLargeError, NotFoundError, RequestError
from router.config import RouterConfig, TenantConfig
from router.eligibility import RequestHints
from router.upstream import estimate_tokens

MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class ChatRequest:
    """A ``POST /v1/chat/completions`` call, checked.

    Attributes
    ----------
    body : dict
        The JSON body as sent (relayed to the upstream).
    tenant : TenantConfig or None
        The caller's tenant (None without tenants).
    hints : RequestHints
        Profile, data class and the caller's cost/latency limits.
    text : str
        The messages' text, joined (what the featurizer sees).
    n_turns : int
    requested : str
        The ``model`` field: ``auto``, a profile or a model name.
    override : str or None
        Why the policy does not choose (the caller named a model), else None.
    max_out : int
        The output token limit (``max_tokens`` / ``max_completion_tokens``, default 512).
    stream : bool
    input_tokens : int
        Estimated prompt tokens.
    """

    body: dict[str, Any]
    tenant: TenantConfig | None
    hints: RequestHints
    text: str
    n_turns: int
    requested: str
    override: str | None
    max_out: int
    stream: bool
    input_tokens: int


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, refused over :data:`MAX_BODY_BYTES` (counted as it arrives:
    chunked uploads too)."""
    length = request.headers.get("content-length")
    if length and int(length) > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"body: {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
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


def text_of(messages: list[Any]) -> tuple[str, int]:
    """The messages' text (text content parts kept) joined by newlines, and their number."""
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


def hints_of(
    request: Request,
    body: dict[str, Any],
    tenant: TenantConfig | None,
    profiles: Collection[str],
) -> RequestHints:
    """Routing hints from ``x-polyroute-*`` headers or ``metadata`` (headers win): profile,
    data class, max cost, max latency, priority."""
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
    profile = pick("profile") or (model if model in profiles else None)
    profile = profile or (tenant.default_profile if tenant else "default")
    priority = priority_of(pick("priority"))
    try:
        max_cost = pick("max_cost")
        max_latency = pick("max_latency")
        return RequestHints(
            profile=str(profile),
            data_class=pick("data_class"),
            max_cost_usd=float(max_cost) if max_cost is not None else None,
            max_latency_ms=float(max_latency) if max_latency is not None else None,
            priority=priority,
        )
    except (TypeError, ValueError) as exc:
        raise RequestError(f"max_cost / max_latency: expected numbers ({exc})") from exc


def priority_of(value: Any) -> int | None:
    """The ``priority`` hint: an integer 0-9 (a header's text too); it may only lower the
    tenant's priority (``router.traffic.limits.effective_priority``)."""
    if value is None:
        return None
    number = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 9:
        raise RequestError(f"priority: expected an integer from 0 to 9, got {value!r}")
    return number


def stream_options(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The upstream body of a streamed call, and whether the caller asked for usage itself."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options: expected an object")
    wants_usage = options.get("include_usage", False)
    if not isinstance(wants_usage, bool):
        raise RequestError("stream_options.include_usage: expected a boolean")
    # always ask for usage (cost and tokens of the outcome); merged with the caller's options
    return {**body, "stream_options": {**options, "include_usage": True}}, wants_usage


def parse_chat(
    request: Request,
    body: dict[str, Any],
    config: RouterConfig,
    models: Collection[str],
    tenant_of: Callable[[Request], TenantConfig | None],
) -> ChatRequest:
    """Check a chat call, in this order: messages, the caller's key, hints, message contents,
    the model, ``max_tokens``, ``stream`` and ``stream_options``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: required non-empty list")
    tenant = tenant_of(request)
    hints = hints_of(request, body, tenant, config.profiles)
    text, n_turns = text_of(messages)
    requested = body.get("model", "auto")
    override = None
    if requested not in ("auto", *config.profiles):
        if requested not in models:
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
        stream_options(body)  # checked before anything is logged
    return ChatRequest(
        body=body,
        tenant=tenant,
        hints=hints,
        text=text,
        n_turns=n_turns,
        requested=requested,
        override=override,
        max_out=max_out,
        stream=stream,
        input_tokens=estimate_tokens(text) or 1,
    )
