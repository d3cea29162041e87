"""Issue 24's editing bench: the synthetic editing checkpoints (fluxnb.models.synthetic with a task), and
scripts/issue24_gpu.sh (one `fluxnb bench` run per task) end to end on the CPU with the tiny editing entries (the GPU
lane runs the same script at full size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fluxnb.bench import load_results
from tests.paths import REPO_ROOT


@pytest.mark.parametrize(("task", "pipeline", "in_channels", "parameters"), [
    # FLUX.1-Fill-dev's x_embedder takes 384 channels: 320 x 3072 weights more than FLUX.1-dev's 11,901,408,320
    ("fill", "FluxFillPipeline", 384, 11_901_408_320 + 320 * 3072),
    ("kontext", "FluxKontextPipeline", 64, 11_901_408_320),
])
def test_full_size_editing_pipelines_have_the_real_models_shapes(task, pipeline, in_channels, parameters):
    from fluxnb.models.synthetic import build_synthetic_pipeline

    pipe = build_synthetic_pipeline(device="meta", task=task)  # full size, no memory: shapes only
    transformer = pipe.transformer
    assert type(pipe).__name__ == pipeline
    assert (transformer.config.in_channels, transformer.config.out_channels) == (in_channels, 64)
    assert (transformer.config.num_layers, transformer.config.num_single_layers) == (19, 38)
    assert sum(p.numel() for p in transformer.parameters()) == parameters
    assert sum(p.numel() for p in pipe.text_encoder_2.parameters()) == 4_762_310_656  # T5-XXL's encoder


def test_editing_checkpoints_have_their_own_folders_and_bf16_only(tmp_path):
    from fluxnb.models.synthetic import TINY_DIMS, ensure_synthetic_checkpoint, synthetic_dir

    assert synthetic_dir("bf16", tmp_path).name.startswith("flux-dev-synthetic-full-bf16-")  # unchanged
    assert synthetic_dir("bf16", tmp_path, task="fill").name.startswith("flux-fill-synthetic-full-bf16-")
    with pytest.raises(ValueError, match="bf16 only"):
        synthetic_dir("bnb-8bit", tmp_path, task="kontext")
    folder = ensure_synthetic_checkpoint("bf16", tmp_path, dims=TINY_DIMS, task="fill", device="cpu", log=lambda _: 0)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxFillPipeline"
    assert json.loads((folder / "transformer" / "config.json").read_text())["in_channels"] == 384
    marker = json.loads((folder / "fluxnb_synthetic.json").read_text())
    assert marker["task"] == "fill" and "FluxFillPipeline" in marker["note"] and marker["smoke"]["latent_std"] > 0


def test_the_script_benches_each_task_on_the_cpu(tmp_path):
    env = {**os.environ, "ISSUE24_TINY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "FLUXNB_SYNTHETIC": str(tmp_path / "synthetic")}
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "issue24_gpu.sh")], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for task in ("fill", "kontext"):
        results = load_results(tmp_path / task / "bench.json")
        assert results["settings"]["task"] == task and "random weights" in results["weights"]
        rows = {r["backend"]: r for r in results["rows"]}
        base, fast = rows[f"flux-tiny-{task}@bf16"], rows[f"flux-tiny-{task}@fp32"]
        assert set(rows) == {f"flux-tiny-{task}", base["backend"], fast["backend"]}
        assert all("error" not in r for r in rows.values())
        # the ratio recomputed by hand from the JSON's own figures, and the editing goal (4x) in the summary
        assert fast["speedup_vs_baseline"] == round(base["seconds_per_image"] / fast["seconds_per_image"], 3)
        log = (tmp_path / f"issue24-{task}.log").read_text()
        assert f"best {fast['backend']}: {fast['seconds_per_image']:.2f} s/image" in log
        assert "-> goal of 4.0x" in log
    assert not any((tmp_path / "synthetic").iterdir())  # each task's checkpoint deleted once it ran
