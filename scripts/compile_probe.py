"""Compile probe: what regional torch.compile costs and gains per backend, on a FLUX transformer with FLUX.1-dev's
widths but few blocks (random weights), at 1024x1024 token counts (4096 image + 512 text).

Each variant runs in its own process under a time limit, so one slow compile cannot eat the others' time. Prints one
JSON line per variant: first-call seconds (compile), steady s/forward, dynamo counters (or the timeout / error).
Variants are BACKEND-MODE with BACKEND in bf16, int8wo, int8dq, fp8dq (the loader's own torchao configs) and MODE in
eager, compiled (the loader's own regional compile).

Usage (GPU): python scripts/compile_probe.py [--blocks 2 4] [--timeout 90] [VARIANT ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

DEFAULT_VARIANTS = ("bf16-eager", "bf16-compiled", "int8dq-compiled", "fp8dq-compiled", "int8wo-compiled")
TYPES = {"int8wo": "flux-torchao-int8wo", "int8dq": "flux-torchao-int8dq", "fp8dq": "flux-torchao-fp8dq"}


def run_one(variant: str, double: int, single: int) -> dict:
    import torch
    import torch._dynamo as dynamo
    from diffusers import FluxTransformer2DModel

    from fluxnb.loading import _torchao_config, compile_blocks
    from fluxnb.synthetic import _variance_preserving_init, scaled_dims

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens = 4096 if device == "cuda" else 64
    backend, mode = variant.split("-")
    dims = scaled_dims(layers=double, single_layers=single)["transformer"]
    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(**dims).to(torch.bfloat16).eval().requires_grad_(False)
    _variance_preserving_init(model)
    if backend != "bf16":
        from torchao.quantization import quantize_

        config = _torchao_config(TYPES[backend])
        quantize_(model, config, **({"filter_fn": None} if type(config).__name__ == "FqnToConfig" else {}))
    if mode == "compiled":
        compile_blocks(model, TYPES.get(backend, "flux-bf16"))
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = model.config

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, torch.bfloat16)

    inputs = dict(
        hidden_states=rnd(1, tokens, cfg.in_channels),
        encoder_hidden_states=rnd(1, 512, cfg.joint_attention_dim),
        pooled_projections=rnd(1, cfg.pooled_projection_dim),
        timestep=torch.tensor([0.5], device=device, dtype=torch.bfloat16),
        guidance=torch.tensor([3.5], device=device, dtype=torch.bfloat16),
        img_ids=torch.zeros(tokens, 3, device=device),
        txt_ids=torch.zeros(512, 3, device=device),
        return_dict=False,
    )

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
    counters = {k: dict(v) for k, v in dynamo.utils.counters.items() if k in ("frames", "recompiles", "stats")}
    steady = sorted(times[1:])[len(times[1:]) // 2]
    return {"first_call_s": round(times[0], 2), "steady_s": round(steady, 4), "output_std": float(out.float().std()),
            "dynamo": counters}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--blocks", nargs=2, type=int, default=(2, 4), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per variant (default 90)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: run one variant
    args = parser.parse_args()
    double, single = args.blocks
    if args.one:
        print(json.dumps(run_one(args.variants[0], double, single)), flush=True)
        return
    for variant in args.variants:
        line = {"variant": variant, "double_blocks": double, "single_blocks": single}
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, "--one", "--blocks", str(double), str(single), variant],
                                  capture_output=True, text=True, timeout=args.timeout)
            if done.returncode == 0:
                line.update(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                line["error"] = done.stderr.strip()[-1500:]
        except subprocess.TimeoutExpired:
            line["error"] = f"timeout: not finished after {args.timeout:.0f} s (process killed)"
        line["process_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
