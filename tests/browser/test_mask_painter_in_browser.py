"""The mask painter as a person uses it: a stroke drawn with the mouse on the canvas in JupyterLab (headless Chromium),
then the kernel's mask read back and compared pixel by pixel with the stroke the mouse made.

The notebook is tests/browser/mask_painter.ipynb (a 128x128 picture, brush 16, shown on a 512 px canvas that the
page may scale again). The stroke, the expected mask and the tolerance: tests/browser/strokes.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.browser.strokes import assert_mask_is_the_stroke, draw_stroke
from tests.browser.test_notebooks_in_browser import errors_of, open_notebook, run_all, saved_notebook
from tests.waiting import wait_for

NOTEBOOK = Path(__file__).with_name("mask_painter.ipynb")
SIDE, BRUSH = 128, 16  # as in the notebook


def test_a_stroke_drawn_with_the_mouse_is_the_kernels_mask(page, lab, shot):
    shutil.copy(NOTEBOOK, lab.root / "notebooks" / NOTEBOOK.name)
    open_notebook(page, lab, NOTEBOOK.stem)
    run_all(page)
    canvas = page.locator("canvas.fluxnb-mask-canvas")
    stroke = draw_stroke(page, canvas)
    shot(page, "stroke", canvas)

    # run the reading cell (after the mouse events: the kernel handles its messages in order)
    reading = page.locator(".jp-CodeCell").nth(1)
    reading.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")  # run in place (Shift+Enter would add a cell below the last one)
    saved = lab.root / "notebooks" / "stroke-mask.png"
    wait_for(saved.exists, seconds=120, what="the reading cell to save the painted mask")
    output = reading.locator(".jp-OutputArea-output")  # Run All's line said "saved": "None": wait for this run's
    printed = json.loads(wait_for(lambda: output.count() and re.search(r'\{.*"saved": "stroke-mask.png".*\}',
                                                                       output.first.inner_text()),
                                  seconds=60, what="the reading cell's line").group(0))
    assert printed["strokes"] == 1 and printed["saved"] == "stroke-mask.png"

    with Image.open(saved) as image:
        assert image.mode == "L"
        mask = np.asarray(image)
    assert_mask_is_the_stroke(mask, stroke, SIDE, BRUSH)
    assert printed["painted"] == int((mask == 255).sum()) > 400  # a 16 px band some 80 px long
    nb = saved_notebook(page, lab, NOTEBOOK.stem)
    assert errors_of(nb) == []
