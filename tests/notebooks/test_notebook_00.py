"""Notebook 00 (setup verification), executed headlessly on the tiny model; its verdict read from the run folder."""

from __future__ import annotations

import nbformat
import papermill
import pytest

import fluxnb
from fluxnb.core.errors import NotebookFailed
from fluxnb.doctor.verification import read_verdict
from fluxnb.runs.runner import NOTEBOOKS_DIR, run_notebook

NOTEBOOK = NOTEBOOKS_DIR / "00_setup_verification.ipynb"


def _outputs(path, output_type):
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == output_type]


def test_parameters_cell():
    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert {k: v["default"] for k, v in declared.items()} == {
        "model": '"auto"', "output_dir": "None", "interactive": "True"}


@pytest.mark.stack  # in both lanes: end to end on the guide's own line too
def test_headless_run_on_the_tiny_model_is_ready(outputs_dir):
    run_dir = run_notebook("00_setup_verification", outputs_dir=outputs_dir)
    verdict = read_verdict(run_dir)
    assert verdict["ready"] is True and verdict["final"] is True
    assert verdict["verdict"].startswith("ready: flux-tiny") and "random weights" in verdict["verdict"]
    assert verdict["steps"] == {"load": {"status": "ok"}, "generate": {"status": "ok"}}
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["verdict"] == verdict
    assert manifest["doctor"]["model"] == "flux-tiny" and manifest["doctor"]["ok"] is True
    assert {c["name"] for c in manifest["load_report"]["components"]} >= {"transformer", "text_encoder_2"}
    (image,) = manifest["images"]
    assert (run_dir / image["file"]).is_file() and image["model"]["type"] == "flux-tiny"
    executed = run_dir / NOTEBOOK.name
    html = [o for o in _outputs(executed, "display_data") if "text/html" in o.data]
    assert any("<table><tr><th" in o.data["text/html"] and ">check</th>" in o.data["text/html"]
               for o in html)  # the doctor report
    pngs = [o for kind in ("display_data", "execute_result") for o in _outputs(executed, kind) if "image/png" in o.data]
    assert len(pngs) >= 2  # the memory picture and the generated image
    assert _outputs(executed, "error") == []


def test_a_blocked_model_fails_the_run_with_a_recorded_reason(outputs_dir):
    with pytest.raises(NotebookFailed, match="ModelUnavailableError"):
        run_notebook("00_setup_verification", {"model": "flux-dev-bnb-8bit"}, outputs_dir=outputs_dir)
    (run_dir,) = outputs_dir.iterdir()
    verdict = read_verdict(run_dir)
    assert verdict["ready"] is False and verdict["verdict"].startswith("not ready, because doctor: ")
    assert verdict["steps"]["load"]["status"] == "failed"
    assert verdict["steps"]["load"]["known_issues"] == ["bnb-no-gpu"]
    assert any(r.startswith("load failed: ModelUnavailableError") for r in verdict["reasons"])
    assert fluxnb.read_manifest(run_dir)["status"] == "failed"
    (error,) = _outputs(run_dir / NOTEBOOK.name, "error")
    assert error.ename == "ModelUnavailableError"
    # one block (fluxnb.core.errors.render_error), no library stack: the message, then the diagnosis under it
    assert error.traceback[0].startswith("error: model 'flux-dev-bnb-8bit' (flux-bnb-8bit) needs a CUDA GPU")
    traceback = "\n".join(error.traceback)
    assert "[bnb-no-gpu]" in traceback and "site-packages" not in traceback
