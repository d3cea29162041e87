"""One-row int8 weight-only layers (FLUX's AdaLN modulation) as one memory-bound matvec kernel.

FLUX's AdaLN modulation linears see one row (the timestep/guidance embedding), so the torchao types keep them int8
weight-only (`ONE_ROW_LAYERS` in torchao.py). They hold 3.2 GB of int8 weights, read once per step: at the H100's
3.35 TB/s that is 1 ms of a 100 ms float8 step. Compiled, inductor rewrote torchao's `mm(x, w.to(bf16)) * scale`
into aten's `_weight_int8pack_mm`, whose kernel is slow at one row: 24.7 ms per step (H100 profile, results/README.md,
run 15). Written as a broadcast multiply and a sum, inductor fuses it into one reduction: 4.2 ms (run 18), and about
2 ms under coordinate-descent tuning, which with torch 2.11 re-tunes in every new process (10-14 s, run 17).

On a CUDA GPU with triton, the compiled layers call the kernel of matvec_triton.py instead: a hand-written Triton kernel
with one fixed tile shape (no tuning, so nothing to repeat in a new process), registered with torch.library's
`triton_op` so that inductor calls it from inside the compiled blocks. Elsewhere (the CPU tests, a GPU without
triton) the compiled layers run the fused multiply-and-sum, and eager layers run torchao's own path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

from ...core.compat import activation_quantization, int8_rows, weight_scale_shape

# torch.ops.fluxnb.int8_matvec where triton is installed (fluxnb/models/backends/matvec_triton.py), set by use_matvecs
_TRITON_OP = None


def triton_matvec():
    """The Triton-backed op, registered on first use; None without triton."""
    global _TRITON_OP
    if _TRITON_OP is None:
        try:
            from . import matvec_triton
        except ImportError:
            return None
        _TRITON_OP = matvec_triton.int8_matvec
    return _TRITON_OP


def fused_matvec(input: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """The same product as a broadcast multiply and a sum: one fused reduction once compiled (no triton needed)."""
    out = (input.unsqueeze(-2).float() * qdata.float()).sum(-1) * scale.float().flatten()
    if bias is not None:
        out = out + bias.float()
    return out.to(input.dtype)


class Int8MatvecLinear(torch.nn.Linear):
    """A Linear with a torchao int8 per-row weight: torchao's own path in eager, a matvec kernel when compiled.

    Swapped in by class (`module.__class__`), so all such layers share one compiled graph and PEFT still sees a
    Linear with a torchao weight."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(input)
        weight = self.weight
        product = _TRITON_OP if _TRITON_OP is not None and input.is_cuda else fused_matvec
        return product(input, *int8_rows(weight), self.bias)


def use_matvecs(transformer: torch.nn.Module, patterns: Iterable[str]) -> int:
    """Give the int8 weight-only Linears (torchao Int8Tensor, per-row scales) whose names match `patterns` (torchao
    FqnToConfig "re:" patterns) the matvec; returns how many."""
    regexes = [re.compile(p.removeprefix("re:")) for p in patterns]
    if next(transformer.parameters()).is_cuda:
        triton_matvec()
    count = 0
    for name, module in transformer.named_modules():
        weight = getattr(module, "weight", None)
        if (type(module) is torch.nn.Linear and type(weight).__name__ == "Int8Tensor"
                and activation_quantization(weight) is None
                and math.prod(weight_scale_shape(weight)) == weight.shape[0]
                and any(r.fullmatch(name) for r in regexes)):
            module.__class__ = Int8MatvecLinear
            count += 1
    return count
