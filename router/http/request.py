"""Reading a request: the JSON body (size-limited) and a chat call parsed into a frozen
:class:`ChatRequest`. Every refusal is a :class:`~features.errors.RequestError` naming the field,
raised before anything is decided or logged."""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from features.errors import BodyTooLargeError, NotFoundError, RequestError
from router.config import RouterConfig, TenantConfig
from router.eligibility import RequestHints
from router.upstream import estimate_tokens

MAX_BODY_BYTES = 1_000_000
MAX_DEPTH = 64  # levels of JSON nesting (the body object is level 1)


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
    chunked uploads too), then parsed and checked by :func:`parse_body`."""
    length = request.headers.get("content-length")
    if length and not length.isdecimal():
        raise RequestError(f"content-length: expected a number of bytes, got {shown(length)}")
    if length and int(length) > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"body: {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError(f"body: over the {MAX_BODY_BYTES}-byte limit")
        chunks.append(chunk)
    return parse_body(b"".join(chunks))


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object that can be relayed as it is: parsed once, then walked once (iteratively,
    no recursion) to refuse what JSON parsers accept but no upstream can be sent.

    Refused with a :class:`~features.errors.RequestError` whose ``param`` is the dotted path of
    the value: nesting deeper than :data:`MAX_DEPTH`, non-finite numbers (``NaN``,
    ``Infinity``, ``-Infinity``, which Python's parser accepts, and numbers that overflow to
    infinity, ``1e999``), and text that is not valid Unicode (a lone UTF-16 surrogate,
    ``"\\ud800"``, in a value or a key): refused, not repaired, so that what is relayed and
    logged is what the caller sent.
    """
    try:
        body = json.loads(raw)
    except RecursionError as exc:  # the C parser's own guard, far deeper than MAX_DEPTH
        raise RequestError(f"body: JSON nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # malformed JSON, or bytes that are not UTF-8/16/32
        raise RequestError(f"body: malformed JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise RequestError("body: expected a JSON object")
    # paths are kept as (parent, key) links and spelt out only for an error
    todo: list[tuple[dict[str, Any] | list[Any], _Path, int]] = [(body, None, 1)]
    while todo:
        node, path, depth = todo.pop()
        for key, value in node.items() if type(node) is dict else enumerate(node):
            kind = type(value)
            if kind is str:
                if not value.isascii():
                    _check_unicode(value, (path, key))
            elif kind is dict or kind is list:
                if depth == MAX_DEPTH:
                    param = _dotted((path, key))
                    raise RequestError(
                        f"{param}: JSON nested deeper than {MAX_DEPTH} levels", param
                    )
                todo.append((value, (path, key), depth + 1))
            elif kind is float and not math.isfinite(value):
                param = _dotted((path, key))
                raise RequestError(
                    f"{param}: expected a finite number, got {value!r} (JSON has no NaN or "
                    "Infinity, and a number must fit a double)",
                    param,
                )
            if type(key) is str and not key.isascii():  # an object key (a list has int keys)
                _check_unicode(key, path, is_key=True)
    return body


_Path = tuple["_Path", str | int] | None  # (parent, key); None is the body itself


def _dotted(path: _Path) -> str | None:
    """``messages.0.content`` of a path; None for the body itself."""
    keys: list[str] = []
    while path is not None:
        path, key = path
        keys.append(str(key))
    return ".".join(reversed(keys)) or None


def _check_unicode(text: str, path: _Path, is_key: bool = False) -> None:
    """Refuse ``text``, the value at ``path`` (or one of its object's keys), if it holds a lone
    surrogate: it has no UTF-8 encoding, so it can be neither relayed nor logged."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        param = _dotted(path)
        raise RequestError(
            f"{param or 'body'}: {'an object key' if is_key else 'text'} is not valid Unicode "
            f"(a lone surrogate, {text[exc.start]!r}, at index {exc.start}); send UTF-8 text "
            "or paired \\u escapes",
            param,
        ) from None


def shown(value: Any) -> str:
    """``value`` for a message: its repr, cut short (a caller may send megabytes)."""
    return _SHOWN.repr(value)


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60


def text_of(messages: list[Any]) -> tuple[str, int]:
    """The messages' text (text content parts kept) joined by newlines, and their number."""
    parts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(
                f"messages.{i}: expected an object with 'role' and 'content'", f"messages.{i}"
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = []
            for j, part in enumerate(content):
                text = part.get("text") if isinstance(part, dict) else None
                if text is not None and not isinstance(text, str):
                    param = f"messages.{i}.content.{j}.text"
                    raise RequestError(f"{param}: expected a string, got {shown(text)}", param)
                texts.append(text or "")
            content = " ".join(texts)
        if content is not None and not isinstance(content, str):
            param = f"messages.{i}.content"
            raise RequestError(f"{param}: expected a string or content parts", param)
        parts.append(content or "")
    return "\n".join(parts), len(messages)


def hints_of(
    request: Request,
    body: dict[str, Any],
    tenant: TenantConfig | None,
    config: RouterConfig,
) -> RequestHints:
    """Routing hints from ``x-polyroute-*`` headers or ``metadata`` (headers win). A bad value
    is refused naming where it came from (``metadata.max_cost`` or ``x-polyroute-max-cost``),
    before any rule runs: a negative cost limit is the caller's mistake, not "no eligible
    model"."""
    meta = body.get("metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise RequestError("metadata: expected an object", "metadata")

    def pick(name: str) -> tuple[Any, str]:
        """The hint's value and where it came from."""
        header = f"x-polyroute-{name.replace('_', '-')}"
        value = request.headers.get(header)
        return (value, header) if value is not None else (meta.get(name), f"metadata.{name}")

    model = body.get("model", "auto")
    if not isinstance(model, str):
        raise RequestError("model: expected a string", "model")
    profile = _configured(*pick("profile"), "profile", config.profiles)
    data_class, where = pick("data_class")
    data_class = _configured(data_class, where, "data class", config.data_classes)
    if data_class is not None and tenant is not None and data_class not in tenant.data_classes:
        raise RequestError(f"{where}: this tenant may not send {data_class!r} data", where)
    profile = profile or (model if model in config.profiles else None)
    profile = profile or (tenant.default_profile if tenant else "default")
    return RequestHints(
        profile=profile,
        data_class=data_class,
        max_cost_usd=_limit(*pick("max_cost"), "USD", zero_ok=True),
        max_latency_ms=_limit(*pick("max_latency"), "ms", zero_ok=False),
        priority=_priority(*pick("priority")),
    )


def _configured(value: Any, where: str, what: str, names: Collection[str]) -> str | None:
    """A profile or data class hint: None (not given) or one of the configured ``names``."""
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{where}: expected a string", where)
    if value is not None and value not in names:
        raise RequestError(
            f"{where}: unknown {what} {shown(value)}; configured: {sorted(names)}", where
        )
    return value


def _limit(value: Any, where: str, unit: str, zero_ok: bool) -> float | None:
    """A cost (>= 0) or latency (> 0) limit: a finite number, or a string of one."""
    if value is None:
        return None
    expected = f"a finite number of {unit} {'>= 0' if zero_ok else '> 0'}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(f"{where}: expected {expected}, got {shown(value)}", where)
    try:
        limit = float(value)
    except (ValueError, OverflowError):
        limit = math.nan
    if not math.isfinite(limit) or limit < 0 or (limit == 0 and not zero_ok):
        raise RequestError(f"{where}: expected {expected}, got {shown(value)}", where)
    return limit


def _priority(value: Any, where: str) -> int | None:
    """A priority hint: an integer from 0 to 9, or a string of one digit."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) == 1 and "0" <= value <= "9":
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        return value
    raise RequestError(f"{where}: expected an integer from 0 to 9, got {shown(value)}", where)


def stream_options(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The upstream body of a streamed call, and whether the caller asked for usage itself."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options: expected an object", "stream_options")
    wants_usage = options.get("include_usage", False)
    if not isinstance(wants_usage, bool):
        raise RequestError(
            "stream_options.include_usage: expected a boolean", "stream_options.include_usage"
        )
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
        raise RequestError("messages: required non-empty list", "messages")
    tenant = tenant_of(request)
    hints = hints_of(request, body, tenant, config)
    text, n_turns = text_of(messages)
    requested = body.get("model", "auto")
    override = None
    if requested not in ("auto", *config.profiles):
        if requested not in models:
            raise NotFoundError(
                f"model: unknown model {shown(requested)}; use 'auto', a profile or a model "
                "listed by /v1/models",
                "model",
            )
        override = "pass-through: the caller named the model"
    limits = [_max_tokens(body, name) for name in ("max_tokens", "max_completion_tokens")]
    max_out = next((n for n in limits if n is not None), 512)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream: expected a boolean", "stream")
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


def _max_tokens(body: dict[str, Any], name: str) -> int | None:
    """An output token limit, if the caller set it: a positive integer."""
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise RequestError(f"{name}: expected a positive integer, got {shown(value)}", name)
    return value
