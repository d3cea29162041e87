"""ruff over the package, the tests and the notebooks (pyproject.toml [tool.ruff] includes *.ipynb)."""

from __future__ import annotations

import subprocess
import sys

from fluxnb.config import PROJECT_ROOT


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "fluxnb", "tests", "notebooks"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
