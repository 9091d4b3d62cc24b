"""Two gateway processes (two ``polyroute serve`` replicas) sharing one real Redis: a tenant's
rate limits hold to the request across both, and its daily budget is never overspent.

The upstream is the overhead benchmark's mock (training/bench/mock_upstream.py, its own process):
every answer reports 12 prompt and 2 completion tokens, which is what the gateway estimates
for the 48-character prompt with ``max_tokens: 2``: each request's actual cost is its maximum
cost, so the budget's arithmetic is exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from loopback import free_port
from services import REDIS, require_tcp
from test_gateway import ProcessLog
from test_traffic import PRICES, chat, make_config, tenant

from router.bundle import PolicyBundle

ROOT = Path(__file__).parents[1]
BUDGET_USD = 0.001
RPM, TPM = 20, 140  # TPM: ten requests of 14 tokens (12 input + 2 max output)


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], ProcessLog]:
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return process, ProcessLog(process)


def stop(process: subprocess.Popen[bytes], log: ProcessLog) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    finally:
        log.close()


@pytest.fixture()
def replicas(tmp_path: Path, bundle: PolicyBundle, redis_prefix: str) -> Iterator[list[str]]:
    """Base URLs of two gateways (separate processes) sharing Redis under ``prefix``."""
    require_tcp("Redis", *REDIS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLYROUTE_REDIS_URL": "redis://127.0.0.1/0"}
    upstream_port = free_port()
    upstream = start(
        [sys.executable, "-m", "training.bench.mock_upstream", "--port", str(upstream_port)], env
    )
    config = make_config(
        [
            tenant("rpm", requests_per_minute=RPM),
            tenant("tpm", tokens_per_minute=TPM),
            tenant("money", budget_usd_per_day=BUDGET_USD),
        ],
        traffic={"store": "redis", "key_prefix": redis_prefix},
    ).model_dump(mode="json")
    for model in config["models"]:
        model["provider"]["base_url"] = f"http://127.0.0.1:{upstream_port}/v1"
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
    bundle_dir = bundle.save(tmp_path / "bundle")
    ports = [free_port(), free_port()]
    gateways = []
    for i, port in enumerate(ports):
        cmd = [sys.executable, "-m", "router.cli", "serve", "--port", str(port),
               "--config", str(tmp_path / "router.yaml"), "--bundle", str(bundle_dir),
               "--events-dir", str(tmp_path / f"events-{i}")]  # fmt: skip
        gateways.append(start(cmd, env))
    try:
        for _, log in gateways:  # generous: two processes load the bundle on a shared machine
            log.wait_for("Application startup complete.", count=1, timeout_s=240)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process, log in [*gateways, upstream]:
            stop(process, log)


def burst(urls: list[str], requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send ``requests`` at once (8 at a time), alternating between the gateways."""
    clients = [httpx.Client(base_url=url, timeout=60) for url in urls]
    try:
        with ThreadPoolExecutor(8) as pool:
            return list(
                pool.map(lambda i: clients[i % 2].post(**requests[i]), range(len(requests)))
            )
    finally:
        for client in clients:
            client.close()


def test_two_gateways_share_exact_limits_and_budgets(
    replicas: list[str], redis_prefix: str
) -> None:
    started = time.monotonic()
    rated = burst(replicas, [chat("rpm", max_tokens=2) for _ in range(2 * RPM)])
    took = time.monotonic() - started
    passed = sum(r.status_code == 200 for r in rated)
    # exact to the request: the burst passes RPM, plus what refilled while it ran (one per 3 s)
    assert RPM <= passed <= RPM + 1 + int(took / (60 / RPM)), (passed, took)
    refused = [r for r in rated if r.status_code != 200]
    assert {r.status_code for r in refused} == {429}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert {r.headers["x-polyroute-model"] for r in rated if r.status_code == 200} <= set(PRICES)

    tokens = burst(replicas, [chat("tpm", max_tokens=2) for _ in range(20)])
    assert sum(r.status_code == 200 for r in tokens) in (TPM // 14, TPM // 14 + 1)

    paid = burst(replicas, [chat("money", max_tokens=2) for _ in range(100)])
    answered = [r for r in paid if r.status_code == 200]
    assert {r.status_code for r in paid} == {200, 429}
    assert len({r.headers["x-polyroute-decision-id"] for r in answered}) == len(answered)
    client = redis.Redis(*REDIS)
    try:
        (key,) = client.keys(f"{redis_prefix}:{{money}}:budget:*")

        def settled() -> int:
            deadline = time.monotonic() + 10  # the gateways settle in the background
            while int(client.hget(key, "reserved") or 0) != 0:
                assert time.monotonic() < deadline, client.hgetall(key)
                time.sleep(0.05)
            return int(client.hget(key, "spent") or 0)

        # a burst can be refused while concurrent reservations hold the rest of the budget;
        # once they settle, requests one at a time use up what is left
        settled()
        with httpx.Client(base_url=replicas[0], timeout=60) as one:
            for _ in range(100):
                last = one.post(**chat("money", max_tokens=2))
                if last.status_code != 200:
                    break
                answered.append(last)
                settled()
        assert last.status_code == 429
        spent = settled()
    finally:
        client.close()
    budget, cheapest = round(BUDGET_USD * 1e9), 14 * 1000  # 14 tokens at 1 USD per million
    # never over the budget; stopped only when not even the cheapest model fits
    assert budget - cheapest < spent <= budget, spent
    # the ledger is the sum of what the answers cost, whichever gateway served them
    charged = sum(round(float(r.headers["x-polyroute-cost-usd"]) * 1e9) for r in answered)
    assert charged == spent
    assert (
        "budget_usd_per_day of 0.001 USD"
        in next(r for r in paid if r.status_code == 429).json()["error"]["message"]
    )
