"""Throughput for a batch: N prompts x 1 image, the prompts encoded in one batched call, T5 optionally offloaded.

All prompts are encoded first, together (one CLIP and one T5 forward over the N prompts: T5-XXL at 512 tokens is
the costly part, and one batched call keeps its matmuls large), then, where the backend allows it, the text encoders
go to the CPU so denoising and decoding run with their memory free; then each image is denoised and decoded from its
row of the embeddings, with its own seed (`seed + i`: the image `pipe(prompt=prompts[i])` would make with that seed).
Images per minute = N / wall time of the whole batch (encoding included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core.compat import execution_device
from ..core.memory import peak_memory, reset_peak_memory


def batch_prompts(prompt: str, n: int) -> list[str]:
    """N distinct prompts from the bench's prompt (distinct, so each is encoded once and none is reused)."""
    return [prompt if i == 0 else f"{prompt}, variation {i}" for i in range(n)]


def _text_encoders_to(pipe, device: str) -> None:
    import torch

    with torch.inference_mode(False):  # torchao tensors cannot move inside inference mode
        pipe.text_encoder.to(device)
        pipe.text_encoder_2.to(device)
    if device == "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_batch(pipe, *, prompts: list[str], seed: int, width: int, height: int, steps: int, guidance_scale: float,
              max_sequence_length: int, device: str, offload_t5: bool,
              on_image: Callable[[int, Any], None] | None = None) -> dict[str, Any]:
    """The batch's wall time, images per minute and peak memory; `offload_t5` moves the text encoders to the CPU
    between encoding and denoising (and back afterwards; the move out is timed, `offload_seconds`: run 34's batch
    of 8 took 4 s more than 8 single images); `on_image(i, image)` sees each image (not timed apart)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    reset_peak_memory(device)
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        prompt_embeds, pooled = pipe.encode_prompt(prompt=list(prompts), prompt_2=None,
                                                   device=execution_device(pipe),
                                                   max_sequence_length=max_sequence_length)[:2]
    sync()
    encoded = time.perf_counter() - start
    home = str(pipe.text_encoder_2.device)
    if offload_t5:
        _text_encoders_to(pipe, "cpu")
        sync()
    offloaded = time.perf_counter() - start - encoded
    reset_peak_memory(device)  # the peak of the denoising and decoding, T5 offloaded or not
    with torch.inference_mode():
        for i in range(len(prompts)):
            image = pipe(prompt_embeds=prompt_embeds[i:i + 1], pooled_prompt_embeds=pooled[i:i + 1],
                         num_inference_steps=steps, guidance_scale=guidance_scale, width=width, height=height,
                         output_type="pil", max_sequence_length=max_sequence_length,
                         generator=torch.Generator("cpu").manual_seed(seed + i)).images[0]
            if on_image is not None:
                on_image(i, image)
    sync()
    seconds = time.perf_counter() - start
    peaks = peak_memory(device)
    if offload_t5:
        _text_encoders_to(pipe, home)
    return {"images": len(prompts), "seconds": round(seconds, 3), "text_encoding_seconds": round(encoded, 3),
            "text_encoding": "batched (one call for all prompts)", "offload_seconds": round(offloaded, 3),
            "images_per_minute": round(60.0 * len(prompts) / seconds, 2), "t5_offloaded": offload_t5,
            "size": f"{width}x{height}", "steps": steps, "denoise_decode_peak": peaks}
