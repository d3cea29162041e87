"""The torchao types' one-row int8 layers compile to a fused matvec (fluxnb/models/backends/matvec.py), not to aten's
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

    from fluxnb.models.backends.torchao import ONE_ROW_LAYERS, weight_only_config

    transformer = copy.deepcopy(tiny_model.pipe.transformer).to(torch.bfloat16)
    tq.quantize_(transformer, tq.FqnToConfig({p: weight_only_config() for p in ONE_ROW_LAYERS}), filter_fn=None)
    inputs = transformer_inputs(transformer.config, torch.Generator().manual_seed(0), torch.bfloat16)
    return transformer, inputs


def _compiled_run(transformer, inputs):
    """Regional compile (no FX graph cache, so inductor's passes run) and one forward: the output, inductor's
    counters and the number of compiled graphs."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from fluxnb.models.backends.base import compile_regionally

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
    from fluxnb.models.backends.matvec import Int8MatvecLinear, use_matvecs
    from fluxnb.models.backends.torchao import ONE_ROW_LAYERS

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


KERNEL_CHECK = r"""
import torch
from fluxnb.models.backends import matvec_triton

g = torch.Generator().manual_seed(0)
for rows, n, k, bias, tile in ((1, 40, 96, True, (16, 64)), (3, 37, 1000, False, (16, 64)), (2, 70, 3072, True, None)):
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(n, 1, generator=g) / 100).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    out = matvec_triton.launch(x, q, scale, b, *(tile or ()))
    # the plain definition, in float64: x @ (int8 weight x its row's scale).T + bias
    expected = x.double() @ (q.double() * scale.double()).T + (b.double() if bias else 0)
    expected = expected.to(torch.bfloat16)
    assert out.shape == expected.shape == (rows, n), out.shape
    torch.testing.assert_close(out, expected, rtol=2 ** -7, atol=2 ** -7 * expected.abs().max().item())
print("kernel ok")
"""


def test_the_triton_matvec_kernel_computes_the_product():
    """The GPU kernel's own code (fluxnb/models/backends/matvec_triton.py) run by Triton's interpreter on the CPU:
    masked edges (N and K not multiples of the tile), bias or none, several input rows, the default tile; against the
    product's plain definition in float64, within bf16 rounding. tests/gpu runs it compiled on a GPU."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="triton is in requirements/extras.txt (the default lane installs it)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "kernel ok" in done.stdout, done.stderr[-3000:]


def test_only_float8_gelu_layers_get_the_one_pass_quantization(tiny_model):
    """fluxnb/models/backends/fp8_rows.py swaps classes only where a GELU feeds a per-row float8 linear: not in bf16,
    not in the int8 types (float8 itself needs a GPU of compute capability 8.9: tests/gpu runs it)."""
    from fluxnb.models.backends.fp8_rows import use_fused_fp8_rows

    plain, _ = _quantized_tiny(tiny_model)  # bf16, with int8 one-row layers
    assert use_fused_fp8_rows(plain) == 0
    assert type(plain).__name__ == "FluxTransformer2DModel" and "_repeated_blocks" not in vars(plain)
