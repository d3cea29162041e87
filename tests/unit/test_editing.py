"""Editing pictures (issue 24): inpaint and outpaint (FLUX.1-Fill), instruction edits (Kontext), structure control
(Canny, Depth), each run end to end on its tiny model (the real diffusers pipeline class, the transformer shaped like
the real model's, random weights) through the CLI a user types; every bad input refused before anything loads, all
problems at once; the run folder's guarantees (resume, changed inputs) for an editing mode.

Tests marked `stack` run in the guide lane too (diffusers 0.34, no OpenCV): there Kontext and the Canny edge map are
refused by name, here they run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import fluxnb
from fluxnb.cli import main
from fluxnb.models.editing import canny_edges, canny_missing, outpaint_inputs
from fluxnb.runs.raybatch import input_files
from tests.cli_errors import refused

FAST = ["--steps", "2", "--prompt", "a red fox"]


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """An 80x64 picture (not square: a swapped width and height shows) with a blue disc."""
    image = Image.new("RGB", (80, 64), (200, 120, 40))
    ImageDraw.Draw(image).ellipse((20, 10, 60, 50), fill=(30, 60, 220))
    image.save(tmp_path / "picture.png")
    return tmp_path / "picture.png"


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    """The right half of the picture to repaint."""
    image = Image.new("L", (80, 64), 0)
    ImageDraw.Draw(image).rectangle((40, 0, 79, 63), fill=255)
    image.save(tmp_path / "mask.png")
    return tmp_path / "mask.png"


def made(capsys, argv: list[str]) -> tuple[Path, list[dict]]:
    """Run `fluxnb generate ARGV` in this process; its run folder and manifest entries."""
    assert main(["generate", *argv]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    run = Path(out.rsplit("run folder: ", 1)[1].strip())
    return run, fluxnb.read_manifest(run)["images"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inpaint_keeps_the_pictures_size_and_records_its_mask(capsys, picture, mask):
    run, images = made(capsys, ["--model", "flux-tiny-fill", "--mode", "inpaint", "--init-image", str(picture),
                                "--mask", str(mask), "--num-images", "2", *FAST])
    assert [(e["width"], e["height"]) for e in images] == [(80, 64), (80, 64)]
    assert {Image.open(run / e["file"]).size for e in images} == {(80, 64)}
    entry = images[0]
    assert entry["mode"] == "inpaint" and entry["file"].startswith("0000-inp-seed0-")
    assert entry["mask"] == str(mask) and entry["mask_sha256"] == sha256(mask)
    assert entry["init_image_sha256"] == sha256(picture)
    assert fluxnb.read_png_metadata(run / entry["file"])["mask_sha256"] == sha256(mask)


def test_a_resumed_inpaint_run_makes_only_the_missing_image_and_refuses_a_changed_mask(capsys, picture, mask):
    run, images = made(capsys, ["--model", "flux-tiny-fill", "--mode", "inpaint", "--init-image", str(picture),
                                "--mask", str(mask), "--num-images", "2", *FAST])
    kept, lost = run / images[0]["file"], run / images[1]["file"]
    before = kept.stat().st_ino
    lost.unlink()
    assert main(["generate", "--resume", str(run)]) == 0
    assert "1 image(s) already done" in capsys.readouterr().out
    assert lost.is_file() and kept.stat().st_ino == before  # the same name: the editing inputs are its identity
    Image.new("L", (80, 64), 255).save(mask)  # another mask under the same name
    refused(capsys, ["generate", "--resume", str(run)], "parameter `mask`", f"{mask}: SHA-256",
            "when the run started")


def test_outpaint_grows_the_canvas_by_the_margins(capsys, picture):
    run, images = made(capsys, ["--model", "flux-tiny-fill", "--mode", "outpaint", "--init-image", str(picture),
                                "--expand", "16,0,32,16", *FAST])
    assert (images[0]["width"], images[0]["height"]) == (128, 80)  # 80 + 16 + 32, 64 + 0 + 16
    assert Image.open(run / images[0]["file"]).size == (128, 80)
    assert images[0]["expand"] == [16, 0, 32, 16] and images[0]["file"].startswith("0000-out-")


def test_the_outpaint_canvas_holds_the_picture_and_masks_exactly_the_new_border():
    picture = Image.new("RGB", (80, 64), (10, 200, 30))
    inputs = outpaint_inputs(picture, (16, 0, 32, 16), (128, 80))
    mask = inputs["mask_image"]
    assert mask.size == inputs["image"].size == (128, 80)
    assert sum(1 for value in mask.getdata() if value == 255) == 128 * 80 - 80 * 64
    assert mask.getpixel((15, 0)) == 255 and mask.getpixel((16, 0)) == 0 and mask.getpixel((95, 63)) == 0
    assert mask.getpixel((96, 63)) == 255 and mask.getpixel((16, 64)) == 255
    assert inputs["image"].getpixel((16, 0)) == (10, 200, 30) and inputs["image"].getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.stack
def test_an_instruction_edit_keeps_the_pictures_size_or_is_refused_naming_the_diffusers_that_has_it(capsys,
                                                                                                     picture):
    import diffusers
    from packaging.version import Version

    argv = ["--model", "flux-tiny-kontext", "--mode", "edit", "--init-image", str(picture), *FAST]
    if Version(diffusers.__version__) < Version("0.35"):
        refused(capsys, ["generate", *argv], "FluxKontextPipeline arrived in diffusers 0.35.0; this environment has "
                f"diffusers {diffusers.__version__}", "pip install 'diffusers>=0.35.0'")
        return
    run, images = made(capsys, argv)
    assert (images[0]["width"], images[0]["height"]) == (80, 64)  # not Kontext's 1024x1024 area
    assert Image.open(run / images[0]["file"]).size == (80, 64) and images[0]["file"].startswith("0000-edit-")


def test_a_depth_control_takes_the_given_map(capsys, tmp_path: Path):
    depth = tmp_path / "depth.png"
    Image.new("RGB", (96, 48), (90, 90, 90)).save(depth)
    run, images = made(capsys, ["--model", "flux-tiny-control", "--mode", "control", "--control", "depth",
                                "--control-image", str(depth), *FAST])
    assert (images[0]["width"], images[0]["height"]) == (96, 48)  # the map's size
    assert images[0]["control"] == "depth" and images[0]["control_image_sha256"] == sha256(depth)
    assert Image.open(run / images[0]["file"]).size == (96, 48) and images[0]["file"].startswith("0000-ctl-")


@pytest.mark.stack
def test_a_canny_control_from_a_picture_or_the_opencv_it_needs_named(capsys, picture):
    argv = ["--model", "flux-tiny-control", "--mode", "control", "--init-image", str(picture), *FAST]
    if canny_missing():
        refused(capsys, ["generate", *argv], "canny from init_image: the Canny edge map is computed with OpenCV",
                'pip install "fluxnb[edit]"')
        return
    run, images = made(capsys, argv)
    assert images[0]["control"] == "canny" and (images[0]["width"], images[0]["height"]) == (80, 64)


def test_the_canny_map_marks_the_edges_of_a_square_and_nothing_else():
    pytest.importorskip("cv2", reason="OpenCV is the `edit` extra, installed in the default lane")
    square = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(square).rectangle((16, 16, 47, 47), fill=(255, 255, 255))
    edges = canny_edges(square).convert("L")
    on = {(x, y) for y in range(64) for x in range(64) if edges.getpixel((x, y))}
    near_border = {(x, y) for y in range(64) for x in range(64)
                   if 15 <= x <= 48 and 15 <= y <= 48 and not (17 <= x <= 46 and 17 <= y <= 46)}
    assert on and on <= near_border  # edges only along the square's outline, within a pixel
    row = {x for x, y in on if y == 32}
    assert row & {15, 16, 17} and row & {46, 47, 48}  # both sides of the square found


def test_every_bad_editing_input_is_refused_at_once_before_anything_loads(capsys, tmp_path: Path, picture):
    small = tmp_path / "small-mask.png"
    Image.new("L", (32, 32), 255).save(small)
    err = refused(capsys, ["generate", "--model", "flux-tiny-fill", "--mode", "inpaint", "--init-image",
                           str(picture), "--mask", str(small), "--strength", "0.5", "--expand", "0,0,16,0", *FAST,
                           "--output-dir", str(tmp_path / "out")],
                  "3 parameters are not valid",
                  "parameter `strength`: inpaint repaints what its inputs say",
                  "parameter `expand`: is not an input of inpaint; it belongs to outpaint",
                  f"parameter `mask`: {str(small)!r} is 32x32; the picture (init_image) is 80x64",
                  "Fix: paint or resize the mask at 80x64")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("fill", "says"), [(0, "selects nothing"), (255, "selects the whole picture")])
def test_a_mask_that_selects_nothing_or_everything_is_refused(capsys, tmp_path: Path, picture, fill, says):
    plain = tmp_path / "plain.png"
    Image.new("L", (80, 64), fill).save(plain)
    refused(capsys, ["generate", "--model", "flux-tiny-fill", "--mode", "inpaint", "--init-image", str(picture),
                     "--mask", str(plain), *FAST], f"parameter `mask`: {str(plain)!r} {says}")


@pytest.mark.parametrize(("expand", "says"), [
    ("0,0,17,0", "17 is not a multiple of 16"),
    ("0,0,0,0", "all four margins are 0"),
    ("0,0,448,0", "the picture (80x64) grown by (0, 0, 448, 0) is 528x64; this model's maximum is 512x512"),
])
def test_outpaint_margins_are_checked(capsys, picture, expand, says):
    refused(capsys, ["generate", "--model", "flux-tiny-fill", "--mode", "outpaint", "--init-image", str(picture),
                     "--expand", expand, *FAST], f"parameter `expand`: {says}")


def test_a_control_image_of_another_size_and_a_depth_without_its_map_are_refused(capsys, tmp_path: Path):
    depth = tmp_path / "depth.png"
    Image.new("RGB", (96, 48), 0).save(depth)
    refused(capsys, ["generate", "--model", "flux-tiny-control", "--mode", "control", "--control-image", str(depth),
                     "--width", "64", "--height", "64", *FAST],
            f"parameter `control_image`: {str(depth)!r} is 96x48; the result is 64x64")
    refused(capsys, ["generate", "--model", "flux-tiny-control", "--mode", "control", "--control", "depth", *FAST],
            "parameter `control_image`: a depth model needs its depth map", "Fix: give control_image=DEPTH.png")


def test_a_mode_its_model_does_not_serve_and_inputs_of_another_mode_are_named(capsys, picture, mask):
    refused(capsys, ["generate", "--model", "flux-tiny", "--mode", "inpaint", "--init-image", str(picture),
                     "--mask", str(mask), *FAST],
            "parameter `mode`: inpaint needs a fill model", "model 'flux-tiny' is a text-to-image model")
    refused(capsys, ["generate", "--model", "flux-tiny", "--mask", str(mask), *FAST],
            "parameter `mask`: is not an input of text-to-image; it belongs to inpaint")
    refused(capsys, ["generate", "--model", "flux-tiny-kontext", "--mode", "edit", *FAST],
            "parameter `init_image`: edit needs the picture to work on")


def test_a_request_for_another_task_is_refused_by_generate_itself(picture, mask, tiny_model, config):
    request = fluxnb.make_request(config.get("flux-tiny-fill"), prompt="x", mode="inpaint", init_image=picture,
                                  mask=mask, steps=1)
    with pytest.raises(fluxnb.RequestError, match="the loaded model 'flux-tiny' is a text-to-image model"):
        fluxnb.generate(tiny_model, request, None, progress=False)


def test_the_pictures_of_a_request_travel_to_ray_actors(tmp_path: Path):
    parameters = {"init_image": "/a/picture.png", "mask": "/a/mask.png", "control_image": None,
                  "loras": [{"path": "/a/style.safetensors"}]}
    assert input_files(parameters) == ["/a/picture.png", "/a/mask.png", "/a/style.safetensors"]


def test_an_editing_model_entry_states_its_task_and_a_wrong_one_is_refused(tmp_path: Path):
    from fluxnb.core.errors import ConfigError

    text = (Path(fluxnb.__file__).parent / "model_config.yaml").read_text()
    bad = text.replace('    type: "flux-tiny"\n    task: fill\n', '    type: "flux-tiny"\n    task: paint\n', 1)
    bad = bad.replace("    controls: [canny, depth]\n", "    controls: [sketch]\n", 1)
    (tmp_path / "model_config.yaml").write_text(bad)
    with pytest.raises(ConfigError) as caught:
        fluxnb.load_config(tmp_path / "model_config.yaml")
    assert "models.flux-tiny-fill.task: unknown task 'paint'. Allowed: text-to-image, fill, kontext, control" in \
        str(caught.value)
    assert "models.flux-tiny-control.controls: ['sketch']; allowed: canny, depth" in str(caught.value)


def test_items_that_differ_only_in_their_editing_inputs_get_different_names():
    from fluxnb.runs.outputs import image_file_name

    item = {"index": 0, "mode": "inpaint", "prompt": "x", "seed": 0, "init_image": "p.png"}
    names = {image_file_name({**item, **extra}) for extra in
             ({"mask": "a.png"}, {"mask": "b.png"}, {"expand": [0, 0, 16, 0]}, {"control": "canny"},
              {"control_image": "e.png"})}
    assert len(names) == 5 and all(name.startswith("0000-inp-seed0-") for name in names)


def test_an_inpaint_batch_over_two_processes_is_one_run_folder(picture, mask, outputs_dir):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--model", "flux-tiny-fill", "--mode",
                           "inpaint", "--init-image", str(picture), "--mask", str(mask), "--num-images", "3",
                           "--gpus", "2", *FAST], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = Path(done.stdout.rsplit("run folder: ", 1)[1].strip())
    manifest = fluxnb.read_manifest(run)
    assert manifest["status"] == "complete" and sorted(e["index"] for e in manifest["images"]) == [0, 1, 2]
    assert {e["parallel"]["rank"] for e in manifest["images"]} == {0, 1}
    assert {e["mask_sha256"] for e in manifest["images"]} == {sha256(mask)}
    assert sorted(p.name for p in run.glob("*.png")) == sorted(e["file"] for e in manifest["images"])


def test_the_bench_takes_an_editing_entry_as_it_is(config):
    """The entry itself, not its loader type on FLUX.1-dev (tests/unit/test_bench_editing.py times it)."""
    from fluxnb.bench import parse_backend

    backend = parse_backend("flux-fill-torchao-fp8", config)
    assert (backend.spec.name, backend.spec.task, backend.spec.type) == ("flux-fill-torchao-fp8", "fill",
                                                                         "flux-torchao-fp8dq")
    assert backend.spec.id == "black-forest-labs/FLUX.1-Fill-dev" and backend.capped


def test_a_lora_and_a_sweep_apply_to_an_inpaint_request(capsys, picture, mask, tmp_path: Path, config):
    import numpy as np

    from fluxnb.models.synthetic_lora import build_lora

    spec = config.get("flux-tiny-fill")
    model = fluxnb.load_model(spec, device="cpu", progress=False)
    lora = build_lora(model.pipe.transformer, tmp_path / "fill-style.safetensors", magnitude=8.0)

    def pixels(**options):
        request = fluxnb.make_request(spec, prompt="x", mode="inpaint", init_image=picture, mask=mask, steps=2,
                                      **options)
        return np.asarray(fluxnb.generate(model, request, None, progress=False)[0].image, dtype=np.int16)

    plain, styled = pixels(), pixels(loras=[f"{lora}:1.0"])
    assert np.abs(plain - styled).max() > 0  # the adapter changed the repainted picture
    assert np.array_equal(plain, pixels(loras=[f"{lora}:0"]))  # scale 0: the plain picture again

    run, images = made(capsys, ["--model", "flux-tiny-fill", "--mode", "inpaint", "--init-image", str(picture),
                                "--mask", str(mask), "--sweep", "guidance_scale=10,30", *FAST])
    assert sorted(e["guidance_scale"] for e in images) == [10.0, 30.0]
    assert len({e["file"] for e in images}) == 2 and list(run.glob("sweep-*.png"))


def test_an_outpaint_size_other_than_the_grown_canvas_is_refused(capsys, picture):
    refused(capsys, ["generate", "--model", "flux-tiny-fill", "--mode", "outpaint", "--init-image", str(picture),
                     "--expand", "0,0,16,0", "--width", "64", "--height", "64", *FAST],
            "parameter `width`: outpaint's size is the picture grown by expand: 96x64, not 64x64")


def test_a_pictures_size_is_read_upright_from_its_header(tmp_path: Path):
    from fluxnb.models.images import picture_size

    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo turned a quarter: shown 64 wide and 80 high
    Image.new("RGB", (80, 64)).save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGB", (80, 64)).save(tmp_path / "plain.png")
    assert picture_size("init_image", tmp_path / "turned.jpg") == (64, 80)
    assert picture_size("init_image", tmp_path / "plain.png") == (80, 64)
