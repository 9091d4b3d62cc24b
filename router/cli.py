"""``polyroute``: the command line.

Subcommands
-----------
benchmark       every router and baseline on a routing dataset's test split (JSON, plots, MLflow)
bench-features  latency of the featurizer's one-request path (p50/p95/p99)
bench-decision  latency of the whole decision path (features, eligibility, policy, sampling)
bundle          train a policy bundle for serving
replay          serve a routing dataset's recorded answers as OpenAI-compatible models
serve           the OpenAI-compatible routing gateway
run             the main job: replay backends for the bundled sample + the gateway
bench-overhead  the gateway's overhead over direct upstream calls at fixed request rates
events export   joined decision logs as VW DSJSON
summarize       benchmark JSON files as Markdown tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from router.errors import ConfigError, PolyrouteError

_EXAMPLE_CONFIG = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


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

    from router.bundle import train_bundle
    from router.config import load_config
    from router.eligibility import RequestHints
    from router.pipeline import DecisionEngine
    from training.datasets import load_dataset

    data = load_dataset(args.dataset)
    engine = DecisionEngine(load_config(args.config), train_bundle(data), seed=0)
    test = data.split("test")
    texts = test.prompts["prompt"].tolist()
    hints = RequestHints()
    for text in texts[:50]:
        engine.decide(text, 1, len(text) // 4, 512, hints)  # warm-up
    decide, features = [], []
    for _ in range(args.repeats):
        for text in texts:
            decide.append(engine.decide(text, 1, len(text) // 4, 512, hints).decide_ns)
            start = time.perf_counter_ns()
            engine.bundle.featurizer.transform_one(text)
            features.append(time.perf_counter_ns() - start)
    row: dict[str, Any] = {"dataset": data.name, "n_calls": len(decide)}
    for name, values in (("decision", decide), ("features", features)):
        us = np.array(values) / 1e3
        for q in (50, 95, 99):
            row[f"{name}_p{q}_us"] = float(np.percentile(us, q))
    print(json.dumps(row))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from router.bundle import train_bundle
    from training.datasets import load_dataset

    bundle = train_bundle(
        load_dataset(args.dataset), w_cost=args.w_cost, w_latency=args.w_latency, seed=args.seed
    )
    path = bundle.save(args.out)
    print(
        json.dumps(
            {"bundle": str(path), "version": bundle.version, "models": len(bundle.catalogue.names)}
        )
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    import logging

    from router.backends.replay import ReplayConfig, serve_replay

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


def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from router.app import create_app
    from router.bundle import PolicyBundle
    from router.config import load_config
    from router.events import FileEventSink
    from router.events.postgres_sink import PostgresEventSink
    from router.events.writer import BackgroundEventWriter

    config = load_config(args.config)
    bundle = PolicyBundle.load(args.bundle)
    sink: BackgroundEventWriter
    if config.events.sink == "postgres":
        env = config.events.postgres_dsn_env
        dsn = os.environ.get(env or "")
        if not dsn:
            raise ConfigError(f"events.postgres_dsn_env: environment variable {env!r} is not set")
        sink = PostgresEventSink(dsn, put_timeout_s=0.0)
    else:
        # put_timeout 0: emit runs on the event loop, so a full queue refuses (503) at once
        # instead of stalling every request in flight
        sink = FileEventSink(config.events.directory, put_timeout_s=0.0)
    app = create_app(config, bundle, sink, seed=args.seed)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        sink.close()  # drain: nothing accepted is lost on shutdown
    return 0


def _run(args: argparse.Namespace) -> int:
    """The main job on embedded defaults: replay backends for the bundled sample, a policy bundle
    trained on its train split (cached), and the gateway with file events."""
    import threading

    import uvicorn

    from router.app import create_app
    from router.backends.replay import ReplayConfig, create_replay_app
    from router.bundle import PolicyBundle, train_bundle
    from router.config import RouterConfig, load_config
    from router.events import FileEventSink
    from training.datasets import load_dataset
    from training.tracking import default_home

    home = default_home()
    data = load_dataset("bundled")
    bundle_dir = home / "bundle"
    if (bundle_dir / "bundle.json").is_file():
        bundle = PolicyBundle.load(bundle_dir)
    else:
        print("training a policy bundle on the bundled sample's train split ...", flush=True)
        bundle = train_bundle(data)
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

  python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:{args.port}/v1', \\
api_key='unused'); print(c.chat.completions.create(model='auto', \\
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


def _bench_overhead(args: argparse.Namespace) -> int:
    from training.overhead import main_rows, run_overhead

    rates = [float(r) for r in args.rates.split(",")]
    rows = run_overhead(args.config, args.bundle, rates, args.seconds, Path(args.workdir))
    print(main_rows(rows))
    return 0


def _events_export(args: argparse.Namespace) -> int:
    from router.events import export_dsjson, read_events

    stats = export_dsjson(read_events(args.events), args.out)
    print(json.dumps({"out": args.out, **dataclasses.asdict(stats)}))
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from training.report_table import markdown_table

    for path in args.json:
        print(markdown_table(json.loads(Path(path).read_text())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyroute", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("benchmark", help="offline benchmark of routers on a routing dataset")
    bench.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    bench.add_argument("--json", help="write the result JSON here")
    bench.add_argument("--plots", help="write PNG plots into this directory")
    bench.add_argument("--strong", help="strong model of the APGR pair (default: best single)")
    bench.add_argument("--weak", help="weak model of the APGR pair (default: cheapest)")
    bench.add_argument(
        "--bandits",
        default="vw_squarecb,epsilon_greedy,linucb",
        help="comma-separated bandit policies to replay ('' for none)",
    )
    bench.add_argument("--bandit-lambdas", type=int, default=7, help="trade-offs per bandit")
    bench.add_argument(
        "--test-prompts",
        choices=("complete", "all"),
        default="complete",
        help="evaluate on test prompts with every outcome known (default, as the published "
        "references) or on all, a model being ineligible where its outcome is unknown",
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default: embedded SQLite)")
    bench.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_benchmark)

    feats = sub.add_parser("bench-features", help="latency of featurizing one request")
    feats.add_argument("--dataset", default="bundled")
    feats.add_argument("--repeats", type=int, default=3)
    feats.set_defaults(func=_bench_features)
    bundle = sub.add_parser(
        "bundle", help="train a policy bundle (features + VW policy) on a dataset's train split"
    )
    bundle.add_argument("--dataset", default="bundled")
    bundle.add_argument("--out", required=True, help="directory to write the bundle into")
    bundle.add_argument("--w-cost", type=float, default=0.2, help="reward weight of cost")
    bundle.add_argument("--w-latency", type=float, default=0.0, help="reward weight of latency")
    bundle.add_argument("--seed", type=int, default=0)
    bundle.set_defaults(func=_bundle)

    replay = sub.add_parser(
        "replay", help="serve a routing dataset's models as an OpenAI-compatible endpoint"
    )
    replay.add_argument("--dataset", default="bundled")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=8100)
    replay.add_argument("--time-scale", type=float, default=1.0, help="x recorded latencies")
    replay.add_argument("--error-rate", type=float, default=0.0, help="share of HTTP 500s")
    replay.add_argument("--slowdown-ms", type=float, default=0.0, help="extra delay per call")
    replay.add_argument("--outage", default="", help="comma-separated models answering 503")
    replay.add_argument("--seed", type=int, default=0)
    replay.set_defaults(func=_replay)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible routing gateway")
    serve.add_argument("--config", required=True, help="router YAML config")
    serve.add_argument("--bundle", required=True, help="policy bundle directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--seed", type=int, default=0)
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", help="the main job: replay backends + gateway on embedded defaults")
    run.add_argument("--config", default=str(_EXAMPLE_CONFIG))
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--replay-port", type=int, default=8100)
    run.add_argument("--time-scale", type=float, default=0.1)
    run.set_defaults(func=_run)

    overhead = sub.add_parser(
        "bench-overhead", help="router overhead vs direct calls, side by side at fixed rates"
    )
    overhead.add_argument("--config", default=str(_EXAMPLE_CONFIG))
    overhead.add_argument("--bundle", default=".polyroute/bundle")
    overhead.add_argument("--rates", default="50,100,200", help="requests/s per path")
    overhead.add_argument("--seconds", type=float, default=10.0)
    overhead.add_argument("--workdir", default=".polyroute/overhead")
    overhead.set_defaults(func=_bench_overhead)

    events = sub.add_parser("events", help="event log tools")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    export = events_sub.add_parser("export", help="export joined decisions for VW")
    export.add_argument("--events", required=True, help="event log directory")
    export.add_argument("--format", choices=("dsjson",), default="dsjson")
    export.add_argument("--out", required=True)
    export.set_defaults(func=_events_export)

    summary = sub.add_parser("summarize", help="benchmark JSON files as Markdown tables")
    summary.add_argument("json", nargs="+")
    summary.set_defaults(func=_summarize)

    decision = sub.add_parser(
        "bench-decision", help="latency of the decision path (features + eligibility + policy)"
    )
    decision.add_argument("--dataset", default="bundled")
    decision.add_argument("--config", default=str(_EXAMPLE_CONFIG))
    decision.add_argument("--repeats", type=int, default=3)
    decision.set_defaults(func=_bench_decision)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: Any = args.func(args)
    except PolyrouteError as exc:
        print(f"polyroute: error: {exc}", file=sys.stderr)
        return 2
    return int(result)


if __name__ == "__main__":
    raise SystemExit(main())
