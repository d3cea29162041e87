"""ruff over the package (its notebooks included: pyproject.toml [tool.ruff] includes *.ipynb), the tests and the
scripts; and no function of the package over 60 lines of code (docstring, blank and comment lines aside)."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.paths import REPO_ROOT


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "fluxnb", "tests", "scripts"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


MAX_FUNCTION_LINES = 60


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines from the `def` to the function's last line, less its docstring, blank lines and comment-only lines
    (decorators not counted; a nested function's lines count in the function around it too)."""
    first = function.body[0]
    docstring = (range(first.lineno, first.end_lineno + 1) if isinstance(first, ast.Expr)
                 and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str) else range(0))
    return sum(1 for number in range(function.lineno, function.end_lineno + 1)
               if number not in docstring and lines[number - 1].strip()
               and not lines[number - 1].strip().startswith("#"))


def test_no_function_is_longer_than_60_lines_of_code():
    too_long = []
    for path in sorted((REPO_ROOT / "fluxnb").rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = _code_lines(node, lines)
                if count > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}: {count} lines")
    assert too_long == [], f"functions over {MAX_FUNCTION_LINES} lines of code: split them into named steps"


def test_the_line_count_leaves_out_docstring_blanks_and_comments():
    source = 'def f(x):\n    """Doc.\n\n    More doc.\n    """\n\n    # a comment\n    y = x + 1\n    return y\n'
    assert _code_lines(ast.parse(source).body[0], source.splitlines()) == 3  # def, y = ..., return
