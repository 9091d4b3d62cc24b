"""What the command modules share: the example config path and the help formatter."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# router.policy.registry.DEFAULT_POLICY, named here so that parsing arguments imports no policy
# library (tests/test_quality_policy.py checks that the two agree)
DEFAULT_POLICY = "squarecb_quality"
EXAMPLE_CONFIG = Path(__file__).parents[2] / "experiments" / "configs" / "router.example.yaml"


def add_feedback_options(parser: argparse.ArgumentParser) -> None:
    """How decisions are joined with their feedback: the options ``train`` and ``evaluate``
    share, so that both treat an unrated decision the same way."""
    parser.add_argument(
        "--join-window-s", type=float, default=3600.0, help="seconds a feedback may join"
    )
    parser.add_argument(
        "--default-quality", type=float, default=0.0, help="quality without feedback"
    )
    parser.add_argument(
        "--skip-unrated",
        action="store_true",
        help="leave out every decision without feedback instead of learning --default-quality "
        "(right when callers rate a random share of answers; default: off)",
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless the help already names it, or there
    is none to name: flags, options without a default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        ):
            return text
        return f"{text} (default: %(default)s)"


def finish(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand parser under it the help formatter, and each
    subcommand a description (its one-line help) when it has none."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps: dict[str, Any] = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if child.description is None:
                    child.description = helps.get(name)
                finish(child)
