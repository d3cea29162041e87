"""fluxnb.ui.display (grids, timing charts) and fluxnb.ui.widgets (the Generate form) on the real tiny model,
headless."""

from __future__ import annotations

import base64
import io
import re
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # headless, as in CI and under papermill

from PIL import Image  # noqa: E402

import fluxnb  # noqa: E402
from fluxnb.core.packaged import SAMPLE_INIT_IMAGE  # noqa: E402
from fluxnb.ui.display import caption, model_banner, plot_timings, show_grid, timing_summary  # noqa: E402
from fluxnb.ui.widgets import GenerateForm, image_to_image_ui, text_to_image_ui  # noqa: E402

INIT_IMAGE = SAMPLE_INIT_IMAGE


@pytest.fixture(scope="module")
def three_images(tiny_model, tiny_spec):
    request = fluxnb.make_request(tiny_spec, prompt=["a red fox in the snow", "a blue boat"], seed=3, steps=2,
                                  num_images=2, width=48, height=32)
    return fluxnb.generate(tiny_model, request, progress=False)[:3]


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_show_grid_lays_out_generated_images_with_captions(three_images):
    fig = show_grid(three_images, columns=2)
    axes = visible_axes(fig)
    assert len(axes) == 3  # 2 x 2 grid, the unused cell removed
    # in the batch's order: two seeds of the first prompt, then the second's; the seconds are the run's own
    expected = [("a red fox in the snow", 3), ("a red fox in the snow", 4), ("a blue boat", 3)]
    for ax, (prompt, seed) in zip(axes, expected, strict=True):
        assert re.fullmatch(rf"{prompt}\nseed {seed}, \d+\.\d\d s", ax.get_title()), ax.get_title()
    assert axes[0].get_images()[0].get_array().shape[:2] == (32, 48)


def test_show_grid_takes_pil_images_and_titles():
    pictures = [Image.new("RGB", (20, 10), color) for color in ("red", "green", "blue", "white", "black")]
    fig = show_grid(pictures, titles=list("abcde"), columns=4)
    assert [ax.get_title() for ax in visible_axes(fig)] == list("abcde")
    assert fig.get_size_inches()[0] == pytest.approx(4 * 3.0)
    with pytest.raises(ValueError, match="2 titles for 5 images"):
        show_grid(pictures, titles=["a", "b"])
    with pytest.raises(ValueError, match="at least one image"):
        show_grid([])
    with pytest.raises(TypeError, match="GeneratedImage or a PIL image"):
        show_grid(["not an image"])


def test_plot_timings_shows_seconds_and_peak_memory_per_image(three_images):
    fig = plot_timings(three_images)
    assert len(fig.axes) == 2
    ax_time, ax_mem = fig.axes
    assert [bar.get_height() for bar in ax_time.patches] == [i.metadata["seconds"] for i in three_images]
    assert ax_mem.get_ylabel() in ("MiB", "GiB") and all(bar.get_height() > 0 for bar in ax_mem.patches)
    assert "peak RSS" in ax_mem.get_title()  # the figures themselves: test_plot_timings_with_known_figures
    assert "2 steps" in ax_time.get_title()
    with pytest.raises(TypeError, match="GeneratedImage"):
        plot_timings([Image.new("RGB", (8, 8))])
    summary = timing_summary(three_images)
    assert summary.count("\n") == 2 and "seed 3" in summary and "s/step" in summary


def test_plot_timings_with_known_figures():
    """Hand-set metadata: the bars are these seconds and memories, in the unit that reads best; a GPU's allocated
    peak wins over the process RSS; a first compiled image shows its compile time."""
    from fluxnb.runs.generation import GeneratedImage

    def image(index: int, seconds: float, memory: dict, compile_seconds: float = 0.0) -> GeneratedImage:
        return GeneratedImage(Image.new("RGB", (8, 8)), {"index": index, "seed": index, "steps": 4,
                                                          "seconds": seconds, "peak_memory": memory,
                                                          "compile": {"seconds": compile_seconds}})

    gpu = {"kind": "GPU allocated", "peak_allocated_bytes": 3 * 2**30, "peak_rss_bytes": 9 * 2**30}
    fig = plot_timings([image(0, 5.0, gpu, compile_seconds=3.5), image(1, 1.5, {**gpu, "peak_allocated_bytes": 2**31})])
    ax_time, ax_mem = fig.axes
    assert [bar.get_height() for bar in ax_time.patches] == [5.0, 1.5, 3.5, 0.0]  # then the compile bars
    assert [bar.get_height() for bar in ax_mem.patches] == [3.0, 2.0] and ax_mem.get_ylabel() == "GiB"
    assert ax_mem.get_title() == "peak memory per image (GPU allocated)" and ax_time.get_legend() is not None
    small = plot_timings([image(0, 0.25, {"kind": "peak RSS", "peak_rss_bytes": 512 * 2**20})])
    assert [bar.get_height() for bar in small.axes[1].patches] == [512.0] and small.axes[1].get_ylabel() == "MiB"
    assert small.axes[0].get_legend() is None  # nothing compiled: no compile bars


def test_model_banner_says_plainly_when_the_tiny_model_runs(config):
    tiny = fluxnb.resolve_model("flux-tiny", config)
    lines = model_banner(tiny).splitlines()
    assert "flux-tiny" in lines[0] and "RANDOM WEIGHTS" in lines[0]
    assert "noise" in lines[1]
    assert lines[-1] == str(tiny)
    real = fluxnb.resolve_model("flux-dev-bnb-8bit", config)
    assert model_banner(real) == str(real)  # no warning for the real model


def descendants(widget) -> set:
    children = getattr(widget, "children", ())
    return {widget, *[d for child in children for d in descendants(child)]}


def output_pngs(form: GenerateForm) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"])))
        for o in form.output.outputs
        if o["output_type"] == "display_data"
    ]


def test_text_to_image_ui_generates_into_the_run_folder(tiny_model, tiny_spec):
    run = fluxnb.RunFolder.create("widget-test")
    ui = text_to_image_ui(tiny_model, run, model_reason="chosen by name")
    form = ui.form
    shown = descendants(ui)
    assert {form.button, form.stop_button, form.progress, form.output} <= shown
    assert (form.steps.min, form.steps.max, form.steps.value) == (1, 50, tiny_spec.params.default_steps)
    assert max(form.width.options) == 512 and all(v % 16 == 0 for v in form.width.options)

    form.prompt.value = "a lighthouse\n\na harbour at night\n"
    form.steps.value = 2
    form.guidance_scale.value = 5.0
    form.seed.value = 21
    form.width.value = 32
    form.height.value = 48
    form.button.click()

    assert form.last_error is None
    manifest = fluxnb.read_manifest(run.path)
    assert [(e["prompt"], e["seed"]) for e in manifest["images"]] == [("a lighthouse", 21), ("a harbour at night", 21)]
    for entry in manifest["images"]:
        file = run.path / entry["file"]
        assert file.is_file()
        with Image.open(file) as image:
            assert image.size == (32, 48)
        assert fluxnb.read_png_metadata(file) == {k: v for k, v in entry.items() if k != "file"}
        assert (entry["steps"], entry["guidance_scale"], entry["mode"]) == (2, 5.0, fluxnb.TEXT_TO_IMAGE)
        assert entry["model"]["reason"] == "chosen by name"
    assert len(form.results) == 2 and not form.button.disabled
    grids = output_pngs(form)
    assert len(grids) == 1 and grids[0].width > 100  # the rendered image grid
    text = form.output_text()
    assert "seed 21" in text and "s/step" in text and entry["file"] in text

    form.button.click()  # the same parameters again: the same pixels, so the saved images are shown, not redone
    assert len(fluxnb.read_manifest(run.path)["images"]) == 2
    assert [r.path for r in form.results[2:]] == [r.path for r in form.results[:2]]
    form.seed.value = 22
    form.button.click()  # new seed: new files, nothing overwritten
    assert len(fluxnb.read_manifest(run.path)["images"]) == 4
    assert len(list(run.path.glob("*.png"))) == 4


@pytest.mark.parametrize(("parameter", "value"), [("prompt", "   \n "), ("seed", -1)])
def test_bad_values_show_the_error_in_the_output(tiny_model, parameter, value):
    run = fluxnb.RunFolder.create("widget-test")
    form = text_to_image_ui(tiny_model, run).form
    form.prompt.value = "a fox"
    form.steps.value = 1
    getattr(form, parameter).value = value
    images = form.generate()
    assert images == []
    assert f"parameter `{parameter}`" in form.last_error
    text = form.output_text()
    assert text.startswith(f"error: parameter `{parameter}`") and "Fix:" in text and "Nothing was generated" in text
    assert "Traceback" not in text
    assert [o["name"] for o in form.output.outputs] == ["stderr"]
    assert fluxnb.read_manifest(run.path)["images"] == []
    assert not form.button.disabled


def test_form_is_prefilled_from_the_notebook_request(tiny_model, tiny_spec):
    request = fluxnb.make_request(tiny_spec, prompt=["one", "two"], seed=9, steps=3, guidance_scale=2.0,
                                  width=96, height=80, num_images=2)
    form = GenerateForm(tiny_model, fluxnb.RunFolder.create("widget-test"), initial=request)
    assert form.prompt_value() == ["one", "two"]
    assert (form.seed.value, form.steps.value, form.guidance_scale.value) == (9, 3, 2.0)
    assert (form.width.value, form.height.value, form.num_images.value) == (96, 80, 2)
    assert form.request() == request


def test_image_to_image_ui_uses_init_image_and_strength(tiny_model, tmp_path: Path):
    run = fluxnb.RunFolder.create("widget-test")
    form = image_to_image_ui(tiny_model, run, INIT_IMAGE).form
    assert form.init_image.value == str(INIT_IMAGE) and form.strength.value == pytest.approx(0.6)
    form.prompt.value = "snowy hills"
    form.steps.value = 4
    form.strength.value = 0.5
    form.width.value = 64
    form.height.value = 48
    form.button.click()
    assert form.last_error is None
    (entry,) = fluxnb.read_manifest(run.path)["images"]
    assert (entry["mode"], entry["strength"], entry["init_image"]) == (fluxnb.IMAGE_TO_IMAGE, 0.5, str(INIT_IMAGE))
    with Image.open(run.path / entry["file"]) as image:
        assert image.size == (64, 48)

    missing = tmp_path / "no-such-picture.png"
    form.init_image.value = str(missing)
    assert form.generate() == []
    assert "parameter `init_image`" in form.last_error and "no-such-picture.png" in form.output_text()
    assert len(fluxnb.read_manifest(run.path)["images"]) == 1


def test_all_bad_values_are_shown_at_once(tiny_model):
    form = text_to_image_ui(tiny_model, fluxnb.RunFolder.create("widget-test")).form
    form.prompt.value = "  "
    form.seed.value = -1
    assert form.generate() == []
    text = form.output_text()
    assert text.startswith("error: 2 parameters are not valid:")
    assert "parameter `prompt`: is empty" in text and "parameter `seed`: must be" in text


def test_progress_moves_step_by_step_and_stop_ends_after_the_current_image(tiny_model):
    run = fluxnb.RunFolder.create("widget-test")
    form = text_to_image_ui(tiny_model, run).form
    assert form.progress.layout.visibility == "hidden" and form.stop_button.disabled  # nothing before a click
    assert form.output.outputs == () and form.output.layout.border in (None, "")
    form.prompt.value = "a fox"
    form.steps.value = 3
    form.num_images.value = 3
    form.width.value = form.height.value = 32
    seen: list[tuple[int, str]] = []

    def watch(change):
        seen.append((change["new"], form.status.value))
        if change["new"] == 3 + 1:  # the second image's first step: the person presses Stop
            assert not form.stop_button.disabled
            form.stop_button.click()

    form.progress.observe(watch, names="value")
    images = form.generate()
    assert form.progress.max == 9
    assert [value for value, _ in seen] == [1, 2, 3, 4, 5, 6]  # every step of two images
    assert "image 1 of 3 &middot; step 2/3" in seen[1][1] and "elapsed" in seen[1][1] and "left" in seen[1][1]
    assert "image 2 of 3 &middot; step 1/3" in seen[3][1]
    assert len(images) == 2 and form.status.value.startswith("stopped: 2 of 3 image(s)")
    assert "stopped after 2 of 3 image(s)" in form.output_text()
    manifest = fluxnb.read_manifest(run.path)
    assert [e["seed"] for e in manifest["images"]] == [0, 1]
    assert sorted(p.name for p in run.path.glob("*.png")) == sorted(e["file"] for e in manifest["images"])
    assert not form.button.disabled and form.stop_button.disabled


def test_image_to_image_upload_is_saved_into_the_run_folder_and_shown_beside_the_result(tiny_model):
    run = fluxnb.RunFolder.create("widget-test")
    form = image_to_image_ui(tiny_model, run, INIT_IMAGE).form
    assert str(Path.cwd()) in form.path_note.value  # which directory relative paths are read from
    assert form.preview.value[:4] == b"\x89PNG"  # the default picture's thumbnail
    picture = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(picture, format="PNG")
    form.upload.value = ({"name": "my photo.png", "type": "image/png", "size": len(picture.getvalue()),
                          "content": memoryview(picture.getvalue()),
                          "last_modified": datetime.now(timezone.utc)},)
    saved = run.path / "inputs" / "my_photo.png"
    assert form.init_image.value == str(saved) and saved.read_bytes() == picture.getvalue()
    form.prompt.value = "a red square, painted"
    form.steps.value = 2
    form.width.value = form.height.value = 32
    (image,) = form.generate()
    assert image.metadata["init_image"] == str(saved)
    (grid,) = output_pngs(form)
    assert grid.width > 1.5 * grid.height  # two panels side by side: the starting picture and the result


def test_caption_shows_a_slider_strength_as_a_person_reads_it():
    assert caption({"prompt": "hills", "seed": 1, "strength": 0.05 * 12}).endswith("seed 1, strength 0.6")


def test_paths_inside_the_current_folder_are_shown_relative(tmp_path: Path, monkeypatch):
    from fluxnb.ui.display import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "outputs" / "run-1" / "0000.png") == "outputs/run-1/0000.png"
    assert shown_path(Path("/elsewhere/x.png")) == "/elsewhere/x.png"  # outside it: as it is
