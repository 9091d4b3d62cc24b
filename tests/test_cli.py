"""The command line's help: a version, a description, and every option described with its
default; and the error tree's one HTTP status table."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

import features.errors as errors
from router.cli import build_parser, main
from router.http.errors import STATUS, status_of


def _parsers(
    parser: argparse.ArgumentParser, path: str = "polyroute"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("polyroute ")


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    assert "command line" not in (parser.description or "")
    for path, sub in _parsers(parser):
        text = sub.format_help()  # also checks that no help string breaks %-formatting
        assert sub.description, path
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"{path} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False):
                assert "default" in text, path
    serve_help = next(p for name, p in _parsers(parser) if name == "polyroute serve").format_help()
    assert "(default: 8000)" in serve_help


def test_http_status_is_mapped_at_the_edge_only() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.PolyrouteError)
        assert not hasattr(cls, "status_code"), name
    assert status_of(errors.NoEligibleModelError("x")) == 422
    assert status_of(errors.AuthError("x")) == 401
    assert status_of(errors.RequestError("x")) == 400
    assert status_of(errors.EventLogFullError("x")) == 503
    assert status_of(errors.FaultError("field", "x")) == 500
    assert set(STATUS) <= {getattr(errors, n) for n in errors.__all__}
