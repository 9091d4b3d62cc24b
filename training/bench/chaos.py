"""Chaos experiments: the gateway under injected upstream faults and a killed worker, at a fixed
rate, with what each scenario cost (served rate, errors by class, p50/p99, events lost).

Processes, all on loopback: a *healthy* mock upstream (:mod:`training.bench.mock_upstream`,
answering after ``base_delay_ms``) serving every model but one, the *target* model's own mock
upstream(s) where the fault is injected, ``polyroute serve`` (one worker, or two), and the load
generator in this process (httpx, a fixed schedule: request i leaves at i / rate whatever the
answers do, prompts cycled from the bundled sample's test split so the policy spreads traffic).

The target is the model the policy would choose most often on those prompts (worked out with the
same bundle and config before the run), so a fault there matters. Scenarios:

``healthy``          no fault: the reference
``model_down``       the target's only instance is killed (SIGKILL) a third into the run
``model_slow``       the target answers 10x slower than the others from the start
``model_5xx``        the target answers 30% of its calls with 503 from the start
``instance_killed``  the target has two instances; one is killed a third into the run
``worker_killed``    two gateway workers; one is killed (SIGKILL) a third into the run

Events: after each run the gateway is stopped (SIGTERM drains its queue) and its event files are
read back. ``served_without_decision_event``: answers that carried a decision id whose decision
event is not in the log; ``decisions_without_outcome``: decision events with no outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from features.errors import ConfigError
from router.events.codec import FRAME_KIND
from router.events.file_sink import event_files
from training.bench.loadgen import HttpError, KeepAliveClient, _cpu_seconds
from training.bench.mock_upstream import install_uvloop
from training.bench.overhead import _wait, free_port

SCENARIOS = (
    "healthy",
    "model_down",
    "model_slow",
    "model_5xx",
    "instance_killed",
    "worker_killed",
)
TIMEOUT_S = 10.0


def target_model(config_path: str, bundle_path: str, prompts: list[str]) -> str:
    """The model the bundle chooses most often on ``prompts`` under the config."""
    from router.bundle import PolicyBundle
    from router.config import load_config
    from router.eligibility import RequestHints
    from router.pipeline import DecisionEngine

    engine = DecisionEngine(load_config(config_path), PolicyBundle.load(bundle_path), seed=0)
    chosen = Counter(
        engine.decide(p, 1, max(1, len(p) // 4), 512, RequestHints()).chosen for p in prompts
    )
    return chosen.most_common(1)[0][0]


def _mock(port: int, delay_ms: float, error_rate: float = 0.0) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "training.bench.mock_upstream", "--port", str(port)]
    cmd += ["--delay-ms", str(delay_ms), "--error-rate", str(error_rate)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


async def _load(
    port: int,
    prompts: list[str],
    rate: float,
    seconds: float,
    at_third: Any,
) -> list[dict[str, Any]]:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule; call ``at_third()`` once a
    third of the way. One record per request. The client is the overhead benchmark's minimal
    keep-alive one (httpx would take a core of this 2-core machine at 200 requests/s)."""
    n = int(rate * seconds)
    bodies = [
        {"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": p}]}
        for p in prompts
    ]
    client = KeepAliveClient("127.0.0.1", port, "/v1/chat/completions", bodies)
    records: list[dict[str, Any]] = []

    async def one(i: int, sent: float) -> None:
        start = time.perf_counter()
        record: dict[str, Any] = {"i": i, "t": sent}
        try:
            status, head = await client.post(i)
        except HttpError as exc:
            message = str(exc)
            record.update(status=None, error=message.split("(", 1)[0] or "error")
        else:
            record.update(
                status=status,
                error=None if status == 200 else f"http_{status}",
                model=_text_header(head, b"x-polyroute-model"),
                decision_id=_text_header(head, b"x-polyroute-decision-id"),
                retry_after=_text_header(head, b"retry-after"),
            )
        record["latency_ms"] = (time.perf_counter() - start) * 1000
        records.append(record)

    tasks = []
    begin = time.perf_counter()
    fired = False
    for i in range(n):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not fired and i >= n // 3:
            fired = True
            at_third()
        tasks.append(asyncio.create_task(one(i, time.perf_counter() - begin)))
    await asyncio.gather(*tasks)
    client.close()
    if records:  # resends of a request whose reused connection was reset before any answer
        records[0]["client_resends"] = client.retries
    return records


def _text_header(head: bytes, name: bytes) -> str | None:
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    return head[start : head.find(b"\r\n", start)].decode().strip()


def _events(directory: Path) -> tuple[set[str], set[str], int]:
    """Decision ids, outcome ids and unreadable lines of an event directory."""
    decisions: set[str] = set()
    outcomes: set[str] = set()
    bad = 0
    for path in event_files(directory):
        for raw in path.read_bytes().split(b"\n"):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            if record.get("kind") == FRAME_KIND:  # a compact file's shared decision fields
                continue
            (decisions if record.get("kind") == "decision" else outcomes).add(record["event_id"])
    return decisions, outcomes, bad


def _summary(
    scenario: str,
    records: list[dict[str, Any]],
    seconds: float,
    target: str,
    fault_at: float | None,
    events_dir: Path,
    cpu_ms_per_req: float,
) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == 200]
    latency = np.array([r["latency_ms"] for r in ok])
    after = np.array([r["latency_ms"] for r in ok if r["i"] >= 200])
    errors = Counter(r["error"] for r in records if r["error"])
    row: dict[str, Any] = {
        "scenario": scenario,
        "target_model": target,
        "requests": len(records),
        "served": len(ok),
        "served_share": len(ok) / max(1, len(records)),
        "served_rps": len(ok) / seconds,
        "errors": dict(errors),
        "refused_with_retry_after": sum(
            1 for r in records if r["status"] in (429, 503) and r.get("retry_after")
        ),
        "p50_ms": float(np.percentile(latency, 50)) if latency.size else None,
        "p99_ms": float(np.percentile(latency, 99)) if latency.size else None,
        "p99_after_200_ms": float(np.percentile(after, 99)) if after.size else None,
        "target_share": sum(1 for r in ok if r.get("model") == target) / max(1, len(ok)),
        "router_cpu_ms_per_req": cpu_ms_per_req,
        "client_resends": sum(r.get("client_resends", 0) for r in records),
    }
    if fault_at is not None:
        # the target's share after the fault, and when it last served a request
        late = [r for r in ok if r["t"] >= fault_at]
        served_by_target = [r["t"] for r in late if r.get("model") == target]
        row["target_share_after_fault"] = len(served_by_target) / max(1, len(late))
        row["target_last_served_s_after_fault"] = (
            max(served_by_target) - fault_at if served_by_target else 0.0
        )
    decisions, outcomes, bad = _events(events_dir)
    ids = {r["decision_id"] for r in records if r.get("decision_id")}
    row["decision_events"] = len(decisions)
    row["served_without_decision_event"] = len(ids - decisions)
    row["decisions_without_outcome"] = len(decisions - outcomes)
    row["unreadable_event_lines"] = bad
    return row


def run_scenario(
    scenario: str,
    config_path: str,
    bundle_path: str,
    prompts: list[str],
    target: str,
    rate: float,
    seconds: float,
    workdir: Path,
    base_delay_ms: float = 20.0,
    workers: int = 1,
) -> dict[str, Any]:
    """One scenario, start to finish (its processes are stopped whatever happens); ``workers``
    gateway processes (``worker_killed`` runs at least two)."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"scenario: expected one of {list(SCENARIOS)}, got {scenario!r}")
    work = workdir / scenario
    work.mkdir(parents=True, exist_ok=True)
    healthy_port, router_port = free_port(), free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {"healthy": _mock(healthy_port, base_delay_ms)}
    target_ports = [free_port()]
    if scenario == "instance_killed":
        target_ports.append(free_port())
    delay = base_delay_ms * (10 if scenario == "model_slow" else 1)
    error_rate = 0.3 if scenario == "model_5xx" else 0.0
    for k, port in enumerate(target_ports):
        procs[f"target{k}"] = _mock(port, delay, error_rate)
    raw = yaml.safe_load(Path(config_path).read_text())
    for model in raw["models"]:
        model["provider"]["base_url"] = f"http://127.0.0.1:{healthy_port}/v1"
        model.pop("instances", None)
        # the deployment's real speed, as an operator states it: every mock answers in
        # base_delay_ms whatever it is asked (live latency is judged against this prediction)
        model["ttft_ms"] = base_delay_ms
        model["tokens_per_s"] = 1e6
        if model["name"] == target:
            model["instances"] = [{"base_url": f"http://127.0.0.1:{p}/v1"} for p in target_ports]
    raw["tenants"] = []
    raw.setdefault("events", {})["directory"] = str(work / "events")
    config = work / "router.yaml"
    config.write_text(yaml.safe_dump(raw))
    workers = max(workers, 2) if scenario == "worker_killed" else workers
    cmd = [sys.executable, "-m", "router.cli", "serve", "--config", str(config)]
    cmd += ["--bundle", bundle_path, "--port", str(router_port), "--workers", str(workers)]
    procs["router"] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fault_at: list[float] = []
    begin = [0.0]
    try:
        for port in [healthy_port, *target_ports, router_port]:
            _wait(f"http://127.0.0.1:{port}/healthz")

        def inject() -> None:
            fault_at.append(time.perf_counter() - begin[0])
            if scenario == "model_down":
                procs["target0"].send_signal(signal.SIGKILL)
            elif scenario == "instance_killed":
                procs["target1"].send_signal(signal.SIGKILL)
            elif scenario == "worker_killed":
                workers_now = _children(procs["router"].pid)
                candidates = [p for p in workers_now if _is_worker(p)]
                if candidates:
                    os.kill(candidates[0], signal.SIGKILL)

        install_uvloop()
        asyncio.run(_load(router_port, prompts[::-1], 20, 3, lambda: None))  # warm-up
        pids = [procs["router"].pid, *_children(procs["router"].pid)]
        cpu_before = sum(_cpu_seconds(p) for p in pids)
        begin[0] = time.perf_counter()
        records = asyncio.run(_load(router_port, prompts, rate, seconds, inject))
        cpu_after = sum(_cpu_safe(p) for p in pids)
        try:  # which breakers are open at the end, and why
            health = httpx.get(f"http://127.0.0.1:{router_port}/admin/health", timeout=5).json()
            opened = {
                name: f"{m['state']} ({m['reason']})"
                for name, m in health["models"].items()
                if m["state"] != "closed"
            }
        except (httpx.HTTPError, ValueError, KeyError):
            opened = {"?": "health not readable"}
    finally:
        asyncio.set_event_loop_policy(None)
        router = procs.pop("router")
        router.send_signal(signal.SIGTERM)  # drains the event queue
        try:
            router.wait(timeout=30)
        except subprocess.TimeoutExpired:
            router.kill()
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=10)
    faulted = scenario in ("model_down", "instance_killed", "worker_killed")
    row = _summary(
        scenario,
        records,
        seconds,
        target,
        fault_at[0] if faulted and fault_at else None,
        work / "events",
        1000 * (cpu_after - cpu_before) / max(1, len(records)),
    )
    row["breakers_not_closed_at_end"] = opened
    row["workers"] = workers
    return row


def _cpu_safe(pid: int) -> float:
    try:
        return _cpu_seconds(pid)
    except OSError:
        return 0.0  # a killed worker: its CPU is gone with it


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"spawn_main" in cmdline and b"resource_tracker" not in cmdline


def run_chaos(
    config_path: str,
    bundle_path: str,
    prompts: list[str],
    rate: float,
    seconds: float,
    workdir: Path,
    scenarios: tuple[str, ...] = SCENARIOS,
    base_delay_ms: float = 20.0,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Every scenario in turn; one row each."""
    target = target_model(config_path, bundle_path, prompts)
    return [
        run_scenario(
            s,
            config_path,
            bundle_path,
            prompts,
            target,
            rate,
            seconds,
            workdir,
            base_delay_ms,
            workers,
        )
        for s in scenarios
    ]


def chaos_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows."""
    head = (
        "| scenario | workers | served | errors by class | p50 ms | p99 ms | p99 after 200 ms "
        "| target share | target share after fault | target last served after fault (s) "
        "| served w/o decision event | decisions w/o outcome | client resends "
        "| router CPU ms/req |"
    )
    lines = [head, "|" + "---|" * 14]

    def f(value: Any, digits: int = 1) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        lines.append(
            f"| {r['scenario']} | {r['workers']} | {r['served']}/{r['requests']} "
            f"({100 * r['served_share']:.2f}%) "
            f"| {errors} | {f(r['p50_ms'])} | {f(r['p99_ms'])} | {f(r['p99_after_200_ms'])} "
            f"| {f(r['target_share'], 3)} | {f(r.get('target_share_after_fault'), 3)} "
            f"| {f(r.get('target_last_served_s_after_fault'), 2)} "
            f"| {r['served_without_decision_event']} | {r['decisions_without_outcome']} "
            f"| {r['client_resends']} | {f(r['router_cpu_ms_per_req'], 2)} |"
        )
    return "\n".join(lines)
