"""Text-to-image and image-to-image generation: one image at a time, each saved as soon as it exists.

Each image gets its own CPU generator seeded with its own seed, so the same request gives the same
pixels, and any single image can be regenerated from its metadata. A batch survives faults: an image
that runs out of GPU memory is recorded (with the figures and the ways out) and the batch goes on; a
resumed batch skips every image its run folder already holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .environment import device_info, package_versions
from .errors import GenerationFailed, ModelUnusable
from .loading import LoadedModel
from .memory import free_memory, peak_memory, reset_peak_memory
from .outputs import RunFolder
from .params import IMAGE_TO_IMAGE, GenerationRequest
from .sanity import check_image

# Parameters that identify an image: generate() skips an item whose identity is already in the run folder.
IDENTITY_KEYS = ("mode", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
                 "max_sequence_length", "strength", "init_image")
# After this many items fail in a row, the model is taken as unusable and the batch stops.
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image.Image
    metadata: dict[str, Any]
    path: str | None = None


def identity(metadata: dict[str, Any]) -> tuple:
    return tuple(str(metadata.get(key)) for key in IDENTITY_KEYS)


def peak_memory_bytes(metadata: dict[str, Any]) -> int:
    """The one number to plot: peak allocated GPU memory, or peak RSS on a CPU."""
    memory = metadata["peak_memory"]
    return memory.get("peak_allocated_bytes", memory.get("peak_rss_bytes", 0))


def compile_seconds(metadata: dict[str, Any]) -> float:
    """Seconds of torch.compile this image paid (0 for images from before the `compile` record, or eager models)."""
    return (metadata.get("compile") or {}).get("seconds", 0.0)


def compile_counters() -> tuple[int, float]:
    """torch.compile's graphs compiled so far in this process, and the seconds spent compiling them.

    The difference around one image says whether that image paid a compile (first image of a compiled model at a
    new size) or reused compiled code. Read from torch._dynamo's own counters; (0, 0.0) where they do not exist.
    """
    try:
        from torch._dynamo.utils import compilation_time_metrics, counters
    except ImportError:
        return 0, 0.0
    seconds = sum(compilation_time_metrics.get("_compile.compile_inner", []))
    return int(counters["stats"]["unique_graphs"]), float(seconds)


def out_of_memory_advice(request: GenerationRequest, model: LoadedModel) -> str:
    """The figures of an out-of-memory failure and the ways out, instead of a raw traceback."""
    import torch

    figures = ""
    if model.device == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        figures = (
            f"GPU memory: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated, "
            f"{torch.cuda.memory_reserved() / 2**30:.2f} GiB reserved, {free / 2**30:.2f} GiB free of "
            f"{total / 2**30:.2f} GiB (peak this image: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB). "
        )
    t5_offload = ""
    if model.backend.offloadable_text_encoder and not model.spec.offload_text_encoder:
        t5_offload = (f", `offload_text_encoder: true` in the {model.spec.name} entry of model_config.yaml (T5 on "
                      "the CPU between prompts: about 3 GiB less at the peak, slower per image)")
    return (
        f"Out of memory at {request.width}x{request.height}, model {model.spec.name} "
        f"(weights {model.report.total_bytes / 2**30:.2f} GiB, offload: {model.report.offload}). {figures}"
        "Ways out: a smaller width/height (memory grows with the pixel count), the NF4 model "
        "(model='flux-dev-bnb-4bit', about half the weights), or CPU offload (model='flux-dev' offloads when it "
        f"does not fit){t5_offload}. Memory was freed: the kernel can go on."
    )


def _diagnosis_ids(exc: BaseException) -> list[str]:
    from .diagnosis import diagnose

    return [d.entry.id for d in diagnose(exc)]


def _load_init_image(request: GenerationRequest):
    from PIL import Image

    with Image.open(request.init_image) as image:
        return image.convert("RGB").resize((request.width, request.height), Image.LANCZOS)


def _already_done(run: RunFolder) -> dict[tuple, dict[str, Any]]:
    return {identity(entry): entry for entry in run.manifest["images"]}


def _reload(run: RunFolder, entry: dict[str, Any]) -> GeneratedImage:
    from PIL import Image

    path = run.path / entry["file"]
    with Image.open(path) as image:
        image.load()
        return GeneratedImage(image=image, metadata={k: v for k, v in entry.items() if k != "file"}, path=str(path))


@dataclass
class _Batch:
    """Bookkeeping of one generate() call: what was made, what failed, failures in a row."""

    results: list[GeneratedImage] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    in_a_row: int = 0


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    run: RunFolder | None = None,
    *,
    progress: bool = True,
    model_reason: str | None = None,
    callback_on_step_end: Callable | None = None,
    on_image: Callable[[GeneratedImage], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[GeneratedImage]:
    """Generate every image of `request` with `model`; save each into `run` as soon as it is done.

    Images whose parameters the run folder already holds are read back from disk, not generated again (the
    same parameters give the same pixels): that is how a reopened run (RunFolder.create(..., resume=True)) resumes.
    callback_on_step_end: passed to the diffusers pipeline (progress displays, tests).
    on_image: called with each new image as soon as it is saved (live listings).
    on_step: called after each denoising step with (steps done, steps of this image), through diffusers'
        callback_on_step_end (live progress bars: the widget form).
    stop: asked before each image; True ends the batch there (after the current image), the run folder
        holding every finished image; the images made so far are returned.
    Raises GenerationFailed after the batch when some images failed (the others are kept), ModelUnusable
    when failures repeat, and re-raises KeyboardInterrupt after marking the run "interrupted".
    """

    pipe = model.img2img_pipeline() if request.mode == IMAGE_TO_IMAGE else model.pipe
    pipe.set_progress_bar_config(disable=not progress)
    extra: dict[str, Any] = {}
    if request.mode == IMAGE_TO_IMAGE:
        extra = {"image": _load_init_image(request), "strength": request.strength}
    if callback_on_step_end is not None or on_step is not None:
        extra["callback_on_step_end"] = _step_callback(callback_on_step_end, on_step)
    common = {
        "mode": request.mode,
        "negative_prompt": request.negative_prompt,
        "steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "width": request.width,
        "height": request.height,
        "max_sequence_length": request.max_sequence_length,
        "strength": request.strength,
        "init_image": request.init_image,
        "model": {
            "name": model.spec.name,
            "id": model.spec.id,
            "type": model.spec.type,
            "weights": model.report.weights,
            "checkpoint": model.report.checkpoint,
            "reason": model_reason,
        },
        "backend": {c.name: c.format for c in model.report.components},
        "offload": model.report.offload,
        "versions": package_versions(),
        "device": device_info(),
    }
    done = _already_done(run) if run is not None else {}
    batch = _Batch()
    items = request.items()
    try:
        for index, prompt, seed in items:
            if stop is not None and stop():
                break
            item = {"index": index, "prompt": prompt, "seed": seed, **common}
            if identity(item) in done:
                batch.results.append(_reload(run, done[identity(item)]))
                continue
            result = _generate_one(model, request, run, pipe, extra, item, batch)
            if result is not None and on_image is not None:
                on_image(result)
    except KeyboardInterrupt:  # wherever it lands, the run folder says so and stays consistent
        if run is not None:
            run.record(status="interrupted", error="KeyboardInterrupt: stopped by the user")
        raise
    if batch.failures:
        if run is not None:
            run.record(status="incomplete")
        raise GenerationFailed(batch.failures, batch.results, len(items))
    return batch.results


def _step_callback(callback_on_step_end: Callable | None, on_step: Callable[[int, int], None] | None) -> Callable:
    """One diffusers callback_on_step_end calling the caller's own callback, then on_step(done, total)."""

    def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if callback_on_step_end is not None:
            callback_kwargs = callback_on_step_end(pipe, step, timestep, callback_kwargs)
        if on_step is not None:
            on_step(step + 1, pipe.num_timesteps)  # image-to-image runs only strength x steps of them
        return callback_kwargs

    return callback


def _generate_one(model: LoadedModel, request: GenerationRequest, run: RunFolder | None, pipe, extra: dict,
                  item: dict[str, Any], batch: _Batch) -> GeneratedImage | None:
    """One image: generated, checked, saved; or recorded as failed (out of memory) and None returned."""
    import torch

    reset_peak_memory(model.device)
    graphs_before, compile_before = compile_counters()
    start = time.perf_counter()
    try:
        output = pipe(
            prompt=item["prompt"],
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            width=request.width,
            height=request.height,
            max_sequence_length=request.max_sequence_length,
            generator=torch.Generator(device="cpu").manual_seed(item["seed"]),
            **extra,
        )
        if model.device == "cuda":
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError as exc:
        _record_failure(batch, run, item, exc, out_of_memory_advice(request, model))
        del exc
        free_memory(model.device)
        if batch.in_a_row >= MAX_CONSECUTIVE_FAILURES:
            _stop(run, f"{batch.in_a_row} images in a row ran out of memory")
        return None
    except Exception as exc:
        if run is not None:
            run.record(status="failed", error=f"{type(exc).__name__}: {exc}", diagnosis=_diagnosis_ids(exc))
        raise
    seconds = time.perf_counter() - start
    graphs_after, compile_after = compile_counters()
    batch.in_a_row = 0
    image = output.images[0]
    metadata = {
        **item,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / request.steps, 4),
        "peak_memory": peak_memory(model.device),
        # graphs torch.compile built during this image and the seconds that took (included in "seconds"):
        # non-zero for the first image of a compiled model at each size, zero once the compiled code is reused
        "compile": {"new_graphs": graphs_after - graphs_before,
                    "seconds": round(max(0.0, compile_after - compile_before), 3)},
        "sanity": check_image(image).to_dict(),  # NaN/black/flat/mosaic warnings (fluxnb.sanity)
    }
    result = GeneratedImage(image=image, metadata=metadata)
    if run is not None:
        kind = "i2i" if request.mode == IMAGE_TO_IMAGE else "t2i"
        result.path = str(run.save_image(image, metadata, stem=f"{kind}-seed{item['seed']}"))
    batch.results.append(result)
    return result


def _record_failure(batch: _Batch, run: RunFolder | None, item: dict, exc: BaseException, advice: str) -> None:
    failure = {
        "index": item["index"],
        "prompt": item["prompt"],
        "seed": item["seed"],
        "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500],
        "advice": advice,
        "diagnosis": _diagnosis_ids(exc),
    }
    batch.failures.append(failure)
    batch.in_a_row += 1
    if run is not None:
        run.record_failure(failure)


def _stop(run: RunFolder | None, why: str) -> None:
    message = (f"stopped the batch: {why}; the model looks unusable. Finished images are kept. Fix: restart the "
               "kernel (or the command), lower width/height or choose a smaller model, then resume.")
    if run is not None:
        run.record(status="failed", error=message)
    raise ModelUnusable(message)
