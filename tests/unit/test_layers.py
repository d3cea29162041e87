"""The layers of the package (README "Architecture"), enforced by import-linter's `lint-imports`.

The contract lives in pyproject.toml: each module imports only from the layers below it, and no package of fluxnb
has an import cycle, counting imports inside functions. The second test proves the check can fail: a copy of the
package with one upward import breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO_ROOT

LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                "sys.exit(lint_imports_command())", "--no-cache"]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT_IMPORTS, "--config", str(root / "pyproject.toml")], cwd=root,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(filter(None, [
                              str(root), os.environ.get("PYTHONPATH")]))},  # the copy first; then where tools are
                          capture_output=True, text=True)


def test_the_layers_hold():
    done = _lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path):
    shutil.copytree(REPO_ROOT / "fluxnb", tmp_path / "fluxnb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    config = tmp_path / "fluxnb" / "config.py"
    config.write_text(config.read_text() + "\n\nfrom .generation import generate  # upward: config is below it\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "fluxnb.config is not allowed to import fluxnb.generation" in done.stdout
