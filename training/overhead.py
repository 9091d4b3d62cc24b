"""Gateway overhead benchmark: the same requests sent directly to an upstream and through the
router, side by side at a fixed rate, in one run (DESIGN.md §5 "Gateway overhead").

The upstream is the replay backend with ``--time-scale 0`` (answers at once); the router is
``polyroute serve`` with one worker; both run as separate processes on loopback, the load
generator (httpx, asyncio) in this one. On a 2-core machine all three share the cores, which
the result table says.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml


def _free_port() -> int:
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
    raise RuntimeError(f"{url} did not come up in {timeout_s} s")


async def _run_rate(
    rate: float, seconds: float, upstream: str, router: str, body: dict[str, Any]
) -> dict[str, Any]:
    direct: list[float] = []
    routed: list[float] = []
    header: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:

        async def one(url: str, payload: dict[str, Any], out: list[float], via: bool) -> None:
            nonlocal errors
            start = time.perf_counter()
            try:
                response = await client.post(url, json=payload)
            except httpx.HTTPError:
                errors += 1
                return
            out.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                errors += 1
            elif via:
                header.append(float(response.headers["x-polyroute-overhead-ms"]))

        tasks = []
        begin = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            # a fixed schedule: request i leaves at i / rate, whatever the answers do
            await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
            direct_body = {**body, "model": "gemini-1.5-flash-002"}
            tasks.append(
                asyncio.create_task(one(f"{upstream}/chat/completions", direct_body, direct, False))
            )
            tasks.append(asyncio.create_task(one(f"{router}/chat/completions", body, routed, True)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
    d, r, h = np.array(direct), np.array(routed), np.array(header)

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if a.size else None

    return {
        "rate_rps": rate,
        "requests_per_path": n,
        "achieved_rps_per_path": len(r) / elapsed,
        "errors": errors,
        **{f"direct_p{q}_ms": pct(d, q) for q in (50, 95, 99)},
        **{f"routed_p{q}_ms": pct(r, q) for q in (50, 95, 99)},
        **{f"overhead_p{q}_ms": (pct(r, q) or 0) - (pct(d, q) or 0) for q in (50, 95, 99)},
        **{f"in_router_p{q}_ms": pct(h, q) for q in (50, 95, 99)},
    }


def run_overhead(
    config_path: str, bundle_path: str, rates: list[float], seconds: float, workdir: Path
) -> list[dict[str, Any]]:
    """Start the upstream and the router, run each rate, stop both; one row per rate."""
    workdir.mkdir(parents=True, exist_ok=True)
    up_port, router_port = _free_port(), _free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    raw = yaml.safe_load(Path(config_path).read_text())
    for model in raw["models"]:
        model["provider"]["base_url"] = upstream
    raw["tenants"] = []
    raw.setdefault("events", {})["directory"] = str(workdir / "events")
    config = workdir / "router.yaml"
    config.write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "router.cli"]
    procs = [
        subprocess.Popen(
            [*cli, "replay", "--dataset", "bundled", "--port", str(up_port), "--time-scale", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                *cli,
                "serve",
                "--config",
                str(config),
                "--bundle",
                bundle_path,
                "--port",
                str(router_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait(f"http://127.0.0.1:{up_port}/healthz")
        _wait(f"http://127.0.0.1:{router_port}/healthz")
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": "Say hello in one word."}],
        }
        router = f"http://127.0.0.1:{router_port}/v1"
        asyncio.run(_run_rate(20, 2, upstream, router, body))  # warm-up
        return [asyncio.run(_run_rate(rate, seconds, upstream, router, body)) for rate in rates]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def main_rows(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
        for r in rows
    )
