"""Each FLUX attention's Q, K and V projections as one linear: one activation quantization and one GEMM, not three.

Why: on an H100 three float8 3072 -> 3072 projections at 4608 tokens took 0.354 ms, one 3072 -> 9216 projection
0.286 ms (probe run 32): about 3.8 ms of a 94 ms float8 step over the 57 blocks (results/README.md).

How: diffusers' own fused path (FluxAttention's `to_qkv` / `to_added_qkv`, chunked into Q, K and V by its processor)
with the quantized rows concatenated as they are. A torchao Float8Tensor with per-row scales concatenates exactly
(its rows keep their scales) and the activations' per-row scales are those of the same input row, so the fused layer
computes the same numbers. diffusers' `fuse_qkv_projections` would copy the rows into a new bf16 Linear (dequantized,
and 2.1 GB more with the separate layers kept, past the 22 GB cap); here the separate layers keep views of the fused
weight, so memory does not grow and diffusers' `unfuse_qkv_projections` gives them back exactly as they were. LoRA
adapters need them (PEFT targets to_q, to_k, to_v): fluxnb/models/lora.py unfuses before it loads one.
"""

from __future__ import annotations

import torch

from ...core.compat import flux_attentions, set_fused_projections


def _fused_linear(linears: list[torch.nn.Linear]) -> torch.nn.Linear:
    """One Linear holding `linears`' weights (and biases) stacked by rows; each of `linears` then holds a view of its
    own rows, so the originals' memory is freed and nothing is stored twice."""
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears]) if linears[0].bias is not None else None
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    start = 0
    for linear in linears:
        rows = slice(start, start + linear.out_features)
        linear.weight = torch.nn.Parameter(weight[rows], requires_grad=False)
        if bias is not None:
            linear.bias = torch.nn.Parameter(bias[rows], requires_grad=False)
        start = rows.stop
    return fused


def fuse_qkv(transformer) -> int:
    """Fuse the Q, K, V projections (and the text stream's) of every FLUX attention in `transformer`; returns how
    many attentions it fused. Attentions already fused, or whose projections carry adapter layers (PEFT's wrappers,
    which the fused layer would bypass), are left as they are."""
    count = 0
    for attention in flux_attentions(transformer):
        image = [attention.to_q, attention.to_k, attention.to_v]
        text = [getattr(attention, name, None) for name in ("add_q_proj", "add_k_proj", "add_v_proj")]
        text = text if text[0] is not None else []
        if attention.fused_projections or any(type(linear) is not torch.nn.Linear for linear in image + text):
            continue
        set_fused_projections(attention, _fused_linear(image), _fused_linear(text) if text else None)
        count += 1
    return count


def is_fused(transformer) -> bool:
    """Whether any attention of `transformer` runs fused projections."""
    return any(attention.fused_projections for attention in flux_attentions(transformer))


def unfuse_qkv(transformer) -> bool:
    """The separate projections back (diffusers' unfuse_qkv_projections: they hold the same weights); returns whether
    the transformer was fused."""
    if not is_fused(transformer):
        return False
    transformer.unfuse_qkv_projections()
    return True
