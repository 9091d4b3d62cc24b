"""One error tree: every exception the project raises is a class of :mod:`features.errors`.

The source of ``router/``, ``training/`` and ``features/`` is scanned (its AST, not its text):
no module raises a bare builtin exception class, except ``ValueError`` inside a pydantic
validator, which pydantic turns into a ``ValidationError`` naming the field. A re-raise
(``raise`` alone, or ``raise exc`` of a caught exception) is not a new error and passes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from features import errors
from router.http.errors import status_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router", "training", "features")
BUILTINS = frozenset(
    {
        "ValueError",
        "RuntimeError",
        "KeyError",
        "TypeError",
        "Exception",
        "AssertionError",
        "IndexError",
        "LookupError",
    }
)
VALIDATORS = frozenset({"field_validator", "model_validator", "validator", "root_validator"})
ALLOWED_IN_VALIDATORS = frozenset({"ValueError"})


def _name(node: ast.expr) -> str | None:
    """``X`` of ``X``, ``X(...)``, ``module.X`` and ``module.X(...)``; else None."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def bare_raises(source: str, filename: str = "<snippet>") -> list[str]:
    """``filename:line: raise X`` for every raise of a builtin exception class ``X``
    (:data:`BUILTINS`) in ``source``, except a ``ValueError`` inside a function decorated as a
    pydantic validator (at any depth: a helper nested in a validator raises through it)."""
    found: list[str] = []

    def visit(node: ast.AST, in_validator: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = {_name(d) for d in node.decorator_list}
            in_validator = in_validator or bool(decorators & VALIDATORS)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            name = _name(node.exc)
            if name in BUILTINS and not (in_validator and name in ALLOWED_IN_VALIDATORS):
                found.append(f"{filename}:{node.lineno}: raise {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, in_validator)

    visit(ast.parse(source, filename), False)
    return found


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


SNIPPET = """
import builtins
from pydantic import BaseModel, field_validator, model_validator
import pydantic

def f(x):
    if x:
        raise ValueError("bare")
    raise KeyError

async def g():
    try:
        pass
    except OSError as exc:
        raise builtins.RuntimeError("wrapped") from exc

class M(BaseModel):
    @field_validator("a")
    @classmethod
    def _a(cls, v):
        raise ValueError("pydantic names the field")

    @pydantic.model_validator(mode="after")
    def _b(self):
        def helper():
            raise ValueError("raised through the validator")
        helper()
        raise TypeError("pydantic does not convert this one")

    def method(self):
        raise AssertionError("not a validator")

def h(exc):
    try:
        pass
    except ValueError:
        raise
    raise ConfigError("from the tree")
    raise exc
    raise IndexError(0)
"""


def test_the_scanner_flags_every_bare_builtin_raise() -> None:
    """The check can fail: a snippet's bare raises are each named, by file and line."""
    assert bare_raises(SNIPPET, "snippet.py") == [
        "snippet.py:8: raise ValueError",
        "snippet.py:9: raise KeyError",
        "snippet.py:15: raise RuntimeError",
        "snippet.py:28: raise TypeError",
        "snippet.py:31: raise AssertionError",
        "snippet.py:40: raise IndexError",
    ]


def test_project_code_raises_only_classes_of_the_error_tree() -> None:
    files = project_files()
    assert len(files) > 50  # the scan found the packages
    found = [
        hit
        for path in files
        for hit in bare_raises(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not found, "raise a class of features/errors.py instead:\n" + "\n".join(found)


def test_the_tree_diagram_names_every_class() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:  # the root at the start of a line, the others after a branch
        assert re.search(rf"(^    |── ){name}\b", errors.__doc__, re.MULTILINE), name


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ConfigError, ValueError),
        (errors.DatasetError, ValueError),
        (errors.InvalidEventError, ValueError),
        (errors.MissingFrameError, ValueError),
        (errors.UnknownKeyError, KeyError),
        (errors.ServiceError, RuntimeError),
        (errors.PolicyCheckError, AssertionError),
    ],
)
def test_callers_catching_the_builtin_still_catch(
    cls: type[errors.PolyrouteError], builtin: type[Exception]
) -> None:
    with pytest.raises(builtin, match=r"^what was wrong$"):
        raise cls("what was wrong")
    assert issubclass(cls, errors.PolyrouteError)


def test_error_classes_at_the_http_edge() -> None:
    # an event the gateway built is its own bug (500), not the caller's dataset (422)
    assert status_of(errors.InvalidEventError("x")) == 500
    assert status_of(errors.MissingFrameError("x")) == 422
    assert str(errors.UnknownKeyError("no such key")) == "no such key"  # not KeyError's repr
