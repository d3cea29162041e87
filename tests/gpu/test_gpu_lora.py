"""LoRA adapters on the GPU backends (`pytest -m gpu`): bitsandbytes 8-bit layers, and the compiled torchao entry
with diffusers' hotswap (no recompile when the adapter or its scale changes). Tiny FLUX; the full-size figures come
from scripts/lora_bench.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_cache):
    from fluxnb.models.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint, tmp_path_factory):
    """Two synthetic adapters for the tiny transformer, built with PEFT on a copy loaded for the purpose."""
    from diffusers import FluxTransformer2DModel

    from fluxnb.models.synthetic_lora import build_lora

    transformer = FluxTransformer2DModel.from_pretrained(tiny_checkpoint, subfolder="transformer")
    folder = tmp_path_factory.mktemp("loras")
    return [build_lora(transformer, folder / f"style_{seed}.safetensors", seed=seed, magnitude=4.0)
            for seed in (1, 2)]


def _pixels(model, spec, **kwargs):
    import fluxnb

    request = fluxnb.make_request(spec, prompt="a red fox", steps=2, seed=1, **{"width": 80, "height": 64, **kwargs})
    (image,) = fluxnb.generate(model, request, progress=False)
    return np.asarray(image.image), image.metadata


def test_lora_on_bnb_8bit_layers(tiny_checkpoint, adapters, config, tmp_path):
    import fluxnb
    from fluxnb.models.synthetic import quantize_checkpoint

    quantize_checkpoint(tiny_checkpoint, tmp_path / "bnb", "bnb-8bit")
    spec = dataclasses.replace(config.get("flux-dev-bnb-8bit"), requires_auth=False)
    model = fluxnb.load_model(spec, checkpoint=tmp_path / "bnb", progress=False)
    base, _ = _pixels(model, spec)
    with_lora, meta = _pixels(model, spec, loras=[str(adapters[0])])
    assert not np.array_equal(base, with_lora) and meta["lora_fused"] is False
    assert any("Linear8bitLt" in type(m).__name__ for m in model.pipe.transformer.modules())
    zero, _ = _pixels(model, spec, loras=[f"{adapters[0]}:0"])
    assert np.array_equal(zero, base)
    fused, meta = _pixels(model, spec, loras=[str(adapters[0])], fuse_loras=True)
    assert meta["lora_fused"] is True and np.abs(fused.astype(int) - with_lora.astype(int)).mean() < 8
    restored, _ = _pixels(model, spec)
    assert np.abs(restored.astype(int) - base.astype(int)).mean() < 8  # unfusing re-quantizes: close, not equal


@pytest.mark.parametrize("entry, capability", [("flux-dev-torchao-int8dq", (8, 0)), ("flux-dev-torchao-fp8", (8, 9))])
def test_compiled_torchao_entry_hotswaps_without_recompiling(entry, capability, tiny_checkpoint, adapters, config,
                                                              monkeypatch):
    """float8 also replays its steps from a CUDA graph, which must see every in-place adapter change."""
    pytest.importorskip("torchao")
    import fluxnb

    if torch.cuda.get_device_capability() < capability:
        pytest.skip(f"{entry} needs compute capability {capability}")
    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    spec = dataclasses.replace(config.get(entry), requires_auth=False)
    torch._dynamo.reset()
    model = fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False)
    _pixels(model, spec)  # compiles the blocks
    first, meta = _pixels(model, spec, loras=[str(adapters[0])])  # the first adapter changes the modules once
    assert meta["loras"][0]["file"] == adapters[0].name
    changes = {
        "other adapter": dict(loras=[str(adapters[1])]),
        "other scale": dict(loras=[f"{adapters[1]}:0.4"]),
        "back to the first": dict(loras=[f"{adapters[0]}:1.5"]),
        "switched off": {},
    }
    seen = [first]
    for what, kwargs in changes.items():
        pixels, meta = _pixels(model, spec, **kwargs)
        assert meta["compile"]["new_graphs"] == 0, f"{what}: recompiled"
        assert not any(np.array_equal(pixels, earlier) for earlier in seen), f"{what}: the image did not change"
        seen.append(pixels)
    torch._dynamo.reset()
