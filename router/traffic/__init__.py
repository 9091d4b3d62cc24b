"""Traffic: tenants' rate limits and daily budgets, and priorities when a worker is saturated.

- :mod:`router.traffic.admission`: in-flight slots by priority (per worker);
- :mod:`router.traffic.limits`: the request path's use of the limits and budgets, and what a
  store failure means (rate limits fail open, budgets fail closed);
- :mod:`router.traffic.store`: the store interface, GCRA, and the in-memory store;
- :mod:`router.traffic.redis_store`: the Redis store (atomic Lua scripts), shared by workers
  and replicas.

One request: admission by priority -> rate limits (``requests_per_minute``,
``tokens_per_minute``) and the budget left -> eligibility drops the models whose maximum cost
is over it -> the policy chooses -> the maximum cost is reserved -> the outcome settles the
actual cost (or releases the reservation).
"""

from __future__ import annotations

from router.config import TrafficConfig
from router.traffic.store import MemoryStore, TrafficStore


def build_store(config: TrafficConfig) -> TrafficStore:
    """The store ``traffic.store`` names; Redis's URL comes from ``traffic.redis_url_env``.

    Raises
    ------
    ConfigError
        ``redis`` and the environment variable is not set (names it).
    """
    if config.store == "redis":
        from router.traffic.redis_store import RedisStore  # imports redis when used

        return RedisStore(config.redis_url(), config.timeout_ms / 1000)
    return MemoryStore()
