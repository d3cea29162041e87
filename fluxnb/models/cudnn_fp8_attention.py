"""cuDNN's float8 attention as FLUX's attention kernel on Hopper: Q, K and V in float8 e4m3, one scale per tensor.

Why: once the linears run in float8, attention in bf16 is a fifth of a text-to-image step and about twice that for
Kontext, whose reference picture doubles the image tokens. cuDNN's float8 kernel (`sdpa_fp8`, Hopper and newer)
ran FLUX's attention in 0.32 ms against 0.42 ms for torch's cuDNN kernel in bf16 (probe run 37, H100). With V
centred (below), Kontext's float8 entry went from 6.19 to 5.65 s/image, 4.04x to 4.43x bnb 8-bit, at 1.47x bnb
8-bit's latent error instead of 1.40x (bench run 42); text-to-image gained 1.2% (run 43). So the float8 record
chooses it for Kontext on 9.0 (fluxnb/models/backends/torchao.py), and any entry can name it (`attention:
cudnn-fp8`). Each call costs about 0.64 ms of CPU in cuDNN's Python graph execution (probe run 44), more than the
kernel's GPU time: it pays only where the steps replay as a CUDA graph (no step cache).

How: nvidia-cudnn-frontend's graph API, one graph per shape, built on first use and kept. Q, K and V are quantized
here with one scale each (448 / amax: e4m3's range); inside the compiled block that quantization fuses into the
kernels around it. Hopper's float8 forward writes O in float8 too: O is a softmax-weighted mean of V's rows, so
|O| <= max |V| and O takes V's scale. V goes in less its mean over the tokens, added back to O after: FLUX's O is
mostly that mean, and rounded whole into float8 it was most of the error (random tensors with a mean in V as FLUX's
has: 0.056 against float32 attention, centred 0.004, bf16 SDPA 0.002; tests/gpu/test_gpu.py, run 42). The kernel is
a torch custom op, so torch.compile keeps it whole and the CUDA graph captures it like any other kernel (the cuDNN
handle follows the current stream at each call).

diffusers' attention registry takes only the names of its own enum, and none names cuDNN's float8 kernel: fluxnb
registers this one under `_flash_3`, diffusers' name for FlashAttention 3, Hopper's other attention with a float8
path, which fluxnb never asks for otherwise (FlashAttention 3 has no wheel on PyPI), and not
`_native_cudnn` (the ring attention of fluxnb/runs/contextparallel.py runs torch's bf16 cuDNN kernel under that
name). A process that loaded a `cudnn-fp8` entry runs this kernel wherever `_flash_3` is asked for; the load report
says `cudnn-fp8` (bench run 41 registered it under `_native_cudnn`, before that clash was seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import ModelUnavailableError

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_per_tensor(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`tensor` in float8 e4m3 with one scale, and the scale to multiply back by (amax / 448), shaped (1, 1, 1, 1)."""
    amax = tensor.abs().amax().float().clamp(min=1e-12)
    quantized = (tensor.float() * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return quantized, (amax / FP8_MAX).reshape(1, 1, 1, 1)


@dataclass
class _Plan:
    """One built cuDNN graph (a shape, a softmax scale, a device) and what its execution needs."""

    graph: Any
    tensors: dict[str, Any]
    handle: Any
    workspace: torch.Tensor
    scale_s: torch.Tensor  # P is quantized at 448 inside the kernel
    descale_s: torch.Tensor
    amax: torch.Tensor  # the kernel also reports the amax of P and O: written, not read


_PLANS: dict[tuple, _Plan] = {}


def _plan(shape: tuple[int, ...], scale: float, device: torch.device) -> _Plan:
    """The graph for [batch, tokens, heads, head_dim] float8 tensors (diffusers' layout), built once. A shape cuDNN
    has no float8 kernel for is refused naming it and the fix (seen only once a picture of that size is made)."""
    key = (shape, scale, device)
    if key not in _PLANS:
        try:
            graph, tensors, handle = _build(shape, scale)
        except Exception as exc:  # cuDNN's own errors: unsupported shape, library too old, no kernel on this GPU
            batch, tokens, heads, head_dim = shape
            raise ModelUnavailableError(
                f"cuDNN's float8 attention (attention: cudnn-fp8) cannot run attention over {tokens} tokens, {heads} "
                f"heads of {head_dim}, batch {batch}: {type(exc).__name__}: {exc}",
                fix="set `attention: sdpa` (or auto) in the model entry; the images made so far are kept") from exc
        _PLANS[key] = _Plan(graph, tensors, handle,
                            torch.empty(max(graph.get_workspace_size(), 1), dtype=torch.uint8, device=device),
                            scale_s=torch.full((1, 1, 1, 1), FP8_MAX, device=device),
                            descale_s=torch.full((1, 1, 1, 1), 1 / FP8_MAX, device=device),
                            amax=torch.empty(2, 1, 1, 1, device=device))
    return _PLANS[key]


def _build(shape: tuple[int, ...], scale: float):
    """cuDNN's graph of one float8 attention (nvidia-cudnn-frontend), checked and planned: (graph, tensors, handle)."""
    import cudnn

    batch, tokens, heads, head_dim = shape
    dims = (batch, heads, tokens, head_dim)  # the same memory seen as cuDNN's [batch, heads, tokens, head_dim]
    strides = (tokens * heads * head_dim, head_dim, heads * head_dim, 1)
    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    handle = cudnn.create_handle()
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    tensors = {n: graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in "qkv"}
    for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
        tensors[name] = graph.tensor(name=name, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
    out, _, amax_s, amax_o = graph.sdpa_fp8(**tensors, is_inference=True, attn_scale=scale, use_causal_mask=False)
    out.set_output(True).set_dim(dims).set_stride(strides).set_data_type(e4m3)  # Hopper: O in float8 only
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
    tensors.update(o=out, amax_s=amax_s, amax_o=amax_o)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph, tensors, handle


@torch.library.custom_op("fluxnb::cudnn_sdpa_fp8", mutates_args=())
def sdpa_fp8(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
             descale_k: torch.Tensor, descale_v: torch.Tensor, scale: float) -> torch.Tensor:
    """O in float8 at V's scale, of float8 Q, K, V laid out [batch, tokens, heads, head_dim] (cuDNN, CUDA only)."""
    import cudnn

    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()
    plan = _plan(tuple(q8.shape), scale, q8.device)
    out, t = torch.empty_like(q8), plan.tensors
    cudnn.set_stream(handle=plan.handle, stream=torch.cuda.current_stream().cuda_stream)
    plan.graph.execute({t["q"]: q8, t["k"]: k8, t["v"]: v8, t["o"]: out, t["descale_q"]: descale_q,
                        t["descale_k"]: descale_k, t["descale_v"]: descale_v, t["descale_s"]: plan.descale_s,
                        t["scale_s"]: plan.scale_s, t["scale_o"]: 1.0 / descale_v, t["amax_s"]: plan.amax[0:1],
                        t["amax_o"]: plan.amax[1:2]}, plan.workspace, handle=plan.handle)
    return out


@sdpa_fp8.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v, scale):
    return torch.empty_like(q8)


def diffusers_backend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                      _parallel_config=None) -> torch.Tensor:
    """The function diffusers' attention dispatch calls (its backends' signature), on [batch, tokens, heads,
    head_dim] tensors. FLUX attends without a mask, a causal order or context parallelism; anything else is refused
    rather than computed wrongly."""
    if attn_mask is not None or is_causal or _parallel_config is not None:
        raise ValueError("fluxnb's cuDNN float8 attention takes no attention mask, causal attention or context "
                         "parallelism (FLUX uses none); use attention: sdpa for this model")
    # V less its mean over the tokens, added back to O: exact, since each row of the softmax sums to 1. O comes out
    # in float8 (cuDNN's float8 forward with a bf16 O is Blackwell-only) and FLUX's O is mostly V's mean: rounded
    # whole, O's 3 mantissa bits were almost all of the error (emulated on a full-width synthetic block's Q, K, V:
    # 0.027 against float32 attention, 0.005-0.009 centred). K centred the same way (SageAttention's smooth_k, exact
    # too) changed nothing measurable there, so it is not done.
    value = value.float()
    v_mean = value.mean(dim=1, keepdim=True)
    (q8, descale_q), (k8, descale_k) = quantize_per_tensor(query), quantize_per_tensor(key)
    v8, descale_v = quantize_per_tensor(value - v_mean)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    out = sdpa_fp8(q8, k8, v8, descale_q, descale_k, descale_v, scale)
    return (out.float() * descale_v + v_mean).to(query.dtype)
