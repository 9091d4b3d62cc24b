"""The service commands: ``serve`` (the gateway), ``run`` (the main job on embedded defaults)
and ``replay`` (the replay backend on its own)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from features.errors import ConfigError
from router.cli.options import EXAMPLE_CONFIG


def _replay(args: argparse.Namespace) -> int:
    import logging

    from training.replay.server import ReplayConfig, serve_replay

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = ReplayConfig(
            time_scale=args.time_scale,
            error_rate=args.error_rate,
            slowdown_ms=args.slowdown_ms,
            outage_models=frozenset(m for m in args.outage.split(",") if m),
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"polyroute replay: error: {exc}", file=sys.stderr)
        return 2
    serve_replay(args.dataset, args.host, args.port, config)
    return 0


def _decision_key(given: str | None, events_dir: Path) -> str:
    """The hex key that signs decision ids: ``POLYROUTE_DECISION_KEY`` if set, else one kept in
    ``<events dir>/.decision-key`` (created once, mode 0600), so feedback for decisions served
    before a restart is still accepted and every worker shares it."""
    import os
    import secrets

    if given is not None:
        try:
            bytes.fromhex(given)
        except ValueError as exc:
            raise ConfigError("POLYROUTE_DECISION_KEY: expected a hex string") from exc
        return given
    path = events_dir / ".decision-key"
    if path.is_file():
        key = path.read_text().strip()
        try:
            bytes.fromhex(key)
        except ValueError as exc:
            raise ConfigError(f"{path}: expected a hex key (delete it to make a new one)") from exc
        return key
    events_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(key + "\n")
    return key


def _serve(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile

    import uvicorn

    from router import app as gateway_app
    from router.bundle import PolicyBundle
    from router.config import load_config
    from router.pipeline import DecisionEngine

    if args.workers < 1:
        raise ConfigError(f"--workers: expected a positive integer, got {args.workers}")
    config = load_config(args.config)
    args.bundle = args.bundle or config.policy_bundle
    # each worker builds its own app from these (router.app.app_from_env)
    os.environ[gateway_app.ENV_CONFIG] = str(Path(args.config).resolve())
    if args.bundle:
        os.environ[gateway_app.ENV_BUNDLE] = str(Path(args.bundle).resolve())
    os.environ[gateway_app.ENV_SEED] = str(args.seed)
    os.environ[gateway_app.ENV_WORKERS] = str(args.workers)
    if args.events_dir:
        os.environ[gateway_app.ENV_EVENTS_DIR] = str(Path(args.events_dir).resolve())
    events_dir = Path(args.events_dir or config.events.directory)
    os.environ[gateway_app.ENV_DECISION_KEY] = _decision_key(
        os.environ.get(gateway_app.ENV_DECISION_KEY), events_dir
    )
    if args.workers == 1:
        app = gateway_app.app_from_env()  # errors surface here, before anything listens
        # no per-request access log: ~0.05 ms a request (py-spy); the metrics count requests
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
        return 0
    # check once here so a bad config or bundle fails with a message, not N worker tracebacks
    if args.bundle:
        DecisionEngine(config, PolicyBundle.load(args.bundle))
    elif config.policy is None:
        raise ConfigError("--bundle: required when the config has no 'policy' section")
    # one /metrics for all workers (router.metrics.render); set before the workers start
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="polyroute-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "router.app:app_from_env",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=False,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


# The demo's policy is warm-started on a third of the sample's 2,400 train prompts: VW's
# warm start is ~95% of the first start (~17 s CPU on all of them, ~6 s on 800), and the
# smaller warm start lost nothing on the test split (expected reward 0.55-0.56 over two
# subsamples vs 0.52 on all; quality 0.62-0.63 vs 0.63, cost 0.19-0.21 vs 0.33 x 1e-3 USD).
_DEMO_WARM_START = 800


def _demo_subset(data: Any, n_train: int = _DEMO_WARM_START, seed: int = 0) -> Any:
    """``data`` with ``n_train`` of its train prompts (seeded) and all its other prompts."""
    import numpy as np

    split = data.prompts["split"].to_numpy()
    train = np.flatnonzero(split == "train")
    keep = np.random.default_rng(seed).choice(train, min(n_train, len(train)), replace=False)
    return data.subset(np.sort(np.concatenate([keep, np.flatnonzero(split != "train")])))


def _run(args: argparse.Namespace) -> int:
    """The main job on embedded defaults: replay backends for the bundled sample, a policy bundle
    trained on its train split (cached), and the gateway with file events."""
    import threading

    import uvicorn

    from router.app import create_app
    from router.bundle import PolicyBundle
    from router.config import RouterConfig, load_config
    from router.events import FileEventSink
    from training.bundle_train import train_bundle
    from training.datasets import load_dataset
    from training.replay.server import ReplayConfig, create_replay_app
    from training.tracking import default_home

    home = default_home()
    data = load_dataset("bundled")
    bundle_dir = home / "bundle"
    if (bundle_dir / "bundle.json").is_file():
        bundle = PolicyBundle.load(bundle_dir)
    else:
        print(
            f"training a policy bundle on {_DEMO_WARM_START} of the bundled sample's train "
            "prompts (once, ~10 s; cached) ...",
            flush=True,
        )
        bundle = train_bundle(_demo_subset(data))
        bundle.save(bundle_dir)
    raw = load_config(args.config).model_dump()
    replay_url = f"http://127.0.0.1:{args.replay_port}/v1"
    for model in raw["models"]:
        model["provider"]["base_url"] = replay_url
    raw["tenants"] = []  # local demo: open access
    raw["events"]["directory"] = str(home / "events")
    config = RouterConfig.model_validate(raw)
    replay_app = create_replay_app(data, ReplayConfig(time_scale=args.time_scale))
    replay = uvicorn.Server(
        uvicorn.Config(replay_app, host="127.0.0.1", port=args.replay_port, log_level="warning")
    )
    threading.Thread(target=replay.run, daemon=True).start()
    sink = FileEventSink(config.events.directory, put_timeout_s=0.0)
    # a real prompt of the sample, so the replay answers with its recorded outcome and score
    test_prompts = data.split("test").prompts["prompt"]
    shortest = min((t for t in test_prompts if "'" not in t), key=len)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": shortest}]})
    print(
        f"""
polyroute is up: gateway http://127.0.0.1:{args.port}/v1, replay backends {replay_url}
(the bundled MMLU-Pro sample's 29 models; recorded latencies x {args.time_scale}).
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
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        sink.close()
        replay.should_exit = True
    return 0


def add_commands(sub: Any) -> None:
    """Register ``serve``, ``run`` and ``replay``."""
    serve = sub.add_parser("serve", help="run the OpenAI-compatible routing gateway")
    serve.add_argument("--config", required=True, help="router YAML config")
    serve.add_argument(
        "--bundle",
        help="policy bundle directory (default: the config's policy.registry alias, hot-reloaded)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port of the gateway")
    serve.add_argument("--seed", type=int, default=0, help="seed of the policy's sampling")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (uvicorn)")
    serve.add_argument("--events-dir", help="event directory (default: the config's)")
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", help="the main job: replay backends + gateway on embedded defaults")
    run.add_argument("--config", default=str(EXAMPLE_CONFIG), help="router YAML config")
    run.add_argument("--port", type=int, default=8000, help="port of the gateway")
    run.add_argument("--replay-port", type=int, default=8100, help="port of the replay backends")
    run.add_argument(
        "--time-scale", type=float, default=0.1, help="replay latency = recorded latency x this"
    )
    run.set_defaults(func=_run)

    replay = sub.add_parser(
        "replay", help="serve a routing dataset's models as an OpenAI-compatible endpoint"
    )
    replay.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    replay.add_argument("--host", default="127.0.0.1", help="address to listen on")
    replay.add_argument("--port", type=int, default=8100, help="port to listen on")
    replay.add_argument("--time-scale", type=float, default=1.0, help="x recorded latencies")
    replay.add_argument("--error-rate", type=float, default=0.0, help="share of HTTP 500s")
    replay.add_argument("--slowdown-ms", type=float, default=0.0, help="extra delay per call")
    replay.add_argument("--outage", default="", help="comma-separated models answering 503")
    replay.add_argument("--seed", type=int, default=0, help="seed of the injected faults")
    replay.set_defaults(func=_replay)
