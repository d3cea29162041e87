"""The measuring engine of `fluxnb bench`: backends x image sizes, timed phase by phase, in one run.

For each backend (a model_config.yaml entry, or a loader type such as flux-torchao-int8dq run with the
flux-dev entry's parameters) it loads the model through fluxnb's own loader, optionally under a GPU memory
cap (torch.cuda.set_per_process_memory_fraction: 22 GB by default, as on an L4), then per size:

- a short warm-up generation (it pays one-time costs: CUDA kernels, torch.compile of the compiled backends),
  reported apart as `warmup` and `compile_seconds_estimate`;
- one timed generation split into its three phases (text encoding via `pipe.encode_prompt`, denoising via
  the pipeline with `prompt_embeds` and `output_type="latent"`, VAE decode), each with its seconds and its
  own peak allocated and reserved GPU memory (peak stats reset between phases).

Fidelity (fluxnb.bench.fidelity): every backend uses the same prompt and seed; the final latents and the decoded
images are compared with the reference backend's. With `--synthetic` the weights are random with FLUX.1-dev's real
dimensions (fluxnb.synthetic); every output says which weights were used.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..backends import REGISTRY, get_backend, types_where
from ..config import ModelConfig, ModelSpec
from ..environment import device_info, nvidia_driver_version, package_versions
from ..errors import RequestError
from ..generation import compile_counters, free_memory, peak_memory, reset_peak_memory
from ..loading import LoadedModel, load_model
from ..synthetic import ensure_synthetic_checkpoint, remove_synthetic_checkpoint
from ..units import GIB, SIZE_MULTIPLE, is_image_side
from .fidelity import add_comparisons

DEFAULT_PROMPT = "a photo of a cat sitting on a red chair in the sun"
DEFAULT_SIZES = ((1024, 1024),)
DEFAULT_BACKENDS = ("flux-dev", "flux-dev-bnb-8bit", "flux-dev-torchao-int8dq", "flux-dev-bnb-4bit")
BASE_ENTRY_FOR_TYPES = "flux-dev"  # loader types without an entry borrow this entry's params
PHASES = ("text_encoding", "denoising", "vae_decode")
FORMAT_VERSION = 1


@dataclasses.dataclass
class BenchEntry:
    """One column of the bench: a model entry (possibly changed by a variant), how to cast it, capped or not."""

    label: str
    spec: ModelSpec
    cast: str | None = None  # "bf16" / "fp32": cast the loaded pipeline (CPU plumbing tests)
    capped: bool = True


@dataclasses.dataclass
class BenchSettings:
    """What every backend of one run is measured with (the `settings` of the results, plus run-only options)."""

    device: str
    sizes: tuple[tuple[int, int], ...]
    steps: int
    seed: int
    prompt: str
    guidance_scale: float
    max_sequence_length: int
    warmup_steps: int
    cap_bytes: int | None
    synthetic: bool
    synthetic_root: str | None
    cleanup_quantized: bool
    log: Callable[[str], None]

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def generation(self, width: int, height: int) -> dict[str, Any]:
        """run_phases' arguments shared by the warm-up and the timed call."""
        return dict(prompt=self.prompt, seed=self.seed, width=width, height=height,
                    guidance_scale=self.guidance_scale, max_sequence_length=self.max_sequence_length,
                    device=self.device)


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768) (width x height), each a positive multiple of 16."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RequestError("size", f"{text!r} is not WIDTHxHEIGHT, e.g. 1024x1024") from None
    for v in (width, height):
        if not is_image_side(v):
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


def parse_backend(text: str, config: ModelConfig, uncapped: tuple[str, ...] = ()) -> BenchEntry:
    """'flux-dev-bnb-8bit', 'flux-torchao-int8dq' (a loader type), 'flux-tiny@bf16' (cast after load), or
    'flux-dev-torchao-int8dq@offload-t5' (the entry with one option changed; see VARIANTS)."""
    name, _, variant = text.partition("@")
    if variant and variant not in VARIANTS:
        raise RequestError("backend", f"{text!r}: the suffix after @ must be one of "
                                      f"{', '.join(f'{k} ({v})' for k, v in VARIANTS.items())}")
    if name in config.models:
        spec = config.get(name)
    elif name in REGISTRY:
        base = config.get(BASE_ENTRY_FOR_TYPES)
        spec = dataclasses.replace(base, name=name, type=name, description=f"{base.id} loaded as {name}")
    else:
        raise RequestError(
            "backend",
            f"{text!r} is neither a model in {config.path} nor a loader type. Allowed: "
            f"{', '.join([*config.models, *sorted(set(REGISTRY) - {m.type for m in config.models.values()})])}",
        )
    if variant in ("eager", "compiled"):
        if not get_backend(spec.type).compilable:
            raise RequestError("backend", f"{text!r}: type {spec.type} is not compiled by fluxnb; compiled types: "
                                          f"{', '.join(types_where('compilable'))}")
        spec = dataclasses.replace(spec, compile=variant == "compiled")
    elif variant == "offload-t5":
        if not get_backend(spec.type).offloadable_text_encoder:
            raise RequestError("backend", f"{text!r}: type {spec.type} cannot offload its text encoder; types that "
                                          f"can: {', '.join(types_where('offloadable_text_encoder'))}")
        spec = dataclasses.replace(spec, offload_text_encoder=True)
    capped = not (text in uncapped or name in uncapped or (not uncapped and get_backend(spec.type).reference))
    cast = variant if variant in ("bf16", "fp32") else None
    return BenchEntry(label=text, spec=spec, cast=cast, capped=capped)


# ----------------------------------------------------------------------------------------------- one generation


def _phase_start(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    reset_peak_memory(device)
    return time.perf_counter()


def _phase_end(device: str, start: float) -> dict[str, Any]:
    import torch

    if device == "cuda":
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


def _set_cap(device: str, cap_bytes: int | None) -> float | None:
    import torch

    if device != "cuda":
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = 1.0 if cap_bytes is None else min(1.0, cap_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


# ----------------------------------------------------------------------------------------------- the run's steps


def _roles(backends: list[BenchEntry], reference: str | None, baseline: str | None) -> tuple[str, str]:
    """The reference (fidelity) and baseline (speed) backends: named ones checked, else bf16 / bnb 8-bit / first."""
    labels = [b.label for b in backends]
    if len(set(labels)) != len(labels):
        raise RequestError("backend", f"each backend may be named once, got {labels}")
    reference = reference or next((b.label for b in backends if get_backend(b.spec.type).reference), labels[0])
    baseline = baseline or next((b.label for b in backends if get_backend(b.spec.type).baseline), labels[0])
    for role, name in (("reference", reference), ("baseline", baseline)):
        if name not in labels:
            raise RequestError(role, f"{name!r} is not one of the backends {labels}")
    return reference, baseline


def _weights_text(backends: list[BenchEntry], synthetic: bool) -> str:
    """Which weights ran: said in every output."""
    if synthetic:
        return "synthetic: random weights with FLUX.1-dev's real dimensions (fluxnb.synthetic); images are noise"
    if all(get_backend(b.spec.type).embedded for b in backends):
        return "embedded tiny model (random weights)"
    return "hub checkpoints (real weights)"


def _new_results(s: BenchSettings, backends: list[BenchEntry], reference: str, baseline: str,
                 command: str | None) -> dict[str, Any]:
    """The results' header: machine, versions, settings; backends and rows are filled in as the run goes."""
    return {
        "fluxnb_bench": FORMAT_VERSION,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "weights": _weights_text(backends, s.synthetic),
        "device": device_info() if s.cuda else {"device": "cpu"},
        "driver": nvidia_driver_version() if s.cuda else None,
        "versions": package_versions(),
        "settings": {
            "steps": s.steps,
            "seed": s.seed,
            "prompt": s.prompt,
            "guidance_scale": s.guidance_scale,
            "max_sequence_length": s.max_sequence_length,
            "warmup_steps": s.warmup_steps,
            "cap_bytes": s.cap_bytes if s.cuda else None,
            "reference": reference,
            "baseline": baseline,
            "sizes": [f"{w}x{h}" for w, h in s.sizes],
        },
        "backends": [],
        "rows": [],
    }


def _elapsed_log(log: Callable[[str], None]) -> Callable[[str], None]:
    """The same log, each line prefixed with the run's elapsed seconds."""
    began = time.perf_counter()
    return lambda line: log(f"[{time.perf_counter() - began:7.1f} s] {line}")


def _load_backend(backend: BenchEntry, entry: dict[str, Any], checkpoint, s: BenchSettings) -> LoadedModel:
    """One backend's load, under its memory cap, with its seconds, peak memory and load report in `entry`."""
    import torch

    entry["memory_fraction"] = _set_cap(s.device, s.cap_bytes if entry["capped"] else None)
    _free(s.device)
    if s.cuda:
        torch.cuda.reset_peak_memory_stats()
    s.log(f"[{backend.label}] loading ({'capped' if entry['capped'] else 'uncapped'}) ...")
    start = time.perf_counter()
    model = load_model(backend.spec, checkpoint=checkpoint, device=s.device, progress=False)
    entry["load_seconds"] = round(time.perf_counter() - start, 2)
    entry["load_memory"] = peak_memory(s.device)
    entry["load_report"] = model.report.to_dict()
    if backend.cast:
        model.pipe.to(torch.bfloat16 if backend.cast == "bf16" else torch.float32)
    s.log(f"[{backend.label}] loaded in {entry['load_seconds']} s")
    model.pipe.set_progress_bar_config(disable=True)
    return model


def _warm_then_time(model: LoadedModel, width: int, height: int, s: BenchSettings) -> dict[str, Any]:
    """A short warm-up (it pays compile and kernel costs) then the timed generation, with torch.compile's counts."""
    common = s.generation(width, height)
    graphs0, compile0 = compile_counters()
    start = time.perf_counter()
    run_phases(model.pipe, steps=s.warmup_steps, **common)
    warm_seconds = time.perf_counter() - start
    graphs1, compile1 = compile_counters()
    timed = run_phases(model.pipe, steps=s.steps, **common)
    graphs2, _ = compile_counters()
    timed["warm_seconds"] = warm_seconds
    # measured by torch._dynamo: what the warm-up compiled, and that the timed call compiled nothing
    timed["compile"] = {"warmup_new_graphs": graphs1 - graphs0, "warmup_compile_seconds": round(compile1 - compile0, 2),
                        "timed_new_graphs": graphs2 - graphs1}
    return timed


def _fill_row(row: dict[str, Any], timed: dict[str, Any], entry: dict[str, Any], s: BenchSettings) -> None:
    """The result row of one backend at one size: speed, phases, peaks, warm-up and compile, finiteness."""
    import numpy as np

    phases, warm_seconds = timed["phases"], timed["warm_seconds"]
    denoise = phases["denoising"]["seconds"]
    per_image = sum(p["seconds"] for p in phases.values())
    row.update(
        seconds_per_step=round(denoise / s.steps, 4),
        seconds_per_image=round(per_image, 3),
        phases=phases,
        peak_allocated_bytes=_peak(phases, "peak_allocated_bytes"),
        peak_reserved_bytes=_peak(phases, "peak_reserved_bytes"),
        peak_rss_bytes=_peak(phases, "peak_rss_bytes"),
        warmup={"steps": s.warmup_steps, "seconds": round(warm_seconds, 3)},
        # what the first call cost beyond a steady-state call of the same length (compile, autotune)
        compile_seconds_estimate=round(
            max(0.0, warm_seconds - (per_image - denoise) - s.warmup_steps * denoise / s.steps), 2
        ),
        compile=timed["compile"],
        finite=bool(np.isfinite(timed["latents"]).all()),
    )
    if entry["capped"] and row["peak_reserved_bytes"] is not None:
        row["fits_cap"] = row["peak_reserved_bytes"] <= s.cap_bytes


def _bench_size(model: LoadedModel, backend: BenchEntry, entry: dict[str, Any], width: int, height: int,
                s: BenchSettings, results: dict[str, Any], outputs: dict[tuple[str, str], dict]) -> None:
    """One backend at one size: its row (or the row's error: an OOM under the cap is a result)."""
    size = f"{width}x{height}"
    row: dict[str, Any] = {"backend": backend.label, "size": size, "width": width, "height": height,
                           "steps": s.steps, "capped": entry["capped"]}
    results["rows"].append(row)
    try:
        timed = _warm_then_time(model, width, height, s)
    except Exception as exc:  # noqa: BLE001 - an OOM under the cap is a result, recorded per row
        row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        s.log(f"[{backend.label}] {size}: FAILED {row['error']}")
        _free(s.device)
        return
    _fill_row(row, timed, entry, s)
    outputs[(backend.label, size)] = {"latents": timed["latents"], "image": timed["image"]}
    s.log(f"[{backend.label}] {size}: {row['seconds_per_image']} s/image, {row['seconds_per_step']} s/step, "
          f"peak reserved {(row['peak_reserved_bytes'] or 0) / GIB:.2f} GiB, warm-up {timed['warm_seconds']:.1f} s")


def _bench_backend(backend: BenchEntry, s: BenchSettings, results: dict[str, Any],
                   outputs: dict[tuple[str, str], dict]) -> None:
    """One backend at every size; a backend that cannot load (OOM, missing extra) is recorded, not fatal."""
    entry: dict[str, Any] = {
        "label": backend.label,
        "model": backend.spec.name,
        "type": backend.spec.type,
        "cast": backend.cast,
        "capped": bool(backend.capped and s.cap_bytes and s.cuda),
    }
    results["backends"].append(entry)
    kind = None
    try:
        checkpoint = None
        record = get_backend(backend.spec.type)
        if s.synthetic and not record.embedded:
            kind = record.synthetic_kind or "bf16"  # quantized at load: from the bf16 checkpoint
            checkpoint = ensure_synthetic_checkpoint(kind, s.synthetic_root, log=s.log)
        model = _load_backend(backend, entry, checkpoint, s)
        for width, height in s.sizes:
            _bench_size(model, backend, entry, width, height, s, results, outputs)
        del model
    except Exception as exc:  # noqa: BLE001 - a backend that cannot load (OOM, missing extra) is a result
        entry["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
        s.log(f"[{backend.label}] FAILED: {entry['error']}")
    finally:
        _free(s.device)
        if s.cleanup_quantized and kind and kind != "bf16":
            remove_synthetic_checkpoint(kind, s.synthetic_root)


def run_bench(
    backends: list[BenchEntry],
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

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reference, baseline = _roles(backends, reference, baseline)
    s = BenchSettings(device=device, sizes=tuple(sizes), steps=steps, seed=seed, prompt=prompt,
                      guidance_scale=guidance_scale, max_sequence_length=max_sequence_length,
                      warmup_steps=warmup_steps, cap_bytes=cap_bytes, synthetic=synthetic,
                      synthetic_root=synthetic_root, cleanup_quantized=cleanup_quantized, log=_elapsed_log(log))
    results = _new_results(s, backends, reference, baseline, command)
    outputs: dict[tuple[str, str], dict] = {}
    for backend in backends:
        _bench_backend(backend, s, results, outputs)
        if on_backend_done is not None:  # partial results survive a run that is killed later
            add_comparisons(results, outputs)
            on_backend_done(results)
    _set_cap(device, None)
    add_comparisons(results, outputs)
    return results
