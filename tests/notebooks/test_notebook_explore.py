"""Notebooks 01 and 02 with LoRA adapters and sweeps, executed headlessly with papermill on the real tiny FLUX."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

import fluxnb
from fluxnb.runs.runner import run_notebook
from fluxnb.ui.sweep_grid import GRID_FILE, read_grid_layout


@pytest.fixture(scope="module")
def adapter(tiny_cache, tmp_path_factory) -> Path:
    """A synthetic LoRA for the tiny transformer (loaded on its own: the shared tiny model is not touched)."""
    from diffusers import FluxTransformer2DModel

    from fluxnb.models.synthetic_lora import build_lora
    from fluxnb.models.tiny import ensure_tiny_checkpoint

    transformer = FluxTransformer2DModel.from_pretrained(ensure_tiny_checkpoint(), subfolder="transformer")
    return build_lora(transformer, tmp_path_factory.mktemp("lora") / "style.safetensors", seed=5)


def shown_pngs(executed: Path, marker: str) -> int:
    nb = nbformat.read(executed, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert cells and not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.outputs)


def test_text_to_image_with_a_lora_a_sweep_and_the_guidance_lesson(adapter: Path, outputs_dir: Path):
    run_dir = run_notebook("01_text_to_image", {
        "model": "flux-tiny", "prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 3,
        "loras": [f"{adapter}:0.8"], "sweep": {"steps": [1, 2]}, "demo_sweep": {"guidance_scale": [1.5, 7.0]},
    }, outputs_dir=outputs_dir)
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete"
    entries = manifest["images"]
    assert [e["sweep"] for e in entries] == [{"steps": 1}, {"steps": 2}] and [e["steps"] for e in entries] == [1, 2]
    assert all(e["loras"][0]["file"] == "style.safetensors" and e["loras"][0]["scale"] == 0.8 for e in entries)
    assert manifest["parameters"]["loras"][0]["sha256"] == entries[0]["loras"][0]["sha256"]
    layout = read_grid_layout(run_dir / GRID_FILE)
    assert (layout["rows"], layout["columns"], len(layout["cells"])) == (1, 2, 2)
    lesson = fluxnb.read_manifest(run_dir / "sweep")
    assert lesson["status"] == "complete"
    assert [e["guidance_scale"] for e in lesson["images"]] == [1.5, 7.0]
    assert read_grid_layout(run_dir / "sweep" / GRID_FILE)["columns"] == 2
    executed = run_dir / "01_text_to_image.ipynb"
    assert shown_pngs(executed, "save_sweep_grid(request, images, run.path)") == 1
    assert shown_pngs(executed, "lesson_grid = save_sweep_grid") == 1


def test_image_to_image_sweeps_strength_with_a_lora(adapter: Path, outputs_dir: Path):
    run_dir = run_notebook("02_image_to_image", {
        "model": "flux-tiny", "prompt": "hills in winter", "steps": 4, "width": 64, "height": 64,
        "loras": [{"path": str(adapter), "scale": 0.5, "name": "winter"}], "sweep": {"strength": [0.5, 1.0]},
    }, outputs_dir=outputs_dir)
    entries = fluxnb.read_manifest(run_dir)["images"]
    assert [(e["strength"], e["sweep"]) for e in entries] == [(0.5, {"strength": 0.5}), (1.0, {"strength": 1.0})]
    assert entries[0]["loras"][0]["name"] == "winter"
    assert read_grid_layout(run_dir / GRID_FILE)["columns"] == 2
    assert shown_pngs(run_dir / "02_image_to_image.ipynb", "save_sweep_grid(request, images, run.path)") == 1
