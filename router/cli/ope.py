"""The off-policy evaluation commands: ``evaluate`` (policy bundles on logged decisions, an HTML
report) and ``ope-coverage`` (do the OPE intervals cover the truth on a full-information
dataset); :mod:`router.cli.offline` registers them among the other offline commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from features.errors import ConfigError
from router.cli.options import add_feedback_options


def _load_policy_bundle(ref: str, tracking_uri: str | None = None) -> Any:
    """A policy bundle from a bundle directory or a registry reference: ``models:/NAME@ALIAS``
    or ``models:/NAME/VERSION`` (MLflow at ``tracking_uri``, default the embedded store)."""
    from router.bundle import PolicyBundle

    if not ref.startswith("models:/"):
        return PolicyBundle.load(ref)
    from training import model_registry

    name, _, rest = ref.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = model_registry.alias_version(alias, name, tracking_uri)
        if version is None:
            raise ConfigError(f"{ref}: no such registered model or alias")
    elif rest:
        version = rest
    else:
        raise ConfigError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return model_registry.load_bundle(version, name, tracking_uri)


def _evaluate(args: argparse.Namespace) -> int:
    from router.events.join import join_events
    from training.ope_logged import evaluate_policies
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
        joined,
        policies,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        min_ess=args.min_ess,
        join_window_s=args.join_window_s,
        skip_unrated=args.skip_unrated,
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
        interval = f"[{row[('low', 'reward')]:+.4f}, {row[('high', 'reward')]:+.4f}]"
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
            f"[{imp['low']:+.4f}, {imp['high']:+.4f}]: {imp['verdict']}"
        )
    print(f"wrote {out}")
    return 0


def _ope_coverage(args: argparse.Namespace) -> int:
    import functools
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.datasets import load_dataset
    from training.ope_coverage import run_coverage, scenario_meta, summarise
    from training.ope_coverage_report import machine_description, markdown_report
    from training.ope_coverage_scenarios import CoverageConfig, fit_candidate

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
                    near_greedy_epsilon=args.near_greedy_epsilon,
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
            results.append((scenario_meta(config, runs), summarise(runs, config.equivalence)))
    seconds = time.perf_counter() - start
    command = (
        f"polyroute ope-coverage --dataset {args.dataset} --scenarios {args.scenarios} "
        f"--runs {args.runs} --n-logged {args.n_logged} --tau {args.tau} "
        f"--logging-epsilon {args.logging_epsilon} "
        f"--near-greedy-epsilon {args.near_greedy_epsilon} --w-cost {args.w_cost} "
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


def add_evaluate_command(sub: Any) -> None:
    """Register ``evaluate``."""
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
    evaluate.add_argument(
        "--title", default="polyroute off-policy evaluation", help="title of the report"
    )
    add_feedback_options(evaluate)
    evaluate.add_argument(
        "--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals"
    )
    evaluate.add_argument(
        "--min-ess", type=float, default=100.0, help="warn below this effective sample size"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    evaluate.set_defaults(func=_evaluate)


def add_ope_coverage_command(sub: Any) -> None:
    """Register ``ope-coverage``."""
    ope_cov = sub.add_parser(
        "ope-coverage", help="coverage of the OPE intervals against full-information truth"
    )
    ope_cov.add_argument("--dataset", default="bundled", help="dataset directory, or 'bundled'")
    ope_cov.add_argument(
        "--scenarios",
        default="uniform/softmax,uniform/greedy,epsilon_greedy/softmax,near_greedy/greedy",
        help="comma-separated LOGGING/TARGET pairs (logging: uniform, epsilon_greedy, "
        "near_greedy; target: softmax, greedy)",
    )
    ope_cov.add_argument("--runs", type=int, default=200, help="seeded runs per scenario")
    ope_cov.add_argument("--n-logged", type=int, default=600, help="logged decisions per run")
    ope_cov.add_argument("--tau", type=float, default=0.05, help="softmax target temperature")
    ope_cov.add_argument(
        "--logging-epsilon", type=float, default=0.3, help="exploration of epsilon_greedy logging"
    )
    ope_cov.add_argument(
        "--near-greedy-epsilon",
        type=float,
        default=0.02,
        help="exploration of near_greedy logging (0.02: a floor of 0.0007 per model of 29)",
    )
    ope_cov.add_argument("--w-cost", type=float, default=0.2, help="reward weight of cost")
    ope_cov.add_argument(
        "--reward-model",
        choices=("ridge", "lgbm"),
        default="ridge",
        help="reward model of the DM/DR estimators",
    )
    ope_cov.add_argument(
        "--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals"
    )
    ope_cov.add_argument("--seed", type=int, default=0, help="seed of the first run")
    ope_cov.add_argument("--out", help="write the Markdown report here")
    ope_cov.add_argument("--json", help="write the JSON results here")
    ope_cov.add_argument("--quiet", action="store_true", help="no progress bar")
    ope_cov.set_defaults(func=_ope_coverage)
