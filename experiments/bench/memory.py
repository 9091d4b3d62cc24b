"""Resident memory and import time of a serving worker (issue 11, "a lean process").

Two measurements, each in fresh processes started from the checkout being measured:

1. **stages** (one child process): RSS before anything, after ``import router.app`` (the
   serving app factory), after ``PolicyBundle.load``, after ``create_app`` and 200 decisions
   through ``DecisionEngine.decide``; import and load times; which heavy packages are in
   ``sys.modules``.
2. **worker** (real processes): ``polyroute replay --dataset bundled --time-scale 0`` and
   ``polyroute serve --bundle B`` (one worker: the serving process is the command line's own
   process), VmRSS and VmHWM from ``/proc/<pid>/status`` when ``/readyz`` answers, after
   ``--requests`` routed requests (the bundled sample's prompts, in turn), and the wall time
   from starting the worker to ``/readyz``.

Run from the checkout::

    .venv/bin/python experiments/bench/memory.py --bundle /tmp/lean_bundle --requests 2000

Ports 18731 (replay) and 18732 (gateway) unless ``--port-base`` says otherwise. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# reported when found in the process (tests/test_lean.py asserts a worker holds none of them)
HEAVY = (
    "sklearn scipy pandas pyarrow joblib vowpalwabbit mabwiser lightgbm dask matplotlib mlflow "
    "training"
)

STAGES = r"""
import json, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
out = {"rss_start_mb": rss()}
t = time.perf_counter()
import router.app
out["import_s"] = time.perf_counter() - t
out["rss_imported_mb"] = rss()
from router.bundle import PolicyBundle
t = time.perf_counter()
bundle = PolicyBundle.load(sys.argv[1])
out["bundle_load_s"] = time.perf_counter() - t
out["rss_bundle_mb"] = rss()
from router.config import RouterConfig, load_config
from router.eligibility import RequestHints
raw = load_config(sys.argv[2]).model_dump()
raw["tenants"] = []
class Drop:
    def emit(self, event): return None
app = router.app.create_app(RouterConfig.model_validate(raw), bundle, Drop(), source=None,
                            challenger_source=None)
engine = app.state.gateway.engine
for i in range(200):
    engine.decide(f"question {i}: what is {i} + {i}?", 1, 40, 200, RequestHints())
out["rss_200_decisions_mb"] = rss()
heavy = json.loads(sys.argv[3])
out["heavy_modules"] = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy})
out["mlflow_server"] = "mlflow.server" in sys.modules
print(json.dumps(out))
"""


def _status(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def _wait(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout_s} s")


def _prompts(n: int) -> list[str]:
    import pandas as pd  # the client's, not the worker's

    path = Path("training/data/mmlu_pro_sample/prompts.parquet")
    texts = [str(t) for t in pd.read_parquet(path, columns=["prompt"])["prompt"]]
    return [texts[i % len(texts)] for i in range(n)]


def worker(bundle: str, config: str, requests: int, port_base: int) -> dict[str, Any]:
    import yaml

    replay_port, gateway_port = port_base, port_base + 1
    work = Path(tempfile.mkdtemp(prefix="polyroute-memory-"))
    raw = yaml.safe_load(Path(config).read_text())
    for model in raw["models"]:
        model["provider"]["base_url"] = f"http://127.0.0.1:{replay_port}/v1"
    raw["tenants"] = []
    raw["events"]["directory"] = str(work / "events")
    (work / "router.yaml").write_text(yaml.safe_dump(raw))
    python = [sys.executable, "-m", "router.cli"]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    replay = subprocess.Popen(
        [
            *python,
            "replay",
            "--dataset",
            "bundled",
            "--port",
            str(replay_port),
            "--time-scale",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    config_file, port = str(work / "router.yaml"), str(gateway_port)
    serve = subprocess.Popen(
        [*python, "serve", "--config", config_file, "--bundle", bundle, "--port", port],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"http://127.0.0.1:{gateway_port}/readyz", 120.0, serve)
        ready_s = time.monotonic() - started
        _wait(f"http://127.0.0.1:{replay_port}/v1/models", 120.0, replay)
        time.sleep(1.0)
        out: dict[str, Any] = {"ready_s": ready_s, "ready": _status(serve.pid)}
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{gateway_port}", timeout=30.0) as client:
            failed = 0
            for prompt in _prompts(requests):
                body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
                failed += client.post("/v1/chat/completions", json=body).status_code != 200
        out[f"after_{requests}_requests"] = _status(serve.pid)
        out["failed_requests"] = failed
        return out
    finally:
        for proc in (serve, replay):
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--config", default="experiments/configs/router.example.yaml")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--port-base", type=int, default=18731)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    stages = subprocess.run(
        [sys.executable, "-c", STAGES, args.bundle, args.config, json.dumps(HEAVY.split())],
        env=env,
        capture_output=True,
        text=True,
    )
    if stages.returncode != 0:
        raise SystemExit(f"the stages probe failed:\n{stages.stderr}")
    result = {
        "stages": json.loads(stages.stdout),
        "worker": worker(args.bundle, args.config, args.requests, args.port_base),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
