"""Modules of one purpose, each of at most about 400 lines (issue 9, item 3): a module of
router/, training/ or features/ over 400 lines fails, unless its module docstring states why
on a line starting with "Longer than 400 lines because".
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router", "training", "features")
MAX_LINES = 400
REASON = "Longer than 400 lines because"


def too_long(name: str, text: str) -> str | None:
    """Why the module ``name`` with source ``text`` is too long ("NAME: N lines ..."), or None
    when it has at most ``MAX_LINES`` lines or its docstring has a line starting with
    ``REASON``."""
    lines = len(text.splitlines())
    if lines <= MAX_LINES:
        return None
    docstring = ast.get_docstring(ast.parse(text, filename=name)) or ""
    if any(line.lstrip().startswith(REASON) for line in docstring.splitlines()):
        return None
    return f'{name}: {lines} lines > {MAX_LINES}, and no "{REASON} ..." in its docstring'


def test_no_module_is_over_400_lines_without_a_stated_reason() -> None:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 50  # the walk found the packages
    problems = [
        problem
        for path in files
        if (problem := too_long(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    ]
    assert not problems, "split these modules by purpose, or state why not:\n" + "\n".join(problems)


def test_the_check_fails_a_long_module_and_passes_one_with_a_reason() -> None:
    body = "x = 1\n" * (MAX_LINES - 1)
    assert too_long("short.py", '"""A module."""\n' + body) is None  # 400 lines
    long = '"""A module."""\n' + body + "y = 2\n"  # 401 lines
    assert too_long("pkg/long.py", long) == (
        f'pkg/long.py: 401 lines > 400, and no "{REASON} ..." in its docstring'
    )
    no_docstring = "x = 1\n" * (MAX_LINES + 1)
    assert too_long("bare.py", no_docstring) is not None
    reason_outside_docstring = f"# {REASON} of a comment\n" + no_docstring
    assert too_long("comment.py", reason_outside_docstring) is not None
    stated = f'"""A module.\n\n{REASON} it is one table.\n"""\n' + body
    assert len(stated.splitlines()) > MAX_LINES
    assert too_long("stated.py", stated) is None
