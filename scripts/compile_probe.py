"""Issue 6 probe: what regional torch.compile costs and gains for torchao int8 weight-only, on a FLUX transformer
with FLUX.1-dev's widths but few blocks (random weights), at 1024x1024 token counts (4096 image + 512 text).

Prints one JSON line per variant: first-call seconds (compile), steady s/forward, dynamo frame/recompile counters.
Usage (GPU): python scripts/compile_probe.py [double_blocks] [single_blocks]
"""

from __future__ import annotations

import json
import sys
import time

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOKENS = 4096  # 1024x1024 image tokens (64 on a CPU smoke run)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def forward_inputs(model, device=DEVICE):
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = model.config

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, torch.bfloat16)

    return dict(
        hidden_states=rnd(1, TOKENS, cfg.in_channels),
        encoder_hidden_states=rnd(1, 512, cfg.joint_attention_dim),
        pooled_projections=rnd(1, cfg.pooled_projection_dim),
        timestep=torch.tensor([0.5], device=device, dtype=torch.bfloat16),
        guidance=torch.tensor([3.5], device=device, dtype=torch.bfloat16),
        img_ids=torch.zeros(TOKENS, 3, device=device),
        txt_ids=torch.zeros(512, 3, device=device),
        return_dict=False,
    )


def timed(fn, repeat=5):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return first, sorted(times)[len(times) // 2]


def main(double: int = 2, single: int = 4) -> None:
    import torch._dynamo as dynamo
    from diffusers import FluxTransformer2DModel
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from fluxnb.synthetic import _variance_preserving_init, scaled_dims

    dims = scaled_dims(layers=double, single_layers=single)["transformer"]
    for variant in ("bf16-eager", "bf16-compiled", "int8wo-eager", "int8wo-compiled"):
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = FluxTransformer2DModel(**dims).to(torch.bfloat16).eval().requires_grad_(False)
        _variance_preserving_init(model)
        if variant.startswith("int8wo"):
            # run 5 used the default (True): torchao's inductor presets, coordinate-descent tuning on
            quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False))
        dynamo.reset()
        dynamo.utils.counters.clear()
        if variant.endswith("compiled"):
            model.compile_repeated_blocks()
        inputs = forward_inputs(model)
        with torch.inference_mode():
            first, steady = timed(lambda m=model, x=inputs: m(**x))
        counters = {k: dict(v) for k, v in dynamo.utils.counters.items() if k in ("frames", "recompiles", "stats")}
        print(json.dumps({"variant": variant, "double_blocks": double, "single_blocks": single,
                          "first_call_s": round(first, 2), "steady_s": round(steady, 4), "dynamo": counters}),
              flush=True)
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    if DEVICE == "cpu":
        TOKENS = 64
    main(*(int(a) for a in sys.argv[1:3]))
