"""Gateway overhead benchmark: the same requests sent directly to an upstream and through the
router, side by side at a fixed rate, in one run (docs/metrics.md, "Gateway overhead").

Processes, all on loopback:

- the upstream: :mod:`training.bench.mock_upstream` by default (a raw asyncio HTTP/1.1 server that
  answers a fixed ``chat.completion`` at once, little CPU a request), or with
  ``upstream="replay"`` the replay backend with ``--time-scale 0`` (FastAPI, several times the
  CPU);
- the router: ``polyroute serve`` with one worker, every model of the config pointed at the
  upstream, tenants removed (open access), events to a file sink in ``workdir``;
- the load generator, in this process: a minimal keep-alive HTTP/1.1 client on asyncio streams
  (uvloop), so that it takes as little of the machine as possible.

Rate: ``rate`` is requests per second *per path*. At each tick of a fixed schedule (request i
leaves at i / rate, whatever the answers do) one request goes directly to the upstream and the
same body through the router, so the router serves ``rate`` requests/s and the machine as a whole
``2 x rate``. Overhead = routed percentile - direct percentile at the same rate.

With ``pin=True`` (Linux, 2+ cores) the router is pinned to CPU 0 and the upstream and the load
generator to CPU 1, so the router has one core to itself: the "one worker on one core" number.
Unpinned, the three processes share all cores as the scheduler likes.

Besides latencies each row has the CPU time each process spent per request at that rate
(``/proc/<pid>/stat``): ``router_cpu_ms_per_req`` bounds the router's throughput on one core at
about ``1000 / router_cpu_ms_per_req`` requests/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from features.errors import ConfigError, PolyrouteError, ServiceError
from training.bench.mock_upstream import install_uvloop

TIMEOUT_S = 10.0
HEADER = b"x-polyroute-overhead-ms"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello in one word."}]}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ServiceError(f"{url} did not come up in {timeout_s} s")


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


@contextlib.contextmanager
def _affinity(cpus: set[int] | None) -> Iterator[None]:
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


@dataclass
class Served:
    """The processes :func:`serving` started: addresses, the model called directly, pids."""

    upstream: tuple[str, int]
    router: tuple[str, int]
    direct_model: str
    pids: dict[str, int]  # upstream, router, loadgen (this process)


@contextlib.contextmanager
def serving(
    config_path: str,
    bundle_path: str,
    workdir: Path,
    upstream_kind: str = "mock",
    pin: bool = False,
    admission: dict[str, Any] | None = None,
) -> Iterator[Served]:
    """Start the upstream and one router worker (every model pointed at the upstream, no
    tenants, events under ``workdir``, ``admission`` keys over the config's), stop both after;
    this process (the load generator) runs on the upstream's CPU meanwhile.

    ``upstream_kind``: ``"mock"`` (:mod:`training.bench.mock_upstream`) or ``"replay"`` (the replay
    backend, ``--time-scale 0``). ``pin``: router on CPU 0, upstream and load generator on CPU 1.
    """
    if upstream_kind not in ("mock", "replay"):
        raise ConfigError(f"upstream: expected 'mock' or 'replay', got {upstream_kind!r}")
    if pin and len(os.sched_getaffinity(0)) < 2:
        raise ConfigError("pin: needs at least 2 CPUs")
    router_cpus, other_cpus = ({0}, {1}) if pin else (None, None)
    workdir.mkdir(parents=True, exist_ok=True)
    up_port, router_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    raw = yaml.safe_load(Path(config_path).read_text())
    for model in raw["models"]:
        model["provider"]["base_url"] = upstream
        model.pop("instances", None)
    raw["tenants"] = []
    raw.setdefault("events", {})["directory"] = str(workdir / "events")
    raw["admission"] = {**(raw.get("admission") or {}), **(admission or {})}
    config = workdir / "router.yaml"
    config.write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "router.cli"]
    if upstream_kind == "mock":
        up_cmd = [sys.executable, "-m", "training.bench.mock_upstream", "--port", str(up_port)]
    else:
        up_cmd = [*cli, "replay", "--dataset", "bundled", "--port", str(up_port)]
        up_cmd += ["--time-scale", "0"]
    router_cmd = [*cli, "serve", "--config", str(config), "--bundle", bundle_path]
    router_cmd += ["--port", str(router_port)]
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = {
        "upstream": subprocess.Popen(up_cmd, preexec_fn=_pinned(other_cpus), **quiet),
        "router": subprocess.Popen(router_cmd, preexec_fn=_pinned(router_cpus), **quiet),
    }
    try:
        _wait(f"http://127.0.0.1:{up_port}/healthz")
        _wait(f"http://127.0.0.1:{router_port}/healthz")
        pids = {name: proc.pid for name, proc in procs.items()} | {"loadgen": os.getpid()}
        install_uvloop()
        with _affinity(other_cpus):  # the load generator, in this process
            yield Served(
                ("127.0.0.1", up_port),
                ("127.0.0.1", router_port),
                raw["models"][0]["name"],
                pids,
            )
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=20)
        asyncio.set_event_loop_policy(None)


def rate_row(served: Served, rate: float, seconds: float, direct: bool = True) -> dict[str, Any]:
    """One rate against ``served`` (both paths, or the router alone), with CPU per request."""
    return _measured(
        rate,
        seconds,
        served.pids,
        lambda: asyncio.run(
            _run_rate(
                rate, seconds, served.upstream, served.router, BODY, served.direct_model, direct
            )
        ),
    )


def warm_up(served: Served) -> None:
    asyncio.run(_run_rate(50, 3, served.upstream, served.router, BODY, served.direct_model))


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (MB, /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ConfigError(f"no VmRSS for process {pid}")


def run_overhead(
    config_path: str,
    bundle_path: str,
    rates: list[float],
    seconds: float,
    workdir: Path,
    upstream_kind: str = "mock",
    pin: bool = False,
) -> list[dict[str, Any]]:
    """Start the upstream and the router, run each rate, stop both; one row per rate
    (:func:`serving` says what ``upstream_kind`` and ``pin`` do)."""
    with serving(config_path, bundle_path, workdir, upstream_kind, pin) as served:
        warm_up(served)
        return [
            {"upstream": upstream_kind, "pinned": pin, **rate_row(served, rate, seconds)}
            for rate in rates
        ]


def main_rows(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
        for r in rows
    )
