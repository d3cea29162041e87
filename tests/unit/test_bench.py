"""`fluxnb bench` plumbing on the CPU: two real backends of the tiny FLUX (fp32 reference, bf16 cast), JSON,
chart, ratios and fidelity computed within one run; plus the torchao backends' refusals and the synthetic
builder's code path at a scaled size. The GPU figures come from scripts/gpu_lane.sh (tests/gpu/test_gpu.py)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from fluxnb.bench import load_results, parse_backend, parse_size, psnr, relative_error, results_table
from fluxnb.core.errors import ModelUnavailableError, RequestError

pytestmark = pytest.mark.stack  # in both lanes: the bench engine calls the pipeline's phases directly


def test_parse_size_and_backend(config):
    assert parse_size("1024x768") == (1024, 768)
    with pytest.raises(RequestError, match="multiple of 16"):
        parse_size("1000x1000")
    with pytest.raises(RequestError, match="WIDTHxHEIGHT"):
        parse_size("big")
    assert parse_backend("flux-dev", config).capped is False  # bf16 runs uncapped unless told otherwise
    assert parse_backend("flux-dev-bnb-8bit", config).capped is True
    typed = parse_backend("flux-torchao-int8dq", config)
    assert typed.spec.type == "flux-torchao-int8dq" and typed.spec.params == config.get("flux-dev").params
    assert parse_backend("flux-tiny@bf16", config).cast == "bf16"
    with pytest.raises(RequestError, match="neither a model"):
        parse_backend("flux-nope", config)


def test_backend_variants_change_one_option(config):
    assert config.get("flux-dev-torchao-int8dq").compile
    eager = parse_backend("flux-dev-torchao-int8dq@eager", config)
    assert eager.spec.compile is False and eager.label == "flux-dev-torchao-int8dq@eager" and eager.cast is None
    offloaded = parse_backend("flux-dev-torchao-int8dq@offload-t5", config)
    assert offloaded.spec.offload_text_encoder and offloaded.spec.compile
    with pytest.raises(RequestError, match=r"each suffix after @ \(several joined by \+\) must be one of bf16 .*"
                                           "offload-t5"):
        parse_backend("flux-dev@fast", config)
    with pytest.raises(RequestError, match="type flux-bnb-8bit is not compiled by fluxnb"):
        parse_backend("flux-dev-bnb-8bit@compiled", config)
    with pytest.raises(RequestError, match="flux-bnb-8bit cannot offload its text encoder"):
        parse_backend("flux-dev-bnb-8bit@offload-t5", config)


def test_backend_variants_combine_with_plus(config):
    both = parse_backend("flux-dev-torchao-fp8@attention=sage+cache=taylorseer@2", config)
    assert (both.spec.attention, both.spec.cache, both.spec.compile) == ("sage", "taylorseer@2", True)
    assert config.get("flux-dev-torchao-fp8").attention == "auto"  # the entry itself is untouched
    assert parse_backend("flux-dev-torchao-fp8@attention=sdpa", config).spec.attention == "sdpa"
    cast = parse_backend("flux-tiny@bf16+attention=sdpa", config)
    assert (cast.cast, cast.spec.attention) == ("bf16", "sdpa")
    with pytest.raises(RequestError, match="attention=flash is not an attention kernel; allowed: auto, sdpa, sage"):
        parse_backend("flux-dev-torchao-fp8@attention=flash", config)
    with pytest.raises(RequestError, match="each suffix after @"):
        parse_backend("flux-dev-torchao-fp8@compiled+fast", config)


def test_compile_follows_the_entry_and_the_override(config, monkeypatch):
    from fluxnb.models.backends import compile_wanted, get_backend

    fast, weight_only = config.get("flux-dev-torchao-int8dq"), config.get("flux-dev-torchao-int8")
    fast_record, weight_only_record = get_backend(fast.type), get_backend(weight_only.type)
    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    assert compile_wanted(fast, fast_record) == (True, None)
    assert compile_wanted(weight_only, weight_only_record) == (False, None)
    monkeypatch.setenv("FLUXNB_COMPILE", "0")
    wanted, why = compile_wanted(fast, fast_record)
    assert not wanted and why.startswith("FLUXNB_COMPILE=0")
    monkeypatch.setenv("FLUXNB_COMPILE", "1")
    wanted, why = compile_wanted(weight_only, weight_only_record)  # int8 weight-only compiled: far slower, never
    assert not wanted and "ignored for flux-torchao-int8wo" in why
    assert compile_wanted(dataclasses.replace(fast, compile=False), fast_record) == (True, None)


def test_fidelity_metrics():
    import numpy as np

    ref = np.ones((4, 4))
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref * 1.1, ref) == pytest.approx(0.1)
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert psnr(image, image) == float("inf")
    assert psnr(image + 1, image) == pytest.approx(48.13, abs=0.01)


def test_bench_cli_on_tiny_two_backends(tmp_path, capsys):
    from fluxnb.cli import main

    out = tmp_path / "bench.json"
    start = time.perf_counter()
    code = main(["bench", "--backend", "flux-tiny", "--backend", "flux-tiny@bf16", "--size", "32x32",
                 "--steps", "2", "--warmup-steps", "1", "--device", "cpu", "--output", str(out)])
    wall = time.perf_counter() - start
    assert code == 0
    results = load_results(out)
    assert results["weights"].startswith("embedded tiny model")
    assert results["settings"]["reference"] == "flux-tiny" and results["settings"]["baseline"] == "flux-tiny"
    rows = {r["backend"]: r for r in results["rows"]}
    ref, cast = rows["flux-tiny"], rows["flux-tiny@bf16"]
    assert ref["latent_rel_error"] == 0.0 and ref["psnr_db"] is None  # the reference against itself
    # random tiny weights drift in bf16 by an amount that depends on the CPU's bf16 kernels (0.2-0.3 on the CI
    # machine, 1.3-1.4 on the GPU lane's CPU): the cast must differ from the reference, finitely
    assert 0 < cast["latent_rel_error"] < 5 and cast["psnr_db"] > 0
    for row in (ref, cast):  # the ratios themselves: test_comparisons_with_hand_numbers
        assert set(row["phases"]) == {"text_encoding", "denoising", "vae_decode"}
        assert 0 < row["seconds_per_image"] < wall and row["speedup_vs_baseline"] > 0  # measured inside this call
        assert row["finite"] and row["peak_rss_bytes"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "| flux-tiny@bf16 | 32x32 |" in capsys.readouterr().out
    assert "flux-tiny@bf16" in results_table(results)


def test_committed_results_are_readable():
    from fluxnb.bench.report import default_results_path
    from tests.paths import REPO_ROOT

    files = [*sorted((REPO_ROOT / "results").glob("**/bench*.json")), default_results_path()]
    assert default_results_path().is_file()  # shipped in the package: notebook 04's default
    for path in files:
        results = load_results(path)
        assert results["rows"] and results["device"]
        assert "weights" in results and results_table(results)
        json.dumps(results)


def test_backend_refusals_before_any_weight_is_read(config, monkeypatch):
    import fluxnb
    from fluxnb.models.backends import REGISTRY, check_device
    from fluxnb.models.backends.torchao import require_torchao

    spec = dataclasses.replace(config.get("flux-dev"), name="t", type="flux-torchao-fp8dq")
    fp8, int8dq, int8wo = (REGISTRY[t] for t in ("flux-torchao-fp8dq", "flux-torchao-int8dq", "flux-torchao-int8wo"))
    with pytest.raises(ModelUnavailableError, match="compute capability 8.9 or newer; NVIDIA A10G is 8.6") as info:
        check_device(spec, fp8, "cuda", (8, 6), "NVIDIA A10G")
    assert "flux-torchao-int8dq" in str(info.value).split("Fix:")[1]  # what does run on that GPU
    with pytest.raises(ModelUnavailableError, match="T4 is 7.5") as info:
        check_device(spec, int8dq, "cuda", (7, 5), "T4")
    fix = str(info.value).split("Fix:")[1]
    assert "flux-torchao-int8wo" in fix and "flux-torchao-int8dq" not in fix and "flux-bf16" not in fix
    check_device(spec, fp8, "cuda", (8, 9))  # an L4 is allowed
    check_device(spec, int8wo, "cuda", (7, 5))
    # torchao missing: the message names the extra to install
    monkeypatch.setattr("fluxnb.models.backends.torchao.package_version",
                        lambda name: None if name == "torchao" else "0.42.1")
    with pytest.raises(ModelUnavailableError, match=r'pip install -e "\.\[torchao\]"'):
        require_torchao(spec)
    # no CUDA: refused before any weight is read (the checkpoint path does not even exist)
    with pytest.raises(ModelUnavailableError, match="needs a CUDA GPU"):
        fluxnb.load_model(spec, checkpoint="unused", device="cpu", progress=False)


def test_synthetic_builder_scaled_on_cpu(tmp_path):
    """The full-size builder's code path (real classes, real vocab sizes, the FLUX VAE), fewer and narrower blocks."""
    import fluxnb
    from fluxnb.models.synthetic import BUILD_MARKER, FLUX_DEV_VAE, ensure_synthetic_checkpoint, scaled_dims

    dims = scaled_dims(layers=1, single_layers=1, t5_layers=1, clip_layers=1)
    dims["transformer"].update(num_attention_heads=2, joint_attention_dim=256)
    dims["t5"].update(d_model=256, d_ff=512, num_heads=4)
    path = ensure_synthetic_checkpoint("bf16", tmp_path, device="cpu", dims=dims, log=lambda _: None)
    marker = json.loads((path / BUILD_MARKER).read_text())
    assert marker["dims"]["transformer"]["num_layers"] == 1 and "random weights" in marker["note"]
    assert marker["smoke"]["latent_std"] > 0
    assert ensure_synthetic_checkpoint("bf16", tmp_path, device="cpu", dims=dims) == path  # built once
    model = fluxnb.load_model(fluxnb.load_config().get("flux-tiny"), checkpoint=path, device="cpu", progress=False)
    assert model.pipe.text_encoder_2.config.vocab_size == 32128
    assert list(model.pipe.vae.config.block_out_channels) == FLUX_DEV_VAE["block_out_channels"]


def test_benchmark_notebook_runs_headless(tmp_path):
    """notebooks/04_benchmark.ipynb on the committed device result (or a tiny CPU one when none is committed)."""
    from fluxnb.bench import default_results_path
    from fluxnb.cli import main
    from fluxnb.runs.runner import run_notebook

    parameters = {}
    if not default_results_path().is_file():
        out = tmp_path / "bench.json"
        args = ["--backend", "flux-tiny", "--backend", "flux-tiny@bf16", "--size", "32x32", "--steps", "1"]
        assert main(["bench", *args, "--warmup-steps", "1", "--device", "cpu", "--output", str(out)]) == 0
        parameters["bench_json"] = str(out)
    run_dir = run_notebook("04_benchmark", parameters)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["lines"] and summary["sizes"]
    assert (run_dir / "bench_chart.png").stat().st_size > 10_000
    import nbformat

    executed = nbformat.read(run_dir / "04_benchmark.ipynb", as_version=4)
    charts = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(charts) == 1  # the chart is shown once (display(fig)), not again as pyplot's leftover figure


def test_failed_rows_keep_whole_words_and_the_chart_is_closed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fluxnb.bench import default_results_path, plot_results

    results = load_results(default_results_path())
    message = "RuntimeError: Expected all tensors to be on the same device, but found at least two devices " * 3
    results["rows"].append({"backend": "flux-dev", "size": "1024x1024", "error": message})
    failed = results_table(results).splitlines()[-1]
    cell = failed.split("failed: ")[1].rstrip(" |")
    assert cell.endswith(" ...") and message.startswith(cell[: -len(" ...")] + " ")  # cut between two words
    before = set(plt.get_fignums())
    fig = plot_results(results)
    assert set(plt.get_fignums()) == before  # closed in pyplot: a notebook shows it once, by display(fig)
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names[0] == f"{results['rows'][0]['backend']} ({results['rows'][0]['size']})"
    assert all(t.get_rotation() == 0 for t in fig.axes[0].get_yticklabels())  # horizontal, readable names


def test_comparisons_with_hand_numbers():
    """Speed ratios against the baseline and fidelity against the reference, on values worked out by hand."""
    import numpy as np

    from fluxnb.bench.fidelity import add_comparisons

    rows = [{"backend": "base", "size": "32x32", "seconds_per_image": 2.0, "seconds_per_step": 0.5},
            {"backend": "ref", "size": "32x32", "seconds_per_image": 4.0, "seconds_per_step": 1.0},
            {"backend": "fast", "size": "32x32", "seconds_per_image": 0.5, "seconds_per_step": 0.2},
            {"backend": "fast", "size": "32x32", "weights": "outliers", "seconds_per_image": 0.8,
             "seconds_per_step": 0.25}]
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    outputs = {("ref", "32x32", "gaussian"): {"latents": [3.0, 4.0], "image": image},
               ("fast", "32x32", "gaussian"): {"latents": [3.0, 4.5], "image": image + 1}}
    add_comparisons({"settings": {"reference": "ref", "baseline": "base"}, "rows": rows}, outputs)
    base, ref, fast, outliers = rows
    assert (fast["speedup_vs_baseline"], fast["step_speedup_vs_baseline"]) == (4.0, 2.5)  # 2.0/0.5, 0.5/0.2
    assert (ref["speedup_vs_baseline"], base["speedup_vs_baseline"]) == (0.5, 1.0)
    assert outliers["speedup_vs_baseline"] == 2.5  # no baseline on outliers: the Gaussian one (2.0/0.8)
    assert fast["latent_rel_error"] == 0.1 and fast["psnr_db"] == pytest.approx(48.13, abs=0.01)  # 0.5/5; 1 level
    assert ref["latent_rel_error"] == 0.0 and ref["psnr_db"] is None
    assert "latent_rel_error" not in outliers  # no outputs of that weight set: nothing compared


def test_the_cap_ends_with_its_backend(monkeypatch):
    """What runs after a capped backend (the next weight set's synthetic build, ~34 GB on the GPU) gets the whole card
    back, also when the backend failed (run 34: a build under the previous backend's 22 GB cap ran out of memory)."""
    import types

    import torch

    from fluxnb.bench.engine import memory_cap

    fractions = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(total_memory=80e9))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", fractions.append)
    with memory_cap("cuda", int(22e9)) as fraction:
        assert fractions == [fraction] and fraction == pytest.approx(22 / 80)
    with pytest.raises(RuntimeError, match="out of memory"), memory_cap("cuda", int(22e9)):
        raise RuntimeError("CUDA out of memory")
    assert fractions == [fraction, 1.0, fraction, 1.0]
    with memory_cap("cpu", int(22e9)) as fraction:
        assert fraction is None and len(fractions) == 4  # nothing to cap on a CPU


def test_repeats_keep_the_median_image_and_report_the_spread(tmp_path, capsys):
    """One image's time moved by up to 5% between two calls on an H100 (runs 35-36), the size of a goal's margin:
    --repeats N times N images and keeps the median one's row, every image's seconds and their spread beside it."""
    from fluxnb.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "flux-tiny", "--size", "32x32", "--steps", "2", "--warmup-steps", "1",
                 "--device", "cpu", "--repeats", "3", "--output", str(out)]) == 0
    results = load_results(out)
    (row,) = results["rows"]
    times = row["repeats"]["seconds_per_image"]
    assert len(times) == 3 and results["settings"]["repeats"] == 3
    assert row["seconds_per_image"] == sorted(times)[1]  # the median image's own phases make the row
    assert row["repeats"]["spread"] == round(max(times) / min(times) - 1, 4)
    assert "median of 3 images (spread" in capsys.readouterr().out
    assert main(["bench", "--backend", "flux-tiny", "--repeats", "0", "--device", "cpu"]) == 2
