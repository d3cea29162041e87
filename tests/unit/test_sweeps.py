"""Parameter sweeps: validated like the plain parameters, expanded deterministically, resumable, drawn as a grid."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import fluxnb
from fluxnb.core.errors import RequestError
from fluxnb.models.params import request_from_dict
from fluxnb.models.sweeps import parse_cli
from fluxnb.runs.outputs import RunFolder
from fluxnb.ui.sweep_grid import GRID_FILE, read_grid_layout, save_sweep_grid
from tests.waiting import wait_for_images

SMALL = dict(width=64, height=64, steps=2)


def test_expansion_is_deterministic_and_each_point_has_its_coordinates(tiny_spec):
    request = fluxnb.make_request(tiny_spec, prompt=["a fox", "a cat"], num_images=2, seed=7,
                                  sweep={"guidance_scale": [2, 3.5, 5], "steps": [20, 28]})
    points = request.points()
    assert len(points) == 2 * 2 * 3 * 2 and [p["index"] for p in points] == list(range(24))
    assert points[:4] == [
        {"index": 0, "prompt": "a fox", "seed": 7, "sweep": {"guidance_scale": 2.0, "steps": 20}},
        {"index": 1, "prompt": "a fox", "seed": 7, "sweep": {"guidance_scale": 3.5, "steps": 20}},
        {"index": 2, "prompt": "a fox", "seed": 7, "sweep": {"guidance_scale": 5.0, "steps": 20}},
        {"index": 3, "prompt": "a fox", "seed": 7, "sweep": {"guidance_scale": 2.0, "steps": 28}},
    ]
    assert points[6]["seed"] == 8 and points[12]["prompt"] == "a cat"
    again = request_from_dict(tiny_spec, request.to_dict())  # as a resumed run rebuilds it from its manifest
    assert again == request and again.points() == points
    plain = fluxnb.make_request(tiny_spec, prompt=["a fox", "a cat"], num_images=2)
    assert [(p["index"], p["prompt"], p["seed"]) for p in plain.points()] == plain.items()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"steps": [20, 0]}, "parameter `sweep`: axis 'steps': parameter `steps`: must be between 1 and 50"),
        ({"guidance_scale": [3.5, -1]},
         "axis 'guidance_scale': parameter `guidance_scale`: must be a finite number > 0"),
        ({"width": [64, 70]}, "axis 'width': parameter `width`: 70 is not a multiple of 16"),
        ({"strength": [0.3, 0.6]}, "cannot sweep 'strength'; allowed: guidance_scale, steps, width, height"),
        ({"seed": [1, 2]}, "cannot sweep 'seed'"),
        ({"steps": [1, 2], "width": [64], "height": [64]}, "has 3 axes"),
        ({"steps": []}, "axis 'steps' needs a non-empty list of values"),
        ({"steps": [2, 2]}, "axis 'steps' repeats a value"),
        ({"lora_scale": [0.5, 1]}, "cannot sweep 'lora_scale'"),
        ({"lora:style": [0.5, 1]}, "axis 'lora:style' names no adapter of the request"),
        ("steps=1,2", "must be a dict of axis -> list of values"),
    ],
)
def test_each_value_is_validated_like_the_plain_parameter(tiny_spec, sweep, message):
    with pytest.raises(RequestError) as caught:
        fluxnb.make_request(tiny_spec, prompt="a fox", sweep=sweep)
    assert message in str(caught.value) and str(caught.value).startswith("parameter `sweep`")


def test_cli_sweep_syntax():
    assert parse_cli(["guidance_scale=2,3.5,5", "steps=20,28"]) == {"guidance_scale": [2, 3.5, 5], "steps": [20, 28]}
    with pytest.raises(RequestError, match=r"--sweep 'steps' is not NAME=V1,V2"):
        parse_cli(["steps"])


def test_sweep_images_carry_their_coordinates_and_the_grid_has_one_cell_each(tiny_model, tiny_spec):
    request = fluxnb.make_request(tiny_spec, prompt="a fox 狐狸", num_images=2,
                                  sweep={"guidance_scale": [2, 5], "steps": [1, 2]}, width=64, height=64)
    run = RunFolder.create("sweep")
    images = fluxnb.generate(tiny_model, request, run, progress=False)
    assert len(images) == 8
    for image in images:
        meta = image.metadata
        assert meta["guidance_scale"] == meta["sweep"]["guidance_scale"] and meta["steps"] == meta["sweep"]["steps"]
    manifest = fluxnb.read_manifest(run.path)
    assert [e["sweep"] for e in manifest["images"][:4]] == [
        {"guidance_scale": 2.0, "steps": 1}, {"guidance_scale": 5.0, "steps": 1},
        {"guidance_scale": 2.0, "steps": 2}, {"guidance_scale": 5.0, "steps": 2}]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        grid = save_sweep_grid(request, images, run.path)
    assert not [w for w in seen if "missing from font" in str(w.message)]  # the prompt's 狐狸 has its glyphs
    assert grid == run.path / GRID_FILE and grid.is_file()
    layout = read_grid_layout(grid)
    assert (layout["rows"], layout["columns"]) == (4, 2)  # 2 seeds x 2 step values, 2 guidance values
    assert sorted(cell["file"] for cell in layout["cells"]) == sorted(e["file"] for e in manifest["images"])
    from PIL import Image

    with Image.open(grid) as picture:
        assert picture.width > 2 * 64 and picture.height > 4 * 64


def test_lora_scale_is_a_sweep_axis(tiny_spec, tmp_path):
    from fluxnb.models.synthetic_lora import build_lora

    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    adapter = build_lora(model.pipe.transformer, tmp_path / "style.safetensors", seed=3)
    request = fluxnb.make_request(tiny_spec, prompt="a fox", loras=[str(adapter)], sweep={"lora_scale": [0, 1]},
                                  **SMALL)
    off, on = fluxnb.generate(model, request, progress=False)
    assert [r["scale"] for r in off.metadata["loras"]] == [0.0] and on.metadata["loras"][0]["scale"] == 1.0
    assert off.metadata["sweep"] == {"lora_scale": 0.0}
    plain = fluxnb.generate(model, fluxnb.make_request(tiny_spec, prompt="a fox", **SMALL), progress=False)[0]
    import numpy as np

    assert np.array_equal(np.asarray(off.image), np.asarray(plain.image))
    assert not np.array_equal(np.asarray(on.image), np.asarray(plain.image))
    with pytest.raises(RequestError, match=r"cannot be swept with fuse_loras=True"):
        fluxnb.make_request(tiny_spec, prompt="a fox", loras=[str(adapter)], fuse_loras=True,
                            sweep={"lora_scale": [0, 1]})


def test_killed_sweep_resumes_with_only_the_missing_images(tiny_model, outputs_dir: Path):
    """A real `fluxnb generate --sweep` process killed mid-batch; --resume makes exactly the images it lacks."""
    args = ["generate", "--prompt", "a fox", "--steps", "8", "--width", "128", "--height", "128",
            "--sweep", "guidance_scale=2,5", "--sweep", "steps=6,8", "--num-images", "2"]
    process = subprocess.Popen([sys.executable, "-m", "fluxnb.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    run_dir = wait_for_images(outputs_dir, 3, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.png")}  # each complete: PNGs are written atomically
    listed = len(fluxnb.read_manifest(run_dir)["images"])  # a PNG the kill kept from its manifest line is adopted
    assert 2 <= listed <= len(before) < 8 and not (run_dir / GRID_FILE).exists()
    done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["resumed"] == 1
    keys = [(e["seed"], e["sweep"]["guidance_scale"], e["sweep"]["steps"]) for e in manifest["images"]]
    assert sorted(keys) == sorted((s, g, n) for s in (0, 1) for g in (2.0, 5.0) for n in (6, 8))
    new_lines = [line for line in done.stdout.splitlines() if line.endswith(")") and ".png" in line]
    assert len(new_lines) == 8 - len(before)  # only the missing images were generated
    assert all((run_dir / name).read_bytes() == data for name, data in before.items())  # the finished ones kept
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data
    layout = read_grid_layout(run_dir / GRID_FILE)
    assert layout["rows"] == 4 and len(layout["cells"]) == 8
