"""Text-to-image and image-to-image generation: one image at a time, each saved as soon as it exists.

Each image gets its own CPU generator seeded with its own seed, so the same request gives the same
pixels, and any single image can be regenerated from its metadata.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from .environment import device_info, package_versions
from .loading import LoadedModel
from .outputs import RunFolder
from .requests import IMAGE_TO_IMAGE, GenerationRequest


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image.Image
    metadata: dict[str, Any]
    path: str | None = None


def _peak_memory_start(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: str) -> dict[str, Any]:
    """Peak GPU memory of this image (allocated and reserved), or the process's peak RSS on a CPU."""
    import torch

    if device == "cuda":
        return {
            "kind": "cuda",
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        }
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"kind": "cpu process peak RSS", "peak_rss_bytes": peak}
    except ImportError:  # Windows
        import psutil

        return {"kind": "cpu process RSS", "peak_rss_bytes": psutil.Process().memory_info().rss}


def peak_memory_bytes(metadata: dict[str, Any]) -> int:
    """The one number to plot: peak allocated GPU memory, or peak RSS on a CPU."""
    memory = metadata["peak_memory"]
    return memory.get("peak_allocated_bytes", memory.get("peak_rss_bytes", 0))


def _load_init_image(request: GenerationRequest):
    from PIL import Image

    with Image.open(request.init_image) as image:
        return image.convert("RGB").resize((request.width, request.height), Image.LANCZOS)


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    run: RunFolder | None = None,
    *,
    progress: bool = True,
    model_reason: str | None = None,
) -> list[GeneratedImage]:
    """Generate every image of `request` with `model`; save each into `run` as soon as it is done."""
    import torch

    pipe = model.img2img_pipeline() if request.mode == IMAGE_TO_IMAGE else model.pipe
    pipe.set_progress_bar_config(disable=not progress)
    extra: dict[str, Any] = {}
    if request.mode == IMAGE_TO_IMAGE:
        extra = {"image": _load_init_image(request), "strength": request.strength}
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
    results = []
    for index, prompt, seed in request.items():
        _peak_memory_start(model.device)
        start = time.perf_counter()
        output = pipe(
            prompt=prompt,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            width=request.width,
            height=request.height,
            max_sequence_length=request.max_sequence_length,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            **extra,
        )
        if model.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        image = output.images[0]
        metadata = {
            "index": index,
            "prompt": prompt,
            "seed": seed,
            **common,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / request.steps, 4),
            "peak_memory": _peak_memory(model.device),
        }
        result = GeneratedImage(image=image, metadata=metadata)
        if run is not None:
            kind = "i2i" if request.mode == IMAGE_TO_IMAGE else "t2i"
            result.path = str(run.save_image(image, metadata, stem=f"{kind}-seed{seed}"))
        results.append(result)
    return results
