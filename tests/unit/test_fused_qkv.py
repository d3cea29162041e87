"""Fused Q, K, V projections (fluxnb/models/backends/fused_qkv.py) on the real tiny FLUX: the same image, nothing
stored twice, and LoRA adapters on to_q/to_k/to_v still applied (the model splits them back first)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

import fluxnb
from fluxnb.bench.engine import parse_backend
from fluxnb.core.compat import flux_attentions
from fluxnb.core.errors import RequestError
from fluxnb.core.footprint import component_footprint
from fluxnb.models.backends.fused_qkv import fuse_qkv, is_fused, unfuse_qkv
from fluxnb.models.config import DEFAULT_CONFIG_PATH, parse_config
from fluxnb.models.synthetic_lora import build_lora

SMALL = dict(width=64, height=64, steps=2)
QKV = r"(single_)?transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)"


def pixels(model, **kwargs) -> np.ndarray:
    request = fluxnb.make_request(model.spec, prompt="a red fox", **{**SMALL, **kwargs})
    return np.asarray(fluxnb.generate(model, request, progress=False)[0].image)


@pytest.fixture
def model(tiny_cache, tiny_spec):
    """A tiny model of its own (these tests change its layers)."""
    return fluxnb.load_model(tiny_spec, device="cpu", progress=False)


def test_fused_projections_give_the_same_image_and_store_nothing_twice(model):
    transformer = model.pipe.transformer
    before, size = pixels(model), component_footprint("transformer", transformer).bytes
    attentions = len(flux_attentions(transformer))
    assert attentions == transformer.config.num_layers + transformer.config.num_single_layers
    assert fuse_qkv(transformer) == attentions and is_fused(transformer)
    assert fuse_qkv(transformer) == 0  # already fused
    assert all(hasattr(a, "to_qkv") for a in flux_attentions(transformer))
    first = flux_attentions(transformer)[0]
    assert first.to_q.weight.untyped_storage().data_ptr() == first.to_qkv.weight.untyped_storage().data_ptr()
    assert component_footprint("transformer", transformer).bytes == size  # the separate layers are views
    assert np.array_equal(pixels(model), before)
    assert unfuse_qkv(transformer) and not is_fused(transformer) and not unfuse_qkv(transformer)
    assert not any(hasattr(a, "to_qkv") for a in flux_attentions(transformer))
    assert np.array_equal(pixels(model), before)


def test_the_fused_layer_is_the_one_that_runs(model):
    """Against a fusion that is only for show: zeroing the fused layer's weight changes the image."""
    import torch

    before = pixels(model)
    fuse_qkv(model.pipe.transformer)
    with torch.no_grad():
        for attention in flux_attentions(model.pipe.transformer):
            attention.to_qkv.weight.zero_()  # the separate layers' views too
    assert (pixels(model) != before).mean() > 0.1


def test_an_adapter_on_fused_projections_splits_them_back_and_applies(model, tiny_spec, tmp_path):
    reference = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    lora = build_lora(reference.pipe.transformer, tmp_path / "qkv.safetensors", rank=4, seed=3, targets=QKV)
    assert fuse_qkv(reference.pipe.transformer) == 0  # PEFT's (emptied) wrappers stay: a fused layer would bypass them
    expected = pixels(reference, loras=[str(lora)])
    assert (expected != pixels(reference)).mean() > 0.1  # the adapter changes the picture
    fuse_qkv(model.pipe.transformer)
    assert np.array_equal(pixels(model, loras=[str(lora)]), expected)
    assert not is_fused(model.pipe.transformer)
    assert any("split back for the LoRA adapter" in note for note in model.report.notes)


def test_fuse_qkv_is_allowed_only_where_the_record_says_so(config):
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    assert config.get("flux-dev-torchao-fp8").fuse_qkv and config.get("flux-dev-torchao-fp8-cached").fuse_qkv
    assert not config.get("flux-dev-bnb-8bit").fuse_qkv  # absent: false
    bad = copy.deepcopy(raw)
    bad["models"]["flux-dev-bnb-8bit"]["fuse_qkv"] = True
    bad["models"]["flux-dev-torchao-fp8"]["fuse_qkv"] = "yes"
    with pytest.raises(fluxnb.ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert ("models.flux-dev-bnb-8bit.fuse_qkv: type 'flux-bnb-8bit' does not support it (types that do: "
            "flux-torchao-fp8dq). Fix: remove the key or set it to false") in text
    assert "models.flux-dev-torchao-fp8.fuse_qkv: must be true or false, got 'yes'" in text


def test_bench_variants_turn_the_fusion_off_and_on(config):
    assert parse_backend("flux-dev-torchao-fp8@unfused-qkv", config).spec.fuse_qkv is False
    assert parse_backend("flux-dev-torchao-fp8@unfused-qkv+fused-qkv", config).spec.fuse_qkv is True
    with pytest.raises(RequestError, match="type flux-bnb-8bit does not fuse its Q, K, V projections; types that do: "
                                           "flux-torchao-fp8dq"):
        parse_backend("flux-dev-bnb-8bit@fused-qkv", config)
