"""`fluxnb bench`: backends x image sizes, timed phase by phase, with fidelity against a reference, in one run.

For each backend (a model_config.yaml entry, or a loader type such as flux-torchao-int8dq run with the
flux-dev entry's parameters) it loads the model through fluxnb's own loader, optionally under a GPU memory
cap (torch.cuda.set_per_process_memory_fraction: 22 GB by default, as on an L4), then per size:

- a short warm-up generation (it pays one-time costs: CUDA kernels, torch.compile of the compiled backends),
  reported apart as `warmup` and `compile_seconds_estimate`;
- one timed generation split into its three phases (text encoding via `pipe.encode_prompt`, denoising via
  the pipeline with `prompt_embeds` and `output_type="latent"`, VAE decode), each with its seconds and its
  own peak allocated and reserved GPU memory (peak stats reset between phases).

Fidelity: every backend uses the same prompt and seed; the final latents and the decoded images are
compared with the reference backend's (bf16 by default): relative error ||x - ref|| / ||ref|| and PSNR.
Speed ratios are computed against a baseline backend (bnb 8-bit by default) of the same run.

With `--synthetic` the weights are random with FLUX.1-dev's real dimensions (fluxnb.synthetic); every output
says which weights were used. Results are JSON plus a matplotlib chart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import SIZE_MULTIPLE, ModelConfig, ModelSpec
from .doctor import nvidia_driver_version
from .errors import RequestError
from .generation import compile_counters, free_memory, peak_memory, reset_peak_memory

GIB = 2**30
DEFAULT_PROMPT = "a photo of a cat sitting on a red chair in the sun"
DEFAULT_SIZES = ((1024, 1024),)
DEFAULT_BACKENDS = ("flux-dev", "flux-dev-bnb-8bit", "flux-dev-torchao-int8dq", "flux-dev-bnb-4bit")
BASE_ENTRY_FOR_TYPES = "flux-dev"  # loader types without an entry borrow this entry's params
PHASES = ("text_encoding", "denoising", "vae_decode")
FORMAT_VERSION = 1


@dataclasses.dataclass
class Backend:
    label: str
    spec: ModelSpec
    cast: str | None = None  # "bf16" / "fp32": cast the loaded pipeline (CPU plumbing tests)
    capped: bool = True


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768) (width x height), each a positive multiple of 16."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RequestError("size", f"{text!r} is not WIDTHxHEIGHT, e.g. 1024x1024") from None
    for v in (width, height):
        if v <= 0 or v % SIZE_MULTIPLE:
            raise RequestError("size", f"{text!r}: {v} must be a positive multiple of {SIZE_MULTIPLE}")
    return width, height


# NAME@VARIANT: the same entry loaded another way (casts are for CPU plumbing tests).
VARIANTS = {
    "bf16": "cast the loaded pipeline to bf16",
    "fp32": "cast the loaded pipeline to fp32",
    "eager": "compile: false",
    "compiled": "compile: true",
    "offload-t5": "offload_text_encoder: true",
}


def parse_backend(text: str, config: ModelConfig, uncapped: tuple[str, ...] = ()) -> Backend:
    """'flux-dev-bnb-8bit', 'flux-torchao-int8dq' (a loader type), 'flux-tiny@bf16' (cast after load), or
    'flux-dev-torchao-int8dq@offload-t5' (the entry with one option changed; see VARIANTS)."""
    from .loading import COMPILABLE_TYPES, LOADERS, OFFLOADABLE_TYPES

    name, _, variant = text.partition("@")
    if variant and variant not in VARIANTS:
        raise RequestError("backend", f"{text!r}: the suffix after @ must be one of "
                                      f"{', '.join(f'{k} ({v})' for k, v in VARIANTS.items())}")
    if name in config.models:
        spec = config.get(name)
    elif name in LOADERS:
        base = config.get(BASE_ENTRY_FOR_TYPES)
        spec = dataclasses.replace(base, name=name, type=name, description=f"{base.id} loaded as {name}")
    else:
        raise RequestError(
            "backend",
            f"{text!r} is neither a model in {config.path} nor a loader type. Allowed: "
            f"{', '.join([*config.models, *sorted(set(LOADERS) - {m.type for m in config.models.values()})])}",
        )
    if variant in ("eager", "compiled"):
        if spec.type not in COMPILABLE_TYPES:
            raise RequestError("backend", f"{text!r}: type {spec.type} is not compiled by fluxnb; compiled types: "
                                          f"{', '.join(sorted(COMPILABLE_TYPES))}")
        spec = dataclasses.replace(spec, compile=variant == "compiled")
    elif variant == "offload-t5":
        if spec.type not in OFFLOADABLE_TYPES:
            raise RequestError("backend", f"{text!r}: type {spec.type} cannot offload its text encoder; types that "
                                          f"can: {', '.join(sorted(OFFLOADABLE_TYPES))}")
        spec = dataclasses.replace(spec, offload_text_encoder=True)
    capped = not (text in uncapped or name in uncapped or (not uncapped and spec.type == "flux-bf16"))
    cast = variant if variant in ("bf16", "fp32") else None
    return Backend(label=text, spec=spec, cast=cast, capped=capped)


def _cuda(device: str) -> bool:
    return device == "cuda"


def _phase_start(device: str) -> float:
    import torch

    if _cuda(device):
        torch.cuda.synchronize()
    reset_peak_memory(device)
    return time.perf_counter()


def _phase_end(device: str, start: float) -> dict[str, Any]:
    import torch

    if _cuda(device):
        torch.cuda.synchronize()
    return {"seconds": round(time.perf_counter() - start, 4), **peak_memory(device)}


def run_phases(pipe, *, prompt: str, seed: int, width: int, height: int, steps: int, guidance_scale: float,
               max_sequence_length: int, device: str) -> dict[str, Any]:
    """One text-to-image generation split into its three phases; returns timings, peaks, latents and image."""
    import numpy as np
    import torch

    phases: dict[str, dict] = {}
    with torch.inference_mode():
        start = _phase_start(device)
        prompt_embeds, pooled, _text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=pipe._execution_device, max_sequence_length=max_sequence_length
        )
        phases["text_encoding"] = _phase_end(device, start)

        start = _phase_start(device)
        latents = pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            max_sequence_length=max_sequence_length,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="latent",
        ).images
        phases["denoising"] = _phase_end(device, start)

        start = _phase_start(device)
        unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(unpacked.to(pipe.vae.dtype), return_dict=False)[0]
        image = pipe.image_processor.postprocess(decoded, output_type="np")[0]
        phases["vae_decode"] = _phase_end(device, start)
    return {
        "phases": phases,
        "latents": latents.float().cpu().numpy(),
        "image": np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8),
    }


def relative_error(x, ref) -> float:
    import numpy as np

    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(x - ref)) / denom if denom else float("inf")


def psnr(image, ref) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    import numpy as np

    mse = float(np.mean((np.asarray(image, dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _peak(phases: dict[str, dict], key: str) -> int | None:
    values = [p[key] for p in phases.values() if key in p]
    return max(values) if values else None


def _free(device: str) -> None:
    """Between backends: generation's free_memory, plus dropping compiled graphs."""
    import torch

    free_memory(device)
    try:
        torch._dynamo.reset()
    except AttributeError:  # very old torch
        pass


def _dynamo_counters(clear: bool = False) -> dict[str, int]:
    """torch.compile's counters (graphs compiled, recompiles): shows whether the compiled blocks are shared."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    if clear:
        counters.clear()
        return {}
    return {f"{group}.{key}": int(value) for group in ("stats", "recompiles") for key, value in counters[group].items()}


def _set_cap(device: str, cap_bytes: int | None) -> float | None:
    import torch

    if not _cuda(device):
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = 1.0 if cap_bytes is None else min(1.0, cap_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


def run_bench(
    backends: list[Backend],
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    *,
    steps: int = 28,
    seed: int = 0,
    prompt: str = DEFAULT_PROMPT,
    guidance_scale: float = 3.5,
    max_sequence_length: int = 512,
    warmup_steps: int = 2,
    cap_bytes: int | None = int(22e9),
    synthetic: bool = False,
    synthetic_root: str | None = None,
    cleanup_quantized: bool = False,
    reference: str | None = None,
    baseline: str | None = None,
    device: str | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
    on_backend_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every backend at every size; return the results (JSON-ready). A failing backend is recorded, not fatal."""
    import torch

    from .environment import device_info, package_versions
    from .loading import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    labels = [b.label for b in backends]
    if len(set(labels)) != len(labels):
        raise RequestError("backend", f"each backend may be named once, got {labels}")
    reference = reference or next((b.label for b in backends if b.spec.type == "flux-bf16"), labels[0])
    baseline = baseline or next((b.label for b in backends if b.spec.type == "flux-bnb-8bit"), labels[0])
    for role, name in (("reference", reference), ("baseline", baseline)):
        if name not in labels:
            raise RequestError(role, f"{name!r} is not one of the backends {labels}")
    if synthetic:
        weights = "synthetic: random weights with FLUX.1-dev's real dimensions (fluxnb.synthetic); images are noise"
    elif all(b.spec.type == "flux-tiny" for b in backends):
        weights = "embedded tiny model (random weights)"
    else:
        weights = "hub checkpoints (real weights)"
    results: dict[str, Any] = {
        "fluxnb_bench": FORMAT_VERSION,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "weights": weights,
        "device": device_info() if _cuda(device) else {"device": "cpu"},
        "driver": nvidia_driver_version() if _cuda(device) else None,
        "versions": package_versions(),
        "settings": {
            "steps": steps,
            "seed": seed,
            "prompt": prompt,
            "guidance_scale": guidance_scale,
            "max_sequence_length": max_sequence_length,
            "warmup_steps": warmup_steps,
            "cap_bytes": cap_bytes if _cuda(device) else None,
            "reference": reference,
            "baseline": baseline,
            "sizes": [f"{w}x{h}" for w, h in sizes],
        },
        "backends": [],
        "rows": [],
    }
    outputs: dict[tuple[str, str], dict] = {}
    began = time.perf_counter()
    plain_log = log

    def log(line: str) -> None:  # noqa: F811 - the same log, with the run's elapsed seconds
        plain_log(f"[{time.perf_counter() - began:7.1f} s] {line}")

    for backend in backends:
        entry: dict[str, Any] = {
            "label": backend.label,
            "model": backend.spec.name,
            "type": backend.spec.type,
            "cast": backend.cast,
            "capped": bool(backend.capped and cap_bytes and _cuda(device)),
        }
        results["backends"].append(entry)
        checkpoint = None
        kind = None
        try:
            if synthetic and backend.spec.type != "flux-tiny":
                from .synthetic import KIND_FOR_TYPE, ensure_synthetic_checkpoint

                kind = KIND_FOR_TYPE.get(backend.spec.type, "bf16")
                checkpoint = ensure_synthetic_checkpoint(kind, synthetic_root, log=log)
            entry["memory_fraction"] = _set_cap(device, cap_bytes if entry["capped"] else None)
            _free(device)
            if _cuda(device):
                torch.cuda.reset_peak_memory_stats()
            log(f"[{backend.label}] loading ({'capped' if entry['capped'] else 'uncapped'}) ...")
            start = time.perf_counter()
            model = load_model(backend.spec, checkpoint=checkpoint, device=device, progress=False)
            entry["load_seconds"] = round(time.perf_counter() - start, 2)
            entry["load_memory"] = peak_memory(device)
            entry["load_report"] = model.report.to_dict()
            if backend.cast:
                model.pipe.to(torch.bfloat16 if backend.cast == "bf16" else torch.float32)
            log(f"[{backend.label}] loaded in {entry['load_seconds']} s")
            model.pipe.set_progress_bar_config(disable=True)
            for width, height in sizes:
                size = f"{width}x{height}"
                row: dict[str, Any] = {"backend": backend.label, "size": size, "width": width, "height": height,
                                       "steps": steps, "capped": entry["capped"]}
                results["rows"].append(row)
                common = dict(prompt=prompt, seed=seed, width=width, height=height, guidance_scale=guidance_scale,
                              max_sequence_length=max_sequence_length, device=device)
                try:
                    _dynamo_counters(clear=True)
                    graphs0, compile0 = compile_counters()
                    start = time.perf_counter()
                    run_phases(model.pipe, steps=warmup_steps, **common)
                    warm_seconds = time.perf_counter() - start
                    graphs1, compile1 = compile_counters()
                    timed = run_phases(model.pipe, steps=steps, **common)
                    graphs2, _ = compile_counters()
                except Exception as exc:  # noqa: BLE001 - an OOM under the cap is a result, recorded per row
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                    log(f"[{backend.label}] {size}: FAILED {row['error']}")
                    _free(device)
                    continue
                phases = timed["phases"]
                denoise = phases["denoising"]["seconds"]
                per_image = sum(p["seconds"] for p in phases.values())
                row.update(
                    seconds_per_step=round(denoise / steps, 4),
                    seconds_per_image=round(per_image, 3),
                    phases=phases,
                    peak_allocated_bytes=_peak(phases, "peak_allocated_bytes"),
                    peak_reserved_bytes=_peak(phases, "peak_reserved_bytes"),
                    peak_rss_bytes=_peak(phases, "peak_rss_bytes"),
                    warmup={"steps": warmup_steps, "seconds": round(warm_seconds, 3)},
                    # what the first call cost beyond a steady-state call of the same length (compile, autotune)
                    compile_seconds_estimate=round(
                        max(0.0, warm_seconds - (per_image - denoise) - warmup_steps * denoise / steps), 2
                    ),
                    # measured by torch._dynamo: what the warm-up compiled, and that the timed call compiled nothing
                    compile={"warmup_new_graphs": graphs1 - graphs0,
                             "warmup_compile_seconds": round(compile1 - compile0, 2),
                             "timed_new_graphs": graphs2 - graphs1},
                    finite=bool(__import__("numpy").isfinite(timed["latents"]).all()),
                    dynamo=_dynamo_counters(),
                )
                if entry["capped"] and row["peak_reserved_bytes"] is not None:
                    row["fits_cap"] = row["peak_reserved_bytes"] <= cap_bytes
                outputs[(backend.label, size)] = {"latents": timed["latents"], "image": timed["image"]}
                log(f"[{backend.label}] {size}: {row['seconds_per_image']} s/image, {row['seconds_per_step']} s/step, "
                    f"peak reserved {(row['peak_reserved_bytes'] or 0) / GIB:.2f} GiB, warm-up {warm_seconds:.1f} s")
            del model
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load (OOM, missing extra) is a result
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
            log(f"[{backend.label}] FAILED: {entry['error']}")
        finally:
            _free(device)
            if cleanup_quantized and kind and kind != "bf16":
                from .synthetic import remove_synthetic_checkpoint

                remove_synthetic_checkpoint(kind, synthetic_root)
        if on_backend_done is not None:  # partial results survive a run that is killed later
            add_comparisons(results, outputs)
            on_backend_done(results)
    _set_cap(device, None)
    add_comparisons(results, outputs)
    return results


def add_comparisons(results: dict[str, Any], outputs: dict[tuple[str, str], dict]) -> None:
    """Fidelity against the reference and speed ratios against the baseline, size by size, within this run."""
    reference, baseline = results["settings"]["reference"], results["settings"]["baseline"]
    by_key = {(r["backend"], r["size"]): r for r in results["rows"]}
    for row in results["rows"]:
        if "error" in row:
            continue
        ref = outputs.get((reference, row["size"]))
        mine = outputs.get((row["backend"], row["size"]))
        if ref is not None and mine is not None:
            row["latent_rel_error"] = round(relative_error(mine["latents"], ref["latents"]), 6)
            value = psnr(mine["image"], ref["image"])
            row["psnr_db"] = None if math.isinf(value) else round(value, 3)
        base = by_key.get((baseline, row["size"]))
        if base and "seconds_per_image" in base:
            row["speedup_vs_baseline"] = round(base["seconds_per_image"] / row["seconds_per_image"], 3)
            row["step_speedup_vs_baseline"] = round(base["seconds_per_step"] / row["seconds_per_step"], 3)


# ----------------------------------------------------------------------------------------------- reporting


GOAL_SPEEDUP = 2.5  # issue 6: at least 2.5x faster per image than bnb 8-bit, within the cap, as faithful


def default_results_path() -> Path:
    """The committed device result the benchmark notebook shows by default."""
    from .config import PROJECT_ROOT

    return PROJECT_ROOT / "results" / "bench-synthetic.json"


def summarize(results: dict[str, Any], goal_speedup: float = GOAL_SPEEDUP) -> dict[str, Any]:
    """Per size: the fastest backend that fits the cap and is at least as faithful as the baseline; goal met?"""
    settings = results["settings"]
    baseline, reference, cap = settings["baseline"], settings["reference"], settings.get("cap_bytes")
    lines = [f"weights: {results['weights']}"]
    sizes: dict[str, Any] = {}
    for size in dict.fromkeys(r["size"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["size"] == size and "error" not in r]
        base = next((r for r in rows if r["backend"] == baseline), None)
        if base is None:
            lines.append(f"{size}: the baseline {baseline} has no result; no comparison")
            continue

        def eligible(row: dict, base: dict = base) -> bool:
            fits = row.get("fits_cap", cap is None)
            err_ok = row.get("latent_rel_error", float("inf")) <= base.get("latent_rel_error", float("inf"))
            psnr_ok = (row.get("psnr_db") or float("inf")) >= (base.get("psnr_db") or float("inf"))
            return bool(fits and err_ok and psnr_ok and row["backend"] not in (baseline, reference))

        candidates = sorted((r for r in rows if eligible(r)), key=lambda r: r["seconds_per_image"])
        best = candidates[0] if candidates else None
        entry = {"baseline": baseline, "baseline_seconds_per_image": base["seconds_per_image"],
                 "best": best and best["backend"], "candidates": [r["backend"] for r in candidates]}
        lines.append(f"{size}: baseline {baseline} {base['seconds_per_image']:.2f} s/image, "
                     f"latent rel. err {base.get('latent_rel_error')}, PSNR {base.get('psnr_db')} dB")
        if best is None:
            entry["goal_met"] = False
            lines.append(f"{size}: no backend fits the cap with fidelity at least the baseline's")
        else:
            entry.update(speedup=best["speedup_vs_baseline"], goal_met=best["speedup_vs_baseline"] >= goal_speedup,
                         peak_reserved_bytes=best.get("peak_reserved_bytes"))
            peak = (best.get("peak_reserved_bytes") or 0) / 1e9
            lines.append(
                f"{size}: best {best['backend']}: {best['seconds_per_image']:.2f} s/image = "
                f"{best['speedup_vs_baseline']:.2f}x the baseline, peak {peak:.1f} GB, latent rel. err "
                f"{best.get('latent_rel_error')}, PSNR {best.get('psnr_db')} dB -> goal of {goal_speedup}x "
                f"{'met' if entry['goal_met'] else 'NOT met'}"
            )
        sizes[size] = entry
    return {"sizes": sizes, "lines": lines}


def load_results(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("fluxnb_bench") != FORMAT_VERSION:
        raise RequestError("bench_json", f"{path} is not a fluxnb bench result (format {FORMAT_VERSION})")
    return data


def _gib(value: int | None) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def _compile_text(row: dict[str, Any]) -> str:
    """Measured compile seconds (graphs) where torch._dynamo counted them, else the older estimate ('est.')."""
    measured = row.get("compile")
    if measured:
        return f"{measured['warmup_compile_seconds']:.1f} s, {measured['warmup_new_graphs']} graphs"
    return f"est. {row['compile_seconds_estimate']:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """A markdown table: one line per backend and size."""
    lines = [
        "| backend | size | s/step | s/image | x vs baseline | peak alloc GiB | peak reserved GiB | load s | "
        "warm-up s (compile) | latent rel. err | PSNR dB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    backends = {b["label"]: b for b in results["backends"]}
    for row in results["rows"]:
        b = backends.get(row["backend"], {})
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['size']} | | | | | | {b.get('load_seconds', '')} | | | | "
                         f"failed: {_table_text(row['error'], 160)} |")
            continue
        peak_alloc = row.get("peak_allocated_bytes") or row.get("peak_rss_bytes")
        note = [] if row.get("capped") else ["uncapped"]
        if row.get("fits_cap") is False:
            note.append("over the cap")
        if row["backend"] == results["settings"]["reference"]:
            note.append("reference")
        if row["backend"] == results["settings"]["baseline"]:
            note.append("baseline")
        psnr_text = "inf" if row.get("psnr_db") is None and "latent_rel_error" in row else row.get("psnr_db", "")
        lines.append(
            f"| {row['backend']} | {row['size']} | {row['seconds_per_step']:.3f} | {row['seconds_per_image']:.2f} | "
            f"{row.get('speedup_vs_baseline', '')} | {_gib(peak_alloc)} | {_gib(row.get('peak_reserved_bytes'))} | "
            f"{b.get('load_seconds', '')} | {row['warmup']['seconds']:.1f} ({_compile_text(row)}) | "
            f"{row.get('latent_rel_error', '')} | {psnr_text} | {', '.join(note)} |"
        )
    for b in results["backends"]:
        if "error" in b:
            lines.append(f"| {b['label']} | | | | | | | | | | | failed to load: {_table_text(b['error'], 200)} |")
    return "\n".join(lines)


def _table_text(text: str, width: int) -> str:
    """A message for one table cell: on one line, shortened at a word boundary (with "..."), pipes escaped."""
    import textwrap

    return textwrap.shorten(str(text), width=width, placeholder=" ...").replace("|", "\\|")


def plot_results(results: dict[str, Any], path: str | Path | None = None):
    """Bar charts: seconds per image (with the phases stacked), peak memory (with the cap), latent error.

    Horizontal bars, one row per backend and size, named once on the left: the names stay readable at notebook
    width however many backends there are. The figure is closed in pyplot before it is returned, so a notebook
    shows it exactly once (`display(fig)`), not a second time as the cell's leftover pyplot figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if "error" not in r]
    names = [f"{r['backend']} ({r['size']})" for r in rows]
    positions = list(range(len(rows)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.9 + 0.42 * len(rows)), sharey=True,
                             gridspec_kw={"width_ratios": [1.3, 1, 1]})
    left = [0.0] * len(rows)
    for phase, color in zip(PHASES, ("#8da0cb", "#66c2a5", "#fc8d62"), strict=True):
        values = [r["phases"][phase]["seconds"] for r in rows]
        axes[0].barh(positions, values, left=left, label=phase.replace("_", " "), color=color)
        left = [b + v for b, v in zip(left, values, strict=True)]
    for i, r in enumerate(rows):
        label = f" {r['seconds_per_image']:.2f} s"
        if "speedup_vs_baseline" in r:
            label += f" ({r['speedup_vs_baseline']:.2f}x)"
        axes[0].text(left[i], i, label, va="center", fontsize=8)
    axes[0].set_xlim(0, max(left, default=1.0) * 1.45)
    axes[0].set_xlabel("seconds per image")
    axes[0].set_title(f"time per image ({results['settings']['steps']} steps)", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower right")
    peaks = [(r.get("peak_reserved_bytes") or r.get("peak_rss_bytes") or 0) / GIB for r in rows]
    axes[1].barh(positions, peaks, color=["#b3b3b3" if not r.get("capped") else "#80b1d3" for r in rows])
    for i, peak in enumerate(peaks):
        axes[1].text(peak, i, f" {peak:.1f}", va="center", fontsize=8)
    cap = results["settings"].get("cap_bytes")
    if cap:
        axes[1].axvline(cap / GIB, color="red", linestyle="--", label=f"cap {cap / 1e9:.0f} GB")
        axes[1].legend(fontsize=8, loc="lower right")
    axes[1].set_xlim(0, max([*peaks, (cap or 0) / GIB], default=1.0) * 1.25)
    axes[1].set_xlabel("GiB (GPU: peak reserved; grey = uncapped)")
    axes[1].set_title("peak memory", fontsize=10)
    errors = [r.get("latent_rel_error") or 0.0 for r in rows]
    axes[2].barh(positions, errors, color="#fdb462")
    for i, r in enumerate(rows):
        if r.get("psnr_db") is not None:
            axes[2].text(errors[i], i, f" {r['psnr_db']:.1f} dB", va="center", fontsize=8)
    axes[2].set_xlim(0, max(errors, default=0.0) * 1.4 or 1.0)
    axes[2].set_xlabel("relative error of final latents")
    axes[2].set_title(f"fidelity vs {results['settings']['reference']}", fontsize=10)
    axes[0].set_yticks(positions, names, fontsize=9)
    axes[0].invert_yaxis()  # the first backend on top, as in the table
    device = results.get("device", {})
    fig.suptitle(f"fluxnb bench on {device.get('gpu') or device.get('device')}; weights: {results['weights']}",
                 fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    plt.close(fig)  # shown once, by whoever displays the returned figure
    return fig


def write_results(results: dict[str, Any], json_path: str | Path, chart_path: str | Path | None = None) -> Path:
    from .outputs import atomic_write_json

    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_path, results)
    if chart_path is not None:
        plot_results(results, chart_path)
    return json_path
