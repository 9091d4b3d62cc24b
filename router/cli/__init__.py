"""polyroute routes each request to an AI model API (OpenAI-compatible) chosen by a learned
contextual-bandit policy that trades answer quality against cost and latency, logs every
decision and outcome, and retrains, evaluates and promotes the policy from those logs.

Serving:     serve, run (the main job on embedded defaults), replay
Measuring:   benchmark, bench-features, bench-decision, bench-overhead, summarize
Offline:     bundle, evaluate, events export, ope-coverage, synth-events, train-scale
Learning:    train, rollback, policy, demo

"polyroute COMMAND --help" describes a command's options and their defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from features.errors import PolyrouteError
from router.cli import bench, loop, offline, serve
from router.cli.options import HelpFormatter, finish
from router.cli.serve import _decision_key

__all__ = ["_decision_key", "build_parser", "main", "version"]


def version() -> str:
    """The installed polyroute version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("polyroute")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyroute", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_commands(sub)
    bench.add_commands(sub)
    offline.add_commands(sub)
    loop.add_commands(sub)  # train, rollback, policy, demo (the learning loop)
    finish(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: Any = args.func(args)
    except PolyrouteError as exc:
        print(f"polyroute: error: {exc}", file=sys.stderr)
        return 2
    return int(result)
