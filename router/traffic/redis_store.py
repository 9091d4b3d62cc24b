"""The Redis store of rate limits and budgets, shared by every worker and replica.

Each operation is one Lua script (``register_script``: EVALSHA, loaded again after a Redis
restart), so it is atomic across processes and costs one round trip. Why Lua rather than the
``limits`` package (moving windows on Redis): a request is charged to two limits at once
(requests, and tokens weighted by the request's size) and must pass both or be charged to
neither, and the same call reads the tenant's budget; ``limits`` hits each limit separately and
counts one entry per unit (a 4,000-token request would be 4,000 entries). Budgets need a
check-and-reserve no library offers. GCRA keeps one timestamp per limit instead.

Time is Redis's own clock (``TIME``), so replicas whose clocks differ still share one limit
(Redis >= 5 replicates a script's effects, so a script that reads TIME may write).

Keys (``<prefix>:{<tenant>}:...``: the braces put a tenant's keys in one cluster slot):
``...:rpm`` and ``...:tpm`` (GCRA timestamps in microseconds, expiring when idle),
``...:budget:<YYYY-MM-DD>`` (a hash of integer nano-USD ``spent`` and ``reserved``, kept two
days). Every failure (connection, timeout after ``traffic.timeout_ms``, script error) is a
:class:`~features.errors.TrafficStoreError`; ``router.traffic.limits`` decides what it means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from features.errors import TrafficStoreError
from router.traffic.store import BUDGET_TTL_S, WINDOW_S, RateLimit, Reserved, Taken

T = TypeVar("T")

# KEYS[1..n]: GCRA limits, KEYS[n+1] (optional): the budget hash.
# ARGV: n, window (us), then per limit: interval (us per unit), cost (units).
# Returns {refusing limit (1-based, 0: all passed and were charged), wait (us), spent, reserved}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local refused, worst = 0, 0
local tats = {}
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tat = tat + tonumber(ARGV[1 + 2 * i]) * tonumber(ARGV[2 + 2 * i])
  tats[i] = tat
  local wait = tat - now - window
  if wait > 1 and wait > worst then refused, worst = i, wait end
end
if refused == 0 then
  for i = 1, n do
    local ttl = math.ceil((tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.17g', tats[i]), 'PX', ttl)
  end
end
local spent, reserved = 0, 0
if #KEYS > n then
  local b = redis.call('HMGET', KEYS[n + 1], 'spent', 'reserved')
  spent = tonumber(b[1]) or 0
  reserved = tonumber(b[2]) or 0
end
return {refused, math.ceil(worst), spent, reserved}
"""

# KEYS[1]: the budget hash. ARGV: amount, limit (nano-USD), ttl (s).
# Returns {1 reserved / 0 refused, spent, reserved}.
RESERVE = """
local b = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
local spent = tonumber(b[1]) or 0
local reserved = tonumber(b[2]) or 0
local amount = tonumber(ARGV[1])
if spent + reserved + amount > tonumber(ARGV[2]) then return {0, spent, reserved} end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, spent, reserved}
"""

# KEYS[1]: the budget hash. ARGV: the reservation, the actual cost (nano-USD), ttl (s).
SETTLE = """
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisStore:
    """:class:`~router.traffic.store.TrafficStore` on Redis (``redis.asyncio``).

    Parameters
    ----------
    url : str
        ``redis://host:port/db`` (from the environment variable ``traffic.redis_url_env``).
    timeout_s : float
        Connect and read timeout of every call; no retries (a slow store must not hold
        requests: the caller fails open or closed at once).
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    async def start(self) -> None:
        # made in the serving event loop: a connection belongs to the loop that opened it
        self._client = redis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        for name, source in (("take", TAKE), ("reserve", RESERVE), ("settle", SETTLE)):
            self._scripts[name] = self._client.register_script(source)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._client is None:
            raise TrafficStoreError("traffic store (Redis): not started")
        try:
            return await asyncio.wait_for(call(), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            raise TrafficStoreError(
                f"traffic store (Redis at {self._where()}): {type(exc).__name__}: {exc}"
            ) from exc

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]  # never the password of redis://user:pass@host

    async def take(self, limits: Sequence[RateLimit], budget_key: str | None) -> Taken:
        keys = [limit.key for limit in limits]
        args: list[float | int] = [len(limits), int(WINDOW_S * 1e6)]
        for limit in limits:
            args += [limit.interval_s * 1e6, limit.cost]
        if budget_key is not None:
            keys.append(budget_key)
        refused, wait_us, spent, reserved = await self._run(
            lambda: self._scripts["take"](keys=keys, args=args)
        )
        return Taken(int(refused) - 1, int(wait_us) / 1e6, int(spent), int(reserved))

    async def reserve(self, budget_key: str, amount_nusd: int, limit_nusd: int) -> Reserved:
        ok, spent, reserved = await self._run(
            lambda: self._scripts["reserve"](
                keys=[budget_key], args=[amount_nusd, limit_nusd, BUDGET_TTL_S]
            )
        )
        return Reserved(bool(ok), int(spent), int(reserved))

    async def sync_open(
        self, opened: dict[str, float], closed: Sequence[str], keys: Sequence[str]
    ) -> list[float]:
        """One pipeline (MULTI/EXEC): SET ... PX for the opened, DEL for the closed, PTTL of
        every key (a key's TTL is how long its breaker stays open)."""

        async def run() -> list[float]:
            assert self._client is not None
            async with self._client.pipeline(transaction=True) as pipe:
                for key, seconds in opened.items():
                    pipe.set(key, b"1", px=max(1, int(seconds * 1000)))
                if closed:
                    pipe.delete(*closed)
                for key in keys:
                    pipe.pttl(key)
                replies = await pipe.execute()
            return [max(0, int(ms)) / 1000 for ms in replies[-len(keys) :]] if keys else []

        return await self._run(run)

    async def settle(self, budget_key: str, reserved_nusd: int, actual_nusd: int) -> None:
        await self._run(
            lambda: self._scripts["settle"](
                keys=[budget_key], args=[reserved_nusd, actual_nusd, BUDGET_TTL_S]
            )
        )
