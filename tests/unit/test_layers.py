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
    config = tmp_path / "fluxnb" / "models" / "config.py"
    config.write_text(config.read_text() + "\n\nfrom ..runs.generation import generate  # upward: models is below\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "fluxnb.models is not allowed to import fluxnb.runs" in done.stdout
    assert "fluxnb.models.config -> fluxnb.runs.generation" in done.stdout


def test_importing_one_module_of_a_lower_room_loads_no_higher_room():
    """The package root imports nothing on its own (PEP 562): `import fluxnb.core.units` loads core only."""
    code = ("import sys, fluxnb.core.units; print(sorted({m.split('.')[1] for m in sys.modules "
            "if m.startswith('fluxnb.')}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['core']"
