"""Calls to OpenAI-compatible upstreams (httpx, pooled connections, timeouts); the choice of
instance and the breakers live in :mod:`router.health`.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from features.errors import UpstreamError
from router.config import ModelConfig, TimeoutConfig


@dataclass
class UpstreamReply:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers
    content: bytes = b""  # the body as the upstream sent it (decoded), relayed unchanged


def retry_after(headers: httpx.Headers) -> float | None:
    """An upstream's ``Retry-After`` in seconds (delay-seconds or an HTTP date), else None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
_USER_AGENT = f"polyroute httpx/{httpx.__version__}".encode()


def _proxies_configured() -> bool:
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARIABLES)


class UpstreamClient:
    """Pooled HTTP/1.1 connections to all upstreams (httpx).

    The request path goes straight to the pooled httpx transport: ``httpx.AsyncClient.send``
    adds auth, redirect, cookie and event-hook layers that a gateway does not use (and a shared
    cookie jar across tenants would be wrong), at a cost in CPU per request. When the
    environment names a proxy (``HTTP(S)_PROXY``, ``ALL_PROXY``) the full ``AsyncClient`` is
    used instead, so that proxy routing keeps working as httpx does it.
    """

    def __init__(
        self, timeouts: TimeoutConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        timeout = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s)
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        self._extensions = {"timeout": timeout.as_dict()}
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        if _proxies_configured():
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
        else:
            self._transport = transport or httpx.AsyncHTTPTransport(limits=limits)
        self._urls: dict[str, httpx.URL] = {}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._transport is not None:
            await self._transport.aclose()

    def _request(self, model: ModelConfig, base_url: str, body: dict[str, Any]) -> httpx.Request:
        url = self._urls.get(base_url)
        if url is None:
            url = self._urls[base_url] = httpx.URL(f"{base_url}/chat/completions")
        payload = {**body, "model": model.provider.upstream_model or model.name}
        # as httpx encodes ``json=``
        content = json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        headers = [
            (b"accept", b"*/*"),
            (b"accept-encoding", b"gzip, deflate"),
            (b"connection", b"keep-alive"),
            (b"user-agent", _USER_AGENT),
            (b"content-type", b"application/json"),
        ]
        key = model.provider.api_key()
        if key:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        if self._client is not None:
            return self._client.build_request("POST", url, content=content, headers=headers)
        return httpx.Request(
            "POST", url, content=content, headers=headers, extensions=self._extensions
        )

    async def _send(self, request: httpx.Request, stream: bool) -> httpx.Response:
        if self._client is not None:
            return await self._client.send(request, stream=stream)
        assert self._transport is not None
        response = await self._transport.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def complete(
        self, model: ModelConfig, base_url: str, body: dict[str, Any]
    ) -> UpstreamReply:
        try:
            response = await self._send(self._request(model, base_url, body), stream=False)
        except httpx.TimeoutException as exc:
            raise UpstreamError(model.name, "timeout", str(exc) or "timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(model.name, "connection", str(exc) or type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamError(
                model.name,
                f"http_{response.status_code}",
                response.text[:200],
                retry_after(response.headers),
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise UpstreamError(model.name, "bad_response", "not JSON") from exc
        return UpstreamReply(response.status_code, data, response.headers, response.content)

    async def stream(
        self, model: ModelConfig, base_url: str, body: dict[str, Any]
    ) -> httpx.Response:
        """Open a streaming call; raises UpstreamError before any byte is relayed."""
        try:
            response = await self._send(self._request(model, base_url, body), stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError(model.name, "timeout", str(exc) or "timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(model.name, "connection", str(exc) or type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            await response.aclose()
            raise UpstreamError(
                model.name,
                f"http_{response.status_code}",
                "stream refused",
                retry_after(response.headers),
            )
        return response


class SSEUsageReader:
    """Reads an upstream ``chat.completion.chunk`` SSE stream as it is relayed.

    It keeps the ``usage`` the upstream sends in its final chunk (OpenAI's
    ``stream_options.include_usage``: one extra chunk before ``data: [DONE]`` whose ``choices``
    is empty and whose ``usage`` covers the whole request) and the text it relayed (for a token
    estimate when no usage comes). With ``strip_usage_chunk`` the usage-only chunk is not relayed:
    the gateway always asks the upstream for usage, and a caller that did not ask must see the
    stream it asked for (code written against the default stream may index ``choices[0]``).
    The other chunks keep the ``"usage": null`` the upstream adds under that option: the SDKs
    read it as absent (``ChatCompletionChunk.usage`` is optional), and rewriting every chunk to
    drop it would cost a JSON round trip per chunk.

    Events are relayed whole (split on blank lines; ``\\r\\n`` line ends become ``\\n``), so one
    call to :meth:`feed` may return less or more than it was given.
    """

    def __init__(self, strip_usage_chunk: bool) -> None:
        self.strip_usage_chunk = strip_usage_chunk
        self.usage: dict[str, Any] | None = None
        self._text: list[str] = []
        self._buffer = b""

    @property
    def text(self) -> str:
        """The generated text relayed so far (content and tool-call arguments)."""
        return "".join(self._text)

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the complete events to relay now."""
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        return b"".join(self._keep(event) for event in events)

    def flush(self) -> bytes:
        """The rest of the stream after the upstream ended (an event without its blank line)."""
        rest, self._buffer = self._buffer, b""
        return self._keep(rest)[:-2] if rest.strip() else rest

    def _keep(self, event: bytes) -> bytes:
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if data and data != b"[DONE]":
            try:
                chunk = json.loads(data)
            except ValueError:
                chunk = None  # not ours to judge: relay it untouched
            if isinstance(chunk, dict) and self._read(chunk):
                return b""
        return event + b"\n\n"

    def _read(self, chunk: dict[str, Any]) -> bool:
        """Record what ``chunk`` says; True when it is the usage-only chunk to drop."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                arguments = (call.get("function") or {}).get("arguments")
                if isinstance(arguments, str):
                    self._text.append(arguments)
        return self.strip_usage_chunk and isinstance(usage, dict) and choices == []


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by the ~4 characters per token rule of thumb of BPE tokenizers on
    English (no tokenizer download on the request path; outcomes using it are counted by
    ``polyroute_usage_estimated_total``)."""
    return max(1, -(-len(text) // 4)) if text else 0


@dataclass
class StreamEnd:
    """How a relayed stream ended, handed to :class:`StreamRelay`'s ``on_end`` exactly once.

    ``error`` is None (complete), ``"client_disconnected"`` (the caller went away first) or
    ``"stream_<kind>"`` (the upstream broke off mid-stream).
    """

    usage: dict[str, Any] | None
    text: str
    error: str | None
    seconds: float


class StreamRelay:
    """Relays an upstream SSE response to the caller and always closes it.

    :meth:`chunks` is the body to send. :meth:`close` must run when the response is over,
    however it ended (the ASGI response calls it in a ``finally``): it closes the upstream
    response shielded from cancellation, since a client disconnect cancels the sending task, and
    an unclosed upstream response would hold its pooled connection; then it reports the end.
    """

    def __init__(
        self,
        model: str,
        response: httpx.Response,
        strip_usage_chunk: bool,
        on_end: Callable[[StreamEnd], None],
        started: float,
    ) -> None:
        self.model = model
        self.response = response
        self.reader = SSEUsageReader(strip_usage_chunk)
        self._on_end = on_end
        self._started = started
        self._done = False
        self._error: str | None = None
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_bytes():  # decoded: no content-encoding
                out = self.reader.feed(chunk)
                if out:
                    yield out
        except httpx.HTTPError as exc:
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
            self._error = f"stream_{kind}"
            # headers are gone: tell the caller in-band (the OpenAI SDK raises on an error event)
            message = f"upstream {self.model} broke off the stream ({kind})"
            error = {"error": {"message": message, "type": "upstream_error", "code": 502}}
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
            return
        except Exception:
            self._error = "stream_error"  # not the caller's doing: not "client_disconnected"
            raise
        rest = self.reader.flush()
        if rest:
            yield rest
        self._done = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self.response.aclose()
        error = self._error or (None if self._done else "client_disconnected")
        self._on_end(
            StreamEnd(
                self.reader.usage, self.reader.text, error, time.perf_counter() - self._started
            )
        )
