"""The service commands: ``serve`` (the gateway) and ``replay`` (the replay backend on its own);
``run`` (the main job on embedded defaults) is in :mod:`router.cli.run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from features.errors import ConfigError
from router.cli.run import add_command as add_run_command


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
    # one /metrics for all workers (router.prometheus.render); set before the workers start
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

    add_run_command(sub)

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
