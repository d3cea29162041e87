"""Headless notebook runs with papermill: one new run folder per run, parameters checked before the kernel starts.

The executed notebook lands beside the images and manifest it produced. A failure inside the notebook
surfaces as the notebook's own error message (not only papermill's wrapper), and a misspelt parameter
name is refused instead of being silently ignored. The command holds the run folder's writer lock
(outputs.RunLock) for the whole execution; its kernel writes under it (FLUXNB_RUN_LOCK_TOKEN), and a second
`fluxnb run --resume` of the same folder is refused. A resume finishes the original request exactly: the
parameters are the ones stored in `fluxnb-run.json` when the run started, and different ones are refused.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..core.errors import InputError, NotebookFailed, OutputWriteError, RequestError
from ..core.files import atomic_write_json
from ..core.packaged import NOTEBOOKS_DIR, SAMPLE_INIT_IMAGE, notebook_names
from ..core.userfiles import load_yaml, parse_yaml
from ..models.params import EDITING_INPUT_NAMES, EDITING_INPUTS, make_request, refuse_changed_inputs
from ..models.selection import resolve_model
from ..models.tasks import IMAGE_TO_IMAGE, INPAINT, TEXT_TO_IMAGE, task_for
from .outputs import (
    LOCK_TOKEN_ENV,
    MANIFEST,
    RunLock,
    check_run_folder,
    new_run_dir,
    read_manifest,
    read_own_json,
)

# Parameters the runner sets itself: where to write, "no widgets" (they would hang headless), resuming.
RUNNER_PARAMETERS = ("output_dir", "interactive", "resume")
RUN_RECORD = "fluxnb-run.json"  # which notebook a run folder belongs to, and the parameters it was started with
# Notebook parameters that are arguments of make_request: checked before a run folder is made.
REQUEST_PARAMETERS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
                      "num_images", "init_image", "strength", "mode", *EDITING_INPUT_NAMES)
# The kernel every notebook names in its metadata (README: registered by scripts/setup.sh for JupyterLab).
KERNEL_NAME = "fluxnb"
KERNEL_DISPLAY_NAME = "Python 3 (fluxnb)"


def find_notebook(name: str | os.PathLike) -> Path:
    """A notebook path, or a bare name like `01_text_to_image`: NAME.ipynb in the current folder (a working copy made
    by `fluxnb notebooks`), else the notebook of that name shipped with fluxnb."""
    path = Path(name)
    candidates = [path, Path(f"{path}.ipynb"), NOTEBOOKS_DIR / path, NOTEBOOKS_DIR / f"{path}.ipynb"]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".ipynb":
            return candidate.resolve()
    raise InputError(f"notebook {str(name)!r} not found. The notebooks shipped with fluxnb: "
                     f"{', '.join(notebook_names())}",
                     fix="give the path of a .ipynb file, or one of those names")


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_cli_value(text: str) -> Any:
    """`-p NAME VALUE`, as papermill's -p reads it: the text as typed (a prompt keeps its `#1` and `&word`), except
    None/null, True/False and plain numbers (28 -> int, 3.5 -> float). Lists and mappings: -y (parse_yaml_value)."""
    stripped = text.strip()
    if stripped in ("None", "null", "~"):
        return None
    if stripped in ("True", "true", "False", "false"):
        return stripped in ("True", "true")
    if _NUMBER.fullmatch(stripped):
        return int(stripped) if re.fullmatch(r"[+-]?\d+", stripped) else float(stripped)
    return text


def parse_yaml_value(text: str) -> Any:
    """`-y NAME VALUE`: VALUE read as YAML ([a, b] -> list, {steps: [20, 28]} -> mapping), with the limits of
    fluxnb.core.userfiles (an alias bomb or a document too deep is refused, naming -y)."""
    return parse_yaml(text, "-y value")


def read_parameters_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping of notebook parameters, read with the limits of fluxnb.core.userfiles."""
    file = Path(path)
    data = load_yaml(file, "parameters file", fix="give the path of a UTF-8 YAML file of NAME: VALUE lines")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"parameters file {file} must hold a mapping of NAME: VALUE, got {type(data).__name__}.",
                         fix="write one `name: value` per line")
    return data


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """The names (and defaults) declared in the notebook's `parameters` cell."""
    import papermill

    try:
        return papermill.inspect_notebook(str(notebook))
    except Exception as exc:  # nbformat/json raise many types on a damaged file; all mean the same to the user
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        raise InputError(f"notebook {notebook} cannot be read as a Jupyter notebook ({reason}).",
                         fix=f"restore it (e.g. `git checkout -- {notebook.name}` in its folder) or give another "
                         "notebook") from None


def check_kernel(kernel_name: str | None) -> None:
    """--kernel must name an installed Jupyter kernel (checked before a run folder is made)."""
    if kernel_name is None:
        return
    from jupyter_client.kernelspec import KernelSpecManager

    available = sorted(KernelSpecManager().find_kernel_specs())
    if kernel_name not in available:
        raise InputError(f"--kernel {kernel_name!r} is not an installed Jupyter kernel. Installed: "
                         f"{', '.join(available) or 'none'}.",
                         fix="use one of those names, leave --kernel out (this Python, as kernel 'fluxnb'), or "
                         "register one with `python -m ipykernel install --user --name NAME`")


def check_request_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """Validate the generation parameters a notebook will pass to make_request, before any run folder exists.

    The notebook validates them again itself; this only moves the refusal of a bad `-p width 1000` ahead of the
    kernel, so that a typo costs no run folder and exits 2.
    """
    declared = notebook_parameters(notebook)
    if "model" not in declared or "prompt" not in declared:
        return
    values: dict[str, Any] = {}
    for name in ("model", *REQUEST_PARAMETERS):
        if name in parameters:
            values[name] = parameters[name]
        elif name in declared:
            try:
                values[name] = ast.literal_eval(declared[name]["default"])
            except (ValueError, SyntaxError):
                return  # a default that is not a literal: the notebook alone can judge it
    mode = values.pop("mode", None) or (IMAGE_TO_IMAGE if "init_image" in declared else TEXT_TO_IMAGE)
    spec = resolve_model(values.pop("model"), None, task=task_for(mode).name).spec
    if mode != TEXT_TO_IMAGE:
        values["init_image"] = values.get("init_image") or SAMPLE_INIT_IMAGE
    for other in set(EDITING_INPUT_NAMES) - set(EDITING_INPUTS.get(mode, ())):
        values.pop(other, None)  # notebook 06 declares every mode's inputs; the request takes its mode's
    if mode == INPAINT and values.get("mask") is None:
        return  # the mask is painted (or drawn) inside the notebook: only the notebook can check it
    make_request(spec, mode=mode, **values)


def check_parameter_names(notebook: Path, parameters: dict[str, Any]) -> None:
    declared = notebook_parameters(notebook)
    if not declared:
        raise InputError(f"{notebook.name} has no cell tagged `parameters`; it cannot be run by fluxnb run")
    for name in parameters:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InputError(
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

    Everything that can be checked is checked before the folder is made: parameter names and values, the kernel.
    stream: where the notebook's printed lines go as they are printed (per-image progress), e.g. sys.stdout.
    """
    path = find_notebook(notebook)
    parameters = dict(parameters or {})
    check_parameter_names(path, parameters)
    _refuse_runner_parameters(parameters)
    check_request_parameters(path, parameters)
    check_kernel(kernel_name)
    run_dir = new_run_dir(path.stem, outputs_dir)
    lock = RunLock.acquire(run_dir)
    try:
        try:
            atomic_write_json(run_dir / RUN_RECORD, {"command": "fluxnb run", "notebook": path.stem,
                                                     "parameters": parameters})
        except OSError as exc:
            raise OutputWriteError(run_dir / RUN_RECORD, exc) from None
        parameters.update(output_dir=str(run_dir))
        if "interactive" in notebook_parameters(path):  # a notebook without widgets or progress bars has none
            parameters.setdefault("interactive", False)
        _execute(path, run_dir, parameters, kernel_name, lock, stream)
    finally:
        lock.release()
    return run_dir


def resume_notebook(
    notebook: str | os.PathLike,
    run_dir: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    kernel_name: str | None = None,
    stream: TextIO | None = None,
) -> Path:
    """Re-execute a notebook into an existing run folder with the parameters it ran with, to finish that request.

    `parameters` (from -p/-f) may only repeat the stored values: a resume never changes what the run makes. The
    notebook skips the images the folder already holds (its `resume` parameter); the earlier executed notebook
    is kept as NAME.attempt-N.ipynb.
    """
    path = find_notebook(notebook)
    run_dir = check_run_folder(run_dir)
    if "resume" not in notebook_parameters(path):
        raise InputError(f"{path.name} has no `resume` parameter, so it cannot resume a run; run it anew instead.")
    parameters = dict(parameters or {})
    _refuse_runner_parameters(parameters)
    check_kernel(kernel_name)
    lock = RunLock.acquire(run_dir)  # before reading anything: another writer may be about to change it
    try:
        manifest = read_manifest(run_dir)
        stored = _stored_parameters(path, run_dir, manifest)
        _refuse_new_parameters(run_dir, stored, parameters)
        refuse_changed_inputs(manifest.get("parameters") or {}, run_dir)
        executed = run_dir / path.name
        if executed.is_file():
            attempt = 1
            while (kept := run_dir / f"{path.stem}.attempt-{attempt}.ipynb").exists():
                attempt += 1
            executed.rename(kept)
        merged = {k: v for k, v in stored.items() if k not in RUNNER_PARAMETERS}
        check_parameter_names(path, merged)
        merged.update(output_dir=str(run_dir), resume=True)
        if "interactive" in notebook_parameters(path):
            merged["interactive"] = False
        _execute(path, run_dir, merged, kernel_name, lock, stream)
    finally:
        lock.release()
    return run_dir


def _stored_parameters(notebook: Path, run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The parameters the run was started with, after checking the folder was made by this notebook."""
    import nbformat

    record_file = run_dir / RUN_RECORD
    if record_file.is_file():
        fix = "start a new run (the finished images of this one stay where they are)"
        try:
            record = read_own_json(record_file, fix)
        except OSError as exc:
            raise InputError(f"{record_file} cannot be read ({exc}); it was damaged.", fix=fix) from None
        if not isinstance(record, dict) or not isinstance(record.get("parameters"), dict):
            raise InputError(f"{record_file} is not a fluxnb run record.", fix="start a new run")
        if record.get("notebook") != notebook.stem:
            raise InputError(f"{run_dir} was made by `fluxnb run {record.get('notebook')}`, not {notebook.stem}.",
                             fix=f"fluxnb run {record.get('notebook')} --resume {run_dir}")
        return dict(record["parameters"])
    job = manifest.get("job")
    if job != notebook.stem:
        command = "fluxnb generate --resume" if job == "generate" else f"fluxnb run {job} --resume"
        raise InputError(f"{run_dir} was made by {'fluxnb generate' if job == 'generate' else repr(job)}, not by "
                         f"`fluxnb run {notebook.stem}`; a resume finishes the run that made the folder.",
                         fix=f"{command} {run_dir}")
    executed = run_dir / notebook.name  # a run folder from before run records: the executed notebook's parameters
    if not executed.is_file():
        return {}
    try:
        earlier = nbformat.read(executed, as_version=4)
    except Exception as exc:  # a truncated or damaged notebook: nbformat raises several types
        raise InputError(f"the executed notebook {executed} is damaged ({type(exc).__name__}); the parameters of "
                         "the run cannot be read from it. It is kept as it is.",
                         fix=f"start a new run with the same parameters (fluxnb run {notebook.stem} -p ...)") from None
    return dict(earlier.metadata.get("papermill", {}).get("parameters", {}))


def _refuse_new_parameters(run_dir: Path, stored: dict[str, Any], given: dict[str, Any]) -> None:
    """A resume finishes the original request: -p/-f may repeat a stored value, never change it."""
    changed = [name for name, value in given.items() if stored.get(name, _MISSING) != value]
    if changed:
        shown = ", ".join(f"{name}={str(given[name])[:60]!r} (the run has "
                          f"{str(stored[name])[:60]!r})" if name in stored else f"{name}={str(given[name])[:60]!r} "
                          "(the run left it at the notebook's default)" for name in changed)
        raise RequestError(changed[0], f"--resume finishes the original request exactly, and {shown} would change "
                           f"what the run in {run_dir} makes.",
                           fix="drop -p/-f to resume that run as it was started, or start a new run (without "
                           "--resume) for the new parameters")


_MISSING = object()


def _refuse_runner_parameters(parameters: dict[str, Any]) -> None:
    for name in ("output_dir", "resume"):
        if name in parameters:
            raise InputError(f"parameter {name!r} is set by fluxnb run itself (a path from parameters could write "
                              "outside the run folder). Fix: use --output-dir for the base folder, --resume RUN_DIR "
                              "to resume.")


@contextmanager
def this_python_kernel():
    """While inside, the kernel named KERNEL_NAME is this very Python (the one running fluxnb run).

    The notebooks name the project's kernel; a headless run must execute them with the fluxnb it was started from,
    whatever kernel of that name is registered for JupyterLab (or none). A kernelspec written into a temporary
    directory put first on JUPYTER_PATH (jupyter_client reads it before the user's and the system's) does that.
    Only its kernel.json is written (ipykernel's own dict), not the logos a JupyterLab launcher shows: a few hundred
    bytes, so that a nearly full disk fails on the executed notebook, which the error then names, not here.
    """
    from ipykernel.kernelspec import get_kernel_dict

    saved = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="fluxnb-kernel-") as prefix:
        data = str(Path(prefix) / "share" / "jupyter")
        spec_dir = Path(data) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps({**get_kernel_dict(), "display_name": KERNEL_DISPLAY_NAME}))
        os.environ["JUPYTER_PATH"] = os.pathsep.join([data, *([saved] if saved else [])])
        try:
            yield KERNEL_NAME
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved


def _execute(path: Path, run_dir: Path, parameters: dict[str, Any], kernel_name: str | None, lock: RunLock,
             stream: TextIO | None = None) -> None:
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed = run_dir / path.name
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # inherited by the kernel
    previous_token = os.environ.get(LOCK_TOKEN_ENV)
    os.environ[LOCK_TOKEN_ENV] = lock.token or previous_token or ""  # the kernel writes under this lock
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
    except OSError as exc:  # papermill writing the executed notebook: disk full, folder made read-only...
        if executed.is_file():
            try:
                nbformat.read(executed, as_version=4)
            except Exception:  # noqa: BLE001 - half-written by this very command: no use to anyone
                executed.unlink()
        error = OutputWriteError(executed, exc)
        recorded = _recorded_error(run_dir)
        if recorded:  # a full disk fails the notebook's own write first: its error is what the user must see
            error.add_note(f"the notebook had failed before, as its manifest says: {recorded}")
        raise error from None
    finally:
        if previous_token is None:
            os.environ.pop(LOCK_TOKEN_ENV, None)
        else:
            os.environ[LOCK_TOKEN_ENV] = previous_token


def _recorded_error(run_dir: Path) -> str | None:
    """The error the notebook recorded in its run folder's manifest, if it got that far."""
    try:
        error = read_manifest(run_dir).get("error")
    except (InputError, OSError):
        return None
    return error if isinstance(error, str) else None


def _mark_failed(run_dir: Path, ename: str, evalue: str) -> None:
    """Keep what the notebook finished; mark the run as failed (unless the notebook said more precisely)."""
    if (run_dir / MANIFEST).exists():
        manifest = read_manifest(run_dir)
        if manifest.get("status") in (None, "running", "complete"):
            manifest.update(status="failed", error=f"{ename}: {evalue}")
    else:
        manifest = {"status": "failed", "error": f"{ename}: {evalue}", "images": []}
    atomic_write_json(run_dir / MANIFEST, manifest)
