"""The learning-loop commands of ``polyroute``: ``train``, ``rollback``, ``policy``, ``demo``.

Every command imports what it runs (training, MLflow) when it runs: building the parser imports
nothing of ``training``, so ``polyroute serve``, whose process is the serving worker, never does
(tests/test_lean.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from router.cli.options import add_feedback_options


def _train(args: argparse.Namespace) -> int:
    from training.loop_turn import RetrainConfig, retrain
    from training.promote import GateConfig

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = RetrainConfig(
        events=args.events,
        since=args.since,
        tracking_uri=args.tracking_uri,
        model_name=args.model_name,
        base_bundle=args.base,
        warm_start=not args.from_scratch,
        holdout=args.holdout,
        join_window_s=args.join_window_s,
        default_quality=args.default_quality,
        skip_unrated=args.skip_unrated,
        w_cost=args.w_cost,
        w_latency=args.w_latency,
        gate=GateConfig(margin=args.margin, min_ess=args.min_ess, estimator=args.estimator),
        report_dir=args.report_dir,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        promote=not args.no_promote,
    )
    outcome = retrain(config)
    print(
        json.dumps(
            {
                "run_id": outcome.run_id,
                "version": outcome.version,
                "alias": outcome.alias,
                "promoted": outcome.decision.promote,
                "reason": outcome.decision.reason,
                "report": str(outcome.report),
                "champion_before": outcome.champion_version,
                "n_train": outcome.stats.get("n_train"),
                "n_holdout": outcome.stats.get("n_holdout"),
            },
            indent=2,
        )
    )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    import mlflow

    from training import model_registry

    with model_registry.start_training_run(args.tracking_uri, "rollback"):
        before, after = model_registry.rollback(args.model_name, args.tracking_uri, args.reason)
        mlflow.set_tags({"rollback.from": before, "rollback.to": after, "reason": args.reason})
    print(json.dumps({"champion_was": before, "champion_now": after, "reason": args.reason}))
    return 0


def _policy_status(args: argparse.Namespace) -> int:
    from training import model_registry

    status: dict[str, Any] = {"model": args.model_name}
    for alias in (model_registry.CHAMPION, model_registry.CHALLENGER):
        status[alias] = model_registry.alias_version(alias, args.model_name, args.tracking_uri)
    status["champion_history"] = model_registry.champion_history(args.model_name, args.tracking_uri)
    status.update(_local_serving(status[model_registry.CHAMPION] is None))
    print(json.dumps(status, indent=2))
    return 0


def _local_serving(no_champion: bool) -> dict[str, Any]:
    """What ``polyroute run`` serves (a local bundle, outside the registry), from the
    ``serving.json`` it writes in the home directory; without a champion, also where the local
    bundles are and how to register one."""
    from pathlib import Path

    from router.bundle import PolicyBundle
    from router.registry_source import default_home

    home = default_home()
    found: dict[str, Any] = {}
    serving = home / "serving.json"
    if serving.is_file():
        found["serving_now"] = json.loads(serving.read_text())
    if no_champion:
        local = {}
        for meta in sorted(home.glob("bundle*/bundle.json")):
            try:
                local[str(meta.parent)] = PolicyBundle.load(meta.parent).version
            except Exception as exc:  # a broken cache is reported, not fatal here
                local[str(meta.parent)] = f"unreadable: {exc}"
        found["local_bundles"] = local
        found["note"] = (
            "no @champion in the registry: `polyroute run` serves a local bundle (above), "
            "`polyroute serve --bundle DIR` the one given; `polyroute train --base "
            f"{Path(next(iter(local), home / 'bundle'))}` registers one as the first champion"
        )
    return found


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.demo import run_demo
    from training.loop import LoopConfig
    from training.promote import GateConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = LoopConfig(
        rounds=args.rounds,
        requests_per_round=args.requests,
        models=args.models.split(",") if args.models else None,
        feedback_share=args.feedback_share,
        gate=GateConfig(margin=args.margin, min_ess=args.min_ess),
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
    )
    summary = run_demo(
        Path(args.out),
        Path(args.work_dir),
        config,
        offline=args.offline,
        concurrency=args.concurrency,
        cold=args.cold,
        prior_share=args.prior_share,
    )
    final = summary["final"]
    print(
        f"final champion test reward {final['final'][0]:.3f} vs the start ({summary['start']}) "
        f"{final['cold'][0]:.3f}; "
        f"results in {args.out}/demo.md, demo.json, demo_reward.png, demo_quality_cost.png"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Register ``train``, ``rollback``, ``demo`` and ``policy`` on the ``polyroute``
    subparsers."""

    def registry_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--tracking-uri", help="MLflow tracking/registry URI (default: embedded SQLite)"
        )
        parser.add_argument(
            "--model-name", default="polyroute-policy", help="registered model of the policy"
        )

    train = sub.add_parser(
        "train", help="retrain the policy from logged events; evaluate, register and gate it"
    )
    train.add_argument(
        "--events", required=True, help="event directory (file sink) or postgresql:// DSN"
    )
    train.add_argument("--since", help="unix seconds, ISO 8601 time or a duration ago (24h, 7d)")
    train.add_argument("--base", help="bundle that produced the logs, when no @champion exists")
    train.add_argument("--from-scratch", action="store_true", help="do not warm-start")
    train.add_argument("--holdout", type=float, default=0.3, help="latest share kept for OPE")
    add_feedback_options(train)
    train.add_argument("--w-cost", type=float, help="reward cost weight (default: champion's)")
    train.add_argument(
        "--w-latency", type=float, help="reward latency weight (default: champion's)"
    )
    train.add_argument("--margin", type=float, default=0.0, help="gate: required improvement")
    train.add_argument("--min-ess", type=float, default=200.0, help="gate: min effective n")
    train.add_argument(
        "--estimator",
        default="dr",
        choices=("dr", "snipw", "ipw", "switch_dr"),
        help="gate: off-policy estimator",
    )
    train.add_argument(
        "--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals"
    )
    train.add_argument(
        "--report-dir", default=".polyroute/reports", help="directory of the HTML reports"
    )
    train.add_argument("--no-promote", action="store_true", help="register as @challenger only")
    train.add_argument("--seed", type=int, default=0, help="seed of the training")
    registry_options(train)
    train.set_defaults(func=_train)

    rollback = sub.add_parser("rollback", help="move @champion back to the previous champion")
    rollback.add_argument(
        "--reason", default="operator rollback", help="recorded on the registry versions"
    )
    registry_options(rollback)
    rollback.set_defaults(func=_rollback)

    demo = sub.add_parser(
        "demo", help="the closed learning loop: replay backends, gateway, SDK traffic, retraining"
    )
    demo.add_argument("--rounds", type=int, default=5, help="traffic + retraining rounds")
    demo.add_argument("--requests", type=int, default=1000, help="requests per round")
    demo.add_argument("--models", help="comma-separated models (default: six of the sample)")
    demo.add_argument(
        "--feedback-share", type=float, default=0.9, help="share of requests given feedback"
    )
    demo.add_argument("--margin", type=float, default=0.0, help="gate: required improvement")
    demo.add_argument("--min-ess", type=float, default=50.0, help="gate: min effective n")
    demo.add_argument(
        "--n-bootstrap", type=int, default=500, help="bootstrap resamples of the intervals"
    )
    demo.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    demo.add_argument("--offline", action="store_true", help="simulate traffic in-process")
    demo.add_argument(
        "--cold",
        action="store_true",
        help="start from an untrained VW policy (the learning curve from nothing) instead of the "
        "shipped prior (default: off)",
    )
    demo.add_argument(
        "--prior-share",
        type=float,
        default=1.0,
        help="fit the prior on this share of the sample's train prompts and send traffic from "
        "the others only (default: 1.0, the shipped prior, whose training prompts the traffic "
        "repeats)",
    )
    demo.add_argument(
        "--out", default="experiments/results/demo", help="directory of the demo's results"
    )
    demo.add_argument(
        "--work-dir", default=".polyroute/demo", help="directory of events, bundles, MLflow"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of traffic and training")
    demo.set_defaults(func=_demo)

    policy = sub.add_parser(
        "policy",
        help="what serves: the registry's champion and challenger, and the local bundle of a "
        "running `polyroute run`",
    )
    registry_options(policy)
    policy.set_defaults(func=_policy_status)
