"""Text-to-image and image-to-image generation: one image at a time, each saved as soon as it exists.

Each image gets its own CPU generator seeded with its own seed, so the same request gives the same
pixels, and any single image can be regenerated from its metadata. A batch survives faults: an image
that runs out of GPU memory is recorded (with the figures and the ways out) and the batch goes on; a
resumed batch skips every image its run folder already holds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..core.compat import compile_counters as dynamo_compile_counters
from ..core.environment import device_info, package_versions
from ..core.errors import GenerationFailed, ModelUnusable, RequestError
from ..core.facts import report_only
from ..core.memory import apply_gpu_memory_limit, free_memory, peak_memory, reset_peak_memory
from ..core.sanity import check_image
from ..models.attention import cached_run_note
from ..models.backends.cuda_graph import graph_status
from ..models.compile_cache import record_warm
from ..models.editing import is_editing, pipeline_inputs
from ..models.images import load_image_file
from ..models.loading import LoadedModel
from ..models.lora import apply_loras, records, set_scales
from ..models.params import GenerationRequest, refuse_changed_inputs
from ..models.step_cache import effective, parse_cache, recording, switched
from ..models.sweeps import lora_axis
from ..models.tasks import IMAGE_TO_IMAGE, MODES
from .outputs import IDENTITY_KEYS, RunFolder, identity

__all__ = ["IDENTITY_KEYS", "GeneratedImage", "generate", "identity"]  # generate() skips items already held
# After this many items fail in a row, the model is taken as unusable and the batch stops.
MAX_CONSECUTIVE_FAILURES = 3


class GeneratedImage:
    """One image of a batch: its metadata and the PNG it was saved to; the pixels are read from that file when
    asked for (`.image`), so a batch of any length holds paths and metadata, not decoded images. Only an image
    made without a run folder (nowhere to read it back from) keeps its pixels."""

    def __init__(self, image: Any = None, metadata: dict[str, Any] | None = None, path: str | None = None):
        self._pixels = image if path is None else None
        self.metadata = metadata or {}
        self.path = path

    @property
    def image(self):
        """The PIL image (loaded from the PNG on each access when the image was saved)."""
        if self._pixels is not None or self.path is None:
            return self._pixels
        from PIL import Image

        with Image.open(self.path) as image:
            image.load()
            return image

    def __repr__(self) -> str:
        return f"GeneratedImage(path={self.path!r}, seed={self.metadata.get('seed')!r})"


def peak_memory_bytes(metadata: dict[str, Any]) -> int:
    """The one number to plot: peak allocated GPU memory, or peak RSS on a CPU."""
    memory = metadata["peak_memory"]
    return memory.get("peak_allocated_bytes", memory.get("peak_rss_bytes", 0))


def compile_seconds(metadata: dict[str, Any]) -> float:
    """Seconds of torch.compile this image paid (0 for images from before the `compile` record, or eager models)."""
    return (metadata.get("compile") or {}).get("seconds") or 0.0


@report_only("torch._dynamo counters")
def compile_counters() -> tuple[int, float] | str:
    """torch.compile's graphs compiled so far in this process, and the seconds spent compiling them.

    The difference around one image says whether that image paid a compile (first image of a compiled model at a
    new size) or reused compiled code. Read from torch._dynamo's own counters (private: report only); (0, 0.0) where
    they do not exist, "unknown (...)" where reading them failed.
    """
    try:
        return dynamo_compile_counters()
    except ImportError:
        return 0, 0.0


def compile_record(before: tuple[int, float] | str, after: tuple[int, float] | str) -> dict[str, Any]:
    """What one image paid in compile: new graphs and seconds, or {"unknown": why} when the counters failed."""
    if isinstance(before, str) or isinstance(after, str):
        return {"unknown": before if isinstance(before, str) else after}
    return {"new_graphs": after[0] - before[0], "seconds": round(max(0.0, after[1] - before[1]), 3)}


def _graph_record(before: dict | None, after: dict | None) -> dict | None:
    """What one image did with the CUDA graph: steps replayed, captures, why it was bypassed or failed."""
    if after is None:
        return None
    return {"replayed_steps": after["replays"] - before["replays"], "captures": after["captures"] - before["captures"],
            "bypassed": after["bypassed"], "failed": after["failed"]}


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
    from ..knowledge.diagnosis import diagnose

    return [d.entry.id for d in diagnose(exc)]


def _load_init_image(request: GenerationRequest):
    from PIL import Image

    return load_image_file("init_image", request.init_image).resize((request.width, request.height), Image.LANCZOS)


def _already_done(run: RunFolder) -> dict[tuple, dict[str, Any]]:
    return {identity(entry): entry for entry in run.manifest["images"]}


def _reload(run: RunFolder, entry: dict[str, Any]) -> GeneratedImage:
    """A finished image of the run folder: its path and metadata (the pixels stay in the file)."""
    return GeneratedImage(metadata={k: v for k, v in entry.items() if k != "file"}, path=str(run.path / entry["file"]))


def _drop_truncation_echo(record: logging.LogRecord) -> bool:
    """diffusers echoes the whole cut-off part of a long prompt on every image (100 KB for a 100,000-character
    prompt), and transformers warns of the token count; truncation_notes() says it once, with the counts."""
    return not str(record.msg).startswith(("The following part of your input was truncated",
                                           "Token indices sequence length is longer than"))


def truncation_notes(pipe, request: GenerationRequest) -> list[str]:
    """One line per prompt that the text encoders cut: CLIP reads 77 tokens, T5 `max_sequence_length`."""
    notes = []
    encoders = [("CLIP", getattr(pipe, "tokenizer", None), None),
                ("T5", getattr(pipe, "tokenizer_2", None), request.max_sequence_length)]
    for number, prompt in enumerate(request.prompts, 1):
        cut = []
        for name, tokenizer, limit in encoders:
            if tokenizer is None:
                continue
            limit = limit or tokenizer.model_max_length
            count = len(tokenizer.encode(prompt, add_special_tokens=True, truncation=False, verbose=False))
            if count > limit:
                cut.append(f"{name} reads its first {limit} of {count} tokens")
        if cut:
            notes.append(f"note: prompt {number} ({len(prompt):,} characters) is longer than the text encoders read: "
                         f"{'; '.join(cut)}; the rest is ignored (T5's limit is the model's max_tokens, "
                         "max_sequence_length).")
    return notes


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
    only: Collection[int] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[GeneratedImage]:
    """Generate every image of `request` with `model`; save each into `run` as soon as it is done.

    Images whose parameters the run folder already holds are read back from disk, not generated again (the
    same parameters give the same pixels): that is how a reopened run (RunFolder.create(..., resume=True)) resumes.
    callback_on_step_end: passed to the diffusers pipeline (progress displays, tests).
    on_image: called with each new image as soon as it is saved (live listings).
    only: the item indexes to make (a data-parallel rank's shard, fluxnb.runs.dataparallel); None: every item.
    on_step: called after each denoising step with (steps done, steps of this image), through diffusers'
        callback_on_step_end (live progress bars: the widget form).
    stop: asked before each image; True ends the batch there (after the current image), the run folder
        holding every finished image; the images made so far are returned.
    Raises GenerationFailed after the batch when some images failed (the others are kept), ModelUnusable
    when failures repeat, and re-raises KeyboardInterrupt after marking the run "interrupted".

    Args:
        model: a LoadedModel (load_model).
        request: a GenerationRequest (make_request), already validated against the model entry.
        run: the RunFolder to save into (None: images stay in memory only).
        progress, model_reason, callback_on_step_end, on_image, on_step, stop, only: as described above.

    Returns:
        list[GeneratedImage]: every image of the request (reloaded from the run folder where it already held them).
    """

    if MODES[request.mode].name != model.spec.task:
        raise RequestError("mode", f"the request is for {request.mode}, a mode of {MODES[request.mode].name} models; "
                           f"the loaded model {model.spec.name!r} is a {model.spec.task} model.",
                           fix="make the request with the loaded model's entry (make_request(model.spec, ...))")
    pipe = model.img2img_pipeline() if request.mode == IMAGE_TO_IMAGE else model.pipe
    pipe.set_progress_bar_config(disable=not progress)
    cache = effective(request.cache, model.spec.cache)  # the request's cached mode, else the entry's
    if note := cached_run_note(model.report.attention, cache):
        print(note, file=sys.stderr, flush=True)
    extra = _call_extras(request, callback_on_step_end, on_step)
    # before any image: an adapter that does not fit the model fails here, with nothing generated (fluxnb.models.lora)
    lora_record = apply_loras(model, request.loras, request.fuse_loras)
    common = _common_metadata(model, request, cache, model_reason, lora_record)
    names = [choice.name for choice in request.loras]
    if run is not None and run.resumed_parameters:  # a resumed run folder: its images came from these files
        refuse_changed_inputs(run.resumed_parameters, run.path)
    done = _already_done(run) if run is not None else {}
    batch = _Batch()
    items = shard_points(request.points(), only)
    with _truncation_said_once(pipe, request):
        try:
            for point in items:
                if stop is not None and stop():
                    break
                item = {"index": point["index"], "prompt": point["prompt"], "seed": point["seed"], **common}
                scales = _apply_point(item, point["sweep"], request, names)
                if identity(item) in done:
                    batch.results.append(_reload(run, done[identity(item)]))
                    continue
                if scales:
                    set_scales(model, scales)
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


def shard_points(points: list[dict[str, Any]], only: Collection[int] | None) -> list[dict[str, Any]]:
    """The points whose index is in `only` (a rank's shard), in order; every point for None. `only` is read once:
    a set built per point made a 32,000-item shard take 15 s instead of a quarter of one."""
    if only is None:
        return points
    wanted = set(only)
    return [point for point in points if point["index"] in wanted]


def _apply_point(item: dict[str, Any], coordinates: dict[str, Any], request: GenerationRequest,
                 names: list[str]) -> dict[str, float]:
    """A sweep point's values written into the item (its metadata); returns the LoRA scales it sets."""
    if not coordinates:
        return {}
    item["sweep"] = dict(coordinates)
    scales: dict[str, float] = {}
    for axis, value in coordinates.items():
        name = lora_axis(axis, names)
        if name is None:
            item[axis] = value
        else:
            scales[name] = value
    if request.loras:
        full = {choice.name: choice.scale for choice in request.loras}
        scales = {**full, **scales}
        item["loras"] = records(request.loras, scales)
    return scales


def _call_extras(request: GenerationRequest, callback_on_step_end: Callable | None,
                 on_step: Callable[[int, int], None] | None) -> dict[str, Any]:
    """The pipeline call's arguments beyond each item's own: the init image and strength (image-to-image), an
    editing mode's inputs, the step callback. The pictures are read here, before any adapter is applied or image
    made."""
    extra: dict[str, Any] = {}
    if request.mode == IMAGE_TO_IMAGE:
        extra = {"image": _load_init_image(request), "strength": request.strength}
    elif is_editing(request.mode):
        extra = pipeline_inputs(request)  # the picture, mask, grown canvas or control image (fluxnb.models.editing)
    if callback_on_step_end is not None or on_step is not None:
        extra["callback_on_step_end"] = _step_callback(callback_on_step_end, on_step)
    return extra


def _common_metadata(model: LoadedModel, request: GenerationRequest, cache, model_reason: str | None,
                     lora_record: dict[str, Any]) -> dict[str, Any]:
    """What every image of the request records beside its own prompt and seed: parameters, model, backend,
    speed options, versions and device (the PNG text chunk and the manifest)."""
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
        "cache": cache and cache.text,
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
        # speed options: compile mode, the persistent compile cache (warm before the load?), the cached mode
        "speed": {"compile_mode": model.report.compile_mode, "compile_cache": model.report.compile_cache,
                  "cache": cache and cache.to_dict(), "attention": model.report.attention},
        "versions": package_versions(),
        "device": device_info(),
    }
    if request.loras:
        common.update(loras=records(request.loras), lora_fused=lora_record["fused"])
    if is_editing(request.mode):  # what the picture was edited with: each input file with its SHA-256
        values = {key: getattr(request, key) for key in EDITING_RECORD if getattr(request, key) is not None}
        common.update({key: list(v) if isinstance(v, tuple) else v for key, v in values.items()})  # as JSON reads it
    return common


# The editing inputs an image of an editing mode records (absent from other images, which keep their identity).
EDITING_RECORD = ("init_image_sha256", "mask", "mask_sha256", "expand", "control", "control_image",
                  "control_image_sha256")


@contextmanager
def _truncation_said_once(pipe, request: GenerationRequest) -> Iterator[None]:
    """Our notes on prompts the tokenizers will cut, said once before the batch; the libraries' own echo of the
    same warning dropped while it runs."""
    for note in truncation_notes(pipe, request):
        print(note, file=sys.stderr, flush=True)
    echoing = [logging.getLogger(type(pipe).__module__), logging.getLogger("transformers.tokenization_utils_base")]
    for logger in echoing:
        logger.addFilter(_drop_truncation_echo)
    try:
        yield
    finally:
        for logger in echoing:
            logger.removeFilter(_drop_truncation_echo)


def _step_callback(callback_on_step_end: Callable | None, on_step: Callable[[int, int], None] | None) -> Callable:
    """One diffusers callback_on_step_end calling the caller's own callback, then on_step(done, total)."""

    def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if callback_on_step_end is not None:
            callback_kwargs = callback_on_step_end(pipe, step, timestep, callback_kwargs)
        if on_step is not None:
            on_step(step + 1, pipe.num_timesteps)  # image-to-image runs only strength x steps of them
        return callback_kwargs

    return callback


def _run_pipeline(model: LoadedModel, request: GenerationRequest, pipe, extra: dict,
                  item: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The pipeline call of one image, in the item's cached mode: the image, and the steps its step cache computed
    (empty without a cache: step_cache.recording)."""
    import torch

    loaded = parse_cache(model.report.cache["setting"]) if model.report.cache else None
    with (switched(pipe.transformer, parse_cache(item["cache"]), loaded),  # the request's cached mode
          recording(pipe.transformer) as schedule):
        output = pipe(
            prompt=item["prompt"],
            num_inference_steps=item["steps"],
            guidance_scale=item["guidance_scale"],
            width=item["width"],
            height=item["height"],
            max_sequence_length=request.max_sequence_length,
            generator=torch.Generator(device="cpu").manual_seed(item["seed"]),
            **{**extra, **({"strength": item["strength"]} if "strength" in extra else {})},
        )
    return output.images[0], schedule


def _generate_one(model: LoadedModel, request: GenerationRequest, run: RunFolder | None, pipe, extra: dict,
                  item: dict[str, Any], batch: _Batch) -> GeneratedImage | None:
    """One image: generated, checked, saved; or recorded as failed (out of memory) and None returned."""
    import torch

    cap = apply_gpu_memory_limit(model.device)  # measured again: the kernels loaded so far count against it
    reset_peak_memory(model.device)
    counters_before = compile_counters()
    replays_before = graph_status(pipe.transformer)
    start = time.perf_counter()
    try:
        image, schedule = _run_pipeline(model, request, pipe, extra, item)
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
    counters_after = compile_counters()
    batch.in_a_row = 0
    metadata = {
        **item,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / item["steps"], 4),
        "peak_memory": {**peak_memory(model.device), **({"limit": cap.to_dict()} if cap else {})},
        # graphs torch.compile built during this image and the seconds that took (included in "seconds"):
        # non-zero for the first image of a compiled model at each size, zero once the compiled code is reused
        "compile": compile_record(counters_before, counters_after),
        # steps replayed from the CUDA graph of the compiled forward (fluxnb/models/backends/cuda_graph.py); None
        # without it
        "cuda_graph": _graph_record(replays_before, graph_status(pipe.transformer)),
        "sanity": check_image(image).to_dict(),  # NaN/black/flat/mosaic warnings (fluxnb.core.sanity)
    }
    if schedule:  # the cached mode's steps as run: computed in full, the others served from the cache
        metadata["speed"] = {**item["speed"], "cache": {**item["speed"]["cache"], **schedule}}
    if metadata["compile"].get("new_graphs") and model.report.compile_cache:  # the doctor reports this size as warm
        record_warm(model.report.compile_cache["path"], model.spec.name, model.report.compile_mode, item["width"],
                    item["height"])
    if run is not None:
        result = GeneratedImage(metadata=metadata, path=str(run.save_image(image, metadata)))
    else:
        result = GeneratedImage(image=image, metadata=metadata)
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
