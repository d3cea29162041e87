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
dimensions (fluxnb.models.synthetic); every output says which weights were used.

Editing entries (Fill, Kontext, Control: issue 24) are timed the same way, one task per run (every backend then runs
the same pipeline on the same inputs): fluxnb.bench.inputs makes the fixed pictures at each size and the request
through make_request, whose pipeline inputs (editing.pipeline_inputs) join the denoising call.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.compat import execution_device, unpack_latents
from ..core.environment import device_info, nvidia_driver_version, package_versions
from ..core.errors import RequestError
from ..core.units import GIB, SIZE_MULTIPLE, is_image_side
from ..models import compile_cache
from ..models.attention import SETTINGS as ATTENTION_SETTINGS
from ..models.backends import REGISTRY, get_backend, types_where
from ..models.backends.cuda_graph import graph_status
from ..models.backends.torchao import AUTOTUNE
from ..models.config import ModelConfig, ModelSpec
from ..models.loading import LoadedModel, load_model
from ..models.step_cache import parse_cache, recording
from ..models.synthetic import WEIGHT_SETS, ensure_synthetic_checkpoint, remove_synthetic_checkpoint, remove_weight_set
from ..models.tasks import TEXT_TO_IMAGE
from ..runs.generation import compile_counters, compile_record, free_memory, peak_memory, reset_peak_memory
from .batch import batch_prompts, run_batch
from .fidelity import add_comparisons
from .inputs import INPUTS_TEXT, editing_arguments, editing_request, fixed_pictures
from .predict import add_predictions
from .warm import first_call_in_new_process

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
    weight_sets: tuple[str, ...] = ("gaussian",)
    outlier_backends: tuple[str, ...] = ()  # backends run on the non-Gaussian sets (empty: all)
    synthetic_dims: dict | None = None  # None: FLUX.1-dev's full size; fluxnb.models.synthetic.TINY_DIMS for CPU checks
    cleanup_weight_sets: tuple[str, ...] = ()  # weight sets whose checkpoints are deleted once their backends ran
    warm_compile: bool = False
    warm_backends: tuple[str, ...] = ()  # the compiled backends whose first call is repeated (empty: all)
    batch: int = 0
    batch_backends: tuple[str, ...] = ()  # the backends timed in a batch (empty: all)
    batch_offload_t5: bool = False
    repeats: int = 1  # timed images per backend and size; the row is the median one's (odd numbers: a true median)
    config_path: str | None = None
    inputs_folder: str | None = None  # where an editing run writes its fixed pictures (None: a new temporary folder)
    task: str = TEXT_TO_IMAGE  # the task of every backend of the run (run_bench sets it)
    pictures: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # size -> an editing task's inputs

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def generation(self, width: int, height: int) -> dict[str, Any]:
        """run_phases' arguments shared by the warm-up and the timed call (text-to-image's; see arguments)."""
        return dict(prompt=self.prompt, seed=self.seed, width=width, height=height,
                    guidance_scale=self.guidance_scale, max_sequence_length=self.max_sequence_length,
                    device=self.device)

    def arguments(self, spec: ModelSpec, width: int, height: int) -> dict[str, Any]:
        """run_phases' arguments for `spec` at this size: an editing entry's through its request (its guidance, its
        pipeline inputs)."""
        if spec.task == TEXT_TO_IMAGE:
            return self.generation(width, height)
        return editing_arguments(spec, self.pictures[f"{width}x{height}"], self.generation(width, height), self.steps)


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
    "compile-vae": "compile: true, compile_vae: true",
    "offload-t5": "offload_text_encoder: true",
    "autotune": f"compile: true, compile_mode: {AUTOTUNE}",
    "cache=SETTING": "the cached mode, e.g. cache=taylorseer@2 (fluxnb/models/step_cache.py)",
    "attention=KERNEL": f"the attention kernel, one of {', '.join(ATTENTION_SETTINGS)} (fluxnb/models/attention.py)",
}


def parse_backend(text: str, config: ModelConfig, uncapped: tuple[str, ...] = ()) -> BenchEntry:
    """'flux-dev-bnb-8bit', 'flux-torchao-int8dq' (a loader type), 'flux-tiny@bf16' (cast after load),
    'flux-dev-torchao-int8dq@offload-t5' (the entry with one option changed; see VARIANTS), or several changes
    joined by '+' ('flux-dev-torchao-fp8@attention=sage+cache=taylorseer@2')."""
    name = text.partition("@")[0]
    spec = _named_spec(text, name, config)
    cast = None
    for variant in label_variants(text):
        if variant in ("bf16", "fp32"):
            cast = variant
        else:
            spec = _apply_variant(text, variant, spec)
    capped = not (text in uncapped or name in uncapped or (not uncapped and get_backend(spec.type).reference))
    return BenchEntry(label=text, spec=spec, cast=cast, capped=capped)


def label_variants(label: str) -> list[str]:
    """The changes a backend label asks for: 'NAME@a+b' -> ['a', 'b']; none without '@'. (A cache setting keeps its
    own '@': 'NAME@cache=taylorseer@2' -> ['cache=taylorseer@2'].)"""
    variants = label.partition("@")[2]
    return variants.split("+") if variants else []


def _named_spec(text: str, name: str, config: ModelConfig) -> ModelSpec:
    """The entry called `name`, or FLUX.1-dev's entry loaded as the loader type `name`."""
    if name in config.models:
        spec = config.get(name)
    elif name in REGISTRY:  # a loader type: text-to-image, on FLUX.1-dev's entry
        base = config.get(BASE_ENTRY_FOR_TYPES)
        spec = dataclasses.replace(base, name=name, type=name, description=f"{base.id} loaded as {name}")
    else:
        raise RequestError(
            "backend",
            f"{text!r} is neither a model in {config.path} nor a loader type. Allowed: "
            f"{', '.join([*config.models, *sorted(set(REGISTRY) - {m.type for m in config.models.values()})])}",
        )
    return spec


def _apply_variant(text: str, variant: str, spec: ModelSpec) -> ModelSpec:
    """The entry with the one option `variant` changed (VARIANTS), or an error naming the variants there are."""
    if variant not in VARIANTS and not variant.startswith(("cache=", "attention=")):
        raise RequestError("backend", f"{text!r}: each suffix after @ (several joined by +) must be one of "
                                      f"{', '.join(f'{k} ({v})' for k, v in VARIANTS.items())}")
    if variant in ("eager", "compiled", "compile-vae"):
        if not get_backend(spec.type).compilable:
            raise RequestError("backend", f"{text!r}: type {spec.type} is not compiled by fluxnb; compiled types: "
                                          f"{', '.join(types_where('compilable'))}")
        compile_vae = {"eager": False, "compiled": spec.compile_vae, "compile-vae": True}[variant]
        spec = dataclasses.replace(spec, compile=variant != "eager", compile_vae=compile_vae)
    elif variant == "offload-t5":
        if not get_backend(spec.type).offloadable_text_encoder:
            raise RequestError("backend", f"{text!r}: type {spec.type} cannot offload its text encoder; types that "
                                          f"can: {', '.join(types_where('offloadable_text_encoder'))}")
        spec = dataclasses.replace(spec, offload_text_encoder=True)
    elif variant == "autotune":
        if AUTOTUNE not in get_backend(spec.type).compile_modes:
            raise RequestError("backend", f"{text!r}: type {spec.type} has no {AUTOTUNE} mode; types that have: "
                                          f"{', '.join(t for t, b in REGISTRY.items() if AUTOTUNE in b.compile_modes)}")
        spec = dataclasses.replace(spec, compile=True, compile_mode=AUTOTUNE)
    elif variant.startswith("cache="):
        spec = dataclasses.replace(spec, cache=parse_cache(variant.removeprefix("cache="), parameter="backend").text)
    elif variant.startswith("attention="):
        kernel = variant.removeprefix("attention=")
        if kernel not in ATTENTION_SETTINGS:
            raise RequestError("backend", f"{text!r}: attention={kernel} is not an attention kernel; allowed: "
                                          f"{', '.join(ATTENTION_SETTINGS)}")
        spec = dataclasses.replace(spec, attention=kernel)
    return spec


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
               max_sequence_length: int, device: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One generation split into its three phases; returns timings, peaks, the cached mode's schedule (None without
    one), latents and image. `inputs`: an editing pipeline's arguments (editing.pipeline_inputs), given to the
    denoising call; its latents are the result's tokens only (Kontext's reference tokens are not returned)."""
    import numpy as np
    import torch

    phases: dict[str, dict] = {}
    with torch.inference_mode():
        start = _phase_start(device)
        prompt_embeds, pooled, _text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=execution_device(pipe), max_sequence_length=max_sequence_length
        )
        phases["text_encoding"] = _phase_end(device, start)

        start = _phase_start(device)
        with recording(pipe.transformer) as schedule:  # the cached mode's steps computed in full (empty: no cache)
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
                **(inputs or {}),
            ).images
        phases["denoising"] = _phase_end(device, start)

        start = _phase_start(device)
        unpacked = unpack_latents(pipe, latents, height, width)
        unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(unpacked.to(pipe.vae.dtype), return_dict=False)[0]
        image = pipe.image_processor.postprocess(decoded, output_type="np")[0]
        phases["vae_decode"] = _phase_end(device, start)
    return {
        "phases": phases,
        "cache_schedule": schedule or None,
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
    torch.compiler.reset()  # public since torch 2.1 (the floor is 2.4)


def set_cap(device: str, cap_bytes: int | None) -> float | None:
    """The bench's cap: torch's allocator limited to `cap_bytes` (None: the whole card); nothing on a CPU."""
    import torch

    if device != "cuda":
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = 1.0 if cap_bytes is None else min(1.0, cap_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


@contextmanager
def memory_cap(device: str, cap_bytes: int | None) -> Iterator[float | None]:
    """One backend's life under the bench's cap, the whole card again afterwards: what runs between backends (the
    next weight set's synthetic checkpoint, bf16 built on the GPU, about 34 GB) must not inherit it. Run 34 built
    one under the previous backend's 22 GB cap and every backend of that weight set failed with out-of-memory."""
    fraction = set_cap(device, cap_bytes)
    try:
        yield fraction
    finally:
        set_cap(device, None)


# ----------------------------------------------------------------------------------------------- the run's steps


def bench_task(backends: list[BenchEntry]) -> str:
    """The one task of a run's backends: fidelity and speed compare runs of the same pipeline on the same inputs,
    so backends of two tasks (FLUX.1-dev beside FLUX.1-Fill) are refused before anything loads."""
    by_task: dict[str, list[str]] = {}
    for backend in backends:
        by_task.setdefault(backend.spec.task, []).append(backend.label)
    if len(by_task) > 1:
        listed = "; ".join(f"{task}: {', '.join(labels)}" for task, labels in by_task.items())
        raise RequestError("backend", f"the backends are models of {len(by_task)} tasks ({listed}); one bench run "
                           "times backends of one task, each compared with that task's bf16 and bnb 8-bit entries.",
                           fix="run one bench per task, e.g. `fluxnb bench --backend flux-fill --backend "
                           "flux-fill-bnb-8bit --backend flux-fill-torchao-fp8`, and another for the text-to-image "
                           "backends")
    return next(iter(by_task), TEXT_TO_IMAGE)


def _roles(backends: list[BenchEntry], reference: str | None, baseline: str | None) -> tuple[str, str]:
    """The reference (fidelity) and baseline (speed) backends: named ones checked, else bf16 / bnb 8-bit / first
    (within the run's one task: bench_task)."""
    labels = [b.label for b in backends]
    if len(set(labels)) != len(labels):
        raise RequestError("backend", f"each backend may be named once, got {labels}")
    reference = reference or next((b.label for b in backends if get_backend(b.spec.type).reference), labels[0])
    baseline = baseline or next((b.label for b in backends if get_backend(b.spec.type).baseline), labels[0])
    for role, name in (("reference", reference), ("baseline", baseline)):
        if name not in labels:
            raise RequestError(role, f"{name!r} is not one of the backends {labels}")
    return reference, baseline


def _weights_text(backends: list[BenchEntry], synthetic: bool, task: str = TEXT_TO_IMAGE) -> str:
    """Which weights ran: said in every output."""
    if synthetic:
        shaped = "" if task == TEXT_TO_IMAGE else f", the transformer shaped for the {task} task"
        return (f"synthetic: random weights with FLUX.1-dev's real dimensions{shaped} (fluxnb.models.synthetic); "
                "images are noise")
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
        "weights": _weights_text(backends, s.synthetic, s.task),
        "device": device_info() if s.cuda else {"device": "cpu"},
        "driver": nvidia_driver_version() if s.cuda else None,
        "versions": package_versions(),
        "settings": {
            "steps": s.steps,
            "seed": s.seed,
            "task": s.task,
            "prompt": s.prompt,
            "guidance_scale": s.guidance_scale if s.task == TEXT_TO_IMAGE else None,  # editing: each row's (entry's)
            "max_sequence_length": s.max_sequence_length,
            "warmup_steps": s.warmup_steps,
            "cap_bytes": s.cap_bytes if s.cuda else None,
            "reference": reference,
            "baseline": baseline,
            "sizes": [f"{w}x{h}" for w, h in s.sizes],
            **({} if s.task == TEXT_TO_IMAGE else {"inputs": {"what": INPUTS_TEXT[s.task], "files": s.pictures}}),
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


def _warm_then_time(model: LoadedModel, common: dict[str, Any], s: BenchSettings) -> dict[str, Any]:
    """A short warm-up (it pays compile and kernel costs) then the timed generations (`s.repeats`: the median one is
    kept, with every image's seconds beside it), with torch.compile's counts."""
    counters0 = compile_counters()
    start = time.perf_counter()
    run_phases(model.pipe, steps=s.warmup_steps, **common)
    warm_seconds = time.perf_counter() - start
    counters1 = compile_counters()
    runs = [run_phases(model.pipe, steps=s.steps, **common) for _ in range(s.repeats)]
    seconds = [round(sum(p["seconds"] for p in run["phases"].values()), 3) for run in runs]
    timed = runs[seconds.index(statistics.median_low(seconds))]
    if len(runs) > 1:  # one image's time moved by up to 5% between two calls (runs 35-36): the spread is reported
        timed["repeats"] = {"seconds_per_image": seconds, "spread": round(max(seconds) / min(seconds) - 1, 4)}
    warmup, timed_call = compile_record(counters0, counters1), compile_record(counters1, compile_counters())
    timed["warm_seconds"] = warm_seconds
    # measured by torch._dynamo: what the warm-up compiled, and that the timed call compiled nothing
    timed["compile"] = ({"unknown": warmup.get("unknown") or timed_call["unknown"]}
                        if "unknown" in warmup or "unknown" in timed_call else
                        {"warmup_new_graphs": warmup["new_graphs"], "warmup_compile_seconds": warmup["seconds"],
                         "timed_new_graphs": timed_call["new_graphs"]})
    timed["cuda_graph"] = graph_status(model.pipe.transformer)  # captures/replays so far (None: no CUDA graph)
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
        cuda_graph=timed["cuda_graph"],
        finite=bool(np.isfinite(timed["latents"]).all()),
    )
    if "repeats" in timed:
        row["repeats"] = timed["repeats"]
    if timed["cache_schedule"]:  # the timed call's steps computed in full (the others served from the cache)
        row["cache_schedule"] = timed["cache_schedule"]
    if entry["capped"] and row["peak_reserved_bytes"] is not None:
        row["fits_cap"] = row["peak_reserved_bytes"] <= s.cap_bytes


def _bench_size(model: LoadedModel, backend: BenchEntry, entry: dict[str, Any], width: int, height: int,
                s: BenchSettings, results: dict[str, Any], outputs: dict[tuple[str, str, str], dict]) -> dict | None:
    """One backend at one size: its row (or the row's error: an OOM under the cap is a result)."""
    size = f"{width}x{height}"
    row: dict[str, Any] = {"backend": backend.label, "task": backend.spec.task, "size": size, "width": width,
                           "height": height, "steps": s.steps, "capped": entry["capped"], "weights": entry["weights"],
                           "cache": backend.spec.cache}
    results["rows"].append(row)
    try:
        common = s.arguments(backend.spec, width, height)
        if backend.spec.task != TEXT_TO_IMAGE:
            row.update(guidance_scale=common["guidance_scale"], inputs=INPUTS_TEXT[backend.spec.task])
        timed = _warm_then_time(model, common, s)
    except Exception as exc:  # noqa: BLE001 - an OOM under the cap is a result, recorded per row
        row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        s.log(f"[{backend.label}] {size}: FAILED {row['error']}")
        _free(s.device)
        return None
    _fill_row(row, timed, entry, s)
    state = model.report.compile_cache
    if state is not None:  # the first call above was cold only if the compile cache held nothing for it
        row["compile_cache_warm_at_load"] = state["warm"]
    outputs[(backend.label, size, entry["weights"])] = {"latents": timed["latents"], "image": timed["image"]}
    s.log(f"[{backend.label}] {size}: {row['seconds_per_image']} s/image, {row['seconds_per_step']} s/step, "
          f"peak reserved {(row['peak_reserved_bytes'] or 0) / GIB:.2f} GiB, warm-up {timed['warm_seconds']:.1f} s")
    return row


def _batch_row(model: LoadedModel, backend: BenchEntry, row: dict[str, Any], s: BenchSettings) -> None:
    """Images per minute for `s.batch` prompts x 1 image at the row's size (T5 offloaded where the type allows)."""
    offload = s.batch_offload_t5 and get_backend(backend.spec.type).offloadable_text_encoder
    try:
        row["batch"] = run_batch(model.pipe, prompts=batch_prompts(s.prompt, s.batch), seed=s.seed,
                                 width=row["width"], height=row["height"], steps=s.steps,
                                 guidance_scale=s.guidance_scale, max_sequence_length=s.max_sequence_length,
                                 device=s.device, offload_t5=offload)
        s.log(f"[{backend.label}] batch of {s.batch}: {row['batch']['images_per_minute']} images/minute")
    except Exception as exc:  # noqa: BLE001 - an OOM in the batch is a result too
        row["batch"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        _free(s.device)


def _warm_job(backend: BenchEntry, entry: dict[str, Any], checkpoint, row: dict[str, Any],
              s: BenchSettings) -> dict[str, Any]:
    """What the fresh process needs to repeat this backend's first call (fluxnb.bench.warm_child)."""
    return {"label": backend.label, "config": s.config_path, "checkpoint": str(checkpoint) if checkpoint else None,
            "device": s.device, "memory_fraction": entry.get("memory_fraction"), "warmup_steps": s.warmup_steps,
            "uncapped": [] if entry["capped"] else [backend.label],
            "generation": s.generation(row["width"], row["height"]), "pictures": s.pictures.get(row["size"])}


def _checkpoint_for(backend: BenchEntry, weight_set: str, s: BenchSettings) -> tuple[Any, str | None]:
    """The synthetic checkpoint this backend loads (built once per kind and weight set), and its kind."""
    record = get_backend(backend.spec.type)
    if not s.synthetic or (record.embedded and s.synthetic_dims is None):
        return None, None
    kind = record.synthetic_kind or "bf16"  # quantized at load: from the bf16 checkpoint (an editing task's only one)
    return ensure_synthetic_checkpoint(kind, s.synthetic_root, dims=s.synthetic_dims, log=s.log,
                                       weight_set=weight_set, task=backend.spec.task), kind


def _bench_backend(backend: BenchEntry, s: BenchSettings, results: dict[str, Any],
                   outputs: dict[tuple[str, str, str], dict], weight_set: str = "gaussian") -> None:
    """One backend at every size; a backend that cannot load (OOM, missing extra) is recorded, not fatal."""
    entry: dict[str, Any] = {
        "label": backend.label,
        "model": backend.spec.name,
        "type": backend.spec.type,
        "cast": backend.cast,
        "attention": backend.spec.attention,
        "capped": bool(backend.capped and s.cap_bytes and s.cuda),
        "weights": weight_set,
    }
    results["backends"].append(entry)
    kind, warm = None, None
    try:
        checkpoint, kind = _checkpoint_for(backend, weight_set, s)
        with memory_cap(s.device, s.cap_bytes if entry["capped"] else None) as entry["memory_fraction"]:
            model = _load_backend(backend, entry, checkpoint, s)
            rows = [_bench_size(model, backend, entry, width, height, s, results, outputs)
                    for width, height in s.sizes]
            first = rows[0]
            if first is not None and s.batch and weight_set == "gaussian" and _chosen(backend, s.batch_backends):
                _batch_row(model, backend, first, s)
            if (first is not None and s.warm_compile and model.report.compile_cache is not None
                    and weight_set == s.weight_sets[0] and _chosen(backend, s.warm_backends)):
                warm = (first, _warm_job(backend, entry, checkpoint, first, s))
            del model
    except Exception as exc:  # noqa: BLE001 - a backend that cannot load (OOM, missing extra) is a result
        entry["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
        s.log(f"[{backend.label}] FAILED: {entry['error']}")
    finally:
        _free(s.device)
    if warm is not None:  # after this process let go of the model: the new one needs the memory
        s.log(f"[{backend.label}] first call again in a new process sharing the compile cache ...")
        warm[0]["warm_first_call"] = first_call_in_new_process(warm[1])
        s.log(f"[{backend.label}] warm first call: {warm[0]['warm_first_call']}")
    if s.cleanup_quantized and kind and kind != "bf16":
        remove_synthetic_checkpoint(kind, s.synthetic_root, s.synthetic_dims, weight_set, backend.spec.task)


def _chosen(backend: BenchEntry, labels: tuple[str, ...]) -> bool:
    return not labels or backend.label in labels


def _fresh_compile_cache(log: Callable[[str], None]) -> str:
    """A new, empty compile cache folder for this run: the bench's first calls are then truly cold, and the warm
    figure comes from a new process sharing it (as the user's next kernel shares the persistent one)."""
    folder = tempfile.mkdtemp(prefix="fluxnb-bench-compile-")
    os.environ[compile_cache.ENV_INDUCTOR] = folder
    os.environ[compile_cache.ENV_TRITON] = os.path.join(folder, "triton")
    os.environ.pop("FLUXNB_COMPILE_CACHE_SET", None)
    log(f"compile cache for this run (cold at start): {folder}")
    return folder


def _runs(backends: list[BenchEntry], s: BenchSettings) -> list[tuple[str, BenchEntry]]:
    """(weight set, backend) in run order: every backend on the Gaussian set, the chosen ones on the others."""
    for weight_set in s.weight_sets:
        if weight_set not in WEIGHT_SETS:
            raise RequestError("weights", f"{weight_set!r} is not a weight set; allowed: {', '.join(WEIGHT_SETS)}")
    labels = [b.label for b in backends]
    for option, chosen in (("outlier_backend", s.outlier_backends), ("warm_compile_backend", s.warm_backends),
                           ("batch_backend", s.batch_backends)):
        unknown = [b for b in chosen if b not in labels]
        if unknown:
            raise RequestError(option, f"{unknown} are not among the backends {labels}",
                               fix="name backends given with --backend")
    return [(w, b) for w in s.weight_sets for b in backends
            if w == "gaussian" or not s.outlier_backends or b.label in s.outlier_backends]


def _editing_inputs(backends: list[BenchEntry], s: BenchSettings) -> None:
    """An editing run's fixed pictures at each size (s.pictures), and every backend's request checked at each size
    before anything loads (a size over an entry's maximum is refused here, as `fluxnb generate` refuses it)."""
    if s.batch:
        raise RequestError("batch", f"the batch times text-to-image prompts; this run's backends are {s.task} "
                           "models.", fix="leave --batch off for editing entries")
    folder = Path(s.inputs_folder or tempfile.mkdtemp(prefix="fluxnb-bench-inputs-"))
    s.pictures = {f"{w}x{h}": fixed_pictures(s.task, w, h, folder) for w, h in s.sizes}
    for backend in backends:
        for width, height in s.sizes:
            try:
                editing_request(backend.spec, s.pictures[f"{width}x{height}"], s.generation(width, height), s.steps)
            except RequestError as exc:
                exc.add_note(f"(the bench's request for backend {backend.label} at {width}x{height})")
                raise
    s.log(f"{s.task} inputs ({INPUTS_TEXT[s.task]}) in {folder}")


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
    **options: Any,
) -> dict[str, Any]:
    """Run every backend at every size (and weight set); return the results (JSON-ready). A failing backend is
    recorded, not fatal. `options` are BenchSettings' optional fields: weight_sets, outlier_backends, synthetic_dims,
    cleanup_weight_sets, warm_compile, warm_backends, batch, batch_backends, batch_offload_t5, config_path,
    inputs_folder (an editing run's pictures; None: a temporary folder). Backends of two tasks are refused."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = bench_task(backends)
    reference, baseline = _roles(backends, reference, baseline)
    s = BenchSettings(device=device, sizes=tuple(sizes), steps=steps, seed=seed, prompt=prompt,
                      guidance_scale=guidance_scale, max_sequence_length=max_sequence_length,
                      warmup_steps=warmup_steps, cap_bytes=cap_bytes, synthetic=synthetic,
                      synthetic_root=synthetic_root, cleanup_quantized=cleanup_quantized, log=_elapsed_log(log),
                      task=task, **options)
    runs = _runs(backends, s)
    if task != TEXT_TO_IMAGE:
        _editing_inputs(backends, s)
    results = _new_results(s, backends, reference, baseline, command)
    results["settings"].update(weight_sets=list(s.weight_sets), batch=s.batch, warm_compile=s.warm_compile,
                               repeats=s.repeats)
    if s.warm_compile:
        results["settings"]["compile_cache"] = _fresh_compile_cache(s.log)
    outputs: dict[tuple[str, str, str], dict] = {}
    for index, (weight_set, backend) in enumerate(runs):
        _bench_backend(backend, s, results, outputs, weight_set)
        last_of_set = index + 1 == len(runs) or runs[index + 1][0] != weight_set
        if last_of_set and weight_set in s.cleanup_weight_sets and s.synthetic:
            for folder in remove_weight_set(weight_set, s.synthetic_root, s.synthetic_dims, s.task):
                s.log(f"removed {folder}")
        if on_backend_done is not None:  # partial results survive a run that is killed later
            add_comparisons(results, outputs)
            add_predictions(results)
            on_backend_done(results)
    add_comparisons(results, outputs)
    add_predictions(results)
    return results
