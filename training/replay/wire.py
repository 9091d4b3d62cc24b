"""The OpenAI chat-completions wire format as the replay backend speaks it: request parsing with
errors naming the field, response and ``chat.completion.chunk`` bodies, SSE framing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from features.errors import RequestError


class ReplayRequestError(RequestError):
    """A request the replay backend refuses, rendered as an OpenAI error body.

    It carries an HTTP status, unlike the domain errors of :mod:`features.errors`: the replay
    backend *is* an emulated HTTP upstream, and this is the answer it emulates.

    Parameters
    ----------
    message : str
        Names the field and says what was expected.
    param : str or None
        The offending field (OpenAI's ``error.param``).
    status_code : int
        HTTP status (400 malformed, 404 unknown model, 422 bad admin value).
    code : str or None
        OpenAI's ``error.code`` (e.g. ``model_not_found``).
    """

    def __init__(
        self, message: str, param: str | None, status_code: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message, param)
        self.message = message
        self.status_code = status_code
        self.code = code


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat-completions request the replay backend uses.

    Attributes
    ----------
    model : str
    messages : list of dict
        As sent; contents are strings or lists of content parts.
    stream : bool
    include_usage : bool
        ``stream_options.include_usage``: send a final usage chunk when streaming.
    prompt_id : str or None
        ``metadata.prompt_id``, the exact dataset row when the caller knows it.
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    prompt_id: str | None


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a request body.

    Raises
    ------
    ReplayRequestError
        400 naming the field: malformed JSON, missing/invalid ``model``, ``messages``,
        ``stream``, ``max_tokens``, ``metadata``.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReplayRequestError(f"body: expected a JSON object ({exc})", None) from exc
    if not isinstance(body, dict):
        raise ReplayRequestError("body: expected a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ReplayRequestError("model: expected a non-empty string", "model")
    if "messages" not in body:
        raise ReplayRequestError("messages: required field is missing", "messages")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise ReplayRequestError("messages: expected a non-empty list of messages", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ReplayRequestError(
                f"messages[{i}]: expected an object with a string 'role'", f"messages[{i}]"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ReplayRequestError(
                f"messages[{i}].content: expected a string or a list of content parts",
                f"messages[{i}].content",
            )
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ReplayRequestError("stream: expected a boolean", "stream")
    for name in ("max_tokens", "max_completion_tokens"):
        # the replay returns the recorded answer whatever the limit: the record is the outcome
        # the router is measured on; the value is still checked as a real endpoint would
        limit = body.get(name)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ReplayRequestError(f"{name}: expected a positive integer, got {limit!r}", name)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ReplayRequestError("stream_options: expected an object", "stream_options")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ReplayRequestError("metadata: expected an object", "metadata")
    prompt_id = metadata.get("prompt_id")
    if prompt_id is not None and not isinstance(prompt_id, str | int):
        raise ReplayRequestError("metadata.prompt_id: expected a string", "metadata.prompt_id")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        prompt_id=None if prompt_id is None else str(prompt_id),
    )


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    completion_id: str, created: int, model: str, answer: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def chunk_body(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage`` it is the final usage-only chunk, whose
    ``choices`` list is empty as in OpenAI's ``stream_options.include_usage``."""
    choices = (
        []
        if usage is not None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def sse_event(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event ``data: ...`` frame."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


_PIECE = re.compile(r"\s*\S+|\s+$")


def split_answer(text: str, max_chunks: int = 32) -> list[str]:
    """Split ``text`` into at most ``max_chunks`` word-aligned pieces that concatenate back to it.

    Words stand in for tokens; grouping bounds the number of sleeps per stream so the timing
    stays close to the recorded latency even with asyncio's timer granularity.
    """
    pieces = _PIECE.findall(text)
    if not pieces:
        return [text] if text else []
    per_chunk = -(-len(pieces) // max_chunks)  # ceiling division
    return ["".join(pieces[i : i + per_chunk]) for i in range(0, len(pieces), per_chunk)]
