"""Which attention kernel the transformer runs: chosen per GPU by the backend record, said in the load report and in
each image's metadata.

diffusers (0.36+) dispatches FLUX attention through its attention-backend registry: a processor's own
`_attention_backend` when one was set (`transformer.set_attention_backend(...)`), else the registry's active one
("native": torch's scaled_dot_product_attention, which picks flash / memory-efficient / cuDNN kernels itself).
Older diffusers lines (the guide's 0.34) call scaled_dot_product_attention directly.

An entry's `attention:` key picks the kernel: `auto` (the default) takes the record's choice for this GPU's compute
capability and the entry's task (`Backend.attention`, each choice with why: measured, or predicted for a card no lane
has), and plain SDPA where the record has none or the choice cannot run or pay here (package, diffusers line, head
size, a step cache for a kernel that needs the CUDA graph: said in a note); a kernel named outright is refused before
anything loads where it cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from packaging.version import Version

from ..core.compat import (
    active_attention_backend,
    processor_attention_backend,
    register_attention_backend,
    registered_attention_backend,
    set_attention_backend_unchecked,
)
from ..core.environment import package_version
from ..core.errors import ModelUnavailableError
from ..core.facts import report_only
from .tasks import TEXT_TO_IMAGE

SDPA = "native (torch scaled_dot_product_attention)"
# diffusers' name for the Triton int8-QK / fp16-PV kernel, the one sageattention 1.0.x implements: fluxnb registers
# its own call of that package under it (fluxnb/models/sage_attention.py)
SAGE_TRITON_BACKEND = "_sage_qk_int8_pv_fp16_triton"
# the name fluxnb's cuDNN float8 kernel is registered under: FlashAttention 3's, Hopper's other float8-capable kernel
# (diffusers has no name for cuDNN's float8 attention; why this one: fluxnb/models/cudnn_fp8_attention.py)
CUDNN_FP8_BACKEND = "_flash_3"


@dataclass(frozen=True)
class AttentionKernel:
    """One attention kernel an entry may ask for (`attention: NAME`)."""

    name: str
    what: str
    package: str | None = None  # the distribution it needs beyond torch and diffusers
    install: str | None = None
    min_capability: tuple[int, int] | None = None  # None: wherever torch runs
    head_dims: tuple[int, ...] | None = None  # the head sizes its kernels take (FLUX: 128; the tiny model: 16)
    min_diffusers: str | None = None  # its diffusers registry (0.36)
    ada_speedup: float = 1.0  # its speed against bf16 FlashAttention2 on an Ada card (the L4's), published
    ada_source: str = ""
    graphed_only: str | None = None  # why it pays only where the steps replay as a CUDA graph (None: anywhere)


KERNELS = {
    "sdpa": AttentionKernel("sdpa", "torch scaled_dot_product_attention in bf16 (cuDNN or flash kernels, picked by "
                                    "torch)"),
    "sage": AttentionKernel(
        "sage", "SageAttention: Q and K in int8 with per-block scales, P and V in fp16 "
                "(fluxnb/models/sage_attention.py)",
        package="sageattention", install="pip install 'sageattention==1.0.6' (Triton kernels, any OS with triton)",
        min_capability=(8, 0), head_dims=(64, 96, 128), min_diffusers="0.36",
        ada_speedup=2.1, ada_source="SageAttention (arXiv 2410.02367): 2.1x FlashAttention2's speed on an RTX 4090, "
                                    "an Ada card (compute capability 8.9) like the L4"),
    "cudnn-fp8": AttentionKernel(
        "cudnn-fp8", "cuDNN's float8 attention: Q, K, V and O in float8 e4m3, one scale per tensor, V centred "
                     "(fluxnb/models/cudnn_fp8_attention.py)",
        package="nvidia-cudnn-frontend", install="pip install 'fluxnb[cudnn-fp8]' (nvidia-cudnn-frontend 1.14.0; its "
                                                 "float8 forward runs on Hopper and newer)",
        min_capability=(9, 0), head_dims=(64, 128), min_diffusers="0.36",
        graphed_only="each call costs cuDNN's Python graph execution on the CPU, which a CUDA graph replay skips: "
                     "with a step cache on (no graph) the float8 entry took 2.64 s/image against 1.90 s with SDPA "
                     "(bench runs 43 and 36, H100)"),
}
SETTINGS = ("auto", *KERNELS)


@dataclass(frozen=True)
class AttentionChoice:
    """A backend record's kernel for one compute capability, and why (the run that measured it, or the prediction);
    for the entries of `tasks` only, when given (fluxnb.models.tasks: attention's share of a step is the task's)."""

    capability: tuple[int, int]
    kernel: str
    why: str
    tasks: tuple[str, ...] = ()


def _cannot_run(kernel: AttentionKernel, device: str, capability: tuple[int, int] | None) -> str | None:
    """Why `kernel` cannot run here (before any weights load), or None."""
    if kernel.package is None:
        return None
    if device != "cuda":
        return f"its kernels need a CUDA GPU (compute capability {_text(kernel.min_capability)}+); this is {device}"
    if capability is not None and kernel.min_capability and tuple(capability) < kernel.min_capability:
        return f"it needs compute capability {_text(kernel.min_capability)}+, this GPU is {_text(capability)}"
    if kernel.min_diffusers and Version(package_version("diffusers") or "0") < Version(kernel.min_diffusers):
        return (f"it runs through diffusers' attention registry (diffusers >= {kernel.min_diffusers}); installed: "
                f"{package_version('diffusers')}")
    if package_version(kernel.package) is None:
        return f"the {kernel.package} package is not installed ({kernel.install})"
    return None


def _not_graphed(kernel: AttentionKernel, cache: str | None) -> str | None:
    """Why `kernel` would not pay with the entry's step cache on (its steps are not replayed as a CUDA graph)."""
    if kernel.graphed_only and cache:
        return f"the entry's step cache ({cache}) keeps its steps out of a CUDA graph, and {kernel.graphed_only}"
    return None


def kernel_that_ran(attention_label: str | None) -> AttentionKernel | None:
    """fluxnb's own kernel that a load report's attention label names (`_label` starts it with the kernel's name);
    None for SDPA or diffusers' own backends."""
    return next((k for name, k in KERNELS.items() if name != "sdpa" and (attention_label or "").startswith(name)),
                None)


def cached_run_note(attention_label: str | None, cache: str | None) -> str | None:
    """A note for a run whose request turns a step cache on where the loaded model runs a kernel that pays only in a
    CUDA graph (`attention_label`: the load report's); None when there is nothing to say."""
    kernel = kernel_that_ran(attention_label)
    if kernel is None or not kernel.graphed_only or not cache:
        return None
    return (f"note: this run's step cache ({cache}) keeps the steps out of a CUDA graph, and the model runs "
            f"{kernel.name} attention: {kernel.graphed_only}. Faster: load the entry with `cache: {cache}` (its "
            "attention is then chosen for that) or with `attention: sdpa`")


def _text(capability) -> str:
    return f"{capability[0]}.{capability[1]}" if capability else "?"


def choice_for(choices: tuple[AttentionChoice, ...], capability: tuple[int, int] | None,
               task: str = TEXT_TO_IMAGE) -> AttentionChoice | None:
    """A record's choice for this compute capability and task, the first that fits (None: the record has none for
    them, or no GPU)."""
    return next((c for c in choices if capability is not None and tuple(capability) == c.capability
                 and (not c.tasks or task in c.tasks)), None)


class AttentionPlan(NamedTuple):
    """What choose_attention decided: the kernel, a note for the load report (None: nothing to say), and why the
    record's choice for this GPU cannot run here when SDPA stands in for it (None otherwise)."""

    kernel: str
    note: str | None = None
    fallback: str | None = None


def choose_attention(spec, choices: tuple[AttentionChoice, ...], device: str,
                     capability: tuple[int, int] | None) -> AttentionPlan:
    """The kernel an entry runs here, with its note. Refuses a kernel the entry names outright that cannot run here,
    naming the entry's key, what is allowed and the fix."""
    setting = spec.attention
    if setting == "auto":
        choice = choice_for(choices, capability, spec.task)
        if choice is None or choice.kernel == "sdpa":
            return AttentionPlan("sdpa", None if choice is None else f"attention: sdpa on {_text(capability)} "
                                 f"({choice.why})")
        kernel = KERNELS[choice.kernel]
        why_not = _cannot_run(kernel, device, capability) or _not_graphed(kernel, spec.cache)
        if why_not:
            return AttentionPlan("sdpa", f"attention: sdpa, not {choice.kernel} (the choice for {_text(capability)}: "
                                 f"{choice.why}): {why_not}", why_not)
        return AttentionPlan(choice.kernel, f"attention: {choice.kernel} on {_text(capability)} ({choice.why})")
    why_not = _cannot_run(KERNELS[setting], device, capability)
    if why_not:
        raise ModelUnavailableError(
            f"model {spec.name!r} asks for `attention: {setting}`, which cannot run here: {why_not}.",
            fix=f"set `attention: auto` (the record's choice for this GPU, else sdpa) or `attention: sdpa` in the "
            f"entry, or {KERNELS[setting].install or 'run on a machine that has it'}")
    return AttentionPlan(setting, f"attention: {setting} (the entry's `attention:` key)")


def fit_to_heads(plan: AttentionPlan, transformer, setting: str) -> AttentionPlan:
    """The plan for this transformer's head size (known only once it is loaded): the record's choice (`auto`) where
    its kernel does not take that size falls back to SDPA, said in the note; a kernel named outright stays, and
    use_attention refuses it."""
    misfit = _head_size_misfit(KERNELS[plan.kernel], transformer)
    if setting != "auto" or misfit is None:
        return plan
    why = f"it {misfit}"
    return AttentionPlan("sdpa", f"attention: sdpa, not {plan.kernel} (the record's choice for this GPU): {why}", why)


def _head_size_misfit(record: AttentionKernel, transformer) -> str | None:
    """How `transformer`'s attention heads do not fit the kernel's code ('takes head sizes ...; this transformer's
    is N'), or None when they do."""
    head_dim = transformer.config.attention_head_dim
    if not record.head_dims or head_dim in record.head_dims:
        return None
    return f"takes head sizes {', '.join(map(str, record.head_dims))}; this transformer's is {head_dim}"


def use_attention(transformer, kernel: str) -> None:
    """Make every attention processor of `transformer` run `kernel` (sdpa: nothing to change). Refuses head sizes
    the kernel's code does not take (only known once the transformer is loaded)."""
    if kernel == "sdpa":
        return
    misfit = _head_size_misfit(KERNELS[kernel], transformer)
    if misfit:
        raise ModelUnavailableError(
            f"attention kernel {kernel!r} {misfit} (FLUX.1's is 128; the tiny test model's is 16).",
            fix="set `attention: sdpa` (or auto) in the entry")
    if kernel == "cudnn-fp8":
        from .cudnn_fp8_attention import diffusers_backend  # imports torch, defines the custom op: only when asked

        register_attention_backend(CUDNN_FP8_BACKEND, diffusers_backend)
        set_attention_backend_unchecked(transformer, CUDNN_FP8_BACKEND)
        return
    if Version(package_version("sageattention") or "0") >= Version("2.1.1"):
        transformer.set_attention_backend("sage")  # diffusers' own backend: the 2.x CUDA kernels
        return
    from .sage_attention import diffusers_backend  # imports torch and defines the custom op: only when asked for

    register_attention_backend(SAGE_TRITON_BACKEND, diffusers_backend)
    set_attention_backend_unchecked(transformer, SAGE_TRITON_BACKEND)


@report_only("attention backend lookup")
def attention_backend(transformer) -> str:
    """The backend name(s) the transformer's attention processors use (private diffusers registry: report only)."""
    active = active_attention_backend()
    if active is None:  # diffusers before its registry (0.36) calls scaled_dot_product_attention itself
        return SDPA
    chosen = {processor_attention_backend(m.processor) for m in transformer.modules() if hasattr(m, "processor")}
    chosen.discard(None)
    if chosen:
        return ", ".join(sorted(_label(name) for name in chosen))
    return SDPA if active == "native" else active


def _label(name: str) -> str:
    """A registry name as people read it: fluxnb's own registrations say which package runs them."""
    if SAGE_TRITON_BACKEND in name:
        return f"sage (sageattention {package_version('sageattention')}, Triton: int8 QK, fp16 PV)"
    if name == CUDNN_FP8_BACKEND and getattr(registered_attention_backend(name), "__module__", "") == \
            f"{__package__}.cudnn_fp8_attention":  # fluxnb's kernel under that name, not diffusers' own
        return (f"cudnn-fp8 (nvidia-cudnn-frontend {package_version('nvidia-cudnn-frontend')}: float8 Q, K, V, O, "
                "one scale per tensor)")
    return name
