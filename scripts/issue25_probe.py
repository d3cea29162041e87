"""Issue 25's levers measured one by one at FLUX.1-dev's shapes, before any of them enters a model entry.

    python scripts/issue25_probe.py --output probe.json      # a CUDA GPU (H100/H200; on an L4 the same script)

Each lever's share of a float8 step is bounded here in isolation, on random tensors, in one process on one card:

- attention (24 heads x 128, 4096 image + 512 text tokens, one image): torch's scaled_dot_product_attention with
  its cuDNN and flash kernels (bf16, what fluxnb runs today) against SageAttention 1's Triton kernels (`sageattention`
  1.0.6, the version on PyPI: int8 Q/K with per-block scales, fp16 P/V), time and relative error against a float32
  reference;
- fused QKV projections: three float8 (torchao, dynamic per-row) 3072 -> 3072 projections against one 3072 -> 9216,
  compiled, at the same 4608 tokens;
- the VAE decoder at 1024x1024: eager against torch.compile;
- attention in float8: cuDNN's `sdpa_fp8` (nvidia-cudnn-frontend's graph API), kernel alone and with the quantization
  of Q, K, V around it (added after probe run 32, not yet run: `--levers attention`).

Step time of the whole model is not measured here (that is `fluxnb bench`); each figure says how much one
lever could give at most. Figures are milliseconds per call, medians of CUDA-event-timed repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone

import torch

HEADS, HEAD_DIM, IMAGE_TOKENS, TEXT_TOKENS = 24, 128, 4096, 512
HIDDEN = HEADS * HEAD_DIM
STEP_TFLOP = 74.0  # one FLUX.1-dev step at 1024x1024 (issue 25)


def timed(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` over `repeats` calls, CUDA-event timed."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 4)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float((x.float() - ref).norm() / ref.norm()), 6)


def attention_rows() -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    gen = torch.Generator("cuda").manual_seed(0)
    shape = (1, HEADS, IMAGE_TOKENS + TEXT_TOKENS, HEAD_DIM)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    k = k + 2.0 * torch.randn((1, HEADS, 1, HEAD_DIM), device="cuda", dtype=torch.bfloat16, generator=gen)  # a bias
    ref = sdpa(q.float(), k.float(), v.float())
    flop = 4 * shape[0] * HEADS * shape[2] ** 2 * HEAD_DIM
    rows = []
    kernels = (("sdpa cuDNN bf16", SDPBackend.CUDNN_ATTENTION), ("sdpa flash bf16", SDPBackend.FLASH_ATTENTION),
               ("sdpa efficient bf16", SDPBackend.EFFICIENT_ATTENTION))
    for name, backend in kernels:
        try:
            with sdpa_kernel(backend):
                out = sdpa(q, k, v)
                ms = timed(lambda: sdpa(q, k, v))
            rows.append({"lever": "attention", "kernel": name, "ms": ms, "tflops": round(flop / ms / 1e9, 1),
                         "rel_error": rel_error(out, ref)})
        except Exception as exc:  # a kernel this card or build lacks
            rows.append({"lever": "attention", "kernel": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
    try:
        from sageattention import sageattn

        out = sageattn(q, k.clone(), v, tensor_layout="HND")  # smooth_k subtracts the mean from k in place
        ms = timed(lambda: sageattn(q, k.clone(), v, tensor_layout="HND"))
        clone_ms = timed(lambda: k.clone())
        rows.append({"lever": "attention", "kernel": "sageattention 1.0.6 (Triton, int8 QK, fp16 PV)",
                     "ms": round(ms - clone_ms, 4), "tflops": round(flop / (ms - clone_ms) / 1e9, 1),
                     "rel_error": rel_error(out, ref)})
    except Exception as exc:
        rows.append({"lever": "attention", "kernel": "sageattention", "error": f"{type(exc).__name__}: {exc}"[:300]})
    try:
        kernel, out = cudnn_fp8_attention(q, k, v)
        ms = timed(kernel)
        rows.append({"lever": "attention", "kernel": "cuDNN sdpa_fp8 (nvidia-cudnn-frontend; float8 Q, K, V, O per "
                     "tensor), kernel only", "ms": ms, "tflops": round(flop / ms / 1e9, 1),
                     "rel_error": rel_error(out(), ref)})
        rows.append({"lever": "attention", "kernel": "cuDNN sdpa_fp8 with the quantization around it (eager)",
                     "ms": timed(lambda: (kernel(quantize_first=True), out())), "rel_error": rel_error(out(), ref)})
        bshd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]  # diffusers' FLUX layout
        kernel_bshd, out_bshd = cudnn_fp8_attention(*bshd)
        rows.append({"lever": "attention", "kernel": "cuDNN sdpa_fp8, kernel only, Q/K/V/O laid out (B, S, H, D)",
                     "ms": timed(kernel_bshd), "rel_error": rel_error(out_bshd(), ref)})
        quantize = torch.compile(quantize_per_tensor)
        quantize(q, k, v)
        rows.append({"lever": "attention", "kernel": "float8 per-tensor quantization of Q, K, V (compiled), alone",
                     "ms": timed(lambda: quantize(q, k, v))})
    except Exception as exc:
        rows.append({"lever": "attention", "kernel": "cuDNN sdpa_fp8", "error": f"{type(exc).__name__}: {exc}"[:300]})
    try:  # torch's own SDPA with float8 inputs: does this build's cuDNN path take them?
        q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = sdpa(q8, k8, v8)
            rows.append({"lever": "attention", "kernel": "torch sdpa, cuDNN kernel, float8 inputs",
                         "ms": timed(lambda: sdpa(q8, k8, v8)), "rel_error": rel_error(out.float(), ref)})
    except Exception as exc:
        rows.append({"lever": "attention", "kernel": "torch sdpa float8",
                     "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


def quantize_per_tensor(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor in float8 e4m3 with one scale (amax / 448), and that scale: what a model pays before sdpa_fp8."""
    quantized = []
    for t in tensors:
        amax = t.abs().amax().float().clamp(min=1e-12)
        quantized += [(t.float() * (448.0 / amax)).to(torch.float8_e4m3fn), amax / 448.0]
    return quantized


def cudnn_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """cuDNN's float8 attention through nvidia-cudnn-frontend's graph API (1.14.0: no CuTe DSL dependencies;
    scripts/device_wheels.sh carries it). Q, K, V float8 e4m3 with one scale each (448 / amax), P scaled by 448 in
    the kernel, O written in float8 (Hopper's float8 forward has no bf16 O) with V's scale. Returns (kernel, out):
    `kernel(quantize_first=False)` runs the attention (quantize_first: Q, K and V quantized first, as a model would
    pay), `out()` the dequantized output."""
    import math

    import cudnn

    fp8, fp8_max = torch.float8_e4m3fn, 448.0
    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    shape, stride = tuple(q.shape), tuple(q.stride())
    q_t, k_t, v_t = (graph.tensor(name=n, dim=shape, stride=stride, data_type=e4m3) for n in "qkv")
    names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
    scalars = {n: graph.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32) for n in names}
    o_t, _, amax_s_t, amax_o_t = graph.sdpa_fp8(q=q_t, k=k_t, v=v_t, **scalars, is_inference=True,
                                                attn_scale=1 / math.sqrt(shape[-1]), use_causal_mask=False)
    o_t.set_output(True).set_dim(shape).set_stride(stride).set_data_type(e4m3)
    for amax in (amax_s_t, amax_o_t):
        amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    workspace = torch.empty(graph.get_workspace_size(), device="cuda", dtype=torch.uint8)
    sources = {"q": q, "k": k, "v": v}
    quantized = {n: torch.empty_strided(shape, stride, device="cuda", dtype=fp8) for n in sources}
    descales = {n: torch.empty(1, 1, 1, 1, device="cuda") for n in sources}
    scale_o, o8 = torch.empty(1, 1, 1, 1, device="cuda"), torch.empty_strided(shape, stride, device="cuda", dtype=fp8)
    one = torch.ones(1, 1, 1, 1, device="cuda")

    def quantize() -> None:
        for n, source in sources.items():
            amax = source.abs().amax().float().clamp(min=1e-12)
            descales[n].copy_(amax / fp8_max)
            quantized[n].copy_((source.float() * (fp8_max / amax)).to(fp8))
        scale_o.copy_(1 / descales["v"])  # |O| <= max |V|: O in float8 at V's scale

    pack = {q_t: quantized["q"], k_t: quantized["k"], v_t: quantized["v"], scalars["descale_q"]: descales["q"],
            scalars["descale_k"]: descales["k"], scalars["descale_v"]: descales["v"],
            scalars["descale_s"]: one / fp8_max, scalars["scale_s"]: one * fp8_max, scalars["scale_o"]: scale_o,
            o_t: o8, amax_s_t: torch.empty(1, 1, 1, 1, device="cuda"),
            amax_o_t: torch.empty(1, 1, 1, 1, device="cuda")}

    def kernel(quantize_first: bool = False) -> None:
        if quantize_first:
            quantize()
        graph.execute(pack, workspace, handle=handle)

    quantize()
    return kernel, (lambda: o8.float() * descales["v"])


def fused_qkv_rows() -> list[dict]:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    tokens = IMAGE_TOKENS + TEXT_TOKENS
    x = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
    separate = torch.nn.ModuleList(torch.nn.Linear(HIDDEN, HIDDEN) for _ in range(3)).to("cuda", torch.bfloat16)
    fused = torch.nn.Linear(HIDDEN, 3 * HIDDEN).to("cuda", torch.bfloat16)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in separate]))
        fused.bias.copy_(torch.cat([m.bias for m in separate]))
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    quantize_(separate, config)
    quantize_(fused, config)
    run_separate = torch.compile(lambda t: [m(t) for m in separate])
    run_fused = torch.compile(lambda t: fused(t).chunk(3, dim=-1))
    with torch.inference_mode():
        a, b = run_separate(x), run_fused(x)
        error = max(rel_error(y, z.float()) for y, z in zip(b, a, strict=True))
        rows = [{"lever": "fused qkv", "kernel": "3 float8 projections (compiled)",
                 "ms": timed(lambda: run_separate(x))},
                {"lever": "fused qkv", "kernel": "1 fused float8 projection (compiled)",
                 "ms": timed(lambda: run_fused(x)), "rel_error_vs_separate": error}]
    # per step: 19 double blocks (image and text projections) + 38 single blocks
    saved = rows[0]["ms"] - rows[1]["ms"]
    rows[1]["ms_saved_per_step_estimate"] = round(saved * (19 + 38), 3)
    return rows


def vae_rows() -> list[dict]:
    from diffusers import AutoencoderKL

    from fluxnb.models.synthetic import FLUX_DEV_VAE

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", **FLUX_DEV_VAE)
    vae = vae.to("cuda", torch.bfloat16).eval()
    latents = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = timed(lambda: vae.decode(latents).sample, repeats=5)
        compiled_decoder = torch.compile(vae.decoder)
        out_eager = vae.decoder(latents)
        out_compiled = compiled_decoder(latents)
        compiled = timed(lambda: compiled_decoder(latents), repeats=5)
    return [{"lever": "vae decode 1024x1024", "kernel": "eager bf16", "ms": eager},
            {"lever": "vae decode 1024x1024", "kernel": "decoder torch.compile", "ms": compiled,
             "rel_error_vs_eager": rel_error(out_compiled, out_eager.float())}]


_GRAPHS: dict = {}


def _cudnn_fp8_graph(shape: tuple[int, ...], scale: float):
    """cuDNN's float8 attention for [batch, tokens, heads, head_dim] tensors (diffusers' layout), built once per
    shape: (graph, tensors, handle, workspace)."""
    import cudnn

    key = (shape, scale, torch.cuda.current_device())
    if key not in _GRAPHS:
        b, s, h, d = shape
        dims, strides = (b, h, s, d), (s * h * d, d, h * d, 1)  # the same memory seen as [batch, heads, tokens, dim]
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        handle = cudnn.create_handle()
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
        q, k, v = (graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in "qkv")
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        scalars = {n: graph.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32) for n in names}
        o, _, amax_s, amax_o = graph.sdpa_fp8(q=q, k=k, v=v, **scalars, is_inference=True, attn_scale=scale,
                                              use_causal_mask=False)
        o.set_output(True).set_dim(dims).set_stride(strides).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        workspace = torch.empty(max(graph.get_workspace_size(), 1), device="cuda", dtype=torch.uint8)
        consts = {"s": torch.full((1, 1, 1, 1), 448.0, device="cuda"),
                  "amax": torch.empty(2, 1, 1, 1, device="cuda")}
        _GRAPHS[key] = (graph, (q, k, v, o, amax_s, amax_o, scalars), handle, workspace, consts)
    return _GRAPHS[key]


@torch.library.custom_op("fluxnb_probe::cudnn_sdpa_fp8", mutates_args=())
def cudnn_sdpa_fp8(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                   descale_k: torch.Tensor, descale_v: torch.Tensor, scale: float) -> torch.Tensor:
    """O (float8, at V's scale) of float8 Q, K, V laid out [batch, tokens, heads, head_dim]."""
    import cudnn

    graph, (q, k, v, o, amax_s, amax_o, sc), handle, workspace, consts = _cudnn_fp8_graph(tuple(q8.shape), scale)
    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()
    out = torch.empty_like(q8)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    graph.execute({q: q8, k: k8, v: v8, o: out, sc["descale_q"]: descale_q, sc["descale_k"]: descale_k,
                   sc["descale_v"]: descale_v, sc["descale_s"]: 1.0 / consts["s"], sc["scale_s"]: consts["s"],
                   sc["scale_o"]: 1.0 / descale_v, amax_s: consts["amax"][0:1], amax_o: consts["amax"][1:2]},
                  workspace, handle=handle)
    return out


@cudnn_sdpa_fp8.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v, scale):
    return torch.empty_like(q8)


def fp8_attention_backend(query, key, value, attn_mask=None, is_causal=False, scale=None, _parallel_config=None):
    """diffusers' attention backend signature: Q, K, V quantized per tensor, cuDNN's float8 kernel, O back in bf16."""
    assert attn_mask is None and not is_causal and _parallel_config is None
    q8, dq, k8, dk, v8, dv = quantize_per_tensor(query, key, value)
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    out = cudnn_sdpa_fp8(q8, k8, v8, dq.reshape(1, 1, 1, 1), dk.reshape(1, 1, 1, 1), dv.reshape(1, 1, 1, 1), scale)
    return (out.float() * dv).to(query.dtype)


def attention_step_rows() -> list[dict]:
    """The lever in the step: a full-size FLUX.1-dev transformer (random weights, fluxnb's synthetic init),
    float8 per-row linears (torchao), compiled, then replayed as a CUDA graph, with diffusers' attention in bf16 SDPA
    and with cuDNN's float8 attention; one forward at 1024x1024 (4096 + 512 tokens) against the bf16 model's."""
    from diffusers import FluxTransformer2DModel
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from fluxnb.models.synthetic import FLUX_DEV_TRANSFORMER, _variance_preserving_init

    # the probe borrows diffusers' _native_cudnn name for its backend (fluxnb itself runs "native")
    name = AttentionBackendName._NATIVE_CUDNN
    _AttentionBackendRegistry.register(name)(fp8_attention_backend)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
        _variance_preserving_init(model)
        grid = torch.stack(torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij"), -1).reshape(-1, 2)
        inputs = dict(hidden_states=torch.randn(1, IMAGE_TOKENS, 64), encoder_hidden_states=torch.randn(
            1, TEXT_TOKENS, 4096), pooled_projections=torch.randn(1, 768), timestep=torch.tensor([0.5]),
            img_ids=torch.cat([torch.zeros(IMAGE_TOKENS, 1), grid.float()], 1), txt_ids=torch.zeros(TEXT_TOKENS, 3),
            guidance=torch.tensor([3.5]), return_dict=False)
    torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)

    def use(backend) -> None:
        for module in model.modules():
            if hasattr(getattr(module, "processor", None), "_attention_backend"):
                module.processor._attention_backend = backend

    rows = []
    with torch.inference_mode():
        ref = model(**inputs)[0].float()
        use(name)
        rows.append({"lever": "attention in the step", "variant": "bf16 linears, eager, cuDNN float8 attention",
                     "rel_error_vs_bf16": rel_error(model(**inputs)[0], ref)})
        use(None)
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "transformer_blocks" in fqn)
        print(json.dumps(rows[-1]), flush=True)
        # regional compilation, as fluxnb compiles (a whole-model fullgraph compile of the 57 blocks ran past 9
        # minutes: probe run 39)
        model.compile_repeated_blocks(fullgraph=True)
        for label, backend in (("sdpa bf16", None), ("cuDNN float8", name)):
            use(backend)
            torch._dynamo.reset()
            started = time.perf_counter()
            out = model(**inputs)[0]
            row = {"lever": "attention in the step", "variant": f"float8 linears compiled, attention {label}",
                   "compile_s": round(time.perf_counter() - started, 1),
                   "ms_compiled": timed(lambda: model(**inputs), repeats=5),
                   "rel_error_vs_bf16": rel_error(out, ref)}
            try:
                graph = torch.cuda.CUDAGraph()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    model(**inputs)
                torch.cuda.current_stream().wait_stream(stream)
                with torch.cuda.graph(graph):
                    captured = model(**inputs)[0]
                graph.replay()
                row["ms_graphed"] = timed(graph.replay, repeats=5)
                row["graphed_vs_compiled"] = rel_error(captured, out.float())
            except Exception as exc:
                row["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--levers", default="attention,fused-qkv,vae",
                        help="comma-separated: attention, attention-step, fused-qkv, vae")
    args = parser.parse_args()
    parts = {"attention": attention_rows, "attention-step": attention_step_rows, "fused-qkv": fused_qkv_rows,
             "vae": vae_rows}
    results = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
               "torch": torch.__version__, "rows": []}
    for part in (parts[name.strip()] for name in args.levers.split(",")):
        try:
            rows = part()
        except Exception as exc:
            rows = [{"lever": part.__name__, "error": f"{type(exc).__name__}: {exc}"[:500]}]
        results["rows"] += rows
        with open(args.output, "w", encoding="utf-8") as handle:  # after each part: a killed run keeps the rest
            json.dump(results, handle, indent=1)
        for row in rows:
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
