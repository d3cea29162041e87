"""One image on several GPUs (latency): diffusers' own context parallelism, Ulysses or ring attention.

Every rank holds the whole pipeline on its own GPU (cuda:LOCAL_RANK) and runs the same denoising loop with the same
seeded latents; the transformer's image+text tokens are split over the ranks and diffusers' hooks
(`ContextParallelConfig`, `ModelMixin.enable_parallelism`) exchange them inside attention: Ulysses trades sequence
shards for head shards with one all-to-all per attention (needs the head count, 24 for FLUX, divisible by the
degree); ring passes key/value shards around and merges partial results by their log-sum-exp, so it needs an
attention backend that returns the LSE (`_native_cudnn` here: diffusers' default SDPA path refuses return_lse).

What works where (from diffusers' source, checked before anything loads):
- diffusers 0.34 (the guide's stack) has no ContextParallelConfig: refused (0.42, the default stack, has it).
- CPU: refused (the all-to-all and ring exchanges run on NCCL; gloo has no all_to_all_single).
- bf16 (flux-bf16) and the tiny model: supported (bf16 measured by scripts/issue16_gpu.sh).
- torchao (flux-torchao-*): the hooks split activations, not weights, so the quantized linears are untouched:
  allowed, not measured here; a `compile: true` entry is refused (hooks added after the blocks were compiled).
- bitsandbytes (flux-bnb-*): refused: each rank's weights would live on cuda:RANK, and bitsandbytes-quantized
  models have had bugs on devices other than cuda:0; use data parallel (`--gpus N` without --parallel) instead.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RequestError
from ..models.backends import Backend

MODES = ("ulysses", "ring")
RING_ATTENTION_BACKEND = "_native_cudnn"  # returns the LSE that ring attention merges by


def context_parallel_available() -> str | None:
    """None where this diffusers has context parallelism, else why not."""
    import diffusers

    if hasattr(diffusers, "ContextParallelConfig"):
        return None
    return (f"diffusers {diffusers.__version__} has no context parallelism (ContextParallelConfig and "
            "enable_parallelism came after 0.34; the default stack's diffusers 0.42 has them)")


def check_context_parallel(mode: str, processes: int, device: str, backend: Backend, compiled: bool) -> None:
    """Refuse, before anything loads, a context-parallel run this stack or model cannot do (RequestError)."""
    if mode not in MODES:
        raise RequestError("parallel", f"--parallel {mode!r} is not a context-parallel mode",
                           fix=f"one of: {', '.join(MODES)} (or leave --parallel out for data parallel)")
    why = context_parallel_available()
    if why:
        raise RequestError("parallel", f"--parallel {mode}: {why}.",
                           fix="use the default stack (diffusers 0.42, requirements/default.txt), or data "
                           "parallel (--gpus N without --parallel), which works on every stack")
    if device != "cuda":
        raise RequestError("parallel", f"--parallel {mode} needs CUDA GPUs: the ranks exchange attention shards "
                           "over NCCL, and gloo (CPU) has no all-to-all.",
                           fix="run on a host with 2+ GPUs, or leave --parallel out (data parallel runs on CPUs)")
    if processes < 2:
        raise RequestError("parallel", f"--parallel {mode} splits one image over several GPUs; this run has "
                           f"{processes} process(es).", fix="--gpus 2 (or more) on a host with that many GPUs")
    if backend.family == "bnb":
        raise RequestError("parallel", f"--parallel {mode} with {backend.type}: every rank would hold its weights "
                           "on its own GPU (cuda:RANK), and bitsandbytes-quantized models have had bugs on devices "
                           "other than cuda:0.",
                           fix="a bf16 entry (flux-dev) for context parallelism, or data parallel (--gpus N without "
                           "--parallel: each rank sees its GPU as cuda:0)")
    if compiled:
        raise RequestError("parallel", f"--parallel {mode} with a `compile: true` entry: the context-parallel "
                           "hooks would be added to already compiled blocks (not supported here).",
                           fix="an entry without compile (flux-dev), or data parallel")


def enable_context_parallel(pipe: Any, mode: str, degree: int) -> dict[str, Any]:
    """Split `pipe`'s transformer over the `degree` ranks of the initialised process group; return what was set."""
    from diffusers import ContextParallelConfig

    transformer = pipe.transformer
    heads = getattr(transformer.config, "num_attention_heads", None)
    if mode == "ulysses" and heads is not None and heads % degree:
        raise RequestError("parallel", f"Ulysses over {degree} GPUs needs the attention heads ({heads}) divisible "
                           f"by {degree}.", fix=f"--gpus with a divisor of {heads}, or --parallel ring")
    attention = None
    if mode == "ring":
        transformer.set_attention_backend(RING_ATTENTION_BACKEND)
        attention = RING_ATTENTION_BACKEND
    config = ContextParallelConfig(**{f"{mode}_degree": degree})
    transformer.enable_parallelism(config=config)
    return {"mode": mode, "degree": degree, "attention_backend": attention or "default", "heads": heads}
