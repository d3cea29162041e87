"""`fluxnb bench` on the editing models (issue 24), on the CPU with the tiny Fill, Kontext and Control entries: each
task timed through the same three phases as text-to-image, compared within its own task, on the request and inputs
`fluxnb generate` would use (the bench's image is generate's image, pixel for pixel); backends of two tasks refused
before anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import fluxnb
from fluxnb.bench import DEFAULT_PROMPT, engine, load_results, parse_backend, run_bench
from fluxnb.bench.warm import first_call_in_new_process
from fluxnb.cli import main
from fluxnb.core.errors import RequestError
from fluxnb.models.synthetic import BUILD_MARKER, synthetic_dir
from fluxnb.models.tiny import TINY_DIMS
from tests.cli_errors import refused

SEED = 3
ARGS = ["--size", "32x32", "--steps", "2", "--warmup-steps", "1", "--device", "cpu", "--seed", str(SEED)]
MODES = {"fill": "inpaint", "kontext": "edit", "control": "control"}


def _bench(folder: Path, backends: list[str], *extra: str) -> tuple[dict[str, Any], dict[tuple, dict]]:
    """`fluxnb bench` run in this process: its JSON, and the latents and images it compared (caught on their way into
    fluxnb.bench.fidelity.add_comparisons, which still runs on them)."""
    caught: dict[tuple, dict] = {}
    real = engine.add_comparisons

    def catch(results: dict, outputs: dict) -> None:
        caught.update(outputs)
        real(results, outputs)

    out = folder / "bench.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "add_comparisons", catch)
        argv = ["bench", *[arg for name in backends for arg in ("--backend", name)], *ARGS, *extra, "--output",
                str(out)]
        assert main(argv) == 0
    return load_results(out), caught


@pytest.fixture(scope="module")
def runs(tiny_cache, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """One bench per task: Fill on a tiny synthetic checkpoint (fp32 and a bf16 cast), Kontext (also at a size that is
    not square: a swapped width and height shows) and Control on the embedded tiny models."""
    fill = tmp_path_factory.mktemp("fill")
    return {
        "fill": _bench(fill, ["flux-tiny-fill", "flux-tiny-fill@bf16"], "--synthetic", "--synthetic-dims", "tiny",
                       "--synthetic-root", str(fill / "synthetic")),
        "kontext": _bench(tmp_path_factory.mktemp("kontext"), ["flux-tiny-kontext"], "--size", "48x32"),
        "control": _bench(tmp_path_factory.mktemp("control"), ["flux-tiny-control"]),
    }


def test_a_fill_bench_writes_a_row_per_backend_compared_with_fill_in_bf16(runs):
    results, _ = runs["fill"]
    settings = results["settings"]
    assert settings["task"] == "fill" and settings["guidance_scale"] is None
    assert (settings["reference"], settings["baseline"]) == ("flux-tiny-fill", "flux-tiny-fill")  # same type: first
    assert "shaped for the fill task" in results["weights"]
    rows = {r["backend"]: r for r in results["rows"]}
    assert set(rows) == {"flux-tiny-fill", "flux-tiny-fill@bf16"}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["task"] == "fill" and row["seconds_per_image"] > 0 and row["finite"]
        assert set(row["phases"]) == {"text_encoding", "denoising", "vae_decode"}
        assert row["guidance_scale"] == 30  # the entry's own (model_config.yaml flux-tiny-fill), not the bench's 3.5
        assert row["inputs"].startswith("inpaint: ") and "mask" in row["inputs"]
    assert rows["flux-tiny-fill"]["latent_rel_error"] == 0.0
    assert rows["flux-tiny-fill@bf16"]["latent_rel_error"] > 0
    # the synthetic checkpoint is Fill's: its own folder, its pipeline class, 384 input channels; no FLUX.1-dev one
    (backend,) = [b for b in results["backends"] if b["label"] == "flux-tiny-fill"]
    folder = Path(backend["load_report"]["checkpoint"])
    assert folder == synthetic_dir("bf16", folder.parent, TINY_DIMS, task="fill")
    assert json.loads((folder / BUILD_MARKER).read_text())["task"] == "fill"
    assert json.loads((folder / "transformer" / "config.json").read_text())["in_channels"] == 384
    assert not synthetic_dir("bf16", folder.parent, TINY_DIMS).exists()


def test_the_fill_inputs_are_a_picture_and_a_mask_of_its_middle(runs):
    files = runs["fill"][0]["settings"]["inputs"]["files"]["32x32"]
    mask = np.asarray(Image.open(files["mask"]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}
    assert (mask[8:24, 8:24] == 255).all() and mask.sum() == 16 * 16 * 255  # exactly the middle half, white
    picture = np.asarray(Image.open(files["init_image"]))
    assert picture.shape == (32, 32, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 100


class LastLatents:
    """diffusers' callback_on_step_end keeping the latents after the last step (generate's final latents)."""

    def __init__(self) -> None:
        self.latents = None

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.latents = callback_kwargs["latents"]
        return callback_kwargs


@pytest.mark.parametrize("task", ["fill", "kontext"])
def test_the_bench_times_the_image_fluxnb_generate_makes(runs, config, task):
    """The same entry, seed, prompt and pictures through fluxnb.generate: the same final latents and pixels."""
    results, outputs = runs[task]
    label = f"flux-tiny-{task}"
    (backend,) = [b for b in results["backends"] if b["label"] == label]
    spec = config.get(label)
    model = fluxnb.load_model(spec, checkpoint=backend["load_report"]["checkpoint"], device="cpu", progress=False)
    for size, files in results["settings"]["inputs"]["files"].items():
        width, height = (int(side) for side in size.split("x"))
        request = fluxnb.make_request(spec, prompt=DEFAULT_PROMPT, seed=SEED, steps=2, width=width, height=height,
                                      mode=MODES[task], **files)
        last = LastLatents()
        (made,) = fluxnb.generate(model, request, progress=False, callback_on_step_end=last)
        bench = outputs[(label, size, "gaussian")]
        assert made.image.size == (width, height)
        assert np.array_equal(bench["latents"], last.latents.float().numpy())
        assert np.array_equal(bench["image"], np.asarray(made.image.convert("RGB")))


def test_kontext_and_control_rows_are_their_tasks_own(runs):
    fill_latents = runs["fill"][1][("flux-tiny-fill", "32x32", "gaussian")]["latents"]
    for task in ("kontext", "control"):
        results, outputs = runs[task]
        row = results["rows"][0]
        assert "error" not in row, row.get("error")
        assert row["task"] == task == results["settings"]["task"] and row["latent_rel_error"] == 0.0
        latents = outputs[(f"flux-tiny-{task}", "32x32", "gaussian")]["latents"]
        # 32x32 pixels: 4x4 latent pixels packed 2x2 into 4 tokens of 64 channels; Kontext's reference picture's
        # tokens are not part of the result
        assert latents.shape == fill_latents.shape == (1, 4, 64)
        assert not np.allclose(latents, fill_latents)
    kontext, outputs = runs["kontext"]
    assert [(r["size"], r["guidance_scale"], "error" in r) for r in kontext["rows"]] == [
        ("32x32", 2.5, False), ("48x32", 2.5, False)]  # flux-tiny-kontext's guidance (model_config.yaml)
    assert outputs[("flux-tiny-kontext", "48x32", "gaussian")]["latents"].shape == (1, 6, 64)  # 3x2 tokens
    assert outputs[("flux-tiny-kontext", "48x32", "gaussian")]["image"].shape == (32, 48, 3)
    control = runs["control"][0]["settings"]["inputs"]
    assert set(control["files"]["32x32"]) == {"control_image"} and "control image itself" in control["what"]


def test_backends_of_two_tasks_are_refused_before_anything_loads(config, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(engine, "load_model", no_load)
    with pytest.raises(RequestError) as caught:
        run_bench([parse_backend(name, config) for name in ("flux-tiny", "flux-tiny-fill")], device="cpu")
    assert caught.value.parameter == "backend"
    refused(capsys, ["bench", "--backend", "flux-dev", "--backend", "flux-fill-torchao-fp8", "--device", "cpu"],
            "parameter `backend`: the backends are models of 2 tasks (text-to-image: flux-dev; fill: "
            "flux-fill-torchao-fp8); one bench run times backends of one task",
            "Fix: run one bench per task, e.g. `fluxnb bench --backend flux-fill --backend flux-fill-bnb-8bit")
    refused(capsys, ["bench", "--backend", "flux-tiny-kontext", "--batch", "2", "--device", "cpu"],
            "parameter `batch`: the batch times text-to-image prompts; this run's backends are kontext models")


def test_reference_and_baseline_are_the_tasks_own_bf16_and_bnb_8bit(config):
    for names, roles in (
        (("flux-fill-torchao-fp8", "flux-fill-bnb-8bit", "flux-fill"), ("flux-fill", "flux-fill-bnb-8bit")),
        (("flux-kontext-torchao-fp8", "flux-kontext", "flux-kontext-bnb-8bit"),
         ("flux-kontext", "flux-kontext-bnb-8bit")),
        (("flux-dev-torchao-fp8", "flux-dev-bnb-8bit", "flux-dev"), ("flux-dev", "flux-dev-bnb-8bit")),
    ):
        backends = [parse_backend(name, config) for name in names]
        assert engine._roles(backends, None, None) == roles
    assert parse_backend("flux-torchao-fp8dq", config).spec.task == "text-to-image"  # a loader type: FLUX.1-dev's
    assert parse_backend("flux-fill", config).capped is False  # bf16 uncapped, as flux-dev


def test_an_editing_backends_warm_first_call_runs_its_request(runs):
    files = runs["fill"][0]["settings"]["inputs"]["files"]["32x32"]
    result = first_call_in_new_process({
        "label": "flux-tiny-fill", "config": None, "checkpoint": None, "device": "cpu", "memory_fraction": None,
        "warmup_steps": 1, "uncapped": [], "pictures": files,
        "generation": {"prompt": "a cat", "seed": 0, "width": 32, "height": 32, "guidance_scale": 3.5,
                       "max_sequence_length": 64, "device": "cpu"}})
    assert "error" not in result, result
    assert result["first_call_seconds"] > 0
