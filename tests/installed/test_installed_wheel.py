"""The product as users get it: the wheel built from this checkout, installed into new environments outside it, and
the README's two Workbench ways ("fluxnb installed as a package") run exactly as written there.

Each README block marked `<!-- installed-test: NAME -->` runs in bash with the variables it names filled in: HOME a
temporary home (so `--user` kernels and `~/fluxnb-notebooks` stay inside the test), FLUXNB_WHEEL the built wheel,
and for way A an existing environment with JupyterLab and its own kernel (what a Workbench conda environment is).
pip resolves against the default lane's pins plus this interpreter's torch (PIP_CONSTRAINT), so the test installs
what CI pinned and the CPU torch, never a new release; nothing from the checkout is on the path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

README_BLOCK = re.compile(r"<!-- installed-test: (?P<name>[\w-]+) -->\n```bash\n(?P<body>.*?)```", re.S)
PIP_TIMEOUT = 1200


def readme_steps(name: str) -> str:
    """The README's bash block for way `name`, as a person would paste it."""
    blocks = {m["name"]: m["body"] for m in README_BLOCK.finditer((REPO_ROOT / "README.md").read_text("utf-8"))}
    assert name in blocks, f"README.md has no block marked <!-- installed-test: {name} -->"
    return blocks[name]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` of a copy of the checkout (so no build/ folder is left in it), as a user builds it."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "outputs", "results", "__pycache__", "*.egg-info", "build", ".whl", ".cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(base / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (base / "dist").glob("fluxnb-*.whl")
    return built


def test_the_wheel_holds_the_whole_product(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "fluxnb").rglob("*.py")}
    assert modules - names == set()  # every subpackage and module, found without a list to keep up to date
    data = {"fluxnb/model_config.yaml", "fluxnb/knowledge.yaml", "fluxnb/replay.yaml",
            "fluxnb/notebooks/assets/init_image.png", "fluxnb/bench/bench-h100-run53.json",
            *(f"fluxnb/notebooks/{p.name}" for p in (REPO_ROOT / "fluxnb" / "notebooks").glob("*.ipynb"))}
    assert data - names == set()
    assert len([n for n in names if n.endswith(".ipynb")]) == 7  # 00-06
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "results/"))]


def user_path() -> str:
    """PATH without the checkout's venvs."""
    repo_bins = {str(REPO_ROOT / name / "bin") for name in (".venv", ".venv-guide")}
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p not in repo_bins)


def user_env(home: Path, tiny_cache: Path, constraints: Path) -> dict[str, str]:
    """A shell of a user of the installed product: nothing of the checkout's venvs, a home of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FLUXNB_OUTPUTS",
                                                             "JUPYTER_PATH", "JUPYTER_DATA_DIR", "FLUXNB_CONFIG")}
    env.update(PATH=user_path(), HOME=str(home), PIP_CACHE_DIR=str(Path.home() / ".cache" / "pip"),
               PIP_CONSTRAINT=str(constraints), PIP_DISABLE_PIP_VERSION_CHECK="1", FLUXNB_CACHE=str(tiny_cache),
               HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def constraints(tmp_path: Path) -> Path:
    """The default lane's pins and this interpreter's torch: what pip may install."""
    import torch

    file = tmp_path / "constraints.txt"
    pins = (REPO_ROOT / "requirements" / "default.txt").read_text("utf-8")
    file.write_text(f"{pins}\ntorch=={torch.__version__.split('+')[0]}\n", encoding="utf-8")
    return file


def bash(script: str, env: dict[str, str], cwd: Path, **variables: str) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env={**env, **variables},
                          capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    return done.stdout


def python3() -> str:
    """The system's python3 (the one the README's `python3 -m venv` means), not this test's venv."""
    found = shutil.which("python3", path=user_path())
    assert found, "no python3 on PATH"
    return found


def run_folders(notebooks: Path) -> dict[str, list[str]]:
    """Each run folder under the working folder's outputs/ (by job) and its image files, read from its manifest."""
    folders = {}
    for folder in sorted((notebooks / "outputs").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
        assert manifest["status"] == "complete", manifest
        folders[folder.name.split("-", 2)[-1]] = sorted(e["file"] for e in manifest["images"])
    return folders


def test_way_b_a_venv_of_its_own_registered_as_the_kernel(wheel: Path, home: Path, tiny_cache: Path,
                                                         constraints: Path):
    env = user_env(home, tiny_cache, constraints)
    bash(readme_steps("way-b"), env, home, FLUXNB_WHEEL=str(wheel))
    venv = home / "fluxnb-env"
    where = bash(f"'{venv}/bin/python' -c 'import fluxnb; print(fluxnb.__file__)'", env, home)
    assert where.startswith(str(venv / "lib")) and str(REPO_ROOT) not in where  # the installed copy, not the checkout
    kernel = json.loads((home / ".local/share/jupyter/kernels/fluxnb/kernel.json").read_text("utf-8"))
    assert kernel["argv"][0] == str(venv / "bin" / "python") and kernel["display_name"] == "Python 3 (fluxnb)"
    notebooks = home / "fluxnb-notebooks"
    assert sorted(p.name for p in notebooks.glob("*.ipynb"))[:2] == ["00_setup_verification.ipynb",
                                                                     "01_text_to_image.ipynb"]
    assert (notebooks / "assets" / "init_image.png").is_file()
    folders = run_folders(notebooks)  # outputs/ of the folder the commands were typed in
    assert [len(folders["generate"]), len(folders["01_text_to_image"])] == [1, 2]  # exactly the images asked for
    doctor = bash(f"'{venv}/bin/fluxnb' doctor --json", env, notebooks)
    row = next(r for r in json.loads(doctor)["rows"] if r["check"] == "model config")
    assert row["found"].startswith(str(venv / "lib")) and "(from the default shipped with fluxnb)" in row["found"]


def test_way_a_into_an_environment_that_already_has_jupyterlab(wheel: Path, home: Path, tiny_cache: Path,
                                                               constraints: Path, tmp_path: Path):
    env = user_env(home, tiny_cache, constraints)
    workbench = tmp_path / "conda-env"  # what a Workbench instance has: an environment with JupyterLab and a kernel
    subprocess.run([python3(), "-m", "venv", str(workbench)], check=True, timeout=300)
    bash(f"'{workbench}/bin/pip' install -q torch -r '{REPO_ROOT}/requirements/lab.txt'", env, home)
    bash(f"'{workbench}/bin/python' -m ipykernel install --user --name conda-env-py --display-name 'Python 3 (env)'",
         env, home)
    lab_before = bash(f"'{workbench}/bin/jupyter' lab --version", env, home)
    out = bash(readme_steps("way-a"), env, home, ENV=str(workbench), KERNEL="conda-env-py", FLUXNB_WHEEL=str(wheel))
    assert "model config" in out and "(from the default shipped with fluxnb)" in out  # the doctor's row
    assert bash(f"'{workbench}/bin/jupyter' lab --version", env, home) == lab_before  # JupyterLab left as it was
    notebooks = home / "fluxnb-notebooks"
    copy = json.loads((notebooks / "01_text_to_image.ipynb").read_text("utf-8"))
    assert copy["metadata"]["kernelspec"]["name"] == "conda-env-py"  # the copies open on the user's kernel
    executed = next((notebooks / "outputs").glob("*-01_text_to_image")) / "01_text_to_image.ipynb"
    assert json.loads(executed.read_text("utf-8"))["metadata"]["kernelspec"]["name"] == "conda-env-py"
    assert run_folders(notebooks) == {"01_text_to_image": run_folders(notebooks)["01_text_to_image"]}
    assert len(run_folders(notebooks)["01_text_to_image"]) == 2
