"""SageAttention as FLUX's attention kernel: Q and K in int8 with per-block scales, P and V in fp16.

SageAttention (arXiv 2410.02367) quantizes what dominates attention's cost, the Q K^T product, to int8 after
subtracting K's mean over the tokens (which leaves the softmax unchanged and removes the channel outliers that
would spoil int8), and keeps P V in fp16. Two releases matter here:

- `sageattention` 2.1.1+ (CUDA kernels per architecture) is what diffusers' own `sage` backend runs; it is built
  from source, not on PyPI. Where it is installed, fluxnb uses that backend through the public
  `set_attention_backend("sage")` (no lane has run that path: the device machines have no build of 2.x).
- `sageattention` 1.0.x, the wheel on PyPI, holds the Triton kernels of the paper's first version (Ampere, Ada and
  Hopper: compute capability 8.0+, head sizes 64/96/128). diffusers names this kernel `_sage_qk_int8_pv_fp16_triton`
  but calls it only through the 2.x package; fluxnb registers this module's call under that name instead
  (fluxnb/models/attention.py, through fluxnb/core/compat.py), as a torch custom op so that torch.compile keeps the
  Triton kernels as they are and the CUDA graph captures them like any other kernel.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("fluxnb::sage_attention", mutates_args=())
def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
                   ) -> torch.Tensor:
    """Attention of [batch, tokens, heads, head_dim] tensors by sageattention 1.x's Triton kernels.

    K's mean over the tokens is subtracted here, out of place: sageattn's own `smooth_k` subtracts it in place,
    which would change the caller's tensor behind torch.compile's back."""
    from sageattention import sageattn

    key = key - key.mean(dim=1, keepdim=True)
    return sageattn(query, key, value, tensor_layout="NHD", is_causal=False, sm_scale=scale, smooth_k=False)


@sage_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    return torch.empty(query.shape, dtype=query.dtype, device=query.device)  # the kernel's output is contiguous


def diffusers_backend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                      _parallel_config=None) -> torch.Tensor:
    """The function diffusers' attention dispatch calls (its backends' signature). FLUX attends without a mask, a
    causal order or context parallelism; anything else is refused rather than computed wrongly."""
    if attn_mask is not None or is_causal or _parallel_config is not None:
        raise ValueError("fluxnb's SageAttention backend takes no attention mask, causal attention or context "
                         "parallelism (FLUX uses none); use attention: sdpa for this model")
    return sage_attention(query, key, value, scale)
