"""``polyroute run``: the main job on embedded defaults. Replay backends play a routing
dataset's models, a policy bundle trained on its train split (cached) routes, and the gateway
serves with file events.

Which dataset (:func:`choose_dataset`): ``--dataset DIR``, else ``../shared/data/routerbench``
when it sits beside the checkout, else the bundled MMLU-Pro sample. Both record the models'
answer texts (the sample for its 600 test prompts), and the replay serves them; where a dataset
records an outcome but no text, the replay answers with a labelled note of what was recorded
(model, question, graded right or wrong), never with invented text. Once the gateway is ready,
``run`` routes one test prompt through it and prints the answer. What serves is written to
``<home>/serving.json`` for ``polyroute policy``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from router.cli.options import EXAMPLE_CONFIG

# The demo's policy is warm-started on 800 train prompts (a third of the bundled sample's): VW's
# warm start is most of the first start's time, and when this was chosen the smaller warm start
# lost no expected reward on the test split against warm-starting on all of them.
_DEMO_WARM_START = 800
BESIDE = Path(__file__).parents[3] / "shared" / "data" / "routerbench"  # ../shared beside the repo
SERVING_FILE = "serving.json"


def choose_dataset(option: str | None, beside: Path = BESIDE) -> str:
    """The dataset ``run`` plays: the option, else ``beside`` if it holds a routing dataset,
    else ``"bundled"``."""
    if option:
        return option
    if (beside / "outcomes.parquet").is_file() and (beside / "prompts.parquet").is_file():
        return str(beside)
    return "bundled"


def _demo_subset(data: Any, n_train: int = _DEMO_WARM_START, seed: int = 0) -> Any:
    """``data`` with ``n_train`` of its train prompts (seeded) and all its other prompts."""
    import numpy as np

    split = data.prompts["split"].to_numpy()
    train = np.flatnonzero(split == "train")
    keep = np.random.default_rng(seed).choice(train, min(n_train, len(train)), replace=False)
    return data.subset(np.sort(np.concatenate([keep, np.flatnonzero(split != "train")])))


def bundle_dir(home: Path, dataset: str) -> Path:
    """Where the bundle of ``dataset`` is cached: ``<home>/bundle`` for the bundled sample,
    ``<home>/bundle-<name>-<hash of the path>`` for another dataset."""
    if dataset == "bundled":
        return home / "bundle"
    resolved = str(Path(dataset).resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    return home / f"bundle-{Path(resolved).name}-{digest}"


def run_config(raw: dict[str, Any], data: Any, replay_url: str, events_dir: Path) -> Any:
    """The router config of the main job: ``raw`` (a config's mapping) with every model sent to
    the replay backends. For a dataset other than the bundled sample, the models are the
    dataset's (``models.csv``), and profile model lists and fallbacks keep only those."""
    from router.config import RouterConfig

    raw = json.loads(json.dumps(raw, default=list))  # a deep copy (frozensets -> lists)
    names = list(data.model_names)
    if sorted(m["name"] for m in raw["models"]) != sorted(names):
        table = data.models.set_index("model")
        raw["models"] = [
            {
                "name": name,
                "provider": {"base_url": replay_url, "api_key_env": None},
                "usd_per_mtok_in": float(table.at[name, "usd_per_mtok_in"]),
                "usd_per_mtok_out": float(table.at[name, "usd_per_mtok_out"]),
                "ttft_ms": float(table.at[name, "ttft_ms"]),
                "tokens_per_s": float(table.at[name, "tokens_per_s"]),
                "context_tokens": int(table.at[name, "context_tokens"]),
                "tags": [],
            }
            for name in names
        ]
        for profile in raw.get("profiles", {}).values():
            profile["models"] = [m for m in profile.get("models", []) if m in names]
        raw["fallback"] = [m for m in raw.get("fallback", []) if m in names]
    for model in raw["models"]:
        model["provider"]["base_url"] = replay_url
    raw["tenants"] = []  # local demo: open access
    raw["events"]["directory"] = str(events_dir)
    return RouterConfig.model_validate(raw)


def _run(args: argparse.Namespace) -> int:
    """The main job (module docstring)."""
    import threading

    import uvicorn

    from router.app import create_app
    from router.bundle import PolicyBundle
    from router.config import load_config
    from router.events import FileEventSink
    from router.registry_source import default_home
    from training.bundle_train import train_bundle
    from training.datasets import load_dataset
    from training.replay.server import ReplayConfig, create_replay_app

    home = default_home()
    dataset = choose_dataset(args.dataset)
    data = load_dataset(dataset)
    cache = bundle_dir(home, dataset)
    if (cache / "bundle.json").is_file():
        bundle = PolicyBundle.load(cache)
    else:
        print(
            f"training a policy bundle on {_DEMO_WARM_START} of the train prompts of {dataset} "
            f"(once; cached in {cache}) ...",
            flush=True,
        )
        bundle = train_bundle(_demo_subset(data))
        bundle.save(cache)
    replay_url = f"http://127.0.0.1:{args.replay_port}/v1"
    raw = load_config(args.config).model_dump()
    config = run_config(raw, data, replay_url, home / "events")
    replay_app = create_replay_app(data, ReplayConfig(time_scale=args.time_scale))
    replay = uvicorn.Server(
        uvicorn.Config(replay_app, host="127.0.0.1", port=args.replay_port, log_level="warning")
    )
    threading.Thread(target=replay.run, daemon=True).start()
    sink = FileEventSink(
        config.events.directory,
        put_timeout_s=0.0,
        compress=config.events.compress,
        zstd_level=config.events.zstd_level,
    )
    # a real prompt of the dataset, so the replay answers with its recorded outcome and score
    test_prompts = data.split("test").prompts["prompt"]
    shortest = min((t for t in test_prompts if "'" not in t), key=len)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": shortest}]})
    texts = (
        "their recorded answers"
        if data.responses is not None
        else "no answer texts: a labelled note of each recorded outcome"
    )
    gateway = f"http://127.0.0.1:{args.port}"
    serving = {
        "what": "polyroute run: a local policy bundle (not in the MLflow registry)",
        "bundle": str(cache),
        "policy_version": bundle.version,
        "dataset": dataset,
        "gateway": f"http://127.0.0.1:{args.port}/v1",
        "replay": replay_url,
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / SERVING_FILE).write_text(json.dumps(serving, indent=2) + "\n")
    print(
        f"""
polyroute is up: gateway http://127.0.0.1:{args.port}/v1 (--port), replay backends {replay_url}
(--replay-port): {len(data.model_names)} models of {dataset}, {texts};
recorded latencies x {args.time_scale}. Policy bundle {bundle.version} from {cache}.
Events: {config.events.directory}   Metrics: http://127.0.0.1:{args.port}/metrics

  curl -s http://127.0.0.1:{args.port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{body}' -i

  {sys.executable} -c "import openai; \\
c = openai.OpenAI(base_url='http://127.0.0.1:{args.port}/v1', api_key='unused'); \\
print(c.chat.completions.create(model='auto', \\
messages=[{{'role': 'user', 'content': 'Hello'}}]).choices[0].message.content)"

Ctrl-C stops it.""",
        flush=True,
    )
    app = create_app(config, bundle, sink)
    threading.Thread(target=_first_answer, args=(gateway, shortest), daemon=True).start()
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        sink.close()
        replay.should_exit = True
        (home / SERVING_FILE).unlink(missing_ok=True)
    return 0


def _first_answer(gateway: str, question: str, wait_s: float = 60.0, transport: Any = None) -> None:
    """Once the gateway is ready, route ``question`` through it and print which model answered,
    with what (the first thing a user of ``make run`` sees is a routed answer, not only the
    commands to get one). Nothing is printed if the gateway does not come up in ``wait_s``."""
    import httpx

    deadline = time.monotonic() + wait_s
    with httpx.Client(base_url=gateway, timeout=30.0, transport=transport) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            return
        try:
            r = client.post(
                "/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": question}]},
            )
        except httpx.TransportError as exc:
            print(f"first routed request failed: {exc}", flush=True)
            return
    if r.status_code != 200:
        print(f"first routed request: HTTP {r.status_code}: {r.text[:300]}", flush=True)
        return
    answer = r.json()["choices"][0]["message"]["content"]
    print(
        f"\nFirst routed request (a test prompt of the dataset):\n  {question!r}\n"
        f"routed to {r.headers.get('x-polyroute-model', '?')}, which answered:\n  {answer!r}\n",
        flush=True,
    )


def add_command(sub: Any) -> None:
    """Register ``run``."""
    run = sub.add_parser("run", help="the main job: replay backends + gateway on embedded defaults")
    run.add_argument("--config", default=str(EXAMPLE_CONFIG), help="router YAML config")
    run.add_argument(
        "--dataset",
        help="routing dataset directory to play (its `response` column gives the answers), or "
        "'bundled' (default: ../shared/data/routerbench beside the checkout if present, else "
        "bundled)",
    )
    run.add_argument("--port", type=int, default=8000, help="port of the gateway")
    run.add_argument("--replay-port", type=int, default=8100, help="port of the replay backends")
    run.add_argument(
        "--time-scale", type=float, default=0.1, help="replay latency = recorded latency x this"
    )
    run.set_defaults(func=_run)
