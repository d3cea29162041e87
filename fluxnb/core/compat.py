"""Every library internal fluxnb relies on, each behind one small named function, with the range it was checked on.

Private names move between releases. Keeping them here, one function each, means an upgrade that drops one shows
up as a named failing test (tests/unit/test_compat.py checks each name below against the installed library) instead
of a traceback in a user's load. The ranges are pyproject.toml's dependency bounds: a package whose private API is
used gets an upper bound there, the next release untested until a lane runs it. Lookups that only feed a report
stay guarded where they are called (fluxnb/core/facts.py `report_only`), so a moved internal makes them "unknown".

This module sits at the bottom of the layers (pyproject.toml [tool.importlinter]): it imports third-party
libraries only, each inside the function that needs it (torch and diffusers are heavy to import).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Checked:
    """The versions of one library whose internals the functions below were checked on."""

    lowest: str  # pyproject.toml's floor
    below: str | None  # pyproject.toml's upper bound (exclusive); None: no private API that can break a load
    tested: str  # the releases a lane ran


# Why these bounds: they are pyproject.toml's (tests/unit/test_compat.py checks that they agree and that the
# installed versions lie within them); the upper bounds are the first releases no lane has run.
CHECKED: dict[str, Checked] = {
    "torch": Checked("2.4", "2.15", "2.11 (GPU lane), 2.13 (CPU lanes)"),
    "diffusers": Checked("0.31", "0.43", "0.34 (guide line), 0.42 (default line)"),
    "peft": Checked("0.15", "0.22", "0.21.2"),
    "torchao": Checked("0.15", "0.19", "0.17"),
    # a log filter's logger name only (fluxnb/core/quiet.py): a rename lets one harmless line through, nothing breaks
    "bitsandbytes": Checked("0.45", None, "0.50"),
}

# --- torch: torch.compile's settings and counters (torch >= 2.4, < 2.15) -------------------------------------------


def inductor_mode_options(mode: str | None) -> dict[str, Any]:
    """The inductor settings a torch.compile `mode` stands for (torch._inductor.list_mode_options; no public API
    spells them out, and torch.compile takes `mode` or `options`, not both)."""
    import torch._inductor

    return torch._inductor.list_mode_options(mode or "default")


def enable_inductor_local_caches() -> None:
    """Inductor's on-disk FX graph and autotune caches on (torch._inductor.config; their environment variables are
    read only once, at torch's import, too early for a cache folder chosen later)."""
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True


def inductor_default_cache_dir() -> str:
    """The folder inductor uses when nobody chose one (torch._inductor.runtime.cache_dir_utils; no public API)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()


def compile_counters() -> tuple[int, float]:
    """torch.compile's graphs compiled so far in this process and the seconds spent (torch._dynamo.utils counters;
    no public API). Report only: callers guard it with facts.report_only."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(compilation_time_metrics.get("_compile.compile_inner", []))
    return int(counters["stats"]["unique_graphs"]), float(seconds)


def fx_graph_cache_counts() -> tuple[int, int]:
    """Inductor's FX graph cache hits and misses so far in this process (torch._dynamo.utils counters)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"]), int(counters["inductor"]["fxgraph_cache_miss"])


def compiled_call(module) -> Callable | None:
    """The compiled forward `Module.compile` installed on a module, None if it was not compiled
    (Module._compiled_call_impl; no public API)."""
    return getattr(module, "_compiled_call_impl", None)


def set_compiled_call(module, call: Callable) -> None:
    """Replace the compiled call `Module.compile` installed (Module._compiled_call_impl) with a wrapper of it."""
    module._compiled_call_impl = call


def scaled_mm_rows(q, scale, weight, bias, out_dtype):
    """q (float8, per-row `scale`) times a torchao Float8Tensor weight transposed, as torchao's own float8 linear
    calls it: torch._scaled_mm (private, no public float8 matmul) on the weight's internals (qdata, scale,
    mm_config: torchao >= 0.15, < 0.19)."""
    import torch

    return torch._scaled_mm(q, weight.qdata.t(), scale_a=scale, scale_b=weight.scale.t(), bias=bias,
                            out_dtype=out_dtype, use_fast_accum=weight.mm_config.use_fast_accum)


# --- torchao: its quantized tensors' internals (torchao >= 0.15, < 0.19) -------------------------------------------


def int8_rows(weight) -> tuple[Any, Any]:
    """A torchao Int8Tensor's int8 data and per-row scales (its `qdata` and `scale` fields; not a public API)."""
    return weight.qdata, weight.scale


def activation_quantization(weight) -> Any:
    """How a torchao quantized weight's layer quantizes its input (its `act_quant_kwargs` field: None for
    weight-only; for float8, `granularity`, `float8_dtype`, `hp_value_lb`/`hp_value_ub`), or None."""
    return getattr(weight, "act_quant_kwargs", None)


def weight_scale_shape(weight) -> tuple[int, ...]:
    """The shape of a torchao quantized weight's scales (its `scale` field): (rows, 1) when scaled per row."""
    return tuple(weight.scale.shape)


# --- diffusers (>= 0.31, < 0.43) ------------------------------------------------------------------------------------


def repeated_blocks(model) -> list[str] | None:
    """The block class names `compile_repeated_blocks` compiles (ModelMixin._repeated_blocks); None on diffusers
    lines without regional compile."""
    return getattr(model, "_repeated_blocks", None)


def add_repeated_block(model, name: str) -> None:
    """Have `compile_repeated_blocks` compile blocks of class `name` too (a swapped-in subclass of a repeated block:
    the list is matched by class name)."""
    repeated = repeated_blocks(model)
    if repeated is not None and name not in repeated:
        model._repeated_blocks = [*repeated, name]


def execution_device(pipe):
    """The device a pipeline runs its models on, offload hooks counted (DiffusionPipeline._execution_device)."""
    return pipe._execution_device


def unpack_latents(pipe, latents, height: int, width: int):
    """FLUX's packed 2x2 latent tokens back to a latent image (FluxPipeline._unpack_latents)."""
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def active_attention_backend() -> str | None:
    """The name of diffusers' active attention backend ("native": torch's scaled_dot_product_attention); None on
    lines before the registry (0.36). diffusers' private _AttentionBackendRegistry: report only."""
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    except ImportError:
        return None
    active, _ = _AttentionBackendRegistry.get_active_backend()
    return str(getattr(active, "value", active))


def processor_attention_backend(processor) -> str | None:
    """The backend `set_attention_backend` gave one attention processor (its `_attention_backend`), None if none."""
    backend = getattr(processor, "_attention_backend", None)
    return str(getattr(backend, "value", backend)) if backend else None


def register_attention_backend(name: str, function: Callable) -> None:
    """Make diffusers' attention backend `name` run `function` (its registry's `register` decorator, the one its own
    backends are declared with; `_AttentionBackendRegistry` is private, diffusers >= 0.36)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    _AttentionBackendRegistry.register(AttentionBackendName(name))(function)


def registered_attention_backend(name: str) -> Callable | None:
    """The function diffusers' attention backend `name` runs now (None: no such name or no registry, < 0.36)."""
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    except ImportError:
        return None
    return _AttentionBackendRegistry._backends.get(AttentionBackendName(name))


def set_attention_backend_unchecked(transformer, name: str) -> int:
    """Every attention processor of `transformer` runs backend `name`; returns how many. What the public
    `set_attention_backend` does, without its requirement check, which wants sageattention >= 2.1.1 even for a
    backend fluxnb registered itself (register_attention_backend)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    backend, count = AttentionBackendName(name), 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = backend
            count += 1
    return count


def kontext_keep_size() -> dict[str, Any]:
    """FluxKontextPipeline's argument that keeps the reference picture at the given size instead of stretching it to
    the nearest of Kontext's preferred resolutions (`_auto_resize`, a leading-underscore parameter of its __call__,
    diffusers >= 0.35; tests/unit/test_compat.py checks the signature)."""
    return {"_auto_resize": False}


# --- diffusers' step cache hooks (>= 0.36, where FirstBlockCache and TaylorSeer exist; < 0.43) ---------------------

def register_block_class_like(block_class: type, base: type) -> None:
    """Tell diffusers' hooks that `block_class` (a subclass fluxnb swaps in) returns what `base` returns: its
    FirstBlockCache, MagCache and layer-skip hooks look a block's outputs up by its exact class in the private
    `TransformerBlockRegistry` and refuse any other ("Model class ... not registered"). A no-op
    where the registry does not exist."""
    try:
        from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    except ImportError:
        return
    known = TransformerBlockRegistry.get(base)
    TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(
        return_hidden_states_index=known.return_hidden_states_index,
        return_encoder_hidden_states_index=known.return_encoder_hidden_states_index,
        hidden_states_argument_name=known.hidden_states_argument_name,
        encoder_hidden_states_argument_name=known.encoder_hidden_states_argument_name))


# The names diffusers registers the deciding hook of each step cache under (diffusers.hooks.first_block_cache
# _FBC_LEADER_BLOCK_HOOK: the head block's, which decides whether the other blocks run; diffusers.hooks
# .taylorseer_cache _TAYLORSEER_CACHE_HOOK: on each block, all on the same fixed schedule).
STEP_CACHE_HOOKS = ("fbc_leader_block_hook", "taylorseer_cache")


def step_cache_hook(transformer) -> Any:
    """The first hook of diffusers' step caches found under `transformer` (each module's HookRegistry, its
    `_diffusers_hook`), None when no step cache is on."""
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in STEP_CACHE_HOOKS if registry is not None else ():
            hook = registry.get_hook(name)
            if hook is not None:
                return hook
    return None


def step_cache_decision(hook) -> tuple[str, bool]:
    """The denoiser call a step cache hook just served (its cache_context: "cond", or "uncond" with true CFG) and
    whether the transformer's blocks ran in full on it: FirstBlockCache's shared state `should_compute`, or a
    TaylorSeer state updated at its current step (`last_update_step`, `current_step`). Read from the hook's
    `state_manager`, inside the pipeline's cache_context."""
    manager = hook.state_manager
    state = manager.get_state()
    if hasattr(state, "should_compute"):
        return manager.context.name, bool(state.should_compute)
    return manager.context.name, state.last_update_step == state.current_step


# --- peft (>= 0.15, < 0.22) -----------------------------------------------------------------------------------------


def set_hotswap_scaling(lora_module, adapter: str, scale: float) -> None:
    """A hotswap slot's scale written in place into PEFT's scaling tensor (peft.utils.hotswap._update_scaling): no
    new Python float, so compiled code does not recompile. PEFT's public set_adapters would replace the tensor."""
    from peft.utils.hotswap import _update_scaling

    _update_scaling(lora_module, adapter, scale)


# --- bitsandbytes (>= 0.45) ------------------------------------------------------------------------------------------

# The logger of bitsandbytes' 8-bit matmul (a private module's name): fluxnb/core/quiet.py drops its per-matmul line.
BNB_MATMUL_LOGGER = "bitsandbytes.autograd._functions"
