"""The demo's service: the replay backends and the gateway on loopback threads, and the SDK
traffic of one round through them (the part of ``polyroute demo`` that is not the loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ServiceError
from router.bundle import PolicyBundle
from training.bench.overhead import free_port
from training.datasets import RoutingDataset
from training.loop import LoopConfig

logger = logging.getLogger(__name__)
EXAMPLE_CONFIG = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


class LoopbackServer:
    """A uvicorn server on a background thread (started and stopped by the demo)."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive():
                raise ServiceError(f"server on port {self.port} exited while starting")
            if time.monotonic() > deadline:
                raise ServiceError(f"server on port {self.port} did not start within 30 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class GatewayTraffic:
    """One round = ``n`` train-split prompts through the gateway with the OpenAI SDK."""

    def __init__(
        self,
        base_url: str,
        app: Any,
        sink: Any,
        requests_per_round: int,
        feedback_share: float,
        concurrency: int = 8,
        seed: int = 0,
        profile: str = "demo",
    ) -> None:
        self.base_url = base_url
        self.app = app
        self.sink = sink
        self.requests_per_round = requests_per_round
        self.feedback_share = feedback_share
        self.concurrency = concurrency
        self.seed = seed
        self.profile = profile
        self.trace: list[dict[str, Any]] = []

    def _serving_version(self) -> str:
        return str(self.app.state.gateway.engine.bundle.version)

    def _wait_for(self, version: str, timeout_s: float = 60.0) -> float:
        start = time.monotonic()
        while self._serving_version() != version:
            if time.monotonic() - start > timeout_s:
                raise ServiceError(
                    f"the gateway still serves {self._serving_version()} {timeout_s:.0f} s after "
                    f"{version} became @champion"
                )
            time.sleep(0.1)
        return time.monotonic() - start

    def serve_round(
        self, round_index: int, champion: PolicyBundle, prompts: RoutingDataset
    ) -> dict[str, float]:
        waited = self._wait_for(champion.version)
        rng = np.random.default_rng(self.seed * 1000 + round_index)
        rows = rng.integers(0, prompts.n_prompts, size=self.requests_per_round)
        texts = prompts.prompts["prompt"].to_numpy()[rows].tolist()
        send_feedback = (rng.random(len(texts)) < self.feedback_share).tolist()
        spec = champion.reward
        results = asyncio.run(self._send_all(texts, send_feedback))
        self.sink.flush()  # retraining reads the files next
        rewards = []
        for item in results:
            if item is None:
                continue
            reward = item["score"] - spec.w_cost * item["cost"] / spec.cost_scale
            rewards.append(reward)
            self.trace.append(
                {"round": round_index, "reward": reward, "model": item["model"], **item}
            )
        return {
            "n": len(rewards),
            "mean_reward": float(np.mean(rewards)) if rewards else float("nan"),
            "errors": float(sum(item is None for item in results)),
            "reload_wait_s": waited,
        }

    async def _send_all(
        self, texts: list[str], send_feedback: list[bool]
    ) -> list[dict[str, Any] | None]:
        import httpx
        import openai

        limit = asyncio.Semaphore(self.concurrency)
        async with (
            httpx.AsyncClient(base_url=self.base_url.removesuffix("/v1"), timeout=30) as http,
            openai.AsyncOpenAI(base_url=self.base_url, api_key="demo", max_retries=0) as client,
        ):

            async def one(text: str, feedback: bool) -> dict[str, Any] | None:
                async with limit:
                    try:
                        raw = await client.chat.completions.with_raw_response.create(
                            model=self.profile,
                            messages=[{"role": "user", "content": text}],
                        )
                    except (openai.APIError, httpx.HTTPError) as exc:
                        logger.warning("request failed: %s", exc)
                        return None
                    completion = raw.parse()
                    score = raw.headers.get("x-replay-score")
                    if score is None:
                        return None
                    decision_id = raw.headers["x-polyroute-decision-id"]
                    if feedback:
                        try:
                            response = await http.post(
                                "/v1/feedback",
                                json={"decision_id": decision_id, "quality": float(score)},
                            )
                            response.raise_for_status()
                        except httpx.HTTPError as exc:  # the answer counts; its rating is lost
                            logger.warning("feedback for %s failed: %s", decision_id, exc)
                    return {
                        "score": float(score),
                        "cost": float(raw.headers.get("x-polyroute-cost-usd", 0.0)),
                        "model": completion.model,
                        "decision_id": decision_id,
                    }

            pairs = zip(texts, send_feedback, strict=True)
            return list(await asyncio.gather(*(one(t, f) for t, f in pairs)))


def _gateway_config(replay_url: str, tracking_uri: str, events_dir: Path, models: list[str]) -> Any:
    from router.config import RouterConfig, load_config

    raw = load_config(EXAMPLE_CONFIG).model_dump()
    for model in raw["models"]:
        model["provider"]["base_url"] = replay_url
    raw["tenants"] = []
    raw["events"]["directory"] = str(events_dir)
    # the champion's own reward weights (a VW champion cannot decide under others)
    raw["profiles"] = {"default": {}, "demo": {"models": models}}
    raw["policy"] = {
        "registry": {"tracking_uri": tracking_uri, "alias": "champion"},
        "poll_s": 0.5,
    }
    return RouterConfig.model_validate(raw)


@contextlib.contextmanager
def service(
    config: LoopConfig,
    data: RoutingDataset,
    cold: PolicyBundle,
    events_dir: Path,
    tracking_uri: str,
    concurrency: int,
) -> Iterator[GatewayTraffic]:
    """Replay backends and the gateway on loopback for the loop's traffic; stopped on exit."""
    from router.app import create_app
    from router.events import FileEventSink
    from training.replay.server import ReplayConfig, create_replay_app

    replay_port, gateway_port = free_port(), free_port()
    replay_url = f"http://127.0.0.1:{replay_port}/v1"
    gateway_config = _gateway_config(replay_url, tracking_uri, events_dir, config.models or [])
    sink = FileEventSink(events_dir, put_timeout_s=0.0)
    try:
        app = create_app(gateway_config, cold, sink, seed=config.seed)
        traffic = GatewayTraffic(
            f"http://127.0.0.1:{gateway_port}/v1",
            app,
            sink,
            config.requests_per_round,
            config.feedback_share,
            concurrency=concurrency,
            seed=config.seed,
        )
        replay_app = create_replay_app(data, ReplayConfig(time_scale=0.0))
        with LoopbackServer(replay_app, replay_port), LoopbackServer(app, gateway_port):
            print(
                f"replay backends {replay_url}, gateway http://127.0.0.1:{gateway_port}/v1, "
                f"MLflow {tracking_uri}",
                flush=True,
            )
            yield traffic
    finally:
        sink.close()
