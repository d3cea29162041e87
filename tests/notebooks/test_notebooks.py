"""The notebooks, executed headlessly with papermill (through fluxnb.runs.runner) on the real tiny FLUX.

Each run uses non-default parameters, and the assertions read what the run recorded: manifest.json, the PNGs and
their metadata, and the executed notebook kept in the run folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest
from PIL import Image

import fluxnb
from fluxnb.core.errors import NotebookFailed, RequestError
from fluxnb.runs.generation import peak_memory_bytes
from fluxnb.runs.runner import NOTEBOOKS_DIR, run_notebook, this_python_kernel

COMMITTED = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
GENERATION_PARAMETERS = {"model", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
                         "num_images", "output_dir", "interactive", "resume"}
REQUIRED_PARAMETERS = {
    "01_text_to_image": GENERATION_PARAMETERS,
    "02_image_to_image": GENERATION_PARAMETERS | {"init_image", "strength"},
}
TINY_WEIGHTS = "random weights"

T2I = {"model": "auto", "prompt": ["a red fox in the snow", "a lighthouse at dawn"], "num_images": 2, "seed": 7,
       "steps": 3, "width": 96, "height": 64, "guidance_scale": 2.5}
I2I = {"model": "flux-tiny", "prompt": "the same hills in winter", "num_images": 2, "seed": 11, "steps": 4,
       "width": 80, "height": 64, "strength": 0.5}


# -- committed notebooks ---------------------------------------------------------------------------------------


def test_the_generation_notebooks_exist():
    assert {p.stem for p in COMMITTED} >= set(REQUIRED_PARAMETERS)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell carries outputs: {cell.source[:60]!r}"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged `parameters`, expected exactly one"
    assert tagged[0].cell_type == "code"
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    # The project's own kernel (scripts/setup.sh registers it), never the generic python3 (a Workbench's system Python)
    assert nb.metadata.kernelspec.name == "fluxnb" and nb.metadata.kernelspec.display_name == "Python 3 (fluxnb)"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_first_code_cell_says_which_kernel_to_pick_when_fluxnb_is_missing(path: Path):
    """Run under a kernel without fluxnb, the first code cell fails with the kernel to pick and how to register it."""
    import subprocess
    import sys

    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "parameters" not in first.metadata.get("tags", [])
    without = "import sys; sys.modules['fluxnb'] = None  # as in a kernel where fluxnb is not installed\n"
    done = subprocess.run([sys.executable, "-c", without + first.source], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: fluxnb is not installed in this kernel.")
    assert 'Pick the kernel "Python 3 (fluxnb)"' in last and "bash scripts/setup.sh" in last
    assert '-m ipykernel install --user --name fluxnb --display-name "Python 3 (fluxnb)"' in last
    fine = subprocess.run([sys.executable, "-c", first.source], capture_output=True, text=True, timeout=120)
    assert fine.returncode == 0, fine.stderr


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_papermill_reads_every_name_of_the_parameters_cell(path: Path):
    """papermill parses the cell line by line and only logs a line it cannot read (that name is then refused by
    `fluxnb run` as unknown): every assignment Python sees must be a parameter papermill sees."""
    import ast

    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]
    assert list(papermill.inspect_notebook(str(path))) == assigned


@pytest.mark.parametrize("name", sorted(REQUIRED_PARAMETERS))
def test_parameters_cell_declares_the_documented_names(name: str):
    declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"))
    assert set(declared) >= REQUIRED_PARAMETERS[name]
    defaults = {key: value["default"] for key, value in declared.items()}
    assert defaults["model"] == '"auto"'
    assert defaults["interactive"] == "True" and defaults["output_dir"] == "None" and defaults["resume"] == "False"
    for key in ("steps", "guidance_scale", "width", "height", "negative_prompt"):
        assert defaults[key] == "None", f"{name}: {key} should default to None (the model's default)"


def test_default_init_image_is_kept_in_the_repo():
    declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / "02_image_to_image.ipynb"))
    assert declared["init_image"]["default"] == "None"  # None: the sample drawing
    with Image.open(fluxnb.SAMPLE_INIT_IMAGE) as image:
        assert image.format == "PNG" and image.size == (256, 256)
    assert fluxnb.SAMPLE_INIT_IMAGE.stat().st_size < 50_000


# -- executed runs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2i_run(tiny_cache, tmp_path_factory) -> Path:
    return run_notebook("01_text_to_image", T2I, outputs_dir=tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def i2i_run(tiny_cache, tmp_path_factory) -> Path:
    return run_notebook("02_image_to_image", I2I, outputs_dir=tmp_path_factory.mktemp("outputs"))


def code_outputs(executed: Path) -> list[tuple[nbformat.NotebookNode, list]]:
    nb = nbformat.read(executed, as_version=4)
    return [(cell, cell.outputs) for cell in nb.cells if cell.cell_type == "code"]


def stdout_of(cell_outputs: list) -> str:
    return "".join(o.text for o in cell_outputs if o.output_type == "stream" and o.name == "stdout")


def check_executed_notebook(run_dir: Path, name: str) -> list[tuple[nbformat.NotebookNode, list]]:
    executed = run_dir / f"{name}.ipynb"
    assert executed.is_file()
    cells = code_outputs(executed)
    errors = [o for _, outputs in cells for o in outputs if o.output_type == "error"]
    assert errors == []
    injected = [c for c, _ in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "interactive = False" in injected[0].source
    assert f'output_dir = "{run_dir}"' in injected[0].source
    # The first thing the run prints says plainly that the tiny model runs and that its pictures are noise.
    first_output = next(stdout_of(outputs) for cell, outputs in cells if stdout_of(outputs))
    first_lines = first_output.splitlines()[:2]
    assert "flux-tiny" in first_lines[0] and "RANDOM WEIGHTS" in first_lines[0] and "noise" in first_lines[1]
    # The grid and the timing charts were drawn.
    pngs = [o for _, outputs in cells for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2
    # The load report was displayed as a table; no widgets headless.
    assert any("<table>" in o.get("data", {}).get("text/html", "") for _, outputs in cells for o in outputs)
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for _, outputs in cells for o in outputs)
    return cells


def check_images(run_dir: Path, manifest: dict, size: tuple[int, int]) -> None:
    entries = manifest["images"]
    assert sorted(p.name for p in run_dir.glob("*.png")) == sorted(e["file"] for e in entries)
    for entry in entries:
        file = run_dir / entry["file"]
        with Image.open(file) as image:
            assert image.size == size
        assert fluxnb.read_png_metadata(file) == {k: v for k, v in entry.items() if k != "file"}
        assert entry["model"]["name"] == "flux-tiny" and entry["model"]["type"] == "flux-tiny"
        assert TINY_WEIGHTS in entry["model"]["weights"]
        assert entry["negative_prompt"] is None
        assert entry["device"]["device"] == "cpu"
        assert entry["versions"]["diffusers"] and entry["versions"]["transformers"]
        assert entry["seconds"] > 0 and peak_memory_bytes(entry) > 0
        assert entry["backend"] == {"transformer": "fp32", "text_encoder": "fp32", "text_encoder_2": "fp32",
                                    "vae": "fp32"}  # the tiny model, unquantized


@pytest.mark.stack  # in both lanes: end to end on the guide's own line too
def test_text_to_image_notebook_records_the_run(t2i_run: Path):
    manifest = fluxnb.read_manifest(t2i_run)
    assert manifest["status"] == "complete" and manifest["job"] == "01_text_to_image"
    assert manifest["model"]["name"] == "flux-tiny" and manifest["model"]["reason"].startswith("auto: no CUDA GPU")
    assert TINY_WEIGHTS in manifest["load_report"]["weights"]
    parameters = manifest["parameters"]
    assert parameters["prompts"] == T2I["prompt"]
    assert {k: parameters[k] for k in ("seed", "steps", "width", "height", "num_images", "guidance_scale")} == {
        k: T2I[k] for k in ("seed", "steps", "width", "height", "num_images", "guidance_scale")}
    entries = manifest["images"]
    assert len(entries) == 4  # 2 prompts x 2 images
    assert [(e["prompt"], e["seed"]) for e in entries] == [
        ("a red fox in the snow", 7), ("a red fox in the snow", 8), ("a lighthouse at dawn", 7),
        ("a lighthouse at dawn", 8)]
    assert {(e["steps"], e["guidance_scale"], e["mode"], e["strength"]) for e in entries} == {
        (3, 2.5, fluxnb.TEXT_TO_IMAGE, None)}
    assert all(e["model"]["reason"] == manifest["model"]["reason"] for e in entries)
    check_images(t2i_run, manifest, (96, 64))
    check_executed_notebook(t2i_run, "01_text_to_image")


def test_notebook_image_matches_the_package_api(t2i_run: Path, tiny_model, tiny_spec):
    """The notebook calls the same functions: the same request through the API gives the same picture."""
    entry = fluxnb.read_manifest(t2i_run)["images"][1]
    request = fluxnb.make_request(tiny_spec, prompt=entry["prompt"], seed=entry["seed"], steps=entry["steps"],
                                  guidance_scale=entry["guidance_scale"], width=entry["width"],
                                  height=entry["height"])
    (again,) = fluxnb.generate(tiny_model, request, progress=False)
    with Image.open(t2i_run / entry["file"]) as saved:
        difference = np.abs(np.asarray(saved, dtype=np.int16) - np.asarray(again.image, dtype=np.int16))
    assert difference.max() <= 1  # same seed, same pixels (up to rounding between two processes)


@pytest.mark.stack  # in both lanes: end to end on the guide's own line too
def test_image_to_image_notebook_records_the_run(i2i_run: Path):
    manifest = fluxnb.read_manifest(i2i_run)
    assert manifest["status"] == "complete" and manifest["job"] == "02_image_to_image"
    assert manifest["model"] == {"name": "flux-tiny", "id": "fluxnb/flux-tiny", "type": "flux-tiny",
                                 "reason": "chosen by name"}
    parameters = manifest["parameters"]
    assert parameters["mode"] == fluxnb.IMAGE_TO_IMAGE and parameters["strength"] == 0.5
    entries = manifest["images"]
    assert [(e["prompt"], e["seed"]) for e in entries] == [("the same hills in winter", 11),
                                                           ("the same hills in winter", 12)]
    for entry in entries:
        assert (entry["mode"], entry["steps"], entry["strength"]) == (fluxnb.IMAGE_TO_IMAGE, 4, 0.5)
        assert entry["init_image"] == str(fluxnb.SAMPLE_INIT_IMAGE)
        assert entry["file"] == fluxnb.runs.outputs.image_file_name(entry)  # named by its request item
        assert re.fullmatch(rf"\d{{4}}-i2i-seed{entry['seed']}-[0-9a-f]{{8}}\.png", entry["file"])
    check_images(i2i_run, manifest, (80, 64))
    cells = check_executed_notebook(i2i_run, "02_image_to_image")
    printed = "".join(stdout_of(outputs) for _, outputs in cells)
    assert "2 of 4 steps run" in printed
    assert "shares transformer, text_encoder, text_encoder_2, vae" in printed


# -- bad input reaches the user as fluxnb's own message --------------------------------------------------------


def test_bad_width_fails_before_the_model_loads(outputs_dir: Path):
    """Checked before the run folder and the kernel exist (the notebook checks again, for people in JupyterLab)."""
    with pytest.raises(fluxnb.RequestError) as failure:
        run_notebook("01_text_to_image", {"width": 1000, "steps": 2}, outputs_dir=outputs_dir)
    message = str(failure.value)
    assert message.startswith("parameter `width`: must be between 16 and 512") and "Fix:" in message
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())


def test_bad_width_inside_the_notebook_fails_before_the_model_loads(outputs_dir: Path):
    """The notebook's own check (what a person in JupyterLab meets): executed with papermill directly."""
    executed = outputs_dir / "executed.ipynb"
    outputs_dir.mkdir(parents=True, exist_ok=True)
    with this_python_kernel(), pytest.raises(papermill.PapermillExecutionError) as failure:  # the notebook's kernel
        papermill.execute_notebook(str(NOTEBOOKS_DIR / "01_text_to_image.ipynb"), str(executed),
                                   parameters={"width": 1000, "steps": 2, "interactive": False,
                                               "output_dir": str(outputs_dir / "run")}, progress_bar=False)
    assert failure.value.ename == "RequestError"
    assert "parameter `width`" in failure.value.evalue and "between 16 and 512" in failure.value.evalue
    cells = code_outputs(executed)
    loading = [outputs for cell, outputs in cells if "load_model(" in cell.source]
    assert loading == [[]]  # validation stopped the run before any model was loaded
    assert not (outputs_dir / "run").exists()  # nor was a run folder made


def test_all_bad_values_show_as_one_block_without_a_stack(outputs_dir: Path):
    """width 100 and steps 0 together: fluxnb run refuses both before any kernel starts; in the notebook itself
    (what a person in JupyterLab meets) the error is render_error's block naming both."""
    with pytest.raises(RequestError) as refused:
        run_notebook("01_text_to_image", {"width": 100, "steps": 0}, outputs_dir=outputs_dir)
    assert refused.value.parameters == ["steps", "width"]
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())
    executed = outputs_dir / "executed.ipynb"
    outputs_dir.mkdir(parents=True, exist_ok=True)
    with this_python_kernel(), pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(NOTEBOOKS_DIR / "01_text_to_image.ipynb"), str(executed),
                                   parameters={"width": 100, "steps": 0, "interactive": False,
                                               "output_dir": str(outputs_dir / "run")}, progress_bar=False)
    assert "parameter `steps`" in failure.value.evalue and "parameter `width`" in failure.value.evalue
    (error,) = [o for _, outputs in code_outputs(executed) for o in outputs if o.output_type == "error"]
    assert error.traceback[0] == "error: 2 parameters are not valid:"
    assert error.traceback[1].startswith("  - parameter `steps`: must be between 1 and 50")
    assert error.traceback[2].startswith("  - parameter `width`: 100 is not a multiple of 16")
    assert not any("File " in line or "Traceback" in line or "site-packages" in line for line in error.traceback)


def test_fluxnb_run_streams_a_line_per_image_with_progress_and_is_quiet_without(outputs_dir: Path):
    """`fluxnb run` in a real process: --progress prints each image as it is saved, before the run ends; piped
    output without the flag (CI, logs) stays quiet."""
    import os
    import subprocess
    import sys

    base = [sys.executable, "-m", "fluxnb.cli", "run", "01_text_to_image", "-p", "steps", "1", "-p", "width", "32",
            "-p", "height", "32", "-p", "num_images", "2", "--output-dir", str(outputs_dir)]
    env = {**os.environ, "CI": "1"}
    loud = subprocess.run([*base, "--progress"], capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode == 0, loud.stderr
    lines = loud.stdout.splitlines()
    saved = [i for i, line in enumerate(lines) if line.startswith("image ") and " saved: " in line]
    assert [lines[i].split(" saved:")[0] for i in saved] == ["image 1/2", "image 2/2"]
    assert lines[-1].startswith("run folder: ")  # the CLI's last line, after the streamed ones
    quiet = subprocess.run(base, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert " saved: " not in quiet.stdout and "run folder: " in quiet.stdout


def test_fast_backend_is_selected_by_name(outputs_dir: Path, monkeypatch):
    """model='flux-dev-torchao-int8dq' (a compiled torchao entry): chosen, validated against its entry, then refused
    at load on this CPU machine with the reason (the same entry runs on the GPU: results/bench-synthetic.json)."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # past the gated-model check, to the machine check
    with pytest.raises(NotebookFailed) as failure:
        run_notebook("01_text_to_image", {"model": "flux-dev-torchao-int8dq", "steps": 2}, outputs_dir=outputs_dir)
    error = failure.value
    assert error.ename == "ModelUnavailableError" and "flux-dev-torchao-int8dq" in error.evalue
    assert "needs" in error.evalue and "Fix:" in error.evalue
    manifest = fluxnb.read_manifest(error.executed.parent)
    assert manifest["model"]["name"] == "flux-dev-torchao-int8dq" and manifest["model"]["reason"] == "chosen by name"
    assert manifest["parameters"]["width"] == 1024 and manifest["parameters"]["steps"] == 2
    assert "hf_not_a_real_token" not in error.executed.read_text(encoding="utf-8")


def test_misspelt_parameter_is_refused_with_the_allowed_names(outputs_dir: Path):
    with pytest.raises(fluxnb.FluxnbError) as failure:
        run_notebook("01_text_to_image", {"stpes": 3}, outputs_dir=outputs_dir)
    message = str(failure.value)
    assert "'stpes' is not a parameter of 01_text_to_image.ipynb" in message
    assert "Did you mean 'steps'?" in message
    assert "Allowed: model, prompt, negative_prompt, seed, steps" in message
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())  # refused before any run folder


def test_missing_init_image_names_the_parameter(outputs_dir: Path):
    with pytest.raises(fluxnb.RequestError) as failure:
        run_notebook("02_image_to_image", {"init_image": "no-such-picture.png"}, outputs_dir=outputs_dir)
    message = str(failure.value)
    assert message.startswith("parameter `init_image`: 'no-such-picture.png' does not exist")
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())


def test_interactive_run_then_resume_after_a_kill(outputs_dir: Path):
    """interactive=True (the JupyterLab default) shows the form in a real kernel; then a run killed before its last
    image is finished by `fluxnb run --resume`, which re-executes the notebook and generates just that image."""
    from fluxnb.runs.runner import resume_notebook

    run_dir = run_notebook("01_text_to_image", {"prompt": ["a fox", "a boat"], "steps": 1, "seed": 5,
                                                "interactive": True}, outputs_dir=outputs_dir)
    cells = code_outputs(run_dir / "01_text_to_image.ipynb")
    assert [o for _, outputs in cells for o in outputs if o.output_type == "error"] == []
    widget_cell, widget_outputs = cells[-1]
    assert "text_to_image_ui(" in widget_cell.source
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget_outputs)

    first, last = fluxnb.read_manifest(run_dir)["images"]
    kept = (run_dir / first["file"]).stat().st_mtime_ns
    (run_dir / last["file"]).unlink()  # as if the kernel died while writing it
    assert resume_notebook("01_text_to_image", run_dir) == run_dir
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["resumed"] == 1
    assert [(e["file"], e["prompt"], e["seed"]) for e in manifest["images"]] == [
        (first["file"], "a fox", 5), (last["file"], "a boat", 5)]
    assert (run_dir / first["file"]).stat().st_mtime_ns == kept  # the finished image was not redone
    assert (run_dir / "01_text_to_image.attempt-1.ipynb").is_file()  # the first execution is kept
    injected = [c for c, _ in code_outputs(run_dir / "01_text_to_image.ipynb")
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert "resume = True" in injected[0].source and "interactive = False" in injected[0].source
    assert 'prompt = ["a fox", "a boat"]' in injected[0].source


def test_relative_init_image_is_read_from_the_working_directory(tmp_path: Path, monkeypatch, outputs_dir: Path):
    Image.new("RGB", (40, 40), (200, 120, 30)).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)  # where the user typed `fluxnb run ... -p init_image photo.png`
    run_dir = run_notebook("02_image_to_image", {"init_image": "photo.png", "steps": 2}, outputs_dir=outputs_dir)
    (entry,) = fluxnb.read_manifest(run_dir)["images"]
    assert entry["init_image"] == "photo.png" and (run_dir / entry["file"]).is_file()
