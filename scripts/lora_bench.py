"""LoRA on the full-size synthetic FLUX (FLUX.1-dev's dimensions, random weights): what an adapter costs per backend.

For each model entry (default: the guide's bnb 8-bit and the compiled torchao int8 dynamic entry) it loads the model
through fluxnb's loader from the synthetic checkpoint (fluxnb.models.synthetic), then measures with fluxnb.generate:

- load seconds of the model, and of the first adapter (diffusers' load_lora_weights through fluxnb.models.lora);
- seconds per image and peak GPU memory: no adapter, adapter unfused, adapter fused (where the backend allows);
- for hotswap entries (compiled): graphs compiled by the first adapter, and by a swap to a second adapter and by a
  new scale (both must be 0: no recompile).

The adapters are synthetic too (fluxnb.models.synthetic_lora, rank --rank), so no download is needed. Writes JSON with
the card, the library versions and every figure (default results/lora-bench-synthetic.json).

Usage (GPU): python scripts/lora_bench.py [--model flux-dev-bnb-8bit --model flux-dev-torchao-int8dq]
             [--size 1024x1024] [--steps 28] [--images 2] [--rank 16] [--out FILE] [--synthetic-root DIR]
             [--lora-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fluxnb  # noqa: E402
from fluxnb.core.environment import device_info, package_versions  # noqa: E402
from fluxnb.core.memory import free_memory  # noqa: E402
from fluxnb.models.backends import get_backend  # noqa: E402
from fluxnb.models.lora import apply_loras  # noqa: E402
from fluxnb.models.synthetic import ensure_synthetic_checkpoint  # noqa: E402
from fluxnb.models.synthetic_lora import build_lora  # noqa: E402
from fluxnb.runs.generation import peak_memory_bytes  # noqa: E402
from fluxnb.runs.outputs import default_outputs_dir  # noqa: E402

DEFAULT_MODELS = ("flux-dev-bnb-8bit", "flux-dev-torchao-int8dq")
PROMPT = "a photo of a cat sitting on a red chair in the sun"


def images(model, spec, args, **kwargs) -> list[dict]:
    """Generate args.images images (seeds 0..) and return their metadata."""
    width, height = args.size
    request = fluxnb.make_request(spec, prompt=PROMPT, steps=args.steps, width=width, height=height,
                                  num_images=args.images, **kwargs)
    return [image.metadata for image in fluxnb.generate(model, request, progress=False)]


def summary(metadata: list[dict]) -> dict:
    """Seconds per image (median of the images that compiled nothing), peak memory, compile seconds."""
    steady = [m["seconds"] for m in metadata if m["compile"]["new_graphs"] == 0] or [m["seconds"] for m in metadata]
    return {
        "seconds_per_image": round(statistics.median(steady), 3),
        "seconds_each": [m["seconds"] for m in metadata],
        "peak_gib": round(max(peak_memory_bytes(m) for m in metadata) / 2**30, 2),
        "new_graphs": sum(m["compile"]["new_graphs"] for m in metadata),
        "compile_seconds": round(sum(m["compile"]["seconds"] for m in metadata), 2),
        "lora_fused": metadata[0].get("lora_fused"),
    }


def bench_one(name: str, args, adapters: list[Path], log) -> dict:
    import torch

    config = fluxnb.load_config()
    spec = dataclasses.replace(config.get(name), requires_auth=False)
    backend = get_backend(spec.type)
    # the record's synthetic checkpoint; quantize-at-load types (torchao) start from the bf16 one; flux-tiny: CPU smoke
    kind = None if backend.embedded else (backend.synthetic_kind or "bf16")
    checkpoint = None if kind is None else ensure_synthetic_checkpoint(kind, args.synthetic_root, log=log)
    result: dict = {"model": name, "type": spec.type, "lora_mode": backend.lora, "checkpoint_kind": kind}
    torch._dynamo.reset()
    start = time.perf_counter()
    model = fluxnb.load_model(spec, checkpoint=checkpoint, progress=False)
    result["load_seconds"] = round(time.perf_counter() - start, 2)
    if not adapters:  # built once, from the first model's transformer (same module names and shapes everywhere)
        for seed in (1, 2):
            adapters.append(build_lora(model.pipe.transformer, args.lora_dir / f"synthetic_r{args.rank}_{seed}"
                                       ".safetensors", rank=args.rank, seed=seed))
    result["adapter_mib"] = round(adapters[0].stat().st_size / 2**20, 1)
    log(f"{name}: loaded in {result['load_seconds']} s; no adapter ...")
    result["no_lora"] = summary(images(model, spec, args))
    start = time.perf_counter()
    apply_loras(model, fluxnb.make_request(spec, prompt=PROMPT, loras=[str(adapters[0])]).loras)
    result["lora_load_seconds"] = round(time.perf_counter() - start, 2)
    log(f"{name}: adapter loaded in {result['lora_load_seconds']} s; unfused ...")
    result["lora_unfused"] = summary(images(model, spec, args, loras=[str(adapters[0])]))
    if backend.lora_mode == "yes":
        log(f"{name}: fused ...")
        result["lora_fused"] = summary(images(model, spec, args, loras=[str(adapters[0])], fuse_loras=True))
    else:
        result["lora_fused"] = {"refused": backend.lora}
    if backend.lora_mode == "hotswap":
        log(f"{name}: hotswap to a second adapter, then a new scale ...")
        result["hotswap_other_adapter"] = summary(images(model, spec, args, loras=[str(adapters[1])]))
        result["hotswap_new_scale"] = summary(images(model, spec, args, loras=[f"{adapters[1]}:0.5"]))
        result["no_recompile_on_hotswap"] = (result["hotswap_other_adapter"]["new_graphs"] == 0
                                             and result["hotswap_new_scale"]["new_graphs"] == 0)
    device = model.device
    del model
    free_memory(device)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help=f"model entry (repeatable; default {DEFAULT_MODELS})")
    parser.add_argument("--size", default="1024x1024", type=lambda t: tuple(int(v) for v in t.lower().split("x")))
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--images", type=int, default=2, help="images per measurement (the first may compile)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--synthetic-root", default=None, help="where the synthetic checkpoints are built/kept")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results"
                        / "lora-bench-synthetic.json")
    parser.add_argument("--lora-dir", type=Path, default=default_outputs_dir() / "lora-bench-adapters",
                        help="where the synthetic adapters are written (default outputs/: never committed)")
    args = parser.parse_args()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = {
        "what": "LoRA on the full-size synthetic FLUX.1-dev (random weights; images are noise): scripts/lora_bench.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": package_versions(),
        "size": list(args.size), "steps": args.steps, "images": args.images, "rank": args.rank,
        "results": [],
    }
    adapters: list[Path] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.model or DEFAULT_MODELS:
        try:
            report["results"].append(bench_one(name, args, adapters, log))
        except Exception as exc:  # one backend failing must not lose the others' figures; the error is recorded
            report["results"].append({"model": name, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
        args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")  # after each backend
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
