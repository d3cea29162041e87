"""Notebook 06's edit form as a person uses it: Run All in JupyterLab (headless Chromium), a stroke drawn with the
mouse on the form's painter, Generate; the image lands in the run folder's manifest, and the mask saved into its
inputs/ is the stroke, pixel by pixel (the geometry and tolerance of tests/browser/strokes.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from fluxnb.core.packaged import SAMPLE_INIT_IMAGE
from tests.browser.strokes import assert_mask_is_the_stroke, draw_stroke
from tests.browser.test_notebooks_in_browser import Form, check_opened_and_ran
from tests.waiting import wait_for

BRUSH = 32  # the notebook's picture is 256 px: the painter's default brush is an eighth of its shorter side


def manifest_images(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "manifest.json").read_text())["images"]


def test_06_edit_form_paints_a_mask_and_generates(page, lab, shot):
    check_opened_and_ran(page, lab, shot, "06_edit")
    with Image.open(SAMPLE_INIT_IMAGE) as picture:
        side = picture.width
        assert picture.size == (side, side) == (256, 256)
    form = Form(page)
    before = [entry["file"] for entry in manifest_images(form.run_dir)]  # the notebook's own image
    assert len(before) == 1
    assert form.root.locator(".widget-slider", has_text="brush").locator(".widget-readout").inner_text() == str(BRUSH)
    canvas = form.root.locator("canvas.fluxnb-mask-canvas")
    assert canvas.count() == 1  # the form's painter (the notebook's own, in section 2, is outside the form)
    stroke = draw_stroke(page, canvas)
    shot(page, "stroke", canvas)

    form.set_prompt("a red hot-air balloon")
    form.generate()
    new = wait_for(lambda: [e for e in manifest_images(form.run_dir) if e["file"] not in before], seconds=180,
                   what="the form's image in the run folder's manifest")
    assert form.wait_finished().startswith("done: 1 image(s)")
    shot(page, "generated", form.root)
    (entry,) = new
    saved = Path(entry["mask"])
    assert entry["mode"] == "inpaint" and saved.parent == form.run_dir / "inputs"
    assert entry["mask_sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert (form.run_dir / entry["file"]).is_file() and form.output.locator("img").count() == 1
    with Image.open(saved) as image:
        assert image.mode == "L"
        mask = np.asarray(image)
    assert_mask_is_the_stroke(mask, stroke, side, BRUSH)
