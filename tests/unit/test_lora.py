"""LoRA adapters on the real tiny FLUX: synthetic adapters built here with PEFT, loaded by diffusers' own LoRA API."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import fluxnb
from fluxnb.core.errors import RequestError
from fluxnb.models.backends import REGISTRY, get_backend
from fluxnb.models.loading import LoadedModel
from fluxnb.models.lora import SLOT, state_of
from fluxnb.models.lora_files import check_loras
from fluxnb.models.synthetic_lora import build_lora, to_kohya
from fluxnb.runs.outputs import RunFolder

pytestmark = pytest.mark.stack  # in both lanes: diffusers' LoRA loading (PEFT) differs between the lines

SMALL = dict(width=64, height=64, steps=2)


@pytest.fixture(scope="module")
def model(tiny_cache, tiny_spec) -> LoadedModel:
    """A tiny model of its own: these tests load and unload adapters (the session's tiny_model stays untouched)."""
    return fluxnb.load_model(tiny_spec, device="cpu", progress=False)


@pytest.fixture(scope="module")
def adapters(model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    a = build_lora(model.pipe.transformer, folder / "style_a.safetensors", rank=4, seed=1)
    b = build_lora(model.pipe.transformer, folder / "style_b.safetensors", rank=4, seed=2)
    return {"a": a, "b": b, "a_kohya": to_kohya(a, folder / "style_a_kohya.safetensors"),
            "a_comfyui": to_kohya(a, folder / "style_a_comfyui.safetensors", prefix="diffusion_model.")}


def pixels(model: LoadedModel, run: RunFolder | None = None, **kwargs) -> np.ndarray:
    request = fluxnb.make_request(model.spec, prompt="a red fox", **{**SMALL, **kwargs})
    return np.asarray(fluxnb.generate(model, request, run, progress=False)[0].image)


def test_lora_changes_the_output_scale_0_is_no_lora_and_unload_restores_it(model, adapters):
    before = pixels(model)
    with_lora = pixels(model, loras=[str(adapters["a"])])
    assert (with_lora != before).mean() > 0.1
    assert np.array_equal(pixels(model, loras=[{"path": str(adapters["a"]), "scale": 0}]), before)
    assert np.array_equal(pixels(model), before)  # a request without adapters unloads them
    assert state_of(model).loaded == {}
    assert not any("lora" in type(m).__module__ for m in model.pipe.transformer.modules())


@pytest.mark.parametrize("layout", ["a_kohya", "a_comfyui"])
def test_kohya_and_comfyui_layouts_convert_and_give_the_same_image(model, adapters, layout):
    (choice,) = check_loras([str(adapters[layout])])
    assert (choice.layout, choice.rank) == ("kohya", 4)
    assert np.array_equal(pixels(model, loras=[str(adapters[layout])]), pixels(model, loras=[str(adapters["a"])]))


def test_same_adapters_load_once_a_new_scale_only_sets_it(model, adapters, monkeypatch):
    calls = []
    original = model.pipe.load_lora_weights
    monkeypatch.setattr(model.pipe, "load_lora_weights", lambda *a, **k: (calls.append(a), original(*a, **k))[1])
    pixels(model)  # start from no adapter
    full = pixels(model, loras=[f"{adapters['a']}:1.0"])
    assert np.array_equal(pixels(model, loras=[f"{adapters['a']}:1.0"]), full)
    half = pixels(model, loras=[f"{adapters['a']}:0.5"])
    assert len(calls) == 1 and not np.array_equal(half, full)
    both = pixels(model, loras=[str(adapters["a"]), str(adapters["b"])])
    assert len(calls) == 2 and not np.array_equal(both, full)


def test_metadata_and_manifest_record_file_name_sha256_and_scale(model, adapters):
    run = RunFolder.create("lora")
    pixels(model, run, loras=[{"path": str(adapters["a"]), "scale": 0.7, "name": "mystyle"}])
    entry = fluxnb.read_manifest(run.path)["images"][0]
    digest = hashlib.sha256(adapters["a"].read_bytes()).hexdigest()
    assert entry["loras"] == [{"name": "mystyle", "file": "style_a.safetensors", "sha256": digest, "scale": 0.7}]
    assert entry["lora_fused"] is False
    assert fluxnb.read_png_metadata(run.path / entry["file"])["loras"] == entry["loras"]


def test_paths_under_home_are_recorded_with_a_tilde(model, adapters, monkeypatch):
    monkeypatch.setenv("HOME", str(adapters["a"].parent.parent))
    (choice,) = check_loras([str(adapters["a"])])
    assert choice.path == f"~/{adapters['a'].parent.name}/style_a.safetensors"
    assert str(Path.home()) not in json.dumps(choice.to_dict())


def test_fuse_is_close_to_unfused_and_says_it_ran_fused(model, adapters):
    run = RunFolder.create("fused")
    unfused = pixels(model, loras=[str(adapters["a"])])
    fused = pixels(model, run, loras=[str(adapters["a"])], fuse_loras=True)
    assert np.abs(fused.astype(int) - unfused.astype(int)).max() <= 2
    assert fluxnb.read_manifest(run.path)["images"][0]["lora_fused"] is True
    assert state_of(model).fused
    pixels(model)  # unfused and unloaded again
    assert not state_of(model).fused and state_of(model).loaded == {}


def _write(path: Path, tensors: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(v) for k, v in tensors.items()}, str(path))
    return path


def _copy(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD = {
    "missing": (lambda d, a: d / "nowhere.safetensors", "does not exist"),
    "pickle": (lambda d, a: _copy(d / "style.ckpt", b"\x80\x04K\x01."), "not a .safetensors LoRA"),
    "not_lora": (lambda d, a: _write(d / "model.safetensors", {"transformer.proj_out.weight": [4, 4]}),
                 "is not a LoRA adapter"),
    "sdxl": (lambda d, a: _write(d / "sdxl.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": [4, 8],
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": [8, 4]}), "Stable Diffusion"),
    "sd_unet_prefix": (lambda d, a: _write(d / "sd15.safetensors", {
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": [4, 8],
        "unet.up_blocks.1.attentions.0.proj_out.lora_A.weight": [4, 8]}), "Stable Diffusion"),
    "sd_kohya_transformer_blocks": (lambda d, a: _write(d / "sd_kohya.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": [4, 8],
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 8]}), "Stable Diffusion"),
    "other_model": (lambda d, a: _write(d / "llm.safetensors", {
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": [4, 8]}), "is a LoRA for another model"),
    "hub_offline": (lambda d, a: Path("someone/flux-style/style.safetensors"), "the hub could not provide it"),
    "truncated_header": (lambda d, a: _copy(d / "cut.safetensors", a["a"].read_bytes()[:300]), "truncated"),
    "truncated_data": (lambda d, a: _copy(d / "half.safetensors", a["a"].read_bytes()[:-100]), "truncated"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_adapter_files_are_refused_before_loading_with_the_file_and_the_fix(case, adapters, tiny_spec, tmp_path):
    make, words = BAD[case]
    file = make(tmp_path, adapters)
    with pytest.raises(RequestError) as caught:
        fluxnb.make_request(tiny_spec, prompt="a fox", loras=[str(file)])
    message = str(caught.value)
    assert message.startswith("parameter `loras`: LoRA file") and file.name in message
    assert words in message and "\nFix: " in message


def test_cli_style_path_scale_with_a_word_for_the_scale(adapters, tiny_spec):
    with pytest.raises(RequestError, match=r"style_a.safetensors.*scale must be a finite number, got 'strong'"):
        fluxnb.make_request(tiny_spec, prompt="a fox", loras=[f"{adapters['a']}:strong"])
    (choice,) = fluxnb.make_request(tiny_spec, prompt="a fox", loras=[f"{adapters['a']}:-0.5"]).loras
    assert choice.scale == -0.5 and choice.layout == "diffusers"


@pytest.mark.parametrize("scale", ["strong", float("nan"), float("inf"), None, True])
def test_a_scale_that_is_not_a_finite_number_is_refused(scale, adapters, tiny_spec):
    with pytest.raises(RequestError, match=r"style_a.safetensors.*scale must be a finite number") as caught:
        fluxnb.make_request(tiny_spec, prompt="a fox", loras=[{"path": str(adapters["a"]), "scale": scale}])
    assert "\nFix: give a number" in str(caught.value)


def test_rank_or_shape_mismatch_fails_before_any_image_and_leaves_the_model_clean(model, adapters, tmp_path):
    wrong = _write(tmp_path / "other_size.safetensors", {
        "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": [4, 999],
        "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": [999, 4]})
    before = pixels(model)
    run = RunFolder.create("mismatch")
    request = fluxnb.make_request(model.spec, prompt=["a fox", "a cat"], loras=[str(wrong)], **SMALL)
    with pytest.raises(RequestError, match=r"LoRA file 'other_size.safetensors' does not fit this model") as caught:
        fluxnb.generate(model, request, run, progress=False)
    assert "\nFix: " in str(caught.value)
    assert fluxnb.read_manifest(run.path)["images"] == [] and not list(run.path.glob("*.png"))
    assert np.array_equal(pixels(model), before)


def test_cli_lora_option_and_a_bad_file_exits_2(adapters, outputs_dir, tmp_path):
    import subprocess
    import sys

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(adapters["a"].read_bytes()[:200])
    done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--prompt", "a fox", "--steps", "1",
                           "--lora", f"{adapters['a']}:0.5", "--lora", str(cut)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "parameter `loras`: LoRA file" in done.stderr and "cut.safetensors" in done.stderr
    assert "truncated" in done.stderr and "Traceback" not in done.stderr
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())


def test_every_backend_says_how_it_applies_loras():
    modes = {t: b.lora_mode for t, b in REGISTRY.items()}
    assert set(modes.values()) <= {"yes", "unfused", "hotswap", "no"}
    assert all(not b.lora.startswith("no: LoRA support is not checked") for b in REGISTRY.values())
    assert modes["flux-bnb-8bit"] == modes["flux-bnb-4bit"] == modes["flux-bf16"] == "yes"
    assert modes["flux-torchao-int8wo"] == "unfused"
    assert modes["flux-torchao-int8dq"] == modes["flux-torchao-fp8dq"] == "hotswap"  # compiled by their entries
    # any entry whose blocks are compiled takes adapters by hotswap, a compiled bf16 entry too (no recompile)
    from fluxnb.models.backends import lora_for

    for t, backend in REGISTRY.items():
        if backend.compilable and backend.lora_mode != "no":
            spec = dataclasses.replace(fluxnb.load_config().get("flux-dev"), type=t, compile=True)
            assert lora_for(spec, backend)[0] == "hotswap", t


def test_combinations_that_cannot_work_are_refused_before_loading(config, adapters):
    torchao, compiled = config.get("flux-dev-torchao-int8"), config.get("flux-dev-torchao-int8dq")
    with pytest.raises(RequestError, match=r"parameter `fuse_loras`: .*runs adapters unfused only") as caught:
        fluxnb.make_request(torchao, prompt="a fox", loras=[str(adapters["a"])], fuse_loras=True)
    assert "Fix: set fuse_loras=False" in str(caught.value)
    with pytest.raises(RequestError, match=r"holds one adapter at a time .*the request has 2"):
        fluxnb.make_request(compiled, prompt="a fox", loras=[str(adapters["a"]), str(adapters["b"])])
    with pytest.raises(RequestError, match=r"parameter `fuse_loras`: .*hotswap"):
        fluxnb.make_request(compiled, prompt="a fox", loras=[str(adapters["a"])], fuse_loras=True)
    request = fluxnb.make_request(compiled, prompt="a fox", loras=[str(adapters["a"])])
    assert request.loras[0].file == "style_a.safetensors"


def test_compiled_model_swaps_adapter_and_scale_without_recompiling(tiny_spec, adapters, monkeypatch):
    """The hotswap path on the tiny model with real regional compile (inductor on the CPU): after the first adapter,
    changing the adapter or its scale compiles nothing (the GPU lane repeats this on the torchao entry)."""
    import torch

    from fluxnb.models.backends.base import compile_blocks
    from fluxnb.runs.generation import compile_counters

    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    if not hasattr(model.pipe.transformer, "compile_repeated_blocks"):
        pytest.skip("diffusers < 0.35 has no regional compilation (the guide lane); compiled entries need >= 0.36")
    hotswap = dataclasses.replace(get_backend(tiny_spec.type), lora=REGISTRY["flux-torchao-int8dq"].lora)
    monkeypatch.setattr(LoadedModel, "backend", property(lambda self: hotswap))
    torch._dynamo.reset()
    try:
        compile_blocks(model.pipe.transformer, hotswap)
        pixels(model)  # compiles without an adapter
        first = pixels(model, loras=[str(adapters["a"])])  # the first adapter changes the modules: compiles again
        graphs = compile_counters()[0]
        assert graphs > 0
        swapped = pixels(model, loras=[str(adapters["b"])])
        rescaled = pixels(model, loras=[f"{adapters['b']}:0.3"])
        off = pixels(model)
        assert compile_counters()[0] == graphs  # no new graph for adapter, scale or switching off
    finally:
        torch._dynamo.reset()
    assert state_of(model).loaded == {SLOT: hashlib.sha256(adapters["b"].read_bytes()).hexdigest()}
    assert not np.array_equal(first, swapped) and not np.array_equal(swapped, rescaled)
    assert not np.array_equal(off, rescaled)


def test_widget_form_chooses_among_the_loaded_adapters_with_a_scale_slider(model, adapters):
    from fluxnb.ui.widgets import GenerateForm

    initial = fluxnb.make_request(model.spec, prompt="a red fox", loras=[f"{adapters['a']}:0.8", str(adapters["b"])],
                                  **SMALL)
    form = GenerateForm(model, RunFolder.create("form"), initial=initial)
    assert [label for label, _ in form.lora.options] == ["none", "style_a (style_a.safetensors)",
                                                        "style_b (style_b.safetensors)"]
    assert form.lora.value.name == "style_a" and form.lora_scale.value == 0.8
    form.lora.value = initial.loras[1]
    form.lora_scale.value = 0.5
    (image,) = form.generate()
    assert [(r["name"], r["scale"]) for r in image.metadata["loras"]] == [("style_b", 0.5)]
    form.lora.value = None
    (plain,) = form.generate()
    assert "loras" not in plain.metadata and np.array_equal(np.asarray(plain.image), pixels(model))


def test_without_peft_the_message_says_what_to_install(adapters, tiny_spec, monkeypatch):
    import fluxnb.models.lora_files as lora_files

    monkeypatch.setattr(lora_files, "package_version", lambda name: None if name == "peft" else "1")
    with pytest.raises(RequestError, match=r"through PEFT, which is not installed") as caught:
        fluxnb.make_request(tiny_spec, prompt="a fox", loras=[str(adapters["a"])])
    assert "pip install 'peft>=" in str(caught.value)
    assert fluxnb.make_request(tiny_spec, prompt="a fox").loras == ()  # no adapters: peft is not needed


def test_a_control_lora_is_refused_before_the_first_image_and_the_model_stays_usable(tiny_spec, tmp_path):
    """A LoRA made for a 128-channel transformer (FLUX Control): diffusers widens the input layer to load it, and
    the first image died with a raw RuntimeError (issue 22). Now refused, the layer restored, the model usable."""
    from diffusers import FluxTransformer2DModel

    from fluxnb.models import synthetic_lora
    from fluxnb.models.tiny import TINY_DIMS

    wider = FluxTransformer2DModel(**{**TINY_DIMS["transformer"], "in_channels": 128})
    control = tmp_path / "control.safetensors"
    targets = synthetic_lora.TARGETS
    try:
        synthetic_lora.TARGETS = f"({targets})|x_embedder"  # the layer a Control LoRA widens
        synthetic_lora.build_lora(wider, control)
    finally:
        synthetic_lora.TARGETS = targets
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    good = synthetic_lora.build_lora(model.pipe.transformer, tmp_path / "good.safetensors")
    request = fluxnb.make_request(tiny_spec, prompt="x", steps=1, width=32, height=32, loras=[str(control)])
    with pytest.raises(fluxnb.RequestError, match="parameter `loras`: LoRA file 'control.safetensors' expects 128 "
                       "input channels \\(a FLUX Control LoRA, made for the Canny or Depth model\\); this model "
                       "takes 64"):
        fluxnb.generate(model, request, progress=False)
    assert model.pipe.transformer.config.in_channels == 64 and model.pipe.transformer.x_embedder.in_features == 64
    plain = fluxnb.make_request(tiny_spec, prompt="x", steps=1, width=32, height=32, loras=[str(good)])
    assert len(fluxnb.generate(model, plain, progress=False)) == 1
