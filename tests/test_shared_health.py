"""Circuit breakers shared by workers and replicas through the traffic store
(router.traffic.shared_health): two processes' boards, each with its own store connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import Clock
from services import REDIS, require_tcp

from features.errors import TrafficStoreError
from router.config import RouterConfig, load_config
from router.health import HealthBoard
from router.traffic.redis_store import RedisStore
from router.traffic.shared_health import SharedBreakers
from router.traffic.store import MemoryStore, TrafficStore

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


def config() -> RouterConfig:
    data = load_config(EXAMPLE).model_dump()
    data["resilience"]["breaker"]["consecutive_failures"] = 2
    return RouterConfig.model_validate(data)


def fail(board: HealthBoard, model: str, times: int) -> None:
    url = board.models[model].instances[0].url
    for _ in range(times):
        board.started(model, url)
        board.finished(model, url, False, 0.01)
        board.model_finished(model, False)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_breaker_opened_by_one_process_keeps_the_model_out_of_another(
    kind: str, redis_prefix: str
) -> None:
    if kind == "redis":
        require_tcp("Redis", *REDIS)

    def store() -> TrafficStore:
        return RedisStore(f"redis://{REDIS[0]}:{REDIS[1]}/0", 2.0) if kind == "redis" else shared

    shared = MemoryStore()  # one store object: what two workers of one process would share
    cfg = config()
    model = cfg.models[4].name

    async def main() -> None:
        stores = [store(), store()]
        for s in stores:
            await s.start()
        a, b = HealthBoard(cfg, Clock()), HealthBoard(cfg, Clock())
        sync_a = SharedBreakers(a, stores[0], redis_prefix, 0.5)
        sync_b = SharedBreakers(b, stores[1], redis_prefix, 0.5)
        try:
            fail(a, model, 2)
            assert model in a.unhealthy() and model not in b.unhealthy()
            await sync_a.sync_once()
            await sync_b.sync_once()
            assert model in b.unhealthy()  # b never called it
            assert b.models[model].breaker.state == "closed"  # b's own breaker is untouched
            # a's probe finds it back: a clears it, and b lets it in at its next exchange
            a._clock.now += cfg.resilience.breaker.open_s  # type: ignore[attr-defined]
            url = a.models[model].instances[0].url
            assert a.pick(model) == url
            a.started(model, url)
            a.finished(model, url, True, 0.01)
            a.model_finished(model, True)
            assert model not in a.unhealthy()
            await sync_a.sync_once()
            await sync_b.sync_once()
            assert model not in b.unhealthy()
        finally:
            for s in stores:
                await s.aclose()

    asyncio.run(main())


def test_a_store_failure_keeps_the_changes_for_the_next_exchange() -> None:
    class Broken(MemoryStore):
        async def sync_open(self, opened, closed, keys):  # type: ignore[no-untyped-def]
            raise TrafficStoreError("down")

    cfg = config()
    board = HealthBoard(cfg, Clock())
    model = cfg.models[2].name
    fail(board, model, 2)
    sync = SharedBreakers(board, Broken(), "p", 0.5)
    with pytest.raises(TrafficStoreError):
        asyncio.run(sync.sync_once())
    assert model in board.to_publish and model in board.unhealthy()  # local state unaffected
