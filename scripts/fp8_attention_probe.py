"""Probe (issue 25): cuDNN's float8 attention (`sdpa_fp8` through nvidia-cudnn-frontend's Python graph API) against
torch's SDPA on cuDNN in bf16, at FLUX.1-dev's attention shape (1 x 24 heads x 4608 tokens x 128), on this GPU.

Per-tensor float8 e4m3 Q, K, V (scale 448 / amax), P scaled by 448 inside the kernel, O in float8 (Hopper's fp8
forward writes float8 O) scaled by 448 / amax(V) and dequantized after. Prints one JSON line per figure: milliseconds
per call (CUDA events, median of 20 after 5 warm-ups) and the relative error against float32 attention.

    python scripts/fp8_attention_probe.py   # needs CUDA and nvidia-cudnn-frontend (scripts/device_wheels.sh)

Not yet run on a GPU (session 10 had no device time left for it): the next device call's first figure.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPE = (1, 24, 4608, 128)  # batch, heads, tokens (4096 image + 512 text), head size
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def timed(fn, warmup: int = 5, iters: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8 e4m3 with one scale per tensor; returns (x8, descale) with x ~ x8 * descale."""
    amax = x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * (FP8_MAX / amax)).to(FP8), (amax / FP8_MAX).reshape(1, 1, 1, 1)


def fp8_attention():
    import cudnn

    b, h, s, d = SHAPE
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    stride = (h * s * d, s * d, d, 1)
    q_t, k_t, v_t = (graph.tensor(name=n, dim=SHAPE, stride=stride, data_type=e4m3) for n in "qkv")
    scalars = [graph.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
               for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")]
    o_t, _, amax_s_t, amax_o_t = graph.sdpa_fp8(q=q_t, k=k_t, v=v_t, descale_q=scalars[0], descale_k=scalars[1],
                                                descale_v=scalars[2], descale_s=scalars[3], scale_s=scalars[4],
                                                scale_o=scalars[5], is_inference=True, attn_scale=1 / math.sqrt(d),
                                                use_causal_mask=False)
    o_t.set_output(True).set_dim(SHAPE).set_stride(stride).set_data_type(e4m3)
    for amax in (amax_s_t, amax_o_t):
        amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    workspace = torch.empty(graph.get_workspace_size(), device="cuda", dtype=torch.uint8)
    return graph, workspace, handle, (q_t, k_t, v_t, *scalars, o_t, amax_s_t, amax_o_t)


def main() -> None:
    torch.manual_seed(0)
    report(gpu=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(), torch=torch.__version__)
    q, k, v = (torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())

    def error(out: torch.Tensor) -> float:
        return round(float((out.float() - exact).norm() / exact.norm()), 5)

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        bf16 = F.scaled_dot_product_attention(q, k, v)
        report(kernel="sdpa cudnn bf16", ms=round(timed(lambda: F.scaled_dot_product_attention(q, k, v)), 4),
               error=error(bf16))
    import cudnn

    report(cudnn_frontend=getattr(cudnn, "__version__", None), cudnn_backend=cudnn.backend_version())
    graph, workspace, handle, (q_t, k_t, v_t, dq, dk, dv, ds, ss, so, o_t, amax_s_t, amax_o_t) = fp8_attention()
    (q8, q_de), (k8, k_de), (v8, v_de) = quantize(q), quantize(k), quantize(v)
    one = torch.ones(1, 1, 1, 1, device="cuda")
    o8 = torch.empty(SHAPE, device="cuda", dtype=FP8)
    amax_s, amax_o = torch.empty(1, 1, 1, 1, device="cuda"), torch.empty(1, 1, 1, 1, device="cuda")
    pack = {q_t: q8, k_t: k8, v_t: v8, dq: q_de, dk: k_de, dv: v_de, ds: one / FP8_MAX, ss: one * FP8_MAX,
            so: 1 / v_de, o_t: o8, amax_s_t: amax_s, amax_o_t: amax_o}

    def kernel() -> None:
        graph.execute(pack, workspace, handle=handle)

    kernel()
    torch.cuda.synchronize()
    out = o8.float() * v_de
    report(kernel="cudnn sdpa_fp8 (kernel only)", ms=round(timed(kernel), 4), error=error(out),
           amax_s=float(amax_s), amax_o=float(amax_o))

    def with_quantization() -> torch.Tensor:  # what an attention call would pay: quantize Q, K, V, dequantize O
        for source, target, descale in ((q, q8, q_de), (k, k8, k_de), (v, v8, v_de)):
            amax = source.abs().amax().float()
            descale.copy_((amax / FP8_MAX).reshape(1, 1, 1, 1))
            target.copy_((source.float() * (FP8_MAX / amax)).to(FP8))
        pack[so] = 1 / v_de
        kernel()
        return (o8.float() * v_de).to(torch.bfloat16)

    report(kernel="cudnn sdpa_fp8 with eager quantize/dequantize", ms=round(timed(with_quantization), 4),
           error=error(with_quantization()))


if __name__ == "__main__":
    main()
