"""Notebook 06 run headlessly, once per editing mode, on the tiny editing models: the headless mask (the centre
rectangle), the outpaint margins, the instruction edit and the Canny edge map computed from the sample picture; each
writes one image listed in its run folder with its mode, and shows the input beside its mask, canvas or edge map and
the result."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat
import pytest
from PIL import Image

import fluxnb
from fluxnb.cli import main
from tests.cli_errors import refused


def executed_run(capsys, outputs_dir: Path, mode: str) -> tuple[Path, dict]:
    assert main(["run", "06_edit", "-p", "mode", mode, "-p", "steps", "1", "--output-dir", str(outputs_dir)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split(":", 1)[1].strip())
    return run_dir, fluxnb.read_manifest(run_dir)


def pictures_shown(run_dir: Path) -> int:
    executed = nbformat.read(run_dir / "06_edit.ipynb", as_version=4)
    return sum("image/png" in out.get("data", {}) for cell in executed.cells if cell.cell_type == "code"
               for out in cell.outputs)


@pytest.mark.parametrize(("mode", "kind", "size"), [("inpaint", "inp", (256, 256)), ("outpaint", "out", (320, 256)),
                                                    ("edit", "edit", (256, 256)), ("control", "ctl", (256, 256))])
def test_each_mode_makes_its_image_and_shows_it_beside_its_inputs(capsys, outputs_dir: Path, mode, kind, size):
    run_dir, manifest = executed_run(capsys, outputs_dir, mode)
    (entry,) = manifest["images"]
    assert manifest["status"] == "complete" and entry["mode"] == mode and entry["file"].startswith(f"0000-{kind}-")
    assert (entry["width"], entry["height"]) == size  # the 256x256 sample picture; outpaint adds 64 on the right
    assert Image.open(run_dir / entry["file"]).size == size
    shown = pictures_shown(run_dir)
    # the picture; its mask or grown canvas (inpaint, outpaint); the grid of input, mask or edge map, and result
    assert shown == (3 if mode in ("inpaint", "outpaint") else 2)
    if mode == "inpaint":  # the headless mask: the centre rectangle, saved into the run folder's inputs/
        mask = run_dir / "inputs" / "mask-rectangle.png"
        assert entry["mask"] == str(mask) and entry["mask_sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
        assert Image.open(mask).getbbox() == (64, 64, 192, 192)


def test_a_misspelt_mode_is_refused_before_the_kernel(capsys, outputs_dir: Path):
    refused(capsys, ["run", "06_edit", "-p", "mode", "inpant", "--output-dir", str(outputs_dir)],
            "parameter `mode`: must be one of text-to-image, image-to-image, inpaint, outpaint, edit, control, got "
            "'inpant'")
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())
