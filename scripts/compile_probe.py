"""Transformer probe: what each quantization x compile variant costs and gains, and how far it drifts from bf16.

A FLUX transformer with FLUX.1-dev's widths (all 19 + 38 blocks with --full-size, else few blocks) and random
weights (optionally with activation outliers: fluxnb.models.synthetic.inject_outliers), one forward at 1024x1024 token
counts (4096 image + 512 text). Each variant runs in its own process under a time limit, so one slow compile cannot
eat the others' time; with --cache-dir the processes share inductor's on-disk caches and --twice runs each variant
again in a fresh process to measure the warm first call. Prints one JSON line per variant: first-call seconds
(compile), steady s/forward, relative error of the output vs bf16 eager on the same weights and input, dynamo
counters (or the timeout / error).

Variants are BACKEND-MODE[@ATTENTION]. BACKEND: bf16, int8wo, int8dq, fp8dq (the loader's own torchao configs: the
records of fluxnb/models/backends/torchao.py), bnb8 (bitsandbytes LLM.int8, threshold 6). MODE: eager; regional
(diffusers' compile_repeated_blocks, the loader's way); full (torch.compile of the whole transformer); suffix -at for
mode="max-autotune-no-cudagraphs", -cg for mode="max-autotune" (CUDA graphs), -ro for mode="reduce-overhead" (CUDA
graphs, default kernels; it failed with regional compile: run 15). ATTENTION: a diffusers attention backend
(transformer.set_attention_backend), e.g. _native_cudnn. The variant `attention` times torch's SDPA kernels alone
at FLUX's shape (24 heads x 4608 tokens x 128); `vae` times the VAE decoder alone; `matvec` the one-row int8 layers'
kernels alone; `fp8rows` the float8 row quantization of the GELU branches alone. Environment: PROBE_MATVEC=0
(torchao's own one-row path) / fused (run 18's multiply-and-sum instead of the Triton kernel); PROBE_FP8_ROWS=0
(torchao's own GELU-branch quantization); PROBE_CUDA_GRAPH=1 (also time fluxnb's CUDA graph of the whole forward);
PROBE_PROFILE=1 (kernel time by kind); PROBE_INDUCTOR (extra inductor settings, JSON).

Usage (GPU): python scripts/compile_probe.py [--full-size] [--outliers 50,8] [--cache-dir D --twice] [VARIANT ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time

DEFAULT_VARIANTS = ("bf16-eager", "bf16-regional", "int8dq-regional", "fp8dq-regional", "int8wo-eager")
TYPES = {"int8wo": "flux-torchao-int8wo", "int8dq": "flux-torchao-int8dq", "fp8dq": "flux-torchao-fp8dq",
         "fp8pt": "flux-torchao-fp8dq"}  # fp8pt: float8 with per-tensor scales instead of per-row
COMPILE_MODES = {"": None, "at": "max-autotune-no-cudagraphs", "cg": "max-autotune", "ro": "reduce-overhead"}


def _bnb_8bit(model) -> None:
    """Every Linear of the blocks as bitsandbytes LLM.int8 (what the pre-quantized checkpoint holds)."""
    import bitsandbytes as bnb
    import torch

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.in_features > 64:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False, threshold=6.0)
                new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
                if child.bias is not None:
                    new.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                setattr(parent, name, new.cuda())
                del child
    torch.cuda.empty_cache()


def _inputs(model, device: str, tokens: int):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = model.config

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, torch.bfloat16)

    return dict(
        hidden_states=rnd(1, tokens, cfg.in_channels),
        encoder_hidden_states=rnd(1, 512, cfg.joint_attention_dim),
        pooled_projections=rnd(1, cfg.pooled_projection_dim),
        timestep=torch.tensor([0.5], device=device, dtype=torch.bfloat16),
        guidance=torch.tensor([3.5], device=device, dtype=torch.bfloat16),
        img_ids=torch.zeros(tokens, 3, device=device),
        txt_ids=torch.zeros(512, 3, device=device),
        return_dict=False,
    )


def run_one(variant: str, double: int, single: int, outliers: tuple[float, int] | None) -> dict:
    import torch
    import torch._dynamo as dynamo
    from diffusers import FluxTransformer2DModel

    from fluxnb.models.backends import REGISTRY
    from fluxnb.models.backends.base import compile_blocks
    from fluxnb.models.backends.matvec import use_matvecs
    from fluxnb.models.backends.torchao import MAIN_LAYERS, ONE_ROW_LAYERS, transformer_config
    from fluxnb.models.synthetic import _variance_preserving_init, inject_outliers, scaled_dims

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens = 4096 if device == "cuda" else 64
    variant, _, attention = variant.partition("@")
    backend, _, mode = variant.partition("-")
    how, _, tuning = mode.partition("-")
    dims = scaled_dims(layers=double, single_layers=single)["transformer"]
    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(**dims).to(torch.bfloat16).eval().requires_grad_(False)
    _variance_preserving_init(model)
    if outliers:
        inject_outliers(model, channels=outliers[1], scale=outliers[0])
    inputs = _inputs(model, device, tokens)
    if attention:
        model.set_attention_backend(attention)
    with torch.inference_mode():
        reference = model(**inputs)[0].float()
    if backend == "bnb8":
        _bnb_8bit(model)
    elif backend != "bf16":
        from torchao.quantization import quantize_

        config = transformer_config(REGISTRY[TYPES[backend]])
        if backend == "fp8pt":  # the same layers with per-tensor scales (run 15: no faster)
            import torchao.quantization as tq

            per_tensor = tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerTensor(),
                                                                      set_inductor_config=False)
            config = tq.FqnToConfig({**config.fqn_to_config, **{p: per_tensor for p in MAIN_LAYERS}})
        quantize_(model, config, **({"filter_fn": None} if type(config).__name__ == "FqnToConfig" else {}))
        if os.environ.get("PROBE_MATVEC", "1") != "0":  # the loader's one-row int8 matvecs
            use_matvecs(model, ONE_ROW_LAYERS)
        if os.environ.get("PROBE_FP8_ROWS", "1") == "1":  # the loader's fused GELU + float8 row quantization
            from fluxnb.models.backends.fp8_rows import use_fused_fp8_rows

            use_fused_fp8_rows(model)
        if os.environ.get("PROBE_MATVEC") == "fused":  # run 18's fused multiply-and-sum instead of the Triton kernel
            import fluxnb.models.backends.matvec as matvec

            matvec._TRITON_OP = None
    compile_mode = COMPILE_MODES[tuning]
    if how == "regional":  # the loader's way, with the record's inductor settings
        record = REGISTRY[TYPES.get(backend, "flux-bf16")]
        if os.environ.get("PROBE_INDUCTOR"):  # extra inductor settings on top of the record's, as JSON
            inductor = {**record.options.get("inductor", {}), **json.loads(os.environ["PROBE_INDUCTOR"])}
            record = dataclasses.replace(record, options={**record.options, "inductor": inductor})
        compile_blocks(model, record, mode=compile_mode)
    elif how == "full":
        model.compile(mode=compile_mode, fullgraph=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for _ in range(6):
            sync()
            start = time.perf_counter()
            out = model(**inputs)[0]
            sync()
            times.append(time.perf_counter() - start)
    error = float((out.float() - reference).norm() / reference.norm())
    profile = _profile(model, inputs, sync) if os.environ.get("PROBE_PROFILE") == "1" else None
    counters = {k: dict(v) for k, v in dynamo.utils.counters.items()
                if k in ("frames", "recompiles", "stats", "aot_autograd", "inductor")}
    counters["inductor"] = {k: v for k, v in counters.get("inductor", {}).items() if "cache" in k}
    # where the first call's compile time went (dynamo's timed phases, seconds summed over the graphs)
    counters["phases_s"] = {k: round(sum(v), 2) for k, v in dynamo.utils.compilation_time_metrics.items()
                            if sum(v) >= 0.05}
    steady = sorted(times[1:])[len(times[1:]) // 2]
    graphed = _cuda_graph_seconds(model, inputs, sync) if os.environ.get("PROBE_CUDA_GRAPH") == "1" else None
    return {**({"cuda_graph": graphed} if graphed else {}),
            "first_call_s": round(times[0], 2), "steady_s": round(steady, 4), "rel_err_vs_bf16": round(error, 5),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "dynamo": counters, **({"profile": profile} if profile else {})}


def _cuda_graph_seconds(model, inputs, sync) -> dict | str:
    """The whole forward through fluxnb's CUDA graph stand-in (fluxnb/models/backends/cuda_graph.py: the loader's): its
    s/forward once replaying, its status, and its output's difference from the uncaptured compiled forward."""
    import torch

    from fluxnb.models.backends.cuda_graph import graph_forward

    try:
        with torch.inference_mode():
            plain = model(**inputs)[0].float()
            graphed = graph_forward(model)
            model(**inputs)  # sets the key
            times = []
            for _ in range(7):  # the first captures
                sync()
                start = time.perf_counter()
                out = model(**inputs)[0]
                sync()
                times.append(time.perf_counter() - start)
        diff = float((out.float() - plain).norm() / plain.norm())
        return {"steady_s": round(sorted(times[1:])[3], 4), "capture_call_s": round(times[0], 3),
                "rel_diff_vs_uncaptured": diff, "status": graphed.status(),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    except Exception as e:  # noqa: BLE001 (a probe: report whatever failed)
        return f"error: {type(e).__name__}: {str(e)[:300]}"


def matvec_kernels() -> dict:
    """FLUX's one-row int8 layers alone (3072 -> 18432, double blocks; 3072 -> 9216, single blocks; int8 weights,
    per-row scales): ms per call and GB/s of weight read, for run 18's compiled multiply-and-sum and the Triton
    kernel at a few tile shapes, with each one's max difference from torchao's eager product."""
    import torch

    from fluxnb.models.backends import matvec_triton
    from fluxnb.models.backends.matvec import fused_matvec

    fused = torch.compile(fused_matvec)
    result = {}
    for n in (18432, 9216):
        q = torch.randint(-127, 128, (n, 3072), device="cuda", dtype=torch.int8)
        scale = (torch.rand(n, 1, device="cuda") / 100).to(torch.bfloat16)
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, 3072, device="cuda", dtype=torch.bfloat16)
        reference = (x.float() @ (q.float() * scale.float()).T + bias.float())
        args = (x, q, scale, bias)
        variants = {"fused_compiled": functools.partial(fused, *args)}
        for bn, bk, warps in ((8, 512, 4), (16, 256, 4), (16, 512, 4), (32, 256, 4), (32, 512, 8), (64, 128, 4),
                              (16, 1024, 8), (8, 1024, 4)):
            variants[f"triton_{bn}x{bk}_w{warps}"] = functools.partial(matvec_triton.launch, *args, bn, bk, warps)
        for label, call in variants.items():
            try:
                out = call()
                ms = _cuda_ms(call, 50)
                result[f"{n}/{label}"] = {"ms": round(ms, 4), "GBps": round(n * 3072 / ms / 1e6),
                                          "max_diff": float((out.float() - reference).abs().max())}
            except Exception as e:  # noqa: BLE001
                result[f"{n}/{label}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return result


def _cuda_ms(call, repeats: int) -> float:
    """GPU milliseconds per call of `call` (already run once), timed with CUDA events over `repeats` calls."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


KERNEL_KINDS = (("gemm", ("gemm", "cutlass", "xmma", "nvjet", "scaled_mm", "cublas", "wgmma")),
                ("attention", ("cudnn", "fmha", "flash", "attention", "sdpa")),
                ("triton", ("triton_",)))


def _profile(model, inputs, sync) -> dict:
    """One forward under torch.profiler: GPU kernel time by kind (GEMM, attention, inductor's triton kernels,
    other), the top kernels, and how much of the forward's wall time the GPU spent idle between kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sync()
        start = time.perf_counter()
        model(**inputs)
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(event.name, []).append(event.time_range.elapsed_us() / 1e3)
    by_kind: dict[str, float] = {}
    for name, times in kernels.items():
        kind = next((k for k, keys in KERNEL_KINDS if any(key in name.lower() for key in keys)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + sum(times)
    top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:20]
    busy = sum(by_kind.values())
    return {"wall_ms": round(wall_ms, 1), "kernel_ms": round(busy, 1),
            "by_kind_ms": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top": [[name[:90], len(times), round(sum(times), 2)] for name, times in top]}


def attention_kernels() -> dict:
    """torch's SDPA kernels alone at FLUX's attention shape: ms per call and TFLOP/s, and each one's max difference
    from the flash kernel's output."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, 24, 4608, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * 4608 * 4608 * 128 * 24
    result, reference = {}, None
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "default"):
        try:
            context = sdpa_kernel(getattr(SDPBackend, name)) if name != "default" else torch.no_grad()
            with context:
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                ms = _cuda_ms(functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v), 20)
            reference = out if reference is None else reference
            result[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                            "max_diff_vs_flash": float((out - reference).abs().max())}
        except RuntimeError as e:
            result[name] = {"error": str(e)[:200]}
    return result


def vae_decode() -> dict:
    """FLUX's VAE decoder alone (random weights, bf16) on a 1024x1024 latent: s/decode eager, channels_last, and
    channels_last compiled."""
    import torch
    from diffusers import AutoencoderKL

    from fluxnb.models.synthetic import FULL_DIMS

    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", **FULL_DIMS["vae"])
    vae = vae.to(torch.bfloat16).eval()
    latent = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
    result = {}

    def timed(label: str, decode) -> None:
        with torch.inference_mode():
            first = time.perf_counter()
            decode(latent)
            torch.cuda.synchronize()
            result[f"{label}_first_s"] = round(time.perf_counter() - first, 2)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                decode(latent)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        result[f"{label}_s"] = round(sorted(times)[2], 4)

    timed("eager", vae.decode)
    torch.backends.cudnn.benchmark = True
    timed("eager_cudnn_benchmark", vae.decode)
    torch.backends.cudnn.benchmark = False
    vae.to(memory_format=torch.channels_last)
    timed("channels_last", vae.decode)
    timed("channels_last_compiled", torch.compile(vae.decode))
    return result


def fp8_rows_kernels() -> dict:
    """The float8 row quantization of a GELU branch alone, at FLUX's single-block ([attention 3072 | GELU 12288],
    4608 rows) and double-block (GELU 12288, 4096 rows) shapes: torchao's own quantization compiled by inductor vs
    the one-pass Triton kernel (fluxnb/models/backends/fp8_rows_triton.py); ms per call, GB/s moved, and the relative
    error of each dequantized result against the exact row."""
    import torch
    from torchao.quantization.quant_primitives import _choose_scale_float8, _quantize_affine_float8

    from fluxnb.models.backends import fp8_rows_triton

    def torchao_rows(b, a):
        row = torch.nn.functional.gelu(b, approximate="tanh")
        row = row if a is None else torch.cat([a, row], -1)
        scale = _choose_scale_float8(row, block_size=[1, row.shape[-1]])
        return _quantize_affine_float8(row, scale), scale

    compiled = torch.compile(torchao_rows)
    result = {}
    for label, rows, ka, kb in (("single", 4608, 3072, 12288), ("double", 4096, 0, 12288)):
        b = torch.randn(rows, kb, device="cuda", dtype=torch.bfloat16) * 2
        a = torch.randn(rows, ka, device="cuda", dtype=torch.bfloat16) if ka else None
        gelu = torch.nn.functional.gelu(b.float(), approximate="tanh")
        exact = gelu if a is None else torch.cat([a.float(), gelu], -1)
        moved = rows * (ka + kb) * 3  # bf16 read once, float8 written once
        for name, call in (("torchao_compiled", functools.partial(compiled, b, a)),
                           ("triton_one_pass", functools.partial(fp8_rows_triton.launch, b, a))):
            q, scale = call()
            ms = _cuda_ms(call, 20)
            error = float((q.float() * scale.reshape(-1, 1) - exact).norm() / exact.norm())
            result[f"{label}/{name}"] = {"ms": round(ms, 4), "GBps": round(moved / ms / 1e6),
                                         "rel_err": round(error, 5)}
    return result


def _child(args, variant: str, cache_dir: str | None) -> dict:
    command = [sys.executable, __file__, "--one", "--blocks", str(args.blocks[0]), str(args.blocks[1]), variant]
    if args.outliers:
        command += ["--outliers", args.outliers]
    env = dict(os.environ)
    if cache_dir:
        env.update(TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
                   TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"))
    line: dict = {}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
        if done.returncode == 0:
            line.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            line["error"] = done.stderr.strip()[-1500:]
    except subprocess.TimeoutExpired:
        line["error"] = f"timeout: not finished after {args.timeout:.0f} s (process killed)"
    line["process_s"] = round(time.perf_counter() - start, 1)
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--blocks", nargs=2, type=int, default=(2, 4), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--full-size", action="store_true", help="FLUX.1-dev's 19 double + 38 single blocks")
    parser.add_argument("--outliers", help="S,K: inject K outlier channels of scale S per block (function-preserving)")
    parser.add_argument("--cache-dir", help="inductor/triton cache shared by the variants' processes")
    parser.add_argument("--twice", action="store_true", help="run each variant again in a new process (warm cache)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per variant (default 90)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: run one variant
    args = parser.parse_args()
    if args.full_size:
        args.blocks = (19, 38)
    outliers = None
    if args.outliers:
        scale, channels = args.outliers.split(",")
        outliers = (float(scale), int(channels))
    alone = {"attention": attention_kernels, "vae": vae_decode, "matvec": matvec_kernels, "fp8rows": fp8_rows_kernels}
    if args.one and args.variants[0] in alone:
        print(json.dumps(alone[args.variants[0]]()), flush=True)
        return
    if args.one:
        print(json.dumps(run_one(args.variants[0], *args.blocks, outliers)), flush=True)
        return
    for variant in args.variants:
        for run in ("cold", "warm") if args.twice else ("cold",):
            line = {"variant": variant, "run": run, "double_blocks": args.blocks[0], "single_blocks": args.blocks[1],
                    "outliers": args.outliers}
            line.update(_child(args, variant, args.cache_dir))
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
