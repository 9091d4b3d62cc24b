"""The overhead benchmark's load generator and what it measures (:mod:`training.bench.overhead`
starts the processes and runs it).

- :class:`KeepAliveClient`: a minimal keep-alive HTTP/1.1 client on asyncio streams (uvloop),
  so that the load generator takes as little of the machine as possible;
- :func:`_run_rate`: one rate on a fixed schedule (request i leaves at i / rate, whatever the
  answers do), directly to the upstream and through the router; latency percentiles, the
  paired overhead, the router's own ``x-polyroute-overhead-ms`` and the errors;
- :func:`_measured`: the CPU time each process spent per request meanwhile (``/proc/<pid>/stat``);
  :func:`rss_mb`: a process's resident memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ConfigError, PolyrouteError

TIMEOUT_S = 10.0
HEADER = b"x-polyroute-overhead-ms"


class HttpError(PolyrouteError):
    """A response the load generator could not read (connection closed, malformed, timeout)."""


class _StaleConnectionError(PolyrouteError):
    """A reused keep-alive connection was closed by the server before it answered."""


class KeepAliveClient:
    """POSTs one fixed JSON body to one URL over a pool of keep-alive connections.

    Minimal HTTP/1.1: the request bytes are built once; responses must carry
    ``content-length`` (uvicorn's and the mock's do). Far less CPU per request than httpx: on a
    2-core machine the load generator competes with what it measures.
    """

    def __init__(
        self, host: str, port: int, path: str, body: dict[str, Any] | list[dict[str, Any]]
    ) -> None:
        self.host, self.port = host, port
        self.requests = [
            (
                f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
            ).encode()
            + payload
            for payload in (
                json.dumps(b).encode() for b in (body if isinstance(body, list) else [body])
            )
        ]
        self.request = self.requests[0]
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.retries = 0

    async def post(self, k: int = 0) -> tuple[int, bytes]:
        """Status and head (lowercased) of one response to body ``k`` (modulo their number);
        raises HttpError.

        An idle connection the server has closed meanwhile (uvicorn closes keep-alive
        connections idle for 5 s) is dropped before use, as httpx does; one that the server
        closes just as the request goes out fails with nothing read, and the request is sent
        once more on a new connection (the server never saw it)."""
        request = self.requests[k % len(self.requests)]
        try:
            return await self._post(request)
        except _StaleConnectionError:
            self.retries += 1
            return await self._post(request, fresh=True)

    async def _post(self, request: bytes, fresh: bool = False) -> tuple[int, bytes]:
        conn = None
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn[0].at_eof():
                break
            conn[1].close()
            conn = None
        reused = conn is not None
        try:
            async with asyncio.timeout(TIMEOUT_S):
                if conn is None:
                    conn = await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    raise HttpError("response without content-length")
                length = int(head[at + 17 : head.find(b"\r\n", at + 2)])
                await reader.readexactly(length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            if conn is not None:
                conn[1].close()
            stale = isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError)
            if reused and stale and not getattr(exc, "partial", b""):
                raise _StaleConnectionError from exc
            raise HttpError(repr(exc)) from exc
        if b"\r\nconnection: close" in head:
            writer.close()
        else:
            self._idle.append(conn)
        return int(head[9:12]), head

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _header(head: bytes, name: bytes) -> float | None:
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    return float(head[start : head.find(b"\r\n", start)])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(a: np.ndarray, q: float) -> float | None:
    return float(np.percentile(a, q)) if a.size else None


async def _run_rate(
    rate: float,
    seconds: float,
    upstream: tuple[str, int],
    router: tuple[str, int],
    body: dict[str, Any],
    direct_model: str,
    both: bool = True,
) -> dict[str, Any]:
    """Request i leaves at i / rate to the upstream (unless not ``both``) and to the router."""
    direct: list[float] = []
    routed: list[float] = []
    statuses: list[int] = []  # of the routed answers, in ``routed``'s order
    header: list[float] = []
    errors = {"direct": 0, "routed": 0}
    reasons: list[str] = []  # the first few errors, to say what went wrong
    direct_client = KeepAliveClient(
        *upstream, "/v1/chat/completions", {**body, "model": direct_model}
    )
    routed_client = KeepAliveClient(*router, "/v1/chat/completions", body)

    n = int(rate * seconds)
    paired = np.full((2, n), np.nan)  # [direct, routed] latency of the pair sent at tick i

    async def one(client: KeepAliveClient, out: list[float], path: str, i: int) -> None:
        start = time.perf_counter()
        try:
            status, head = await client.post()
        except HttpError as exc:
            errors[path] += 1
            if len(reasons) < 5:
                reasons.append(f"{path}: {exc}")
            return
        out.append((time.perf_counter() - start) * 1000)
        paired[int(path == "routed"), i] = out[-1]
        if path == "routed":
            statuses.append(status)
        if status != 200:
            errors[path] += 1
            if len(reasons) < 5:
                reasons.append(f"{path}: HTTP {status}")
        elif path == "routed":
            value = _header(head, HEADER)
            if value is not None:
                header.append(value)

    tasks = []
    begin = time.perf_counter()
    late = 0
    for i in range(n):
        # a fixed schedule: request i leaves at i / rate, whatever the answers do
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            late += 1  # the load generator itself fell behind its schedule
        if both:
            tasks.append(asyncio.create_task(one(direct_client, direct, "direct", i)))
        tasks.append(asyncio.create_task(one(routed_client, routed, "routed", i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begin
    direct_client.close()
    routed_client.close()
    d, r, h = np.array(direct), np.array(routed), np.array(header)
    code = np.array(statuses)
    unanswered = errors["routed"] - int(np.sum(code != 200))  # errors counts both kinds
    row: dict[str, Any] = {
        "rate_rps": rate,
        "total_rps": (1 + both) * rate,
        "requests_per_path": n,
        "achieved_rps_per_path": (len(r) + unanswered) / elapsed,
        "errors_direct": errors["direct"],
        "errors_routed": errors["routed"],
        "late_sends": late,
        "stale_connection_retries": direct_client.retries + routed_client.retries,
        "error_samples": reasons,
    }
    row.update({f"direct_p{q}_ms": _pct(d, q) for q in (50, 95, 99)})
    row.update({f"routed_p{q}_ms": _pct(r, q) for q in (50, 95, 99)})
    row.update(
        {
            f"overhead_p{q}_ms": (_pct(r, q) or 0) - (_pct(d, q) or 0) if both else None
            for q in (50, 95, 99)
        }
    )
    # the same request pair's routed minus direct latency: less sensitive than the difference
    # of percentiles to the direct path's own queueing on a shared machine
    diff = paired[1] - paired[0]
    diff = diff[~np.isnan(diff)]
    row.update({f"paired_overhead_p{q}_ms": _pct(diff, q) for q in (50, 95, 99)})
    row.update({f"in_router_p{q}_ms": _pct(h, q) for q in (50, 95, 99)})
    # answered requests split: accepted (200) and refused by admission (503)
    accepted, refused = r[code == 200], r[code == 503]
    row["accepted_share"] = accepted.size / max(1, n)
    row["refused_share"] = refused.size / max(1, n)
    row.update({f"accepted_p{q}_ms": _pct(accepted, q) for q in (50, 99)})
    row.update({f"refused_p{q}_ms": _pct(refused, q) for q in (50, 99)})
    return row


def _measured(
    rate: float, seconds: float, pids: dict[str, int], run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``run()`` plus the CPU each process spent per request meanwhile."""
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    wall = time.perf_counter()
    row = run()
    wall = time.perf_counter() - wall
    n = row["requests_per_path"]
    for name, pid in pids.items():
        spent = _cpu_seconds(pid) - before[name]
        row[f"{name}_cpu_ms_per_req"] = 1000 * spent / n
        row[f"{name}_cpu_share"] = spent / wall  # of one core
    return row


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (MB, /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ConfigError(f"no VmRSS for process {pid}")
