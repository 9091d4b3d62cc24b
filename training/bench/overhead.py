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
  (uvloop), so that it takes as little of the machine as possible
  (:mod:`training.bench.loadgen`, with what it measures).

This module starts and stops the processes and runs the rates.

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
import yaml

from features.errors import ConfigError, ServiceError
from training.bench.loadgen import _measured, _run_rate
from training.bench.mock_upstream import install_uvloop

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
