"""Transformer probe: what each quantization x compile variant costs and gains, and how far it drifts from bf16.

A FLUX transformer with FLUX.1-dev's widths (all 19 + 38 blocks with --full-size, else few blocks) and random
weights (optionally with activation outliers: fluxnb.synthetic.inject_outliers), one forward at 1024x1024 token
counts (4096 image + 512 text). Each variant runs in its own process under a time limit, so one slow compile cannot
eat the others' time; with --cache-dir the processes share inductor's on-disk caches and --twice runs each variant
again in a fresh process to measure the warm first call. Prints one JSON line per variant: first-call seconds
(compile), steady s/forward, relative error of the output vs bf16 eager on the same weights and input, dynamo
counters (or the timeout / error).

Variants are BACKEND-MODE. BACKEND: bf16, int8wo, int8dq, fp8dq (the loader's own torchao configs: the records of
fluxnb/backends/torchao.py), bnb8 (bitsandbytes LLM.int8, threshold 6). MODE: eager; regional (diffusers'
compile_repeated_blocks, the loader's way); full (torch.compile of the whole transformer); suffix -at for
mode="max-autotune-no-cudagraphs", -cg for mode="max-autotune" (CUDA graphs).

Usage (GPU): python scripts/compile_probe.py [--full-size] [--outliers 50,8] [--cache-dir D --twice] [VARIANT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_VARIANTS = ("bf16-eager", "bf16-regional", "int8dq-regional", "fp8dq-regional", "int8wo-eager")
TYPES = {"int8wo": "flux-torchao-int8wo", "int8dq": "flux-torchao-int8dq", "fp8dq": "flux-torchao-fp8dq"}
COMPILE_MODES = {"": None, "at": "max-autotune-no-cudagraphs", "cg": "max-autotune"}


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

    from fluxnb.backends import REGISTRY
    from fluxnb.backends.base import compile_blocks
    from fluxnb.backends.torchao import transformer_config
    from fluxnb.synthetic import _variance_preserving_init, inject_outliers, scaled_dims

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens = 4096 if device == "cuda" else 64
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
    with torch.inference_mode():
        reference = model(**inputs)[0].float()
    if backend == "bnb8":
        _bnb_8bit(model)
    elif backend != "bf16":
        from torchao.quantization import quantize_

        config = transformer_config(REGISTRY[TYPES[backend]])
        quantize_(model, config, **({"filter_fn": None} if type(config).__name__ == "FqnToConfig" else {}))
    compile_mode = COMPILE_MODES[tuning]
    if how == "regional":  # the loader's way, with the record's flags (fused int8 rescale)
        compile_blocks(model, REGISTRY[TYPES.get(backend, "flux-bf16")], mode=compile_mode)
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
    counters = {k: dict(v) for k, v in dynamo.utils.counters.items() if k in ("frames", "recompiles", "stats")}
    steady = sorted(times[1:])[len(times[1:]) // 2]
    return {"first_call_s": round(times[0], 2), "steady_s": round(steady, 4), "rel_err_vs_bf16": round(error, 5),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "dynamo": counters}


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
