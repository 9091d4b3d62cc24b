"""The measuring commands: ``benchmark`` (routers on a routing dataset), ``bench-features``,
``bench-decision`` and ``bench-overhead`` (latencies), ``bench-load`` (rates, CPU, memory and
overload in one run), ``bench-chaos``, ``summarize`` (result tables)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.cli.options import DEFAULT_POLICY, EXAMPLE_CONFIG


def _benchmark(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.benchmark import BenchmarkConfig, run_benchmark
    from training.datasets import load_dataset
    from training.plots import plot_curves, plot_replay
    from training.report_table import benchmark_table

    console = Console(stderr=True)
    data = load_dataset(args.dataset)
    for note in data.notes:
        console.print(f"[dim]dataset: {note}[/dim]")
    config = BenchmarkConfig(
        strong=args.strong,
        weak=args.weak,
        bandits=tuple(b for b in args.bandits.split(",") if b),
        bandit_lambdas=args.bandit_lambdas,
        quality_bandit=not args.no_quality_bandit,
        warm_share=args.warm_share,
        rounds=args.rounds,
        test_prompts=args.test_prompts,
        seed=args.seed,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as bar:

        def progress(label: str, total: int) -> Callable[[], None]:
            task = bar.add_task(label, total=total)
            return lambda: bar.advance(task)

        result = run_benchmark(data, config, progress)
    summary = result.summary
    artifacts: list[Path] = []
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))
        artifacts.append(out)
    if args.plots:
        plots = Path(args.plots)
        plots.mkdir(parents=True, exist_ok=True)
        artifacts.append(plot_curves(summary, result.single_points, plots / "curves.png"))
        if result.traces:
            artifacts.append(plot_replay(summary, result.traces, plots / "replay.png"))
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=140)  # a log file or pipe: do not squeeze the table to 80
    out_console.print(benchmark_table(summary))
    if not args.no_mlflow:
        from training.tracking import log_benchmark

        run_id = log_benchmark(summary, artifacts, args.tracking_uri)
        console.print(f"MLflow run {run_id}")
    for path in artifacts:
        console.print(f"wrote {path}")
    return 0


def _bench_features(args: argparse.Namespace) -> int:
    import numpy as np

    from features.featurizer import RequestFeaturizer
    from training.datasets import load_dataset

    data = load_dataset(args.dataset)
    train, test = data.split("train"), data.split("test")
    featurizer = RequestFeaturizer().fit(train.prompts["prompt"].tolist())
    texts = test.prompts["prompt"].tolist()
    for text in texts[:50]:
        featurizer.transform_one(text)  # warm-up
    timings = []
    # the garbage collector stays on: its pauses are part of what a request sees
    for _ in range(args.repeats):
        for text in texts:
            start = time.perf_counter_ns()
            featurizer.transform_one(text)
            timings.append(time.perf_counter_ns() - start)
    us = np.array(timings) / 1e3
    row = {
        "dataset": data.name,
        "n_calls": len(us),
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "p50_us": float(np.percentile(us, 50)),
        "p95_us": float(np.percentile(us, 95)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
    }
    print(json.dumps(row))
    return 0


def _bench_decision(args: argparse.Namespace) -> int:
    import numpy as np

    from router.config import load_config
    from router.eligibility import RequestHints
    from router.pipeline import STAGES, DecisionEngine
    from training.bundle_train import train_bundle
    from training.datasets import load_dataset

    data = load_dataset(args.dataset)
    bundle = train_bundle(data, policy_name=args.policy)
    engine = DecisionEngine(load_config(args.config), bundle, seed=0)
    test = data.split("test")
    texts = test.prompts["prompt"].tolist()
    hints = RequestHints()
    for text in texts[:50]:
        engine.decide(text, 1, len(text) // 4, 512, hints)  # warm-up
    decide, features, stages = [], [], []
    # the garbage collector stays on: its pauses are part of what a request sees
    for _ in range(args.repeats):
        for text in texts:
            decision = engine.decide(text, 1, len(text) // 4, 512, hints)
            decide.append(decision.decide_ns)
            stages.append(decision.stages_ns)
            start = time.perf_counter_ns()
            engine.bundle.featurizer.transform_one(text)
            features.append(time.perf_counter_ns() - start)
    row: dict[str, Any] = {"dataset": data.name, "policy": args.policy, "n_calls": len(decide)}
    per_stage = np.array(stages).T
    series = [("decision", decide), ("features", features)]
    series += [(f"stage_{name}", per_stage[i]) for i, name in enumerate(STAGES)]
    for name, values in series:
        us = np.asarray(values) / 1e3
        for q in (50, 95, 99):
            row[f"{name}_p{q}_us"] = round(float(np.percentile(us, q)), 1)
    # why the policy's exact fast path is off (null: it served the decisions)
    row["policy_fast_path_error"] = getattr(engine.bundle.policy, "fast_path_error", None)
    print(json.dumps(row))
    return 0


def _bench_overhead(args: argparse.Namespace) -> int:
    from training.bench.overhead import main_rows, run_overhead

    rates = [float(r) for r in args.rates.split(",")]
    rows = run_overhead(
        args.config,
        args.bundle,
        rates,
        args.seconds,
        Path(args.workdir),
        upstream_kind=args.upstream,
        pin=args.pin,
    )
    print(main_rows(rows))
    if args.jsonl:
        with open(args.jsonl, "a") as out:
            out.write(main_rows(rows) + "\n")
    return 0


def _bench_load(args: argparse.Namespace) -> int:
    from training.bench.load import BASELINE, load_markdown, load_table, run_load

    baseline: dict[str, Any] | None = dict(BASELINE)
    if args.baseline == "none":
        baseline = None
    elif args.baseline:
        baseline = json.loads(args.baseline)
    result = run_load(
        args.config,
        args.bundle,
        [float(r) for r in args.rates.split(",")],
        args.seconds,
        Path(args.workdir),
        args.overload_factor,
        args.p99_ms,
        args.pin,
        baseline,
    )
    command = " ".join(["polyroute", *sys.argv[1:]])
    result["command"] = command
    table = load_table(result)
    print(table)
    if args.out:
        Path(args.out).write_text(load_markdown(result))
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _bench_chaos(args: argparse.Namespace) -> int:
    from training.bench.chaos import SCENARIOS, chaos_table, run_chaos
    from training.datasets import load_dataset

    scenarios = tuple(args.scenarios.split(",")) if args.scenarios else SCENARIOS
    prompts = load_dataset("bundled").split("test").prompts["prompt"].tolist()
    rows = run_chaos(
        args.config,
        args.bundle,
        prompts,
        args.rate,
        args.seconds,
        Path(args.workdir),
        scenarios,
        args.base_delay_ms,
        args.workers,
    )
    table = chaos_table(rows)
    print(table)
    if args.out:
        command = " ".join(["polyroute", *sys.argv[1:]])
        Path(args.out).write_text(f"Command: `{command}`\n\n{table}\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from training.report_table import markdown_table

    for path in args.json:
        print(markdown_table(json.loads(Path(path).read_text())))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``benchmark``, ``bench-features``, ``bench-decision``, ``bench-overhead`` and
    ``summarize``."""
    bench = sub.add_parser("benchmark", help="offline benchmark of routers on a routing dataset")
    bench.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    bench.add_argument("--json", help="write the result JSON here")
    bench.add_argument("--plots", help="write PNG plots into this directory")
    bench.add_argument("--strong", help="strong model of the APGR pair (default: best single)")
    bench.add_argument("--weak", help="weak model of the APGR pair (default: cheapest)")
    bench.add_argument(
        "--bandits",
        default="vw_squarecb",
        help="comma-separated bandit policies whose reward has the trade-off built in, replayed "
        "once per trade-off ('' for none; also epsilon_greedy, linucb) (default: %(default)s)",
    )
    bench.add_argument(
        "--bandit-lambdas",
        type=int,
        default=20,
        help="trade-offs (curve points) per --bandits policy (default: %(default)s)",
    )
    bench.add_argument(
        "--warm-share",
        type=float,
        default=0.25,
        help="share of the train split given with full information to the warm-started "
        "learning-loop replay of the serving policy (default: %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="retraining rounds of the learning-loop replay (default: %(default)s)",
    )
    bench.add_argument(
        "--no-quality-bandit",
        action="store_true",
        help="skip the learning-loop replays of the serving policy (squarecb_quality)",
    )
    bench.add_argument(
        "--test-prompts",
        choices=("complete", "all"),
        default="complete",
        help="evaluate on test prompts with every outcome known (default, as the published "
        "references) or on all, a model being ineligible where its outcome is unknown",
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of the fits and replays")
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default: embedded SQLite)")
    bench.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_benchmark)

    feats = sub.add_parser("bench-features", help="latency of featurizing one request")
    feats.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    feats.add_argument("--repeats", type=int, default=3, help="passes over the test prompts")
    feats.set_defaults(func=_bench_features)

    decision = sub.add_parser(
        "bench-decision", help="latency of the decision path (features + eligibility + policy)"
    )
    decision.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    decision.add_argument("--config", default=str(EXAMPLE_CONFIG), help="router YAML config")
    decision.add_argument("--repeats", type=int, default=3, help="passes over the test prompts")
    decision.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        help="registered policy name of the bundle trained for the benchmark",
    )
    decision.set_defaults(func=_bench_decision)

    overhead = sub.add_parser(
        "bench-overhead", help="router overhead vs direct calls, side by side at fixed rates"
    )
    overhead.add_argument("--config", default=str(EXAMPLE_CONFIG), help="router YAML config")
    overhead.add_argument("--bundle", default=".polyroute/bundle", help="policy bundle directory")
    overhead.add_argument("--rates", default="50,100,200", help="requests/s per path")
    overhead.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    overhead.add_argument(
        "--workdir", default=".polyroute/overhead", help="directory for configs, logs and events"
    )
    overhead.add_argument(
        "--upstream",
        choices=("mock", "replay"),
        default="mock",
        help="mock: minimal asyncio responder (default); replay: the replay backend",
    )
    overhead.add_argument(
        "--pin", action="store_true", help="router on CPU 0, upstream + load generator on CPU 1"
    )
    overhead.add_argument("--jsonl", help="also append the rows to this file")
    overhead.set_defaults(func=_bench_overhead)

    load = sub.add_parser(
        "bench-load",
        help="direct vs polyroute at several rates, CPU per request, RSS, and 4x overload "
        "(before/after admission) in one run",
    )
    load.add_argument("--config", default=str(EXAMPLE_CONFIG), help="router YAML config")
    load.add_argument("--bundle", default=".polyroute/bundle", help="policy bundle directory")
    load.add_argument(
        "--rates", default="100,200,400,800", help="requests/s per path (default %(default)s)"
    )
    load.add_argument("--seconds", type=float, default=10.0, help="per point (default 10)")
    load.add_argument(
        "--overload-factor",
        type=float,
        default=4.0,
        help="overload rate = this x the highest rate meeting --p99-ms (default 4)",
    )
    load.add_argument(
        "--p99-ms", type=float, default=50.0, help="capacity's p99 bound (default 50)"
    )
    load.add_argument(
        "--baseline",
        default="",
        help="JSON of admission keys of the router the overload point is compared with "
        '(default {"limiter": "fixed", "queue_wait_ms": 50}: the admission before the adaptive '
        "limit); 'none' to skip",
    )
    load.add_argument(
        "--pin", action="store_true", help="router on CPU 0, upstream + load generator on CPU 1"
    )
    load.add_argument(
        "--workdir", default=".polyroute/load", help="configs and events (default .polyroute/load)"
    )
    load.add_argument("--out", help="write the table (.md) and the result (.json) here")
    load.set_defaults(func=_bench_load)

    chaos = sub.add_parser(
        "bench-chaos", help="injected faults and a killed worker at a fixed rate (chaos results)"
    )
    chaos.add_argument("--config", default=str(EXAMPLE_CONFIG), help="router YAML config")
    chaos.add_argument("--bundle", default=".polyroute/bundle", help="policy bundle directory")
    chaos.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    chaos.add_argument("--seconds", type=float, default=15.0, help="per scenario (default 15)")
    chaos.add_argument("--scenarios", default="", help="comma-separated subset (default: all six)")
    chaos.add_argument(
        "--base-delay-ms", type=float, default=20.0, help="healthy upstream latency (default 20)"
    )
    chaos.add_argument(
        "--workdir",
        default=".polyroute/chaos",
        help="configs and events (default .polyroute/chaos)",
    )
    chaos.add_argument(
        "--workers", type=int, default=1, help="gateway worker processes (default 1)"
    )
    chaos.add_argument("--out", help="write the table (.md) and rows (.json) here")
    chaos.set_defaults(func=_bench_chaos)

    summary = sub.add_parser("summarize", help="benchmark JSON files as Markdown tables")
    summary.add_argument("json", nargs="+", help="benchmark result JSON files")
    summary.set_defaults(func=_summarize)
