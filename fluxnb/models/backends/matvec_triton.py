"""The Triton kernel behind torch.ops.fluxnb.int8_matvec (imported only where triton is installed).

out[m, n] = scale[n] * sum_k x[m, k] * w[n, k] + bias[n], accumulated in float32. Each program reads BLOCK_N rows of
the int8 weight once, BLOCK_K columns at a time, for one input row m: a matvec is bound by memory bandwidth, and
this reads the weight at close to it with one fixed tile shape, so nothing is tuned (or re-tuned in a new process).
Registered with torch.library's `triton_op`, so inductor calls the kernel from inside the compiled blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

# Picked on an H100 among a few tile shapes (results/README.md, run 22).
BLOCK_N, BLOCK_K, NUM_WARPS = 16, 512, 4


@triton.jit
def int8_matvec_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, N, stride_w, K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + m * K + cols, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0).to(tl.float32)
        acc += w * x[None, :]
    out = tl.sum(acc, axis=1) * tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * N + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def launch(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
           block_n: int = BLOCK_N, block_k: int = BLOCK_K, num_warps: int = NUM_WARPS,
           wrap=lambda kernel: kernel) -> torch.Tensor:
    """x (..., K) times the int8 weight qdata (N, K) with per-row `scale`; the tile shape is a parameter for the
    probe that picked it (scripts/compile_probe.py `matvec`)."""
    n, k = qdata.shape
    rows = x.reshape(-1, k).contiguous()
    out = torch.empty((rows.shape[0], n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, block_n), rows.shape[0])
    wrap(int8_matvec_kernel)[grid](rows, qdata, scale.reshape(-1), scale if bias is None else bias, out, n,
                                   qdata.stride(0), K=k, HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k,
                                   num_warps=num_warps)
    return out.reshape(*x.shape[:-1], n)


@triton_op("fluxnb::int8_matvec", mutates_args=())
def int8_matvec(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The op the compiled blocks call (inductor sees the kernel through wrap_triton)."""
    return launch(x, qdata, scale, bias, wrap=wrap_triton)
