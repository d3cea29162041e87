"""The torchao types' one-row int8 layers compile to a fused matvec (fluxnb/backends/matvec.py), not to aten's
_weight_int8pack_mm: the real tiny FLUX transformer, real torchao int8 weights, real inductor on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from .test_generation import transformer_inputs


def _quantized_tiny(tiny_model):
    """The tiny transformer in bf16 with its one-row layers int8 weight-only, as the torchao loader quantizes them."""
    pytest.importorskip("torchao", reason="torchao is an optional extra (the default lane installs it)")
    import torchao.quantization as tq

    from fluxnb.backends.torchao import ONE_ROW_LAYERS, weight_only_config

    transformer = copy.deepcopy(tiny_model.pipe.transformer).to(torch.bfloat16)
    tq.quantize_(transformer, tq.FqnToConfig({p: weight_only_config() for p in ONE_ROW_LAYERS}), filter_fn=None)
    inputs = transformer_inputs(transformer.config, torch.Generator().manual_seed(0), torch.bfloat16)
    return transformer, inputs


def _compiled_run(transformer, inputs):
    """Regional compile (no FX graph cache, so inductor's passes run) and one forward: the output, inductor's
    counters and the number of compiled graphs."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from fluxnb.backends.base import compile_regionally

    torch._dynamo.reset()
    counters.clear()
    try:
        with inductor_config.patch(fx_graph_cache=False):
            compile_regionally(transformer)
            with torch.inference_mode():
                out = transformer(**inputs)[0]
        return out, dict(counters["inductor"]), counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()


def test_one_row_int8_layers_compile_to_a_fused_matvec(tiny_model):
    from fluxnb.backends.matvec import Int8MatvecLinear, use_matvecs
    from fluxnb.backends.torchao import ONE_ROW_LAYERS

    plain, inputs = _quantized_tiny(tiny_model)
    with torch.inference_mode():
        eager = plain(**inputs)[0]
    swapped = copy.deepcopy(plain)
    one_row = [name for name, m in swapped.named_modules() if type(getattr(m, "weight", None)).__name__ == "Int8Tensor"]
    assert use_matvecs(swapped, ONE_ROW_LAYERS) == len(one_row) > 0
    assert use_matvecs(swapped, ONE_ROW_LAYERS) == 0  # idempotent
    assert all(isinstance(swapped.get_submodule(name), Int8MatvecLinear) for name in one_row)
    with torch.inference_mode():  # eager: torchao's own path, bit for bit
        torch.testing.assert_close(swapped(**inputs)[0], eager, rtol=0, atol=0)

    _, before, _ = _compiled_run(plain, inputs)
    out, after, graphs = _compiled_run(swapped, inputs)
    assert before.get("woq_matcher_count", 0) > 0  # without: inductor rewrites them into _weight_int8pack_mm
    assert after.get("woq_matcher_count", 0) == 0
    assert graphs == 2  # the swapped class is shared: no recompile per layer
    torch.testing.assert_close(out, eager, rtol=3e-2, atol=3e-2)
