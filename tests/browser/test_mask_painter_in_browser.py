"""The mask painter as a person uses it: a stroke drawn with the mouse on the canvas in JupyterLab (headless Chromium),
then the kernel's mask read back and compared pixel by pixel with the stroke the mouse made.

The notebook is tests/browser/mask_painter.ipynb (a 128x128 picture, brush 16, shown on a 512 px canvas that the
page may scale again): the expected mask is computed here from the mouse's page coordinates and the canvas element's
on-screen box (picture x = 128 * (clientX - left) / box width), never from the painter's own code.

Tolerance: none at the ends, half a page pixel along the edges. Mouse down and mouse up carry their exact
coordinates; the moves between them (Playwright's 12 steps, which Chromium may coalesce) are rounded to whole page
pixels, so the painted polyline may stray from the straight segment by up to half a page pixel (0.125 picture px on
a 512 px canvas showing 128 px). A pixel whose centre lies within that distance (+0.01 px for floating point) of the
brush's edge may therefore go either way; every other pixel must match: all of the band inside, nothing outside.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.browser.test_notebooks_in_browser import errors_of, open_notebook, run_all, saved_notebook
from tests.waiting import wait_for

NOTEBOOK = Path(__file__).with_name("mask_painter.ipynb")
SIDE, BRUSH = 128, 16  # as in the notebook


def distance_to_segment(width: int, height: int, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance from every pixel centre (col + 0.5, row + 0.5) to the segment a-b, by projection."""
    cx, cy = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((cx - ax) * dx + (cy - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(cx - (ax + t * dx), cy - (ay + t * dy))


def test_a_stroke_drawn_with_the_mouse_is_the_kernels_mask(page, lab, shot):
    shutil.copy(NOTEBOOK, lab.root / "notebooks" / NOTEBOOK.name)
    open_notebook(page, lab, NOTEBOOK.stem)
    run_all(page)
    canvas = page.locator("canvas.fluxnb-mask-canvas")
    canvas.scroll_into_view_if_needed()
    page.wait_for_function("el => el.width === 512 && el.height === 512", arg=canvas.element_handle())
    box = page.evaluate("el => { const r = el.getBoundingClientRect(); "
                        "return {left: r.left, top: r.top, width: r.width, height: r.height}; }",
                        canvas.element_handle())
    assert box["width"] > 100 and box["height"] > 100, box  # on screen, whatever CSS scale the page gives it
    # whole page pixels (Chromium reports mouse events in whole CSS pixels): a diagonal stroke, left to right
    start = (round(box["left"] + 0.2 * box["width"]), round(box["top"] + 0.3 * box["height"]))
    end = (round(box["left"] + 0.75 * box["width"]), round(box["top"] + 0.6 * box["height"]))
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=12)
    page.mouse.up()
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

    to_picture = [(SIDE * (x - box["left"]) / box["width"], SIDE * (y - box["top"]) / box["height"])
                  for x, y in (start, end)]
    distance = distance_to_segment(SIDE, SIDE, *to_picture)
    with Image.open(saved) as image:
        assert image.mode == "L" and image.size == (SIDE, SIDE)
        mask = np.asarray(image)
    assert set(np.unique(mask)) == {0, 255}
    differ = (mask == 255) != (distance <= BRUSH / 2)
    edge = 0.5 * SIDE / box["width"] + 0.01  # picture px: see the module docstring
    undecided = np.abs(distance - BRUSH / 2) <= edge
    print(f"stroke {to_picture} in picture px; {int(differ.sum())} pixel(s) within {edge:.3f} px of the brush's "
          f"edge went the other way: {np.round(distance[differ] - BRUSH / 2, 3).tolist()}")
    assert not (differ & ~undecided).any(), (
        f"{int((differ & ~undecided).sum())} pixel(s) differ from the stroke {to_picture}: "
        f"{np.argwhere(differ & ~undecided)[:10].tolist()}")
    assert printed["painted"] == int((mask == 255).sum()) > 400  # a 16 px band some 80 px long
    nb = saved_notebook(page, lab, NOTEBOOK.stem)
    assert errors_of(nb) == []
