"""The bench's speed-work additions on the CPU: weight sets (Gaussian and outliers) with tiny synthetic checkpoints,
the cached-mode and autotune variants, images/minute, the warm first call in a new process, the predicted L4 and
the recommendation rule (within 2x of bnb 8-bit's error on every weight set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fluxnb.bench import load_results, parse_backend, summarize
from fluxnb.bench.fidelity import add_comparisons
from fluxnb.bench.predict import add_predictions, card_for, step_tflop
from fluxnb.bench.warm import first_call_in_new_process
from fluxnb.core.errors import RequestError
from fluxnb.models.synthetic import BUILD_MARKER, synthetic_dir
from fluxnb.models.tiny import TINY_DIMS


def test_cache_and_autotune_variants(config):
    cached = parse_backend("flux-dev-torchao-fp8@cache=taylorseer@2", config)
    assert cached.spec.cache == "taylorseer@2" and cached.spec.compile
    tuned = parse_backend("flux-dev-torchao-fp8@autotune", config)
    assert tuned.spec.compile_mode == "max-autotune-no-cudagraphs" and tuned.spec.compile
    with pytest.raises(RequestError, match="type flux-bnb-8bit has no max-autotune-no-cudagraphs mode"):
        parse_backend("flux-dev-bnb-8bit@autotune", config)
    with pytest.raises(RequestError, match="parameter `backend`: 'teacache' is not a cache setting"):
        parse_backend("flux-dev@cache=teacache", config)
    assert parse_backend("flux-dev@compiled", config).spec.compile  # bf16 compiled: the noise floor
    vae = parse_backend("flux-dev-torchao-int8dq@compile-vae", config).spec
    assert vae.compile and vae.compile_vae and not config.get("flux-dev-torchao-int8dq").compile_vae
    assert parse_backend("flux-dev-torchao-fp8-cached@compiled", config).spec.compile_vae  # the entry's own kept
    eager = parse_backend("flux-dev-torchao-fp8-cached@eager", config).spec
    assert not eager.compile and not eager.compile_vae  # the decoder compiles only with the blocks
    with pytest.raises(RequestError, match="type flux-bnb-8bit is not compiled by fluxnb"):
        parse_backend("flux-dev-bnb-8bit@compile-vae", config)


def test_weight_sets_batch_and_cleanup_on_tiny_synthetic_checkpoints(tmp_path, capsys):
    from fluxnb.cli import main

    out, root = tmp_path / "bench.json", tmp_path / "synthetic"
    code = main(["bench", "--backend", "flux-tiny", "--backend", "flux-tiny@bf16", "--size", "32x32", "--steps", "2",
                 "--warmup-steps", "1", "--device", "cpu", "--synthetic", "--synthetic-dims", "tiny",
                 "--synthetic-root", str(root), "--weights", "gaussian,outliers", "--outlier-backend", "flux-tiny",
                 "--outlier-backend", "flux-tiny@bf16", "--batch", "2", "--batch-backend", "flux-tiny@bf16",
                 "--cleanup-outliers", "--output", str(out)])
    assert code == 0
    results = load_results(out)
    rows = {(r["backend"], r["weights"]): r for r in results["rows"]}
    assert set(rows) == {(b, w) for b in ("flux-tiny", "flux-tiny@bf16") for w in ("gaussian", "outliers")}
    for weights in ("gaussian", "outliers"):  # each set compared with its own reference
        assert rows[("flux-tiny", weights)]["latent_rel_error"] == 0.0
        assert 0 < rows[("flux-tiny@bf16", weights)]["latent_rel_error"] < 5  # bf16 drift: see test_bench
    batch = rows[("flux-tiny@bf16", "gaussian")]["batch"]
    assert batch["images"] == 2 and batch["images_per_minute"] > 0 and batch["t5_offloaded"] is False
    assert "batch" not in rows[("flux-tiny", "gaussian")]
    gaussian = synthetic_dir("bf16", root, TINY_DIMS)
    marker = json.loads((gaussian / BUILD_MARKER).read_text())
    assert marker["weight_set"] == "gaussian" and "outliers" not in marker
    assert not synthetic_dir("bf16", root, TINY_DIMS, "outliers").exists()  # --cleanup-outliers
    assert "outliers" in synthetic_dir("bf16", root, TINY_DIMS, "outliers").name
    printed = capsys.readouterr().out
    assert "| flux-tiny@bf16 | 32x32 | outliers |" in printed and "weights: synthetic" in printed


def test_the_outlier_set_on_disk_has_the_outliers_its_marker_records(tmp_path):
    """The saved outlier checkpoint against the saved Gaussian one: in each consumer of a normalized activation, 8
    input columns (of the tiny model's 32 channels) are 50x smaller, the rest identical; the marker says so."""
    from safetensors.torch import load_file

    from fluxnb.models.synthetic import ensure_synthetic_checkpoint

    def to_q(weight_set: str):
        path = ensure_synthetic_checkpoint("bf16", tmp_path, device="cpu", dims=TINY_DIMS, log=lambda _: None,
                                           weight_set=weight_set)
        (weights,) = (path / "transformer").glob("*.safetensors")
        return path, load_file(weights)["single_transformer_blocks.0.attn.to_q.weight"].float()

    _, gaussian = to_q("gaussian")
    path, outliers = to_q("outliers")
    ratio = (gaussian.abs().sum(dim=0) / outliers.abs().sum(dim=0))  # per input column
    assert int(((ratio - 50).abs() < 1).sum()) == 8 and int(((ratio - 1).abs() < 1e-3).sum()) == 32 - 8
    marker = json.loads((path / BUILD_MARKER).read_text())
    assert marker["weight_set"] == "outliers"
    assert (marker["outliers"]["outlier_channels"], marker["outliers"]["outlier_scale"]) == (8, 50.0)
    with pytest.raises(ValueError, match="allowed: gaussian, outliers"):
        synthetic_dir("bf16", tmp_path, TINY_DIMS, "heavy")


def test_bad_bench_options_are_refused():
    from fluxnb.cli import main

    assert main(["bench", "--weights", "gaussian,heavy", "--synthetic"]) == 2
    assert main(["bench", "--weights", "outliers"]) == 2  # needs --synthetic
    assert main(["bench", "--batch", "-1"]) == 2


def test_warm_first_call_runs_in_a_new_process(tiny_cache):
    result = first_call_in_new_process({
        "label": "flux-tiny", "config": None, "checkpoint": None, "device": "cpu", "memory_fraction": None,
        "warmup_steps": 1, "uncapped": [],
        "generation": {"prompt": "a cat", "seed": 0, "width": 32, "height": 32, "guidance_scale": 3.5,
                       "max_sequence_length": 64, "device": "cpu"}})
    assert "error" not in result, result
    assert result["first_call_seconds"] > 0 and result["new_graphs"] == 0 and result["compile_cache"] is None
    assert result["process_seconds"] >= result["first_call_seconds"]
    failed = first_call_in_new_process({"label": "flux-nope", "device": "cpu"})
    assert failed["error"].startswith("exit 1") and "flux-nope" in failed["error"]


def _row(backend, seconds, err, weights="gaussian", size="1024x1024", steps=28):
    width, height = (int(v) for v in size.split("x"))
    return {"backend": backend, "size": size, "width": width, "height": height, "steps": steps, "weights": weights,
            "seconds_per_image": seconds, "seconds_per_step": (seconds - 0.3) / steps, "latent_rel_error": err,
            "psnr_db": 30.0, "fits_cap": True, "capped": True}


def _results(rows, gpu="NVIDIA H100 80GB HBM3"):
    types = {"flux-dev": "flux-bf16", "flux-dev@compiled": "flux-bf16", "flux-dev-bnb-8bit": "flux-bnb-8bit",
             "flux-dev-torchao-fp8": "flux-torchao-fp8dq", "flux-dev-torchao-int8dq": "flux-torchao-int8dq",
             "flux-dev-torchao-fp8@cache=taylorseer@2": "flux-torchao-fp8dq"}
    results = {"weights": "synthetic", "device": {"gpu": gpu}, "rows": rows,
               "backends": [{"label": k, "type": v} for k, v in types.items()],
               "settings": {"baseline": "flux-dev-bnb-8bit", "reference": "flux-dev", "cap_bytes": 22e9}}
    add_comparisons(results, {})  # the bench's own speed ratios (its fidelity figures are the rows' here)
    return results


def test_recommendation_needs_fidelity_within_2x_on_every_weight_set_and_6_5x():
    rows = [_row("flux-dev", 5.0, 0.0), _row("flux-dev@compiled", 4.0, 0.002), _row("flux-dev-bnb-8bit", 14.0, 0.01),
            _row("flux-dev-torchao-int8dq", 2.0, 0.011), _row("flux-dev-torchao-fp8", 2.1, 0.017),
            _row("flux-dev-torchao-fp8@cache=taylorseer@2", 1.9, 0.019),
            _row("flux-dev", 5.0, 0.0, "outliers"), _row("flux-dev-bnb-8bit", 14.0, 0.011, "outliers"),
            _row("flux-dev-torchao-int8dq", 2.0, 0.046, "outliers"),
            _row("flux-dev-torchao-fp8", 2.1, 0.017, "outliers"),
            _row("flux-dev-torchao-fp8@cache=taylorseer@2", 1.9, 0.021, "outliers")]
    summary = summarize(_results(rows), recommended="flux-dev-torchao-fp8")
    size = summary["sizes"]["1024x1024"]
    assert size["best"] == "flux-dev-torchao-fp8"  # int8dq is faster but 4.2x bnb's error on the outlier set
    assert size["goal_met"] and size["speedup"] == pytest.approx(6.667, abs=1e-3)  # 14.0 / 2.1 >= 6.5
    assert size["cached"] == {"backend": "flux-dev-torchao-fp8@cache=taylorseer@2",
                              "speedup": pytest.approx(7.368, abs=1e-3), "goal_met": False}  # 14.0 / 1.9 < 8
    text = "\n".join(summary["lines"])
    assert "noise floor (flux-dev@compiled vs flux-dev, gaussian weights, 1024x1024): latent rel. err 0.002" in text
    assert "recommended entry flux-dev-torchao-fp8 (model_config.yaml): 2.10 s/image" in text
    rows[4]["seconds_per_image"] = 2.2  # 6.36x: eligible but short of the goal
    assert summarize(_results(rows))["sizes"]["1024x1024"]["goal_met"] is False


def test_the_speed_goal_needs_every_weight_set_the_run_asked_for():
    """Run 34 asked for both sets and lost the outlier one (out of memory): 6.86x on the Gaussian set alone is not
    the goal met, and the line says which set is missing."""
    gaussian = [_row("flux-dev", 5.0, 0.0), _row("flux-dev-bnb-8bit", 19.4, 0.03),
                _row("flux-dev-torchao-fp8", 2.8, 0.046)]
    results = _results(gaussian)
    results["settings"]["weight_sets"] = ["gaussian", "outliers"]
    summary = summarize(results)
    assert summary["sizes"]["1024x1024"]["goal_met"] is False
    assert "-> goal of 6.5x NOT met (no latent error beside the baseline's on the outliers weights)" in "\n".join(
        summary["lines"])
    outliers = [_row("flux-dev", 5.0, 0.0, "outliers"), _row("flux-dev-bnb-8bit", 19.4, 0.037, "outliers"),
                _row("flux-dev-torchao-fp8", 2.8, 0.046, "outliers")]
    both = _results([*gaussian, *outliers])
    both["settings"]["weight_sets"] = ["gaussian", "outliers"]
    assert summarize(both)["sizes"]["1024x1024"]["goal_met"] is True  # 19.4 / 2.8 = 6.9x on both sets


def test_predicted_l4_is_calibrated_on_the_guides_figure_and_labelled():
    assert step_tflop(1024, 1024) == pytest.approx(74.4, abs=1.0)  # PERFORMANCE.md: ~74 TFLOP per step
    assert card_for("NVIDIA H100 80GB HBM3").name == "H100" and card_for("NVIDIA L4").name == "NVIDIA L4"
    assert card_for("Tesla T4") is None
    results = _results([_row("flux-dev-bnb-8bit", 14.4, 0.01), _row("flux-dev-torchao-fp8", 2.8, 0.017),
                        _row("flux-dev", 5.2, 0.0)])
    info = add_predictions(results)
    rows = {r["backend"]: r["predicted_l4"] for r in results["rows"]}
    assert rows["flux-dev"]["calibrated"] and info["label"].startswith("predicted (not measured)")
    assert rows["flux-dev-torchao-fp8"]["precision"] == "8bit" and rows["flux-dev"]["precision"] == "bf16"
    # Expected values worked out by hand from the model in predict.py's docstring (not by calling it). Each row:
    # s/step = (s/image - 0.3) / 28; L4 step = max(s/step x H100 peak / L4 peak, weight bytes / 300 GB/s);
    # L4 s/image = 28 x L4 step + 0.3 x 989/121 (= 2.452, the text encoders and VAE at the bf16 peak ratio).
    #   bnb 8-bit (bf16 compute, 11.9 GB): 28 x 0.50357 x 989/121 + 2.452 = 117.70 s, so the factor is 77 / 117.70
    #   float8 (8-bit compute) runs SageAttention on the L4 (its record's choice for 8.9), SDPA here: attention is
    #   14.87 of 74.36 TFLOP, in bf16 on the L4 (121) beside linears at 242: share 0.1229 / (0.2458 + 0.1229) =
    #   0.3333; SageAttention at 2.1x saves 0.3333 x (1 - 1/2.1) = 0.1746 of the step:
    #   28 x 0.089286 x 1979/242 x 0.8254 + 2.452 = 19.33 s -> x 0.6542 = 12.6 s
    #   bf16 (23.8 GB): 28 x 0.175 x 989/121 + 2.452 = 42.50 s -> x 0.6542 = 27.8 s
    assert info["calibration_factor"] == pytest.approx(0.654, abs=0.001)
    assert rows["flux-dev-torchao-fp8"]["attention"]["kernel"] == "sage"
    assert rows["flux-dev-torchao-fp8"]["attention"]["step_factor"] == pytest.approx(0.825, abs=0.001)
    assert rows["flux-dev-torchao-fp8"]["uncalibrated_seconds_per_image"] == pytest.approx(19.3, abs=0.1)
    assert rows["flux-dev-torchao-fp8"]["seconds_per_image"] == pytest.approx(12.6, abs=0.1)
    assert "attention" not in rows["flux-dev"]  # bf16's record has no attention choice: SDPA on both cards
    assert rows["flux-dev"]["seconds_per_image"] == pytest.approx(27.8, abs=0.1)
    # 74.36 TFLOP / (0.089286 s x 1979 TFLOP/s): how well the H100 was used, reported beside the prediction
    assert rows["flux-dev-torchao-fp8"]["efficiency_here"] == pytest.approx(0.421, abs=0.001)
    # the weight-streaming floor: a step the peaks would put at 0.029 s on the L4 takes 11.9 GB / 300 GB/s = 0.040 s
    fast = _results([_row("flux-dev-bnb-8bit", 14.4, 0.01), _row("flux-dev-torchao-fp8", 0.4, 0.017)])
    add_predictions(fast)
    floor = fast["rows"][1]["predicted_l4"]["uncalibrated_seconds_per_image"]
    assert floor == pytest.approx(28 * 11.9 / 300 + 2.452, abs=0.1)  # 3.56 s, not 28 x 0.029 + 2.452 = 3.27 s
    assert add_predictions(_results([_row("flux-dev-bnb-8bit", 77.0, 0.01)], gpu="NVIDIA L4")) is None
    # the same float8 row, had the entry said `attention: sdpa`: no lever, 28 x 0.73015 + 2.452 = 22.90 s
    sdpa = _results([_row("flux-dev-bnb-8bit", 14.4, 0.01), _row("flux-dev-torchao-fp8", 2.8, 0.017)])
    sdpa["backends"][3]["attention"] = "sdpa"
    add_predictions(sdpa)
    assert sdpa["rows"][1]["predicted_l4"]["uncalibrated_seconds_per_image"] == pytest.approx(22.9, abs=0.1)
    # a row that ran SageAttention on the H100 (slower there than cuDNN) gets no L4 figure from that speed
    ran = _results([_row("flux-dev-bnb-8bit", 14.4, 0.01), _row("flux-dev-torchao-fp8", 3.4, 0.02)])
    ran["backends"][3]["load_report"] = {"attention": "sage (sageattention 1.0.6, Triton: int8 QK, fp16 PV)"}
    add_predictions(ran)
    guess = ran["rows"][1]["predicted_l4"]
    assert "unpredictable" in guess and "seconds_per_image" not in guess
    ran["backends"][3]["load_report"] = {"attention": "cudnn-fp8 (nvidia-cudnn-frontend 1.14.0: float8 Q, K, V, O)"}
    from fluxnb.bench import results_table

    add_predictions(ran)  # nor from cuDNN's float8 attention, which the L4 does not run
    assert ran["rows"][1]["predicted_l4"]["unpredictable"].startswith("ran cudnn-fp8 attention on this card")
    table = results_table({**ran, "rows": [{**r, "warmup": {"seconds": 1.0}, "compile_seconds_estimate": 0.0}
                                           for r in ran["rows"]]})
    assert "| - (ran cudnn-fp8 attention on this card: no L4 figure) |" in table
    assert "(predicted)" in results_table({**results, "rows": [{**r, "warmup": {"seconds": 1.0},
                                                                  "compile_seconds_estimate": 0.0}
                                                                 for r in results["rows"]]})


def test_gpu_script_parses():
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "issue15_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
