"""Issue 24's editing bench: the synthetic editing checkpoints (fluxnb.models.synthetic with a task) and
scripts/issue24_gpu.py run end to end on the CPU with the tiny editing models (the GPU lane runs the same code at full
size: scripts/issue24_gpu.sh)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from datetime import datetime

import pytest

from tests.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("issue24_gpu", REPO_ROOT / "scripts" / "issue24_gpu.py")
issue24 = importlib.util.module_from_spec(spec)
sys.modules.setdefault("issue24_gpu", issue24)  # its dataclass looks its module up
spec.loader.exec_module(issue24)


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


def _check_ratios(rows: dict[str, dict], verdict: dict) -> None:
    """Each ratio recomputed by hand from the JSON's own raw figures (not by the code under test)."""
    base, fast = rows["bnb-8bit"], rows["float8"]
    assert rows["bf16"]["latent_rel_error"] == 0.0
    for row in rows.values():
        assert row["speedup_vs_baseline"] == round(base["seconds_per_image"] / row["seconds_per_image"], 3)
        assert row["step_speedup_vs_baseline"] == round(base["seconds_per_step"] / row["seconds_per_step"], 3)
        assert row["error_vs_baseline"] == round(row["latent_rel_error"] / base["latent_rel_error"], 3)
    assert base["speedup_vs_baseline"] == 1.0 and base["error_vs_baseline"] == 1.0
    assert verdict["backend"] == fast["backend"]
    assert verdict["figures"]["speedup_vs_baseline"] == fast["speedup_vs_baseline"]
    assert verdict["figures"]["error_vs_baseline"] == fast["error_vs_baseline"]
    assert verdict["met"]["speedup_vs_baseline"] is (fast["speedup_vs_baseline"] >= 4.0)
    assert verdict["met"]["error_vs_baseline"] is (fast["error_vs_baseline"] <= 2.0)
    assert verdict["met"]["peak_reserved_bytes"] is None  # no GPU memory on a CPU: not measured, not "met"
    assert verdict["all_met"] is False


def test_the_script_runs_both_tasks_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLUXNB_SYNTHETIC", str(tmp_path / "synthetic"))
    output = tmp_path / "editing.json"
    status = issue24.main(["--tiny", "--size", "32", "--steps", "2", "--warmup-steps", "1", "--output", str(output)])
    assert status == 0
    results = json.loads(output.read_text())
    assert results["fluxnb_issue24"] == 1 and datetime.fromisoformat(results["date"])
    assert results["device"] == {"device": "cpu"} and results["versions"]["torch"]
    assert "random weights" in results["weights"]
    assert results["settings"]["size"] == "32x32" and results["settings"]["steps"] == 2
    assert [(r["task"], r["role"]) for r in results["rows"]] == [
        (task, role) for task in ("fill", "kontext") for role in ("bf16", "bnb-8bit", "float8")]
    for row in results["rows"]:
        assert "error" not in row, row.get("error")
        assert row["seconds_per_image"] > 0 and row["finite"] and row["peak_rss_bytes"] > 0
        assert row["warmup"]["steps"] == 1 and row["load_report"]["components"]
    for task in ("fill", "kontext"):
        rows = {r["role"]: r for r in results["rows"] if r["task"] == task}
        assert rows["bnb-8bit"]["cast"] == "bf16" and rows["float8"]["cast"] == "fp16"
        assert rows["float8"]["latent_rel_error"] > 0 and math.isfinite(rows["float8"]["psnr_db"])
        _check_ratios(rows, results["verdict"][task])
    printed = capsys.readouterr().out
    fast = next(r for r in results["rows"] if r["task"] == "kontext" and r["role"] == "float8")
    assert f"{fast['speedup_vs_baseline']:.2f}x" in printed and "kontext: flux-tiny-kontext@fp16" in printed
    assert list((tmp_path / "issue24-inputs").glob("mask-32x32.png"))  # the fixed inputs are kept beside the JSON
