"""The embedded tiny FLUX: real diffusers/transformers classes, random weights, built locally (tests, offline)."""

from __future__ import annotations

from .base import Backend, LoadContext, compile_if_wanted, from_pretrained


def load_tiny(spec, ctx: LoadContext, backend: Backend):
    """Loaded from its locally built folder by the same from_pretrained path as the real models."""
    pipe = from_pretrained(ctx)
    pipe.to(ctx.device)
    compile_if_wanted(pipe, spec, backend, ctx)  # inductor compiles on the CPU too: the compile paths' CPU tests
    return pipe


BACKENDS = (
    Backend(
        type="flux-tiny",
        family="tiny",
        what="FLUX.1-dev's architecture in miniature with random weights, built locally: runs anywhere, pictures "
        "are noise",
        load=load_tiny,
        why_gpu="none: built locally, runs on a CPU in seconds (random weights: pictures are noise)",
        needs_cuda=False,
        compilable=True,
        offload_ok=True,
        uses=("core", "img2img"),
        embedded=True,
        lora="yes",
    ),
)
