"""ruff over the package (its notebooks included: pyproject.toml [tool.ruff] includes *.ipynb), the tests and the
scripts."""

from __future__ import annotations

import subprocess
import sys

from tests.paths import REPO_ROOT


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "fluxnb", "tests", "scripts"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
