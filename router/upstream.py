"""Calls to OpenAI-compatible upstreams (httpx, pooled connections, timeouts) and the choice of
instance (weighted round robin over a model's instances).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from router.config import ModelConfig, TimeoutConfig


class UpstreamError(Exception):
    """An upstream call failed: connection, timeout or a 5xx answer (worth a fallback)."""

    def __init__(self, model: str, kind: str, detail: str) -> None:
        super().__init__(f"{model}: {kind}: {detail}")
        self.model = model
        self.kind = kind


@dataclass
class UpstreamReply:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers


class InstancePicker:
    """Smooth weighted round robin (as nginx) over a model's instances; no shared state needed
    beyond this process, so no library is worth its dependency here."""

    def __init__(self, model: ModelConfig) -> None:
        self._urls = [i.base_url for i in model.endpoints()]
        weights = [i.weight for i in model.endpoints()]
        total = sum(weights)
        # expand to a short cycle proportional to the weights (weights are small numbers)
        slots = [
            u
            for u, w in zip(self._urls, weights, strict=True)
            for _ in range(max(1, round(10 * w / total)))
        ]
        self._cycle = itertools.cycle(slots)

    def next(self) -> str:
        return next(self._cycle)


class UpstreamClient:
    """One pooled ``httpx.AsyncClient`` for all upstreams."""

    def __init__(
        self, timeouts: TimeoutConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _request(self, model: ModelConfig, base_url: str, body: dict[str, Any]) -> httpx.Request:
        headers = {"content-type": "application/json"}
        key = model.provider.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        payload = {**body, "model": model.provider.upstream_model or model.name}
        return self._client.build_request(
            "POST", f"{base_url}/chat/completions", json=payload, headers=headers
        )

    async def complete(
        self, model: ModelConfig, base_url: str, body: dict[str, Any]
    ) -> UpstreamReply:
        try:
            response = await self._client.send(self._request(model, base_url, body))
        except httpx.TimeoutException as exc:
            raise UpstreamError(model.name, "timeout", str(exc) or "timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(model.name, "connection", str(exc) or type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamError(model.name, f"http_{response.status_code}", response.text[:200])
        try:
            data = response.json()
        except ValueError as exc:
            raise UpstreamError(model.name, "bad_response", "not JSON") from exc
        return UpstreamReply(response.status_code, data, response.headers)

    async def stream(
        self, model: ModelConfig, base_url: str, body: dict[str, Any]
    ) -> tuple[httpx.Response, AsyncIterator[bytes]]:
        """Open a streaming call; raises UpstreamError before any byte is relayed."""
        try:
            response = await self._client.send(self._request(model, base_url, body), stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError(model.name, "timeout", str(exc) or "timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(model.name, "connection", str(exc) or type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            await response.aclose()
            raise UpstreamError(model.name, f"http_{response.status_code}", "stream refused")
        return response, response.aiter_bytes()  # decoded: we do not relay content-encoding
