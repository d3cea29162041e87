"""Notebook 05 run headlessly: a data-parallel batch (here: no GPU, so 2 gloo CPU processes of the tiny model), what
ran where, and the throughput chart."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from fluxnb.cli import main
from fluxnb.core.errors import InputError
from fluxnb.runs.runner import run_notebook


def test_multi_gpu_notebook_runs_a_batch_on_what_the_host_has(outputs_dir: Path, capsys):
    assert main(["run", "05_multi_gpu", "--gpus", "2", "-p", "steps", "1", "--output-dir", str(outputs_dir)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split(":", 1)[1].strip())
    executed = nbformat.read(run_dir / "05_multi_gpu.ipynb", as_version=4)
    text = "\n".join(out.get("text", "") for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "asked for 2 GPU(s); this host has 0: running 2 CPU process(es)" in text
    batch = next((run_dir / "batch").glob("*-generate"))
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["images"]) == 8
    assert {e["index"]: e["parallel"]["rank"] for e in manifest["images"]} == {i: i % 2 for i in range(8)}
    for entry in manifest["images"]:  # the table shows each image with its rank and device
        assert entry["parallel"]["device_name"] == "cpu" and entry["file"] in text
    assert text.count("cpu" + " " * 21) >= 8  # the device column, 24 wide, on each image's row
    assert (run_dir / "throughput.png").stat().st_size > 1000


def test_gpus_on_a_notebook_without_a_gpus_parameter_is_refused(outputs_dir: Path):
    try:
        run_notebook("01_text_to_image", {"gpus": 2}, outputs_dir=outputs_dir)
    except InputError as exc:
        assert "parameter 'gpus' is not a parameter of 01_text_to_image.ipynb" in str(exc)
    else:
        raise AssertionError("gpus was accepted by a notebook that does not declare it")
    assert not list(outputs_dir.glob("*")) if outputs_dir.exists() else True
