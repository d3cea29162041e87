"""The Triton kernel behind torch.ops.fluxnb.gelu_fp8_rows (imported only where triton is installed).

Quantizes rows for a float8 matmul the way torchao's per-row dynamic activation quantization does (scale = row
amax / 448, values clamped to +-448 and rounded to float8 e4m3), with the GELU (tanh) of the MLP branch computed in
the same pass: row = [a | gelu(b)], where a (the single blocks' attention output) may be absent. Compiled, inductor
split this into a reduction kernel (the row amax) and a second kernel reading the row again (quantize), and wrote a
bf16 GELU output in between: 10 ms of a 100 ms float8 step on an H100 for the single blocks alone (results/README.md,
run 22). Here one program reads its row from memory once (the second loop finds it in L2) and writes float8 once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK, NUM_WARPS = 1024, 4


@triton.jit
def _gelu_tanh(x):
    """GELU, tanh approximation (diffusers' "gelu-approximate"), written with exp: tanh(y) = 2 sigmoid(2y) - 1."""
    y = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 / (1.0 + tl.exp(-2.0 * y)))


@triton.jit
def gelu_fp8_rows_kernel(a_ptr, b_ptr, q_ptr, scale_ptr, stride_a, stride_b,
                         KA: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, KA, BLOCK):
        x = tl.load(a_ptr + row * stride_a + start + offsets, mask=start + offsets < KA, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    for start in range(0, KB, BLOCK):
        x = tl.load(b_ptr + row * stride_b + start + offsets, mask=start + offsets < KB, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(_gelu_tanh(x)))
    # 448 = torch.finfo(torch.float8_e4m3fn).max. torchao divides the bf16 amax by it in bf16; an all-zero row gets a
    # tiny scale instead of 0 (no 0/0)
    scale = tl.maximum((tl.max(amax, axis=0) / 448.0).to(tl.bfloat16).to(tl.float32), 1e-12)
    tl.store(scale_ptr + row, scale)
    out = q_ptr + row * (KA + KB)
    for start in range(0, KA, BLOCK):
        mask = start + offsets < KA
        x = tl.load(a_ptr + row * stride_a + start + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(out + start + offsets, tl.clamp(x / scale, -448.0, 448.0).to(tl.float8e4nv), mask=mask)
    for start in range(0, KB, BLOCK):
        mask = start + offsets < KB
        x = tl.load(b_ptr + row * stride_b + start + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(out + KA + start + offsets, tl.clamp(_gelu_tanh(x) / scale, -448.0, 448.0).to(tl.float8e4nv),
                 mask=mask)


def launch(b: torch.Tensor, a: torch.Tensor | None, wrap=lambda kernel: kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """[a | gelu(b)] per row as float8 e4m3 (rows, Ka + Kb) and its float32 scales (rows, 1)."""
    kb = b.shape[-1]
    rows_b = b.reshape(-1, kb)
    if rows_b.stride(-1) != 1:
        rows_b = rows_b.contiguous()
    ka = 0 if a is None else a.shape[-1]
    rows_a = rows_b if a is None else a.reshape(-1, ka)
    if rows_a.stride(-1) != 1:
        rows_a = rows_a.contiguous()
    n = rows_b.shape[0]
    q = torch.empty((n, ka + kb), device=b.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((n, 1), device=b.device, dtype=torch.float32)
    wrap(gelu_fp8_rows_kernel)[(n,)](rows_a, rows_b, q, scale, rows_a.stride(0), rows_b.stride(0), KA=ka, KB=kb,
                                     BLOCK=BLOCK, num_warps=NUM_WARPS)
    return q, scale


@triton_op("fluxnb::gelu_fp8_rows", mutates_args=())
def gelu_fp8_rows(b: torch.Tensor, a: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The op the compiled blocks call (inductor sees the kernel through wrap_triton)."""
    return launch(b, a, wrap=wrap_triton)
