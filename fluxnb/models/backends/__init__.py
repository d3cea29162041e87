"""The registry of model types: one frozen `Backend` record per `type:` of model_config.yaml.

One module per backend family (bnb, bf16, torchao, tiny), each with a `BACKENDS` tuple of records; this module
maps type names to them. Adding a backend = one record in a family's module (or a new module listed in FAMILIES)
plus its tests. Importing the registry imports nothing heavy: torch, diffusers, bitsandbytes and torchao load
inside a record's load function.

Besides the families: `base` (what a record is, the loading steps they share), `cuda_graph` (a compiled forward
replayed as one CUDA graph) and the torchao types' compiled kernels: `matvec` (the one-row AdaLN layers) and
`fp8_rows` (the float8 GELU branches), each with its Triton kernel in a `*_triton` module imported only with triton.
"""

from __future__ import annotations

from types import MappingProxyType

from ...core.errors import ModelUnavailableError
from . import bf16, bnb, tiny, torchao
from .base import Backend, LoadContext, compile_wanted, lora_for

FAMILIES = (bnb, bf16, torchao, tiny)
REGISTRY: MappingProxyType[str, Backend] = MappingProxyType(
    {backend.type: backend for family in FAMILIES for backend in family.BACKENDS}
)

__all__ = ["Backend", "LoadContext", "REGISTRY", "check_device", "compile_wanted", "get_backend", "lora_for",
           "types_where", "types_running_on"]


def get_backend(model_type: str) -> Backend:
    """The record of a type, or an error listing the types that exist."""
    if model_type not in REGISTRY:
        raise ModelUnavailableError(f"unknown model type {model_type!r}.",
                                    fix=f"use one of: {', '.join(REGISTRY)} (fluxnb/models/backends/).")
    return REGISTRY[model_type]


def types_where(flag: str) -> list[str]:
    """The types whose record has `flag` set (e.g. "compilable", "offloadable_text_encoder"), sorted."""
    return sorted(t for t, backend in REGISTRY.items() if getattr(backend, flag))


def types_running_on(capability: tuple[int, int]) -> list[str]:
    """The CUDA types whose kernels run on a GPU of this compute capability."""
    return [t for t, b in REGISTRY.items()
            if b.needs_cuda and (b.min_capability is None or capability >= b.min_capability)]


def check_device(
    spec, backend: Backend, device: str, capability: tuple[int, int] | None, gpu: str = "this GPU"
) -> None:
    """Refuse before loading anything: a CUDA backend without CUDA, or a GPU too old for the backend's kernels."""
    if backend.needs_cuda and device != "cuda":
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.type}) needs a CUDA GPU: {backend.why_gpu}. This machine has none "
            "(torch.cuda.is_available() is False; `fluxnb doctor` says why).",
            fix="run on a GPU machine, or use model='flux-tiny' (or 'auto') here.",
        )
    need = backend.min_capability
    if device == "cuda" and need is not None and capability is not None and tuple(capability) < need:
        raise ModelUnavailableError(
            f"{spec.type} ({backend.what}) needs a GPU of compute capability {backend.capability_text} or newer; "
            f"{gpu} is {capability[0]}.{capability[1]}.",
            fix=f"on this GPU use a model of type {', '.join(types_running_on(tuple(capability)))} "
            "(`fluxnb doctor` lists the entries).",
        )
