"""The offline commands: ``bundle`` (train a bundle), ``events export``, ``synth-events`` and
``train-scale``; ``evaluate`` (off-policy evaluation) and ``ope-coverage`` are in
:mod:`router.cli.ope`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from router.cli.ope import add_evaluate_command, add_ope_coverage_command
from router.cli.options import DEFAULT_POLICY


def _bundle(args: argparse.Namespace) -> int:
    from training.bundle_train import train_bundle
    from training.datasets import load_dataset

    bundle = train_bundle(
        load_dataset(args.dataset),
        w_cost=args.w_cost,
        w_latency=args.w_latency,
        seed=args.seed,
        policy_name=args.policy,
    )
    path = bundle.save(args.out)
    print(
        json.dumps(
            {"bundle": str(path), "version": bundle.version, "models": len(bundle.catalogue.names)}
        )
    )
    return 0


def _events_export(args: argparse.Namespace) -> int:
    from router.events import export_dsjson, read_events

    stats = export_dsjson(read_events(args.events), args.out)
    print(json.dumps({"out": args.out, **dataclasses.asdict(stats)}))
    return 0


def _synth_events(args: argparse.Namespace) -> int:
    from training.synth_events import SynthConfig, describe, write_synthetic_events

    config = SynthConfig(
        n_decisions=args.n,
        chunk_decisions=args.chunk,
        formats=tuple(f for f in args.formats.split(",") if f),
        seed=args.seed,
    )
    print(json.dumps(describe(write_synthetic_events(args.out, config))))
    return 0


def _train_scale(args: argparse.Namespace) -> int:
    import os
    import platform
    from datetime import UTC, datetime

    from router.policy.base import RewardSpec
    from training.scale import ScaleConfig, remove_run, train_at_scale

    reward = None
    if args.w_cost is not None or args.w_latency is not None:
        reward = RewardSpec(
            w_cost=args.w_cost or 0.0,
            w_latency=args.w_latency or 0.0,
            cost_scale=args.cost_scale,
            latency_scale=args.latency_scale,
        )
    config = ScaleConfig(
        join_window_s=args.join_window_s,
        default_quality=args.default_quality,
        reward=reward,
        n_estimators=args.n_estimators,
        n_workers=args.workers,
        worker_memory=args.worker_memory,
        vw_native_parser=not args.python_vw,
        workdir=args.workdir,
    )
    load_before = os.getloadavg()
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = train_at_scale(args.events, config)
    row = {
        "command": "polyroute train-scale " + " ".join(sys.argv[2:]),
        "date": started,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        **result.summary(),
    }
    if args.save_policy:
        result.policy.save(args.save_policy)
    if not args.keep:
        remove_run(result)
    text = json.dumps(row, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)
    return 0


def add_commands(sub: Any) -> None:
    """Register ``bundle``, ``evaluate``, ``events export``, ``ope-coverage``,
    ``synth-events`` and ``train-scale``."""
    bundle = sub.add_parser(
        "bundle", help="train a policy bundle (features + VW policy) on a dataset's train split"
    )
    bundle.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    bundle.add_argument("--out", required=True, help="directory to write the bundle into")
    bundle.add_argument("--w-cost", type=float, default=0.2, help="reward weight of cost")
    bundle.add_argument("--w-latency", type=float, default=0.0, help="reward weight of latency")
    bundle.add_argument("--seed", type=int, default=0, help="seed of the policy")
    bundle.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        help="registered policy name of the policy to train",
    )
    bundle.set_defaults(func=_bundle)

    add_evaluate_command(sub)  # router.cli.ope

    events = sub.add_parser("events", help="event log tools")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    export = events_sub.add_parser("export", help="export joined decisions for VW")
    export.add_argument("--events", required=True, help="event log directory")
    export.add_argument("--format", choices=("dsjson",), default="dsjson", help="export format")
    export.add_argument("--out", required=True, help="file to write")
    export.set_defaults(func=_events_export)

    add_ope_coverage_command(sub)  # router.cli.ope

    synth = sub.add_parser(
        "synth-events", help="synthetic-from-real event logs (JSON lines + Parquet) for scale tests"
    )
    synth.add_argument("--out", required=True, help="directory to write jsonl/ and parquet/ into")
    synth.add_argument("--n", type=int, default=100_000, help="logged decisions to generate")
    synth.add_argument("--chunk", type=int, default=50_000, help="decisions per file")
    synth.add_argument("--formats", default="jsonl,parquet", help="jsonl, parquet or both")
    synth.add_argument("--seed", type=int, default=0, help="seed of the generator")
    synth.set_defaults(func=_synth_events)

    scale = sub.add_parser(
        "train-scale",
        help="retrain the reward model (LightGBM on Dask) and the VW policy from a large log",
    )
    scale.add_argument("--events", required=True, help="Parquet-layout log or file sink dir")
    scale.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    scale.add_argument("--worker-memory", default="4GiB", help="memory limit per worker")
    scale.add_argument(
        "--join-window-s", type=float, default=3600.0, help="seconds a feedback may join"
    )
    scale.add_argument(
        "--default-quality", type=float, default=0.0, help="quality without feedback"
    )
    scale.add_argument(
        "--w-cost", type=float, help="recompute rewards with this cost weight (default: logged)"
    )
    scale.add_argument("--w-latency", type=float, help="... and this latency weight")
    scale.add_argument(
        "--cost-scale", type=float, default=1.0, help="the reward divides cost (USD) by this"
    )
    scale.add_argument(
        "--latency-scale",
        type=float,
        default=1000.0,
        help="the reward divides latency (ms) by this",
    )
    scale.add_argument(
        "--n-estimators", type=int, default=100, help="boosting rounds of the reward model"
    )
    scale.add_argument("--python-vw", action="store_true", help="feed VW from Python, not a pipe")
    scale.add_argument("--workdir", help="directory for intermediate Parquet (default: temp)")
    scale.add_argument("--keep", action="store_true", help="keep the intermediate files")
    scale.add_argument("--save-policy", help="save the trained VW policy to this directory")
    scale.add_argument("--json", help="write the timings JSON here")
    scale.set_defaults(func=_train_scale)
