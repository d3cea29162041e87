"""One-row int8 weight-only layers as a fused multiply-and-sum when compiled.

FLUX's AdaLN modulation linears see one row (the timestep/guidance embedding), so the torchao types keep them int8
weight-only (`ONE_ROW_LAYERS` in torchao.py). Compiled, inductor rewrites torchao's `mm(x, w.to(bf16)) * scale`
into aten's `_weight_int8pack_mm`, whose CUDA kernel is slow at one row: 76 calls took 24.7 ms of a 127 ms float8
step (H100 profile, results/README.md, run 15). Written as a broadcast multiply and a sum, the same product
compiles to one reduction that reads the int8 weights once with the dequantization fused in. That is the rewrite
inductor itself applies to one-row matmuls under coordinate-descent tuning (torch/_inductor/decomposition.py,
`mm`); switching that tuning on instead was as fast, but with torch 2.11 every new process tuned its kernels again
(10-14 s of its first call, run 17), against the warm-start goal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch


class Int8MatvecLinear(torch.nn.Linear):
    """A Linear with a torchao int8 per-row weight: torchao's own path in eager, the fused matvec when compiled.

    Swapped in by class (`module.__class__`), so all such layers share one compiled graph and PEFT still sees a
    Linear with a torchao weight."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(input)
        weight = self.weight
        out = (input.unsqueeze(-2).float() * weight.qdata.float()).sum(-1) * weight.scale.float().flatten()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(input.dtype)


def use_matvecs(transformer: torch.nn.Module, patterns: Iterable[str]) -> int:
    """Give the int8 weight-only Linears (torchao Int8Tensor, per-row scales) whose names match `patterns` (torchao
    FqnToConfig "re:" patterns) the fused matvec; returns how many."""
    regexes = [re.compile(p.removeprefix("re:")) for p in patterns]
    count = 0
    for name, module in transformer.named_modules():
        weight = getattr(module, "weight", None)
        if (type(module) is torch.nn.Linear and type(weight).__name__ == "Int8Tensor"
                and getattr(weight, "act_quant_kwargs", None) is None and weight.scale.numel() == weight.shape[0]
                and any(r.fullmatch(name) for r in regexes)):
            module.__class__ = Int8MatvecLinear
            count += 1
    return count
