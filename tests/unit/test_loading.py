"""The loader on the real tiny FLUX: reports, quantization verification, img2img sharing, refusals."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import fluxnb
from fluxnb.core.footprint import component_footprint, pipeline_footprint
from fluxnb.models.loading import derive_img2img, verify_quantization
from fluxnb.models.tiny import build_tiny_pipeline, ensure_tiny_checkpoint

from ..bnb_convert import convert_linears

pytestmark = pytest.mark.stack  # in both lanes: the loader and its checks across the diffusers / transformers lines


def test_tiny_load_report(tiny_model):
    report = tiny_model.report
    assert [c.name for c in report.components] == ["transformer", "text_encoder", "text_encoder_2", "vae"]
    assert [c.cls for c in report.components] == [
        "FluxTransformer2DModel", "CLIPTextModel", "T5EncoderModel", "AutoencoderKL"]
    assert {c.format for c in report.components} == {"fp32"}
    assert {c.device for c in report.components} == {"cpu"}
    for name in ("transformer", "vae"):  # the bytes of the tensors in the checkpoint's file, read from its header
        (weights,) = (ensure_tiny_checkpoint() / name).glob("*.safetensors")
        with safe_open(weights, framework="pt") as checkpoint:
            stored = sum(math.prod(checkpoint.get_slice(key).get_shape()) * 4 for key in checkpoint.keys())  # fp32
        assert report.component(name).bytes == stored, name
    assert "random weights" in report.weights
    assert report.load_seconds > 0
    assert "FluxTransformer2DModel" in str(report) and "<table>" in report._repr_html_()


def test_tiny_checkpoint_is_deterministic(tiny_cache):
    first = build_tiny_pipeline()
    second = build_tiny_pipeline()
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert first.tokenizer("a red fox").input_ids == second.tokenizer("a red fox").input_ids


def test_unquantized_weights_fail_the_8bit_promise(tiny_model):
    with pytest.raises(fluxnb.QuantizationError) as info:
        verify_quantization("flux-bnb-8bit", tiny_model.report.components)
    message = str(info.value)
    assert "transformer (FluxTransformer2DModel) is fp32, expected int8" in message
    assert "text_encoder_2 (T5EncoderModel) is fp32, expected int8" in message


def test_bnb_8bit_modules_pass_and_weigh_less():
    pipe = build_tiny_pipeline()
    before = {c.name: c.bytes for c in pipeline_footprint(pipe)}
    convert_linears(pipe.transformer, 8)
    partial = pipeline_footprint(pipe)
    with pytest.raises(fluxnb.QuantizationError, match="text_encoder_2 .* is fp32, expected int8"):
        verify_quantization("flux-bnb-8bit", partial)
    convert_linears(pipe.text_encoder_2, 8)
    after = {c.name: c for c in pipeline_footprint(pipe)}
    verify_quantization("flux-bnb-8bit", list(after.values()))
    assert after["transformer"].format == "int8 (bnb LLM.int8)"
    assert after["transformer"].linear_layers == 0 and after["transformer"].quantized_layers > 10
    assert after["transformer"].bytes < 0.6 * before["transformer"]  # fp32 -> int8 linears (+ scales, norms)
    with pytest.raises(fluxnb.QuantizationError, match="expected nf4"):
        verify_quantization("flux-bnb-4bit", list(after.values()))


def test_nf4_modules_are_recognised():
    pipe = build_tiny_pipeline()
    convert_linears(pipe.transformer, 4)
    footprint = component_footprint("transformer", pipe.transformer)
    assert footprint.format == "nf4 (bnb 4-bit)"


def test_img2img_shares_the_very_same_components(tiny_model):
    i2i = tiny_model.img2img_pipeline()
    assert type(i2i).__name__ == "FluxImg2ImgPipeline"
    for name, component in tiny_model.pipe.components.items():
        assert getattr(i2i, name) is component, name
    assert tiny_model.img2img_pipeline() is i2i  # derived once


def test_img2img_falls_back_to_components_and_says_why(tiny_model, monkeypatch):
    import diffusers

    def broken_from_pipe(*args, **kwargs):
        raise ImportError("cannot import name 'MT5Tokenizer' from 'transformers'")

    monkeypatch.setattr(diffusers.AutoPipelineForImage2Image, "from_pipe", broken_from_pipe)
    i2i, note = derive_img2img(tiny_model.pipe)
    assert type(i2i).__name__ == "FluxImg2ImgPipeline"
    assert i2i.transformer is tiny_model.pipe.transformer and i2i.vae is tiny_model.pipe.vae
    assert "MT5Tokenizer" in note and "FluxImg2ImgPipeline" in note


def test_checkpoint_with_missing_weights_is_refused(tiny_cache, tmp_path: Path, tiny_spec):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "broken"
    shutil.copytree(ensure_tiny_checkpoint(), copy)
    weights = next((copy / "text_encoder").glob("*.safetensors"))
    state = load_file(weights)
    del state[next(k for k in state if "position_embedding" in k)]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(fluxnb.LoadError, match="did not load cleanly"):
        fluxnb.load_model(tiny_spec, checkpoint=copy, device="cpu", progress=False)


def test_bnb_models_need_a_gpu(config):
    for name in ("flux-dev-bnb-8bit", "flux-dev-bnb-4bit"):
        with pytest.raises(fluxnb.ModelUnavailableError, match="needs a CUDA GPU") as info:
            fluxnb.load_model(config.get(name), device="cpu", progress=False)
        assert "model='flux-tiny'" in str(info.value)


def test_gated_model_without_token(config, monkeypatch, tmp_path: Path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login there
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    with pytest.raises(fluxnb.ModelUnavailableError, match="is gated: it needs a Hugging Face token"):
        fluxnb.load_model(config.get("flux-dev"), device="cpu", progress=False)


def test_auto_on_a_cpu_chooses_the_tiny_model_and_says_why(config):
    choice = fluxnb.resolve_model("auto", config)
    assert choice.spec.name == "flux-tiny"
    assert "no CUDA GPU" in choice.reason and "flux-dev-bnb-8bit" in choice.reason
    assert fluxnb.resolve_model("flux-dev", config).reason == "chosen by name"


def test_reuse_returns_the_loaded_model_and_lets_it_go_for_another(tiny_spec, config, tiny_cache):
    """load_model(reuse=True), as the notebooks call it: re-running the load cell neither reloads nor recompiles."""
    from fluxnb.models import loading

    first = fluxnb.load_model(tiny_spec, device="cpu", progress=False, reuse=True)
    again = fluxnb.load_model(tiny_spec, device="cpu", progress=False, reuse=True)
    assert again is first and loading.REUSED_NOTE in again.report.notes
    assert fluxnb.load_model(tiny_spec, device="cpu", progress=False) is not first  # without reuse: a fresh load
    other = dataclasses.replace(tiny_spec, name="flux-tiny-2")
    second = fluxnb.load_model(other, device="cpu", progress=False, reuse=True)
    assert second is not first and list(loading._SESSION_MODEL.values()) == [second]
    loading.release_session_model()
