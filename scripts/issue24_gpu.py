"""Issue 24's editing figures in one run: FLUX.1-Fill (inpaint) and FLUX.1-Kontext (edit), float8 compiled against
bnb 8-bit quantized at load, with bf16 as the fidelity reference.

    python scripts/issue24_gpu.py --output editing.json                  # a GPU: full size, 1024x1024, 28 steps
    python scripts/issue24_gpu.py --tasks fill --cleanup --output f.json  # one task (the device's 10-minute calls)
    python scripts/issue24_gpu.py --tiny --output editing.json            # the same path on a CPU in seconds

For each task: the full-size synthetic checkpoint (fluxnb.models.synthetic: FLUX.1-dev's dimensions, the transformer's
input channels the task's, random weights, bf16, hub layout) is built once; then each role loads it through its real
model entry (`fluxnb.load_model(spec, checkpoint=FOLDER)`: flux-bf16, flux-bnb-8bit-at-load, flux-torchao-fp8dq
compiled) and makes one request through fluxnb.make_request / fluxnb.generate: a short warm-up image (it pays the
compile and the kernels' first loads), then the timed image. Recorded per role: s/image (the whole pipeline call),
peak memory of the timed image, and the final latents (the last step's, through diffusers' callback_on_step_end);
then the bench's fidelity (fluxnb.bench.fidelity.add_comparisons: latent relative error and PSNR against bf16, speed
ratios against bnb 8-bit of the same run) and the error ratio against bnb 8-bit's. The quantized roles run under the
bench's 22 GB allocator cap (torch.cuda.set_per_process_memory_fraction), bf16 uncapped.

Targets (issue 24's "Done when"): float8 >= 4x bnb 8-bit's speed, its latent error within 2x of bnb 8-bit's, peak
reserved <= 22 GB. Weights are random: figures are speed, memory and fidelity between backends, images are noise.
The JSON is written after every role (a run stopped by its deadline keeps what finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
ROLES = ("bf16", "bnb-8bit", "float8")  # the fidelity reference, the speed baseline, the fast path
REFERENCE, BASELINE, FAST = ROLES
TASKS = ("fill", "kontext")
# the model entries of each role (model_config.yaml): their loaders run on the synthetic checkpoint
ENTRIES = {
    "fill": {"bf16": "flux-fill", "bnb-8bit": "flux-fill-bnb-8bit", "float8": "flux-fill-torchao-fp8"},
    "kontext": {"bf16": "flux-kontext", "bnb-8bit": "flux-kontext-bnb-8bit", "float8": "flux-kontext-torchao-fp8"},
}
# --tiny: the tiny editing entries on a CPU; casts after loading stand in for the formats (bitsandbytes and float8
# need a GPU), so the roles differ and every figure and ratio is computed as on the GPU
TINY_ENTRIES = {task: {"bf16": f"flux-tiny-{task}", "bnb-8bit": f"flux-tiny-{task}@bf16",
                       "float8": f"flux-tiny-{task}@fp16"} for task in TASKS}
CASTS = ("bf16", "fp16", "fp32")
PROMPTS = {"fill": "a red sofa in a bright room", "kontext": "make it a night scene with street lights"}
TARGETS = {"speedup_vs_baseline": 4.0, "error_vs_baseline": 2.0, "peak_reserved_bytes": 22e9}
GIB = 1024**3


@dataclasses.dataclass
class Settings:
    tasks: tuple[str, ...]
    size: int
    steps: int
    warmup_steps: int
    seed: int
    cap_bytes: int | None
    device: str
    tiny: bool
    cleanup: bool
    output: Path
    synthetic_root: str | None
    log: Callable[[str], None] = print

    @property
    def dims(self):
        from fluxnb.models.synthetic import TINY_DIMS

        return TINY_DIMS if self.tiny else None

    @property
    def entries(self) -> dict[str, dict[str, str]]:
        return TINY_ENTRIES if self.tiny else ENTRIES


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: fill, kontext")
    parser.add_argument("--tiny", action="store_true", help="the tiny editing models and synthetic sizes on a CPU")
    parser.add_argument("--size", type=int, help="image side (default 1024; --tiny 64)")
    parser.add_argument("--steps", type=int, help="denoising steps of the timed image (default 28; --tiny 4)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the warm-up image (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap-gb", type=float, default=22.0, help="allocator cap of the quantized roles (GB)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available; --tiny: cpu)")
    parser.add_argument("--cleanup", action="store_true", help="delete each task's synthetic checkpoint after it ran")
    parser.add_argument("--synthetic-root", help="where the synthetic checkpoints go (default FLUXNB_SYNTHETIC)")
    parser.add_argument("--output", required=True, help="the JSON file")
    args = parser.parse_args(argv)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks: {unknown or 'none'} not among {', '.join(TASKS)}")
    if args.device is None:
        import torch

        args.device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    return Settings(tasks=tasks, size=args.size or (64 if args.tiny else 1024),
                    steps=args.steps or (4 if args.tiny else 28), warmup_steps=args.warmup_steps, seed=args.seed,
                    cap_bytes=int(args.cap_gb * 1e9), device=args.device, tiny=args.tiny, cleanup=args.cleanup,
                    output=Path(args.output), synthetic_root=args.synthetic_root)


# ----------------------------------------------------------------------------------------------- inputs


def request_for(spec, task: str, pictures: dict[str, str], s: Settings, steps: int):
    """The task's request (inpaint or edit): the bench's editing request (fluxnb.bench.inputs.editing_request, through
    fluxnb.make_request: the entry's checks and defaults), with this script's prompt and the entry's T5 tokens."""
    from fluxnb.bench.inputs import editing_request

    generation = {"prompt": PROMPTS[task], "seed": s.seed, "width": s.size, "height": s.size,
                  "max_sequence_length": spec.params.max_tokens}
    return editing_request(spec, pictures, generation, steps)


class LatentCatcher:
    """diffusers' callback_on_step_end: keeps the latents after the last step it saw (the final latents)."""

    def __init__(self):
        self.latents = None

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.latents = callback_kwargs["latents"]
        return callback_kwargs


# ----------------------------------------------------------------------------------------------- one role


def free(device: str) -> None:
    """Between roles: fluxnb's free_memory, and compiled graphs dropped."""
    import torch

    from fluxnb.core.memory import free_memory

    free_memory(device)
    torch.compiler.reset()


def load_role(label: str, checkpoint: Path, capped: bool, s: Settings, row: dict[str, Any]):
    """The role's entry loaded from the synthetic checkpoint through its own loader (then cast, for --tiny)."""
    import torch

    import fluxnb
    from fluxnb.bench.engine import set_cap

    name, _, cast = label.partition("@")
    if cast and cast not in CASTS:
        raise ValueError(f"{label!r}: the cast after @ must be one of {CASTS}")
    spec = fluxnb.load_config().get(name)
    row.update(model=name, type=spec.type, cast=cast or None, capped=capped and s.device == "cuda")
    row["memory_fraction"] = set_cap(s.device, s.cap_bytes if capped else None)
    free(s.device)
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = fluxnb.load_model(spec, checkpoint=checkpoint, device=s.device, progress=False)
    row["load_seconds"] = round(time.perf_counter() - start, 2)
    row["load_report"] = {"components": {c.name: c.format for c in model.report.components},
                          "offload": model.report.offload, "compile_mode": model.report.compile_mode}
    if cast:
        model.pipe.to({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cast])
    return model


def time_role(model, task: str, pictures: dict[str, str], s: Settings, row: dict[str, Any]) -> dict[str, Any]:
    """The warm-up image, then the timed one; the row's figures from the timed image's own metadata."""
    import numpy as np

    import fluxnb

    catcher = LatentCatcher()
    warm = fluxnb.generate(model, request_for(model.spec, task, pictures, s, s.warmup_steps), progress=False,
                           callback_on_step_end=catcher)[0]
    timed = fluxnb.generate(model, request_for(model.spec, task, pictures, s, s.steps), progress=False,
                            callback_on_step_end=catcher)[0]
    meta, peak = timed.metadata, timed.metadata["peak_memory"]
    latents = catcher.latents.float().cpu().numpy()
    row.update(seconds_per_image=meta["seconds"], seconds_per_step=meta["seconds_per_step"],
               peak_allocated_bytes=peak.get("peak_allocated_bytes"),
               peak_reserved_bytes=peak.get("peak_reserved_bytes"), peak_rss_bytes=peak.get("peak_rss_bytes"),
               warmup={"steps": s.warmup_steps, "seconds": warm.metadata["seconds"],
                       "compile": warm.metadata["compile"]},
               compile=meta["compile"], cuda_graph=meta.get("cuda_graph"), finite=bool(np.isfinite(latents).all()))
    if row["capped"] and row["peak_reserved_bytes"] is not None:
        row["fits_cap"] = row["peak_reserved_bytes"] <= s.cap_bytes
    return {"latents": latents, "image": np.asarray(timed.image.convert("RGB"))}


def run_role(task: str, role: str, checkpoint: Path, pictures: dict[str, str], s: Settings,
             outputs: dict[tuple[str, str, str], dict]) -> dict[str, Any]:
    """One role of one task: its row, or the row's error (an out-of-memory under the cap is a result)."""
    label = s.entries[task][role]
    row: dict[str, Any] = {"task": task, "role": role, "backend": label, "size": f"{s.size}x{s.size}",
                           "steps": s.steps, "weights": "gaussian"}
    s.log(f"[{task}/{role}] {label}: loading ...")
    try:
        model = load_role(label, checkpoint, role != REFERENCE, s, row)
        s.log(f"[{task}/{role}] loaded in {row['load_seconds']} s; warm-up and timed image ...")
        outputs[(label, row["size"], "gaussian")] = time_role(model, task, pictures, s, row)
        del model
        s.log(f"[{task}/{role}] {row['seconds_per_image']} s/image, peak reserved "
              f"{(row['peak_reserved_bytes'] or 0) / GIB:.2f} GiB")
    except Exception as exc:  # noqa: BLE001 - a role that cannot load or runs out of memory is a result
        row["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
        s.log(f"[{task}/{role}] FAILED: {row['error']}")
    finally:
        free(s.device)
    return row


# ----------------------------------------------------------------------------------------------- comparisons


def compare_task(task: str, rows: list[dict[str, Any]], outputs: dict, entries: dict[str, str]) -> dict[str, Any]:
    """The bench's comparisons within one task (latent error and PSNR vs bf16, speed vs bnb 8-bit), the error ratio
    vs bnb 8-bit's, and the task's verdict against the targets."""
    from fluxnb.bench.fidelity import add_comparisons

    add_comparisons({"settings": {"reference": entries[REFERENCE], "baseline": entries[BASELINE]}, "rows": rows},
                    outputs)
    by_role = {row["role"]: row for row in rows}
    base_error = by_role.get(BASELINE, {}).get("latent_rel_error")
    for row in rows:
        if base_error and row.get("latent_rel_error") is not None:
            row["error_vs_baseline"] = round(row["latent_rel_error"] / base_error, 3)
    return verdict(by_role.get(FAST, {}))


def verdict(fast: dict[str, Any]) -> dict[str, Any]:
    """The fast role's three figures against the targets (None: not measured, e.g. memory on a CPU or a failure)."""
    figures = {key: fast.get(key) for key in TARGETS}
    met = {"speedup_vs_baseline": None if figures["speedup_vs_baseline"] is None else
           figures["speedup_vs_baseline"] >= TARGETS["speedup_vs_baseline"],
           "error_vs_baseline": None if figures["error_vs_baseline"] is None else
           figures["error_vs_baseline"] <= TARGETS["error_vs_baseline"],
           "peak_reserved_bytes": None if figures["peak_reserved_bytes"] is None else
           figures["peak_reserved_bytes"] <= TARGETS["peak_reserved_bytes"]}
    return {"backend": fast.get("backend"), "figures": figures, "targets": TARGETS, "met": met,
            "all_met": all(value is True for value in met.values())}


# ----------------------------------------------------------------------------------------------- the run


def new_results(s: Settings, argv: list[str] | None) -> dict[str, Any]:
    from fluxnb.core.environment import device_info, nvidia_driver_version, package_versions

    weights = ("tiny synthetic: the tiny editing models' shapes, random weights" if s.tiny else
               "synthetic: random weights with FLUX.1-Fill's / Kontext's transformer shapes (FLUX.1-dev's dimensions, "
               "in_channels 384 / 64; fluxnb.models.synthetic)")
    return {"fluxnb_issue24": FORMAT_VERSION, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["scripts/issue24_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
            "weights": weights + "; images are noise",
            "device": device_info() if s.device == "cuda" else {"device": "cpu"},
            "driver": nvidia_driver_version() if s.device == "cuda" else None, "versions": package_versions(),
            "settings": {"tasks": list(s.tasks), "size": f"{s.size}x{s.size}", "steps": s.steps,
                         "warmup_steps": s.warmup_steps, "seed": s.seed, "prompts": PROMPTS,
                         "cap_bytes": s.cap_bytes if s.device == "cuda" else None, "device": s.device,
                         "tiny": s.tiny, "entries": {t: s.entries[t] for t in s.tasks}, "roles": {
                             "reference": REFERENCE, "baseline": BASELINE, "fast": FAST}},
            "rows": [], "verdict": {}}


def write_results(results: dict[str, Any], path: Path) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    os.replace(partial, path)


def run_task(task: str, s: Settings, results: dict[str, Any]) -> None:
    from fluxnb.bench.engine import set_cap
    from fluxnb.bench.inputs import fixed_pictures  # the bench's own fixed inputs (one copy)
    from fluxnb.models.synthetic import ensure_synthetic_checkpoint, remove_synthetic_checkpoint

    checkpoint = ensure_synthetic_checkpoint("bf16", s.synthetic_root, dims=s.dims, log=s.log, task=task,
                                             device=s.device)
    pictures = fixed_pictures(task, s.size, s.size, s.output.parent / "issue24-inputs")
    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str, str], dict] = {}
    try:
        for role in ROLES:
            rows.append(run_role(task, role, checkpoint, pictures, s, outputs))
            results["rows"].append(rows[-1])
            results["verdict"][task] = compare_task(task, rows, outputs, s.entries[task])
            write_results(results, s.output)
    finally:
        set_cap(s.device, None)
        if s.cleanup:
            remove_synthetic_checkpoint("bf16", s.synthetic_root, s.dims, task=task)
            s.log(f"[{task}] removed its synthetic checkpoint")


def _number(value, form: str) -> str:
    return "-" if value is None else format(value, form)


def table(results: dict[str, Any]) -> str:
    """The rows as a Markdown table, then each task's verdict."""
    lines = ["| task | role | backend | s/image | vs bnb 8-bit | peak reserved GiB | rel. err vs bf16 | "
             "err vs bnb 8-bit's | PSNR dB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['role']} | {r['backend']} | failed: {r['error'][:80]} |||||| ")
            continue
        peak = None if r.get("peak_reserved_bytes") is None else r["peak_reserved_bytes"] / GIB
        lines.append(f"| {r['task']} | {r['role']} | {r['backend']} | {r['seconds_per_image']:.3f} | "
                     f"{_number(r.get('speedup_vs_baseline'), '.2f')}x | {_number(peak, '.2f')} | "
                     f"{_number(r.get('latent_rel_error'), '.4f')} | {_number(r.get('error_vs_baseline'), '.2f')}x | "
                     f"{_number(r.get('psnr_db'), '.1f')} |")
    for task, v in results["verdict"].items():
        f, met = v["figures"], v["met"]
        peak = None if f["peak_reserved_bytes"] is None else f["peak_reserved_bytes"] / 1e9
        lines.append(f"{task}: {v['backend']} {_number(f['speedup_vs_baseline'], '.2f')}x bnb 8-bit (target >= 4: "
                     f"{met['speedup_vs_baseline']}), error {_number(f['error_vs_baseline'], '.2f')}x bnb 8-bit's "
                     f"(target <= 2: {met['error_vs_baseline']}), peak reserved {_number(peak, '.2f')} GB (target "
                     f"<= 22: {met['peak_reserved_bytes']}); all met: {v['all_met']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    if s.device == "cuda" and os.environ.pop("FLUXNB_GPU_MEMORY_LIMIT", None):  # the bench's cap, not the user's
        s.log("FLUXNB_GPU_MEMORY_LIMIT unset for this run: the quantized roles run under the bench's allocator cap")
    results = new_results(s, argv)
    status = 0
    try:
        for task in s.tasks:
            run_task(task, s, results)
    except KeyboardInterrupt:  # the lane's deadline (timeout --signal=INT): keep what finished
        results["interrupted"] = True
        status = 130
    write_results(results, s.output)
    print(table(results))
    failed = [f"{r['task']}/{r['role']}" for r in results["rows"] if "error" in r]
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
