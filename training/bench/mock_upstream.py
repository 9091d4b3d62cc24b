"""A minimal OpenAI-compatible upstream for the gateway overhead benchmark.

It answers every ``POST .../chat/completions`` at once with one fixed ``chat.completion``
(usage included, so the gateway logs real tokens and cost), or with a fixed SSE stream when the
body asks for ``"stream": true``; ``GET /healthz`` answers ``{"status":"ok"}``; anything else is
a 404. It is a raw ``asyncio.Protocol`` HTTP/1.1 server with keep-alive (uvloop when installed):
no framework, no JSON parsing, the answers are bytes built once, so the per-request cost is a
header scan and one ``transport.write``. That keeps the upstream's share of the machine small
when the benchmark, the gateway and the upstream share two cores; the replay backend (FastAPI,
dataset lookups) costs several times more per request (experiments/results/overhead.md).

Not a general HTTP server: it needs ``content-length`` on requests with a body (httpx and the
OpenAI SDK send it) and answers ``411`` to chunked uploads; pipelined requests are answered in
order.

Run it on its own with ``python -m training.bench.mock_upstream --port 8100``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
from typing import Any, cast

from features.errors import ConfigError

MODEL = "mock-upstream"
ANSWER = "Hello."
USAGE = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}


def _completion() -> bytes:
    body = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_764_201_600,
        "model": MODEL,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _stream() -> bytes:
    base: dict[str, Any] = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_764_201_600,
        "model": MODEL,
        "system_fingerprint": None,
    }

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    chunks = [
        {**base, "choices": choice({"role": "assistant", "content": ""})},
        {**base, "choices": choice({"content": ANSWER})},
        {**base, "choices": choice({}, "stop")},
        {**base, "choices": [], "usage": USAGE},
    ]
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    return b"".join(events) + b"data: [DONE]\n\n"


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: keep-alive\r\n\r\n"
        + body
    )


COMPLETION = _response(b"200 OK", b"application/json", _completion())
STREAM = _response(b"200 OK", b"text/event-stream", _stream())
HEALTH = _response(b"200 OK", b"application/json", b'{"status":"ok"}')
NOT_FOUND = _response(
    b"404 Not Found", b"application/json", b'{"error":{"message":"not found","type":"not_found"}}'
)
LENGTH_REQUIRED = _response(
    b"411 Length Required",
    b"application/json",
    b'{"error":{"message":"content-length required","type":"invalid_request_error"}}',
)
MAX_HEAD = 64 * 1024


UNAVAILABLE = _response(
    b"503 Service Unavailable",
    b"application/json",
    b'{"error":{"message":"injected failure","type":"server_error"}}',
)


class Faults:
    """Injected faults of a mock upstream (the chaos benchmark): every completion answers after
    ``delay_ms``, and a seeded ``error_rate`` share of them with 503."""

    def __init__(self, delay_ms: float = 0.0, error_rate: float = 0.0, seed: int = 0) -> None:
        if delay_ms < 0 or not 0.0 <= error_rate <= 1.0:
            raise ConfigError(
                f"delay_ms >= 0 and error_rate in [0, 1], got {delay_ms}, {error_rate}"
            )
        self.delay_s = delay_ms / 1000
        self.error_rate = error_rate
        self._rng = random.Random(seed)

    def fails(self) -> bool:
        return self.error_rate > 0 and self._rng.random() < self.error_rate


class MockUpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: parse request heads, skip bodies, write the fixed answers."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._faults = faults

    def _answer(self, payload: bytes) -> None:
        faults = self._faults
        if faults is None or self._transport is None:
            if self._transport is not None:
                self._transport.write(payload)
            return
        if faults.fails():
            payload = UNAVAILABLE
        if faults.delay_s > 0:
            asyncio.get_running_loop().call_later(faults.delay_s, self._late, payload)
        else:
            self._transport.write(payload)

    def _late(self, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(payload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while self._transport is not None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._transport.close()
                return
            head = bytes(buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head:
                self._transport.write(LENGTH_REQUIRED)
                self._transport.close()
                return
            total = end + 4 + length
            if len(buffer) < total:
                return  # the rest of the body is on its way
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
            method, _, rest = line.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"post" and path.endswith(b"/chat/completions"):
                streamed = b'"stream":true' in body or b'"stream": true' in body
                self._answer(STREAM if streamed else COMPLETION)
            elif method == b"get" and path == b"/healthz":
                self._transport.write(HEALTH)
            else:
                self._transport.write(NOT_FOUND)
            if b"\r\nconnection: close" in head:
                self._transport.close()


async def start_mock_upstream(
    host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None
) -> asyncio.Server:
    """Listen on ``host:port`` in the running loop (port 0: any free port); returns the server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: MockUpstreamProtocol(faults), host, port, backlog=1024)


async def _serve_forever(host: str, port: int, faults: Faults | None = None) -> None:
    server = await start_mock_upstream(host, port, faults)
    async with server:
        await server.serve_forever()


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed (it is with ``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer after (default 0)")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share answered 503 (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="of the error draws (default 0)")
    args = parser.parse_args(argv)
    faults = None
    if args.delay_ms or args.error_rate:
        faults = Faults(args.delay_ms, args.error_rate, args.seed)
    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.host, args.port, faults))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
