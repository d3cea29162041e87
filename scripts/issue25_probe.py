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
- attention in float8: cuDNN's `sdpa_fp8` as fluxnb runs it (fluxnb/models/cudnn_fp8_attention.py), the kernel
  alone and with the quantization of Q, K, V (`--levers attention`; probe run 37), and in a full-size float8 step,
  compiled and CUDA-graphed, against bf16 SDPA (`--levers attention-step`; probe run 40). Runs 37 and 40 ran this
  script as of commit 6468f9a, which built the same cuDNN graph itself before the kernel moved into fluxnb;
- the float8 GEMMs alone (`--levers gemm`): each linear shape of a FLUX.1-dev step at 1024x1024 (with how many times a
  step runs it), per-row scaled as torchao runs it (torch._scaled_mm, fast accumulation) against per-tensor scales,
  FBGEMM's CUTLASS kernel for the same per-row product (`fbgemm-gpu-genai`, where it is installed) and inductor's
  max-autotune choice, summed into milliseconds per step;
- where a float8 step's GPU time goes (`--levers step-profile`): fluxnb's recommended entry as it loads, compiled,
  its denoising steps under torch.profiler, kernel time per step grouped into attention, float8 GEMMs, fluxnb's own
  kernels and inductor's fused ones, and the VAE decode in torch's default layout against channels_last.

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
        rows += cudnn_fp8_rows(q, k, v, ref, flop)
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


def cudnn_fp8_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref: torch.Tensor, flop: float) -> list[dict]:
    """cuDNN's float8 attention as fluxnb runs it (fluxnb/models/cudnn_fp8_attention.py; nvidia-cudnn-frontend,
    which scripts/device_wheels.sh carries): the kernel alone on float8 Q, K, V laid out as diffusers hands them,
    then with the per-tensor quantization around it, compiled."""
    from fluxnb.models.cudnn_fp8_attention import diffusers_backend, quantize_per_tensor, sdpa_fp8

    bshd = [t.transpose(1, 2).contiguous() for t in (q, k, v)]  # [batch, tokens, heads, head_dim]
    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_tensor(t) for t in bshd)
    scale = HEAD_DIM ** -0.5
    out = sdpa_fp8(q8, k8, v8, dq, dk, dv, scale).float() * dv
    ms = timed(lambda: sdpa_fp8(q8, k8, v8, dq, dk, dv, scale))
    rows = [{"lever": "attention", "kernel": "cuDNN sdpa_fp8 (float8 Q, K, V, O, one scale each), kernel only",
             "ms": ms, "tflops": round(flop / ms / 1e9, 1), "rel_error": rel_error(out.transpose(1, 2), ref)}]
    compiled = torch.compile(diffusers_backend, fullgraph=True)
    out = compiled(*bshd)
    rows.append({"lever": "attention", "kernel": "cuDNN sdpa_fp8 with the quantization of Q, K, V (compiled)",
                 "ms": timed(lambda: compiled(*bshd)), "rel_error": rel_error(out.transpose(1, 2), ref)})
    return rows


def attention_step_rows() -> list[dict]:
    """The lever in the step: a full-size FLUX.1-dev transformer (random weights, fluxnb's synthetic init),
    float8 per-row linears (torchao), its blocks compiled, then replayed as a CUDA graph, with diffusers' attention in
    bf16 SDPA and with fluxnb's cuDNN float8 attention; one forward at 1024x1024 (4096 + 512 tokens) against the bf16
    model's."""
    from diffusers import FluxTransformer2DModel
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from fluxnb.models.attention import use_attention
    from fluxnb.models.synthetic import FLUX_DEV_TRANSFORMER, _variance_preserving_init

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
    processors = [m.processor for m in model.modules() if hasattr(getattr(m, "processor", None), "_attention_backend")]
    rows = []
    with torch.inference_mode():
        ref = model(**inputs)[0].float()
        use_attention(model, "cudnn-fp8")
        fp8_backend = processors[0]._attention_backend
        rows.append({"lever": "attention in the step", "variant": "bf16 linears, eager, cuDNN float8 attention",
                     "rel_error_vs_bf16": rel_error(model(**inputs)[0], ref)})
        print(json.dumps(rows[-1]), flush=True)
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "transformer_blocks" in fqn)
        # regional compilation, as fluxnb compiles (a whole-model fullgraph compile of the 57 blocks ran past 9
        # minutes: probe run 39)
        model.compile_repeated_blocks(fullgraph=True)
        for label, backend in (("sdpa bf16", None), ("cuDNN float8", fp8_backend)):
            for processor in processors:
                processor._attention_backend = backend
            torch._dynamo.reset()
            rows.append(_graphed_step(model, inputs, ref, label))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _graphed_step(model, inputs: dict, ref: torch.Tensor, label: str) -> dict:
    """One compiled forward's time and error, then the same replayed as a CUDA graph."""
    started = time.perf_counter()
    out = model(**inputs)[0]
    row = {"lever": "attention in the step", "variant": f"float8 linears compiled, attention {label}",
           "compile_s": round(time.perf_counter() - started, 1), "ms_compiled": timed(lambda: model(**inputs),
                                                                                       repeats=5),
           "rel_error_vs_bf16": rel_error(out, ref)}
    from fluxnb.models.backends.cuda_graph import record_graph, run_aside

    try:  # fluxnb's own capture recipe: one call on a side stream, then the same call captured there
        _, stream = run_aside(model, inputs)
        graph, output = record_graph(model, inputs, stream)
        captured = output[0]
        graph.replay()
        row["ms_graphed"] = timed(graph.replay, repeats=5)
        row["graphed_vs_compiled"] = rel_error(captured, out.float())
    except Exception as exc:
        row["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


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


def attention_host_rows(calls: int = 200) -> list[dict]:
    """What one attention call costs the CPU when no CUDA graph replays the step (the cached mode): milliseconds of
    wall time per call issued back to back, and per call with the GPU waited for, for torch's SDPA and for fluxnb's
    cuDNN float8 attention (diffusers' layout, the quantization included). Wall time per call above GPU time per call
    means the CPU, not the GPU, sets the pace (bench run 43: the cached float8 entry 2.64 s/image with it, 1.90 s
    with SDPA in run 36)."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from fluxnb.models.cudnn_fp8_attention import diffusers_backend

    q, k, v = (torch.randn(1, IMAGE_TOKENS + TEXT_TOKENS, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    kernels = {"sdpa bf16": lambda: sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
               "cudnn-fp8 (eager)": lambda: diffusers_backend(q, k, v)}
    compiled = torch.compile(diffusers_backend, fullgraph=True)
    kernels["cudnn-fp8 (compiled, as in a block)"] = lambda: compiled(q, k, v)
    rows = []
    with torch.inference_mode():
        for name, call in kernels.items():
            call()
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(calls):
                call()
            issued = time.perf_counter() - started
            torch.cuda.synchronize()
            total = time.perf_counter() - started
            rows.append({"lever": "attention host cost", "kernel": name,
                         "ms_issue_per_call": round(issued / calls * 1e3, 4),
                         "ms_wall_per_call": round(total / calls * 1e3, 4), "ms_gpu_per_call": timed(call)})
    return rows


# (tokens, in features, out features, calls per step) of every float8 linear in a FLUX.1-dev step at 1024x1024:
# 19 double blocks (image stream: 4096 tokens, text stream: 512; Q, K, V, out, MLP up and down each) and 38 single
# blocks (4608 tokens; Q, K, V, MLP up, and proj_out over [attention | MLP]).
FLUX_GEMMS = (
    (4096, 3072, 3072, 19 * 4), (4096, 3072, 12288, 19), (4096, 12288, 3072, 19),
    (512, 3072, 3072, 19 * 4), (512, 3072, 12288, 19), (512, 12288, 3072, 19),
    (4608, 3072, 3072, 38 * 3), (4608, 3072, 12288, 38), (4608, 15360, 3072, 38),
)


def _fbgemm_rowwise():
    """FBGEMM's per-row float8 GEMM (torch.ops.fbgemm.f8f8bf16_rowwise), or None where fbgemm-gpu-genai is absent."""
    try:
        import fbgemm_gpu.experimental.gen_ai  # noqa: F401  (registers torch.ops.fbgemm)
    except Exception:
        return None
    return torch.ops.fbgemm.f8f8bf16_rowwise


def _float8_mm(a, b, sa, sb):
    """torch's float8 product as torchao calls it (bf16 out, fast accumulation), for per-row or per-tensor scales."""
    return torch._scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16, use_fast_accum=True)


def _gemm_kernels(m: int, k: int, n: int, fbgemm, autotuned) -> dict:
    """The kernels compared on one shape, as calls on inputs made here (activations x ~ N(0, 1), weight ~ N(0, 1/k))."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    xs = x.abs().amax(1, keepdim=True).float() / 448
    ws = w.abs().amax(1, keepdim=True).float() / 448
    xq, wq = (x / xs).to(torch.float8_e4m3fn), (w / ws).to(torch.float8_e4m3fn)
    xt, wt = x.abs().amax().float() / 448, w.abs().amax().float() / 448
    xtq, wtq = (x / xt).to(torch.float8_e4m3fn), (w / wt).to(torch.float8_e4m3fn)
    kernels = {
        "bf16 (torch.mm)": lambda: x @ w.t(),
        "float8 per-row, torch._scaled_mm (torchao)": lambda: _float8_mm(xq, wq.t(), xs, ws.t()),
        "float8 per-tensor, torch._scaled_mm": lambda: _float8_mm(xtq, wtq.t(), xt, wt),
    }
    if fbgemm is not None:
        kernels["float8 per-row, fbgemm f8f8bf16_rowwise"] = lambda: fbgemm(
            xq, wq, xs.view(-1), ws.view(-1), use_fast_accum=True)
    if autotuned is not None:
        kernels["float8 per-row, inductor max-autotune"] = lambda: autotuned(xq, wq.t(), xs, ws.t())
    return kernels


def gemm_rows(autotune_budget_s: float = 150.0) -> list[dict]:
    """The float8 GEMMs of one step, shape by shape: milliseconds per call and per step for each kernel, TFLOP/s,
    and each kernel's output against torch's per-row one. (Inductor's max-autotune only while its search has taken
    less than `autotune_budget_s`.)"""
    fbgemm = _fbgemm_rowwise()
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(FLUX_GEMMS))
    autotuned = torch.compile(_float8_mm, mode="max-autotune-no-cudagraphs", dynamic=False)
    rows, totals = [], {}
    started = time.perf_counter()
    for m, k, n, calls in FLUX_GEMMS:
        in_budget = time.perf_counter() - started < autotune_budget_s
        kernels = _gemm_kernels(m, k, n, fbgemm, autotuned if in_budget else None)
        with torch.inference_mode():
            reference = kernels["float8 per-row, torch._scaled_mm (torchao)"]().float()
            for name, call in kernels.items():
                try:
                    out = call()
                    ms = timed(call)
                except Exception as exc:
                    rows.append({"lever": "gemm", "shape": [m, k, n], "kernel": name,
                                 "error": f"{type(exc).__name__}: {exc}"[:300]})
                    continue
                totals[name] = totals.get(name, 0.0) + ms * calls
                rows.append({"lever": "gemm", "shape": [m, k, n], "calls_per_step": calls, "kernel": name,
                             "ms": ms, "tflops": round(2 * m * k * n / ms / 1e9, 1),
                             "rel_diff_vs_torch_rows": rel_error(out, reference)})
                print(json.dumps(rows[-1]), flush=True)
    for name, ms in totals.items():
        measured = sum(1 for r in rows if r.get("kernel") == name and "ms" in r)
        rows.append({"lever": "gemm", "kernel": name, "ms_per_step": round(ms, 2),
                     "shapes_measured": f"{measured} of {len(FLUX_GEMMS)}"})
    return rows


# Kernel name -> the part of a step it belongs to (first match wins; lowercase substrings). Inductor names its fused
# kernels after the ops they contain ("triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention_..."), so
# they are matched before the attention and GEMM words (probe run 49's JSON, written before this order, counted its
# RMSNorm + RoPE kernels as attention and its LayerNorm + quantization kernels as float8 GEMM).
KERNEL_KINDS = (
    ("GELU + float8 rows (fluxnb)", ("gelu_fp8_rows",)),
    ("one-row matvec (fluxnb)", ("matvec",)),
    ("inductor fused (norms, modulation, RoPE, quantization)", ("triton_",)),
    ("attention", ("fmha", "flash", "cudnn", "sdpa", "attention")),
    ("float8 GEMM", ("scaled_mm", "f8f8", "e4m3", "sm90_xmma_gemm", "cutlass", "gemm", "nvjet")),
)


# Kernels that do no model arithmetic (fills, copies): where they are launched from is what says whether they can go.
HOUSEKEEPING = ("fillfunctor", "memcpy", "memset", "copy_kernel")


def _launch_sites(prof, steps: int, top: int = 12) -> list[dict]:
    """For the housekeeping kernels of a profile: the aten op that launched them, its parent ops and the Python
    frames above it (outside torch), with milliseconds and calls per step; the `top` heaviest sites."""
    sites: dict[tuple, list] = {}
    for event in prof.events():
        for kernel in getattr(event, "kernels", ()):
            if not any(word in kernel.name.lower() for word in HOUSEKEEPING):
                continue
            ops, parent = [event.name], event.cpu_parent
            while parent is not None and len(ops) < 6:
                ops.append(parent.name)
                parent = parent.cpu_parent
            frames = [f for f in (event.stack or []) if "/torch/" not in f][:5]
            site = sites.setdefault((kernel.name[:80], tuple(ops), tuple(frames)), [0.0, 0])
            site[0] += kernel.duration / 1e3 / steps
            site[1] += 1 / steps
    return [{"lever": "step profile", "housekeeping_kernel": name, "ops": list(ops), "python": list(frames),
             "ms_per_step": round(ms, 3), "calls_per_step": calls}
            for (name, ops, frames), (ms, calls) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]]


def step_profile_rows(steps: int = 4, entry: str = "flux-dev-torchao-fp8", side: int = 1024) -> list[dict]:
    """Where a float8 step's GPU time goes: fluxnb's own recommended entry (flux-dev-torchao-fp8 as shipped, loaded
    from a full-size synthetic checkpoint, compiled, without the CUDA graph so that its kernels are visible), the
    denoising steps alone (prompt encoded before, no decode) at 1024x1024 under torch.profiler, after one unprofiled
    call (inductor tunes some kernels on their first call: probe run 48 profiled that): GPU kernel time per step
    grouped by KERNEL_KINDS, the top kernels with their calls per step, and where the fills and copies come from.
    (`entry="flux-tiny"`, a small `side`: the same code on a CPU.)"""
    import dataclasses
    import os

    from torch.profiler import ProfilerActivity, profile

    import fluxnb
    from fluxnb.models.synthetic import ensure_synthetic_checkpoint

    os.environ["FLUXNB_CUDA_GRAPH"] = "0"
    spec = dataclasses.replace(fluxnb.load_config().get(entry), requires_auth=False)
    checkpoint = None if entry == "flux-tiny" else ensure_synthetic_checkpoint(
        "bf16", os.environ.get("FLUXNB_SYNTHETIC", "/dev/shm/fluxnb-synthetic"))
    model = fluxnb.load_model(spec, checkpoint=checkpoint, progress=False)
    fluxnb.generate(model, fluxnb.make_request(spec, prompt="a cat", steps=2, width=side, height=side),
                    progress=False)  # compiles at this size
    pipe = model.pipe
    with torch.inference_mode():
        embeds, pooled, _ = pipe.encode_prompt(prompt="a cat", prompt_2=None, max_sequence_length=512)
        run = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=steps, height=side,
                   width=side, output_type="latent")
        started = time.perf_counter()
        pipe(**run)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        unprofiled = time.perf_counter() - started
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
            started = time.perf_counter()
            pipe(**run)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
    kinds: dict[str, float] = {}
    kernels: dict[str, list] = {}
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = event.device_time_total / 1e3 / steps
        kind = next((k for k, words in KERNEL_KINDS if any(w in event.key.lower() for w in words)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
        kernel = kernels.setdefault(event.key[:120], [0.0, 0])
        kernel[0] += ms
        kernel[1] += event.count / steps
    rows = [{"lever": "step profile", "part": kind, "ms_per_step": round(ms, 2)}
            for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1])]
    rows.append({"lever": "step profile", "part": "all kernels", "ms_per_step": round(sum(kinds.values()), 2),
                 "wall_ms_per_step_profiled": round(wall * 1e3 / steps, 1),
                 "wall_ms_per_step_unprofiled": round(unprofiled * 1e3 / steps, 1), "load_notes": model.report.notes})
    rows += [{"lever": "step profile", "kernel": name, "ms_per_step": round(ms, 3), "calls_per_step": calls}
             for name, (ms, calls) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:60]]
    try:
        rows += _launch_sites(prof, steps)
    except Exception as exc:  # the totals above stay
        rows.append({"lever": "step profile", "launch_sites_error": f"{type(exc).__name__}: {exc}"[:300]})
    if torch.cuda.is_available():  # the phases around the steps: the prompt's encoding (T5 as the entry loads it),
        # and the decode (5% of a float8 image) in torch's default layout against channels_last
        with torch.inference_mode():
            rows.append({"lever": "encode prompt", "ms": timed(lambda: pipe.encode_prompt(
                prompt="a cat", prompt_2=None, max_sequence_length=512), repeats=5)})
        vae = pipe.vae
        latents = torch.randn(1, vae.config.latent_channels, side // 8, side // 8, device="cuda", dtype=vae.dtype)
        with torch.inference_mode():
            for layout in (torch.contiguous_format, torch.channels_last):
                vae.to(memory_format=layout)
                laid_out = latents.to(memory_format=layout)
                rows.append({"lever": "vae decode", "layout": str(layout),
                             "ms": timed(lambda x=laid_out: vae.decode(x), repeats=5)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--levers", default="attention,fused-qkv,vae",
                        help="comma-separated: attention, attention-step, attention-host, fused-qkv, vae, gemm, "
                        "step-profile")
    args = parser.parse_args()
    parts = {"attention": attention_rows, "attention-step": attention_step_rows, "attention-host": attention_host_rows,
             "fused-qkv": fused_qkv_rows, "vae": vae_rows, "gemm": gemm_rows,
             "step-profile": step_profile_rows}
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
