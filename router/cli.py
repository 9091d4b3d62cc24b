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
ope-coverage    coverage of the OPE intervals against full-information truth (bundled sample)
evaluate        off-policy evaluation of policy bundles on logged decisions (HTML report)
train           retrain from logged events, evaluate off-policy, register, gate (training.cli)
rollback        move the @champion alias back to the previous champion
policy          the registered policy's champion, challenger and champion history
synth-events    synthetic-from-real event logs (file sink JSON lines + Parquet) of any size
train-scale     retrain reward model (LightGBM on Dask) + VW policy from a log larger than memory
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

from features.errors import ConfigError, PolyrouteError

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

    from router.config import load_config
    from router.eligibility import RequestHints
    from router.pipeline import STAGES, DecisionEngine
    from training.bundle_train import train_bundle
    from training.datasets import load_dataset

    data = load_dataset(args.dataset)
    engine = DecisionEngine(load_config(args.config), train_bundle(data), seed=0)
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
    row: dict[str, Any] = {"dataset": data.name, "n_calls": len(decide)}
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


def _bundle(args: argparse.Namespace) -> int:
    from training.bundle_train import train_bundle
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


def _load_policy_bundle(ref: str, tracking_uri: str | None = None) -> Any:
    """A policy bundle from a bundle directory or a registry reference: ``models:/NAME@ALIAS``
    or ``models:/NAME/VERSION`` (MLflow at ``tracking_uri``, default the embedded store)."""
    from router.bundle import PolicyBundle

    if not ref.startswith("models:/"):
        return PolicyBundle.load(ref)
    from training import registry

    name, _, rest = ref.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = registry.alias_version(alias, name, tracking_uri)
        if version is None:
            raise ConfigError(f"{ref}: no such registered model or alias")
    elif rest:
        version = rest
    else:
        raise ConfigError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return registry.load_bundle(version, name, tracking_uri)


def _evaluate(args: argparse.Namespace) -> int:
    from router.events.join import join_events
    from training.evaluate import evaluate_policies
    from training.report import write_report
    from training.train import load_events

    events = load_events(args.events, table_prefix=args.table_prefix)
    policies: dict[str, Any] = {}
    for i, ref in enumerate(args.candidate or []):
        name, _, path = ref.partition("=") if "=" in ref else ("", "", ref)
        name = name or ("candidate" if len(args.candidate) == 1 else f"candidate-{i + 1}")
        policies[name] = _load_policy_bundle(path, args.tracking_uri)
    if args.champion:
        policies["champion"] = _load_policy_bundle(args.champion, args.tracking_uri)
    joined = join_events(events, args.join_window_s, args.default_quality)
    evaluation = evaluate_policies(
        joined, policies, n_bootstrap=args.n_bootstrap, seed=args.seed, min_ess=args.min_ess
    )
    candidate = next((p for p in policies if p != "champion"), None)
    champion = "champion" if args.champion else None
    extra = {f"bundle {name}": getattr(b, "version", "?") for name, b in policies.items()}
    extra |= {"events": args.events if "://" not in args.events else "PostgreSQL"}
    out = write_report(
        evaluation, args.out, title=args.title, champion=champion, candidate=candidate,
        extra=extra, min_ess=args.min_ess,
    )  # fmt: skip
    table = evaluation.estimates.xs("dr", level="estimator").unstack("target")
    print(f"{evaluation.n} decisions evaluated; excluded: {evaluation.n_excluded or 'none'}")
    print(f"{'policy':<24}{'DR reward':>30}{'DR quality':>12}{'DR cost USD':>13}{'ESS':>8}")
    for policy in table.index:
        row = table.loc[policy]
        interval = f"[{row[('boot_low', 'reward')]:+.4f}, {row[('boot_high', 'reward')]:+.4f}]"
        print(
            f"{policy[:23]:<24}{row[('value', 'reward')]:>+10.4f} {interval:>19}"
            f"{row[('value', 'quality')]:>12.4f}{row[('value', 'cost_usd')]:>13.3g}"
            f"{evaluation.diagnostics[policy]['ess']:>8.0f}"
        )
        for warning in evaluation.diagnostics[policy]["warnings"]:
            print(f"  ! {warning}")
    if candidate is not None:
        imp = evaluation.improvement(candidate, champion or "logging")
        print(
            f"{candidate} - {champion or 'logging'} (DR reward): {imp['delta']:+.4f} "
            f"[{imp['low']:+.4f}, {imp['high']:+.4f}]"
        )
    print(f"wrote {out}")
    return 0


def _ope_coverage(args: argparse.Namespace) -> int:
    import functools
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.datasets import load_dataset
    from training.ope_coverage import (
        CoverageConfig,
        fit_candidate,
        machine_description,
        markdown_report,
        run_coverage,
        scenario_meta,
        summarise,
    )

    try:
        configs = []
        for item in (s for s in args.scenarios.split(",") if s):
            logging_policy, _, target = item.partition("/")
            configs.append(
                CoverageConfig(
                    n_runs=args.runs,
                    n_logged=args.n_logged,
                    target=target,
                    tau=args.tau,
                    logging=logging_policy,
                    logging_epsilon=args.logging_epsilon,
                    w_cost=args.w_cost,
                    reward_model=args.reward_model,
                    n_bootstrap=args.n_bootstrap,
                    seed=args.seed,
                )
            )
    except ValueError as exc:
        print(f"polyroute ope-coverage: error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    candidate = fit_candidate(load_dataset(args.dataset), args.w_cost, args.seed)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=args.quiet,
    ) as bar:
        for config in configs:
            task = bar.add_task(f"{config.logging}/{config.target}", total=config.n_runs)
            runs = run_coverage(candidate, config, functools.partial(bar.advance, task))
            results.append((scenario_meta(config, runs), summarise(runs)))
    seconds = time.perf_counter() - start
    command = (
        f"polyroute ope-coverage --dataset {args.dataset} --scenarios {args.scenarios} "
        f"--runs {args.runs} --n-logged {args.n_logged} --tau {args.tau} "
        f"--logging-epsilon {args.logging_epsilon} --w-cost {args.w_cost} "
        f"--reward-model {args.reward_model} --n-bootstrap {args.n_bootstrap} --seed {args.seed}"
    )
    date = datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    machine = machine_description()
    report = markdown_report(results, command, date, machine, seconds)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    if args.json:
        payload = {
            "command": command,
            "date": date,
            "machine": machine,
            "seconds": seconds,
            "scenarios": [
                {**meta, "summary": summary.to_dict(orient="index")} for meta, summary in results
            ],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1))
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
    serve.add_argument(
        "--bundle",
        help="policy bundle directory (default: the config's policy.registry alias, hot-reloaded)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (uvicorn)")
    serve.add_argument("--events-dir", help="event directory (default: the config's)")
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

    evaluate = sub.add_parser(
        "evaluate", help="off-policy evaluation of policy bundles on logged decisions"
    )
    evaluate.add_argument(
        "--events", required=True, help="event log directory, or a postgresql:// URL"
    )
    evaluate.add_argument("--table-prefix", default="polyroute", help="PostgreSQL table prefix")
    evaluate.add_argument(
        "--candidate",
        action="append",
        help="candidate bundle directory, optionally NAME=DIR (repeatable)",
    )
    evaluate.add_argument(
        "--champion", help="champion: bundle directory or models:/polyroute-policy@champion"
    )
    evaluate.add_argument("--tracking-uri", help="MLflow URI for models:/ references")
    evaluate.add_argument("--out", required=True, help="HTML report to write")
    evaluate.add_argument("--title", default="polyroute off-policy evaluation")
    evaluate.add_argument("--join-window-s", type=float, default=3600.0)
    evaluate.add_argument(
        "--default-quality", type=float, default=0.0, help="quality without feedback"
    )
    evaluate.add_argument("--n-bootstrap", type=int, default=1000)
    evaluate.add_argument("--min-ess", type=float, default=100.0)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(func=_evaluate)

    decision = sub.add_parser(
        "bench-decision", help="latency of the decision path (features + eligibility + policy)"
    )
    decision.add_argument("--dataset", default="bundled")
    decision.add_argument("--config", default=str(_EXAMPLE_CONFIG))
    decision.add_argument("--repeats", type=int, default=3)
    decision.set_defaults(func=_bench_decision)

    from training.cli import add_commands  # train, rollback, policy (the learning loop)

    add_commands(sub)
    ope_cov = sub.add_parser(
        "ope-coverage", help="coverage of the OPE intervals against full-information truth"
    )
    ope_cov.add_argument("--dataset", default="bundled")
    ope_cov.add_argument(
        "--scenarios",
        default="uniform/softmax,uniform/greedy,epsilon_greedy/softmax",
        help="comma-separated LOGGING/TARGET pairs (logging: uniform, epsilon_greedy; "
        "target: softmax, greedy)",
    )
    ope_cov.add_argument("--runs", type=int, default=200, help="seeded runs per scenario")
    ope_cov.add_argument("--n-logged", type=int, default=600, help="logged decisions per run")
    ope_cov.add_argument("--tau", type=float, default=0.05, help="softmax target temperature")
    ope_cov.add_argument("--logging-epsilon", type=float, default=0.3)
    ope_cov.add_argument("--w-cost", type=float, default=0.2, help="reward weight of cost")
    ope_cov.add_argument("--reward-model", choices=("ridge", "lgbm"), default="ridge")
    ope_cov.add_argument("--n-bootstrap", type=int, default=1000)
    ope_cov.add_argument("--seed", type=int, default=0)
    ope_cov.add_argument("--out", help="write the Markdown report here")
    ope_cov.add_argument("--json", help="write the JSON results here")
    ope_cov.add_argument("--quiet", action="store_true", help="no progress bar")
    ope_cov.set_defaults(func=_ope_coverage)

    synth = sub.add_parser(
        "synth-events", help="synthetic-from-real event logs (JSON lines + Parquet) for scale tests"
    )
    synth.add_argument("--out", required=True, help="directory to write jsonl/ and parquet/ into")
    synth.add_argument("--n", type=int, default=100_000, help="logged decisions to generate")
    synth.add_argument("--chunk", type=int, default=50_000, help="decisions per file")
    synth.add_argument("--formats", default="jsonl,parquet", help="jsonl, parquet or both")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth_events)

    scale = sub.add_parser(
        "train-scale",
        help="retrain the reward model (LightGBM on Dask) and the VW policy from a large log",
    )
    scale.add_argument("--events", required=True, help="Parquet-layout log or file sink dir")
    scale.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    scale.add_argument("--worker-memory", default="4GiB", help="memory limit per worker")
    scale.add_argument("--join-window-s", type=float, default=3600.0)
    scale.add_argument("--default-quality", type=float, default=0.0)
    scale.add_argument("--w-cost", type=float, help="recompute rewards with this cost weight")
    scale.add_argument("--w-latency", type=float, help="... and this latency weight")
    scale.add_argument("--cost-scale", type=float, default=1.0)
    scale.add_argument("--latency-scale", type=float, default=1000.0)
    scale.add_argument("--n-estimators", type=int, default=100)
    scale.add_argument("--python-vw", action="store_true", help="feed VW from Python, not a pipe")
    scale.add_argument("--workdir", help="directory for intermediate Parquet (default: temp)")
    scale.add_argument("--keep", action="store_true", help="keep the intermediate files")
    scale.add_argument("--save-policy", help="save the trained VW policy to this directory")
    scale.add_argument("--json", help="write the timings JSON here")
    scale.set_defaults(func=_train_scale)
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
