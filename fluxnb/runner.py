"""Headless notebook runs with papermill: one new run folder per run, parameters checked before the kernel starts.

The executed notebook lands beside the images and manifest it produced. A failure inside the notebook
surfaces as the notebook's own error message (not only papermill's wrapper), and a misspelt parameter
name is refused instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import yaml

from .config import PROJECT_ROOT
from .errors import FluxnbError, NotebookFailed
from .outputs import MANIFEST, atomic_write_json, new_run_dir, read_manifest

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
# Parameters the runner sets itself: where to write, "no widgets" (they would hang headless), resuming.
RUNNER_PARAMETERS = ("output_dir", "interactive", "resume")
# The kernel every notebook names in its metadata (README: registered by scripts/setup.sh for JupyterLab).
KERNEL_NAME = "fluxnb"
KERNEL_DISPLAY_NAME = "Python 3 (fluxnb)"


def find_notebook(name: str | os.PathLike) -> Path:
    """A notebook path, or a bare name like `01_text_to_image` looked up in notebooks/."""
    path = Path(name)
    candidates = [path, NOTEBOOKS_DIR / path, NOTEBOOKS_DIR / f"{path}.ipynb"]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".ipynb":
            return candidate.resolve()
    available = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    raise FluxnbError(f"notebook {str(name)!r} not found. Available in {NOTEBOOKS_DIR}: {', '.join(available)}")


def parse_cli_value(text: str) -> Any:
    """`-p NAME VALUE`: YAML scalars and lists (28 -> int, None/null -> None, [a, b] -> list); else the text."""
    if text.strip() in ("None", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None or isinstance(value, dict) else value


def read_parameters_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping of notebook parameters, read with the safe loader."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FluxnbError(f"parameters file {file} not found. Fix: give the path of a YAML file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FluxnbError(f"parameters file {file}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FluxnbError(f"parameters file {file} must hold a mapping of NAME: VALUE, got {type(data).__name__}")
    return data


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """The names (and defaults) declared in the notebook's `parameters` cell."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_parameter_names(notebook: Path, parameters: dict[str, Any]) -> None:
    declared = notebook_parameters(notebook)
    if not declared:
        raise FluxnbError(f"{notebook.name} has no cell tagged `parameters`; it cannot be run by fluxnb run")
    for name in parameters:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise FluxnbError(
                f"parameter {name!r} is not a parameter of {notebook.name}.{hint} "
                f"Allowed: {', '.join(n for n in declared if n not in RUNNER_PARAMETERS)}"
            )


def run_notebook(
    notebook: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    outputs_dir: str | os.PathLike | None = None,
    kernel_name: str | None = None,
    stream: TextIO | None = None,
) -> Path:
    """Execute a notebook headlessly into a new run folder and return that folder.

    stream: where the notebook's printed lines go as they are printed (per-image progress), e.g. sys.stdout.
    """
    path = find_notebook(notebook)
    parameters = dict(parameters or {})
    check_parameter_names(path, parameters)
    _refuse_runner_parameters(parameters)
    run_dir = new_run_dir(path.stem, outputs_dir)
    parameters.update(output_dir=str(run_dir))
    if "interactive" in notebook_parameters(path):  # a notebook without widgets or progress bars has none
        parameters.setdefault("interactive", False)
    _execute(path, run_dir, parameters, kernel_name, stream)
    return run_dir


def resume_notebook(
    notebook: str | os.PathLike,
    run_dir: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    kernel_name: str | None = None,
    stream: TextIO | None = None,
) -> Path:
    """Re-execute a notebook into an existing run folder with the parameters it ran with (plus `parameters`).

    The notebook skips the images the folder already holds (its `resume` parameter); the earlier executed
    notebook is kept as NAME.attempt-N.ipynb.
    """
    import nbformat

    path = find_notebook(notebook)
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file():
        raise FluxnbError(f"{run_dir} is not a run folder ({MANIFEST} is missing). Fix: give the folder printed as "
                          "`run folder: ...` by the run to resume.")
    if "resume" not in notebook_parameters(path):
        raise FluxnbError(f"{path.name} has no `resume` parameter, so it cannot resume a run; run it anew instead.")
    parameters = dict(parameters or {})
    _refuse_runner_parameters(parameters)
    executed = run_dir / path.name
    previous: dict[str, Any] = {}
    if executed.is_file():
        earlier = nbformat.read(executed, as_version=4)
        previous = dict(earlier.metadata.get("papermill", {}).get("parameters", {}))
        attempt = 1
        while (kept := run_dir / f"{path.stem}.attempt-{attempt}.ipynb").exists():
            attempt += 1
        executed.rename(kept)
    merged = {k: v for k, v in {**previous, **parameters}.items() if k not in RUNNER_PARAMETERS}
    check_parameter_names(path, merged)
    merged.update(output_dir=str(run_dir), resume=True)
    if "interactive" in notebook_parameters(path):
        merged["interactive"] = False
    _execute(path, run_dir, merged, kernel_name, stream)
    return run_dir


def _refuse_runner_parameters(parameters: dict[str, Any]) -> None:
    for name in ("output_dir", "resume"):
        if name in parameters:
            raise FluxnbError(f"parameter {name!r} is set by fluxnb run itself (a path from parameters could write "
                              "outside the run folder). Fix: use --output-dir for the base folder, --resume RUN_DIR "
                              "to resume.")


@contextmanager
def this_python_kernel():
    """While inside, the kernel named KERNEL_NAME is this very Python (the one running fluxnb run).

    The notebooks name the project's kernel; a headless run must execute them with the fluxnb it was started from,
    whatever kernel of that name is registered for JupyterLab (or none). A kernelspec written into a temporary
    directory put first on JUPYTER_PATH (jupyter_client reads it before the user's and the system's) does that.
    """
    from ipykernel.kernelspec import install

    saved = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="fluxnb-kernel-") as prefix:
        install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=prefix)
        data = str(Path(prefix) / "share" / "jupyter")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([data, *([saved] if saved else [])])
        try:
            yield KERNEL_NAME
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved


def _execute(path: Path, run_dir: Path, parameters: dict[str, Any], kernel_name: str | None,
             stream: TextIO | None = None) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed = run_dir / path.name
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # inherited by the kernel
    try:
        with this_python_kernel() as own_kernel:
            papermill.execute_notebook(
                str(path),
                str(executed),
                parameters=parameters,
                kernel_name=kernel_name or own_kernel,
                cwd=os.getcwd(),  # relative paths in parameters mean what they mean where the command was typed
                progress_bar=False,
                stdout_file=stream,  # the notebook's printed lines, live (fluxnb run --progress)
            )
    except PapermillExecutionError as exc:
        _mark_failed(run_dir, exc.ename, exc.evalue)
        raise NotebookFailed(path, executed, exc.ename, exc.evalue, exc.exec_count) from None


def _mark_failed(run_dir: Path, ename: str, evalue: str) -> None:
    """Keep what the notebook finished; mark the run as failed (unless the notebook said more precisely)."""
    if (run_dir / MANIFEST).exists():
        manifest = read_manifest(run_dir)
        if manifest.get("status") in (None, "running", "complete"):
            manifest.update(status="failed", error=f"{ename}: {evalue}")
    else:
        manifest = {"status": "failed", "error": f"{ename}: {evalue}", "images": []}
    atomic_write_json(run_dir / MANIFEST, manifest)
