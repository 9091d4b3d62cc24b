"""Circuit breakers shared by every worker and replica through the traffic store.

Each process keeps its own breakers (``router.health``): they react to its own calls at once.
Every ``resilience.share_interval_s`` a background task publishes what changed here (a model
breaker that opened, with how long; one that closed after a successful probe) and reads back
every model's shared state in one round trip (Redis: one MULTI/EXEC of SET PX / DEL / PTTL, so a
key's TTL is the time its breaker stays open). A model some process found open is not eligible
anywhere until that time is up, so a model that went down is found once for the whole fleet,
not once per worker. With the in-memory store (one process) there is nothing to share and no
task runs.

A store failure leaves every process on its own breakers (counted in
``polyroute_traffic_store_errors_total{op="breakers"}``); it never fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from features.errors import TrafficStoreError
from router.health import HealthBoard
from router.prometheus import GatewayMetrics
from router.traffic.store import TrafficStore

logger = logging.getLogger(__name__)


class SharedBreakers:
    """Publishes this process's breaker changes and applies the others' (``sync_once``)."""

    def __init__(
        self,
        board: HealthBoard,
        store: TrafficStore,
        prefix: str,
        interval_s: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.board = board
        self.store = store
        self.interval_s = interval_s
        self.metrics = metrics
        self.keys = {name: f"{prefix}:breaker:{name}" for name in board.names}
        self._task: asyncio.Task[None] | None = None

    async def sync_once(self) -> None:
        """One exchange with the store (raises TrafficStoreError; the changes are kept)."""
        opened, closed = self.board.take_published()
        names = list(self.keys)
        try:
            remaining = await self.store.sync_open(
                {self.keys[m]: s for m, s in opened.items()},
                [self.keys[m] for m in closed],
                [self.keys[m] for m in names],
            )
        except TrafficStoreError:
            for model, seconds in opened.items():  # publish them next time
                self.board.to_publish.setdefault(model, seconds)
            for model in closed:
                self.board.to_publish.setdefault(model, None)
            raise
        self.board.apply_shared(dict(zip(names, remaining, strict=True)))

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except TrafficStoreError as exc:
                logger.warning("shared breakers not synchronised: %s", exc)
                if self.metrics is not None:
                    self.metrics.traffic_store_errors.labels("breakers", "local_only").inc()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
