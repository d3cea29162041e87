"""fluxnb.ui.edit_form (notebook 06's form) headless, on the real tiny editing models (flux-tiny-fill...): the widgets
set as a person sets them, a stroke through the painter's own mouse handlers, Generate through its button."""

from __future__ import annotations

import hashlib

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from PIL import Image  # noqa: E402

import fluxnb  # noqa: E402
from fluxnb.core.packaged import SAMPLE_INIT_IMAGE  # noqa: E402
from fluxnb.ui.edit_form import EditForm, edit_ui  # noqa: E402
from tests.unit.test_display_widgets import descendants, output_pngs  # noqa: E402

SIDE = 256  # the sample picture's side (checked below): the painter shows it on a 512 px canvas, 2 canvas px per px


@pytest.fixture
def form(tiny_cache, config) -> EditForm:
    form = edit_ui(SAMPLE_INIT_IMAGE, model="auto").form  # auto on a CPU: the mode's tiny entry
    assert form.picture.size == (SIDE, SIDE) and form.painter.scale_x == 2
    form.prompt.value = "a red balloon"
    form.steps.value = 2
    return form


def stroke(form: EditForm, points: list[tuple[float, float]]) -> None:
    """A person's stroke on the canvas: mouse down at the first point, moves, up at the last (canvas px)."""
    painter = form.painter
    painter.on_mouse_down(*points[0])
    for point in points[1:-1]:
        painter.on_mouse_move(*point)
    painter.on_mouse_up(*points[-1])


def test_inpaint_saves_the_painted_mask_and_the_manifest_names_it(form):
    form.painter.brush.value = 20
    stroke(form, [(100, 200), (300, 200), (400, 200)])  # picture px (50, 100) to (200, 100), 20 px wide
    form.button.click()
    assert form.last_error is None, form.last_error
    (entry,) = fluxnb.read_manifest(form.run.path)["images"]
    saved = form.run.path / "inputs" / "mask.png"
    assert entry["mode"] == "inpaint" and entry["mask"] == str(saved)
    assert entry["mask_sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert entry["model"]["name"] == "flux-tiny-fill" and "no CUDA GPU" in entry["model"]["reason"]
    with Image.open(saved) as mask, Image.open(form.run.path / entry["file"]) as image:
        assert image.size == (SIDE, SIDE)  # the picture's size, as make_request defaults it
        pixels = np.asarray(mask)
    # independent of the painter's geometry code: the band |y - 100| <= 10 around x in [50, 200], round caps
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    dx = np.clip(cols, 50, 200) - cols
    expected = np.hypot(dx, rows - 100) <= 10
    assert ((pixels == 255) == expected).all()
    (grid,) = output_pngs(form)
    assert grid.width > 2.5 * grid.height  # input, mask and result side by side

    form.painter.clear()
    stroke(form, [(20, 20), (40, 40)])  # another mask: saved beside the first, never over it
    form.button.click()
    assert form.last_error is None
    entries = fluxnb.read_manifest(form.run.path)["images"]
    assert [e["mask"] for e in entries] == [str(saved), str(saved.with_name("mask-2.png"))]
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == entry["mask_sha256"]  # the first mask untouched


def test_switching_the_mode_swaps_the_inputs_shown(form):
    shown = lambda: descendants(form.container)  # noqa: E731
    assert form.painter.canvas in shown() and form.border.sliders["right"] not in shown()
    form.mode_picker.value = "outpaint"
    assert form.border.sliders["right"] in shown() and form.painter.canvas not in shown()
    form.mode_picker.value = "control"
    assert {form.control, form.control_image} <= shown() and form.border.container not in shown()
    form.mode_picker.value = "edit"
    assert not {form.control, form.painter.canvas, form.border.container} & shown()
    assert {form.prompt, form.seed, form.steps, form.button, form.stop_button, form.progress} <= shown()


def test_guidance_follows_each_modes_model_and_reaches_the_image(form):
    # the entries' own values (model_config.yaml: flux-tiny-fill 30, flux-tiny-kontext 2.5), written out here
    assert form.guidance_scale.value == 30.0
    form.mode_picker.value = "edit"
    assert form.guidance_scale.value == 2.5
    form.guidance_scale.value = 4.5  # a person's choice
    form.button.click()
    assert form.last_error is None, form.last_error
    (entry,) = fluxnb.read_manifest(form.run.path)["images"]
    assert entry["mode"] == "edit" and entry["guidance_scale"] == 4.5


def test_outpaint_and_control_generate_with_the_modes_inputs(form):
    form.mode_picker.value = "outpaint"
    form.border.sliders["left"].value = 32
    form.button.click()
    assert form.last_error is None, form.last_error
    form.mode_picker.value = "control"
    form.steps.value = 2
    form.button.click()
    assert form.last_error is None, form.last_error
    outpainted, controlled = fluxnb.read_manifest(form.run.path)["images"]
    assert (outpainted["mode"], outpainted["expand"], outpainted["width"]) == ("outpaint", [32, 0, 64, 0], 352)
    assert (controlled["mode"], controlled["control"], controlled["model"]["name"]) == \
        ("control", "canny", "flux-tiny-control")


def assert_refused(form: EditForm, parameter: str) -> str:
    """Generate shows one error block naming `parameter`, no traceback, and writes nothing into the run folder."""
    before = sorted(p.relative_to(form.run.path) for p in form.run.path.rglob("*"))
    assert form.generate() == []
    text = form.output_text()
    assert f"parameter `{parameter}`" in text and "Fix:" in text and "Nothing was generated" in text, text
    assert "Traceback" not in text and [o["name"] for o in form.output.outputs] == ["stderr"]
    assert sorted(p.relative_to(form.run.path) for p in form.run.path.rglob("*")) == before
    assert fluxnb.read_manifest(form.run.path)["images"] == []
    return text


def test_inpaint_with_nothing_painted_is_refused_naming_the_mask(form):
    text = assert_refused(form, "mask")
    assert text.startswith("error: parameter `mask`: nothing is painted")


def test_a_painted_mask_is_not_saved_while_another_value_is_bad(form):
    stroke(form, [(100, 100), (200, 200)])
    form.seed.value = -1
    text = assert_refused(form, "seed")  # inputs/ stays empty: the mask is saved only with a valid request
    assert text.startswith("error: parameter `seed`: must be")


def test_every_bad_value_is_shown_at_once(form):
    form.mode_picker.value = "outpaint"
    form.border.sliders["right"].value = 17
    form.seed.value = -1
    text = assert_refused(form, "expand")
    assert text.startswith("error: 2 parameters are not valid:")
    assert "parameter `seed`" in text and "17" in text


def test_stop_ends_a_batch_of_three_after_the_current_image(form):
    stroke(form, [(200, 200), (260, 260)])
    form.steps.value = 3
    form.num_images.value = 3

    def press_stop(change):
        if change["new"] == 3 + 1:  # the second image's first step
            form.stop_button.click()

    form.progress.observe(press_stop, names="value")
    images = form.generate()
    assert len(images) == 2 and form.status.value.startswith("stopped: 2 of 3 image(s)")
    manifest = fluxnb.read_manifest(form.run.path)
    assert [e["seed"] for e in manifest["images"]] == [0, 1]
    assert sorted(p.name for p in form.run.path.glob("*.png")) == sorted(e["file"] for e in manifest["images"])
    assert not form.button.disabled and form.stop_button.disabled
