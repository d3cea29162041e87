"""Full-precision FLUX.1-dev (bf16): the fidelity reference; CPU offload when the GPU is too small."""

from __future__ import annotations

from ...core.footprint import pipeline_footprint
from ...core.units import GIB
from .base import Backend, LoadContext, compile_if_wanted, from_pretrained

ACTIVATION_MARGIN = 3 * GIB  # activations at 1024x1024 plus the CUDA context


def offload_for(pipe) -> tuple[str, str | None]:
    """The rung of the ladder for this pipeline and the GPU's free memory now (torch.cuda.mem_get_info): "none" if
    all weights plus ACTIVATION_MARGIN fit, else "model" if the transformer plus the margin fits, else "sequential";
    with the note that says why (None for "none"). Apart from the load so that each rung is tested on a CPU."""
    import torch

    footprint = {c.name: c.bytes for c in pipeline_footprint(pipe)}
    free, _total = torch.cuda.mem_get_info()
    if sum(footprint.values()) + ACTIVATION_MARGIN <= free:
        return "none", None
    if footprint.get("transformer", 0) + ACTIVATION_MARGIN <= free:
        return "model", (
            f"all weights ({sum(footprint.values()) / GIB:.1f} GiB) exceed free GPU memory ({free / GIB:.1f} GiB): "
            "model CPU offload keeps one component at a time on the GPU (slower start of each phase)"
        )
    return "sequential", (
        f"the transformer alone ({footprint.get('transformer', 0) / GIB:.1f} GiB) exceeds free GPU memory "
        f"({free / GIB:.1f} GiB): sequential CPU offload streams layers to the GPU (much slower)"
    )


def load_bf16(spec, ctx: LoadContext, backend: Backend):
    """On the GPU if everything fits, else model CPU offload, else sequential CPU offload (slowest)."""
    pipe = from_pretrained(ctx)
    ctx.offload, note = offload_for(pipe)
    if ctx.offload == "none":
        pipe.to("cuda")
    elif ctx.offload == "model":
        pipe.enable_model_cpu_offload()
    else:
        pipe.enable_sequential_cpu_offload()
    if note:
        ctx.notes.append(note)
    if ctx.offload == "none":  # compiled bf16 vs eager bf16: the noise floor of the bench's fidelity figures
        compile_if_wanted(pipe, spec, backend, ctx)
    return pipe


BACKENDS = (
    Backend(
        type="flux-bf16",
        family="bf16",
        what="FLUX.1-dev in bf16 (gated): the reference every quantized backend is compared with; 36 GB, offloads "
        "to the CPU on smaller cards",
        load=load_bf16,
        why_gpu="33 GB of bf16 weights; a CPU would take hours per image",
        min_capability=(8, 0),
        compilable=True,  # compiled bf16 vs eager bf16 is the noise floor of the bench's fidelity figures
        cuda_graph=True,  # captured and replayed in bench run 26 (H100, full size)
        synthetic_kind="bf16",
        download_gib=34,
        vram_gib=36,
        offload_ok=True,
        uses=("core", "img2img", "offload"),
        reference=True,
        lora="yes",
    ),
)
