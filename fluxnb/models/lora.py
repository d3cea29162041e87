"""LoRA adapters on a loaded model, through diffusers' own LoRA API (load_lora_weights, set_adapters, fuse_lora,
unload_lora_weights, enable_lora_hotswap; PEFT underneath).

What is loaded is remembered per transformer, so a batch with the same adapters loads nothing, a new scale is
set_adapters only, and a request without adapters restores the original weights (unload_lora_weights). Backends
whose record says `hotswap` (compiled blocks) keep one adapter slot: adapters and scales change in place and the
compiled code is reused (the first adapter on an already-run compiled model compiles once more).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.compat import set_hotswap_scaling
from ..core.errors import RequestError
from .backends import lora_for
from .loading import LoadedModel
from .lora_files import HOTSWAP_RANK, LoraChoice, local_path

SLOT = "fluxnb_slot"  # the one adapter name of a hotswap model


@dataclass
class AdapterState:
    """What a transformer holds: adapter name -> sha256 of its file, the scales set, fused or not."""

    loaded: dict[str, str] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    fused: bool = False
    hotswap_ready: bool = False


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_of(model: LoadedModel) -> AdapterState:
    """The adapters the model's transformer holds now (an empty state for a fresh model)."""
    transformer = model.pipe.transformer
    if transformer not in _STATES:
        _STATES[transformer] = AdapterState()
    return _STATES[transformer]


def _load(pipe, choice: LoraChoice, adapter_name: str, **kwargs: Any) -> None:
    """load_lora_weights, with its errors (shape or rank mismatch, unknown keys) named by file and fixed.

    The folder and weight_name are passed separately: diffusers 0.34 in offline mode insists on a weight_name.
    """
    file = Path(local_path(choice))
    channels = pipe.transformer.config.in_channels
    try:
        pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name, **kwargs)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        if adapter_name in (getattr(pipe.transformer, "peft_config", None) or {}) and not kwargs.get("hotswap"):
            pipe.delete_adapters(adapter_name)  # a half-loaded adapter must not stay active
        first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        if "size mismatch" in str(exc) or "shape" in str(exc):
            raise RequestError("loras", f"LoRA file {choice.file!r} does not fit this model's layers: {first}",
                               fix="the adapter was trained for another model or size (rank/shape mismatch): use "
                               "a LoRA trained for FLUX.1-dev.") from None
        raise RequestError("loras", f"LoRA file {choice.file!r} could not be applied to this model: {first}",
                           fix="check that it is a FLUX.1-dev LoRA; `fluxnb diagnose` explains known errors.") from None
    wanted = pipe.transformer.config.in_channels
    if wanted != channels:  # diffusers widened the input layer for it (a FLUX Control LoRA): the first image would die
        pipe.unload_lora_weights(reset_to_overwritten_params=True)  # every adapter out, the layer as it was
        raise RequestError("loras", f"LoRA file {choice.file!r} expects {wanted} input channels (a FLUX Control "
                           f"LoRA, made for the Canny or Depth model); this model takes {channels}.",
                           fix="use a LoRA trained for FLUX.1-dev itself")


def _scale_in_place(pipe, scale: float) -> None:
    """A hotswap slot's scale written into PEFT's scaling tensors (no new Python float: no recompile).

    diffusers' set_adapters would replace the tensors that enable_lora_hotswap made with floats, which compiled code
    specializes on; PEFT's hotswap helper updates them in place.
    """
    from peft.tuners.lora import LoraLayer

    for module in pipe.transformer.modules():
        if isinstance(module, LoraLayer) and SLOT in module.scaling:
            base = module.lora_alpha[SLOT] / module.r[SLOT]
            set_hotswap_scaling(module, SLOT, scale * base)


def _apply_hotswap(pipe, state: AdapterState, loras: tuple[LoraChoice, ...]) -> None:
    if not loras:  # switched off, not unloaded: unloading would change the compiled modules
        if state.loaded and state.scales.get(SLOT) != 0.0:
            _scale_in_place(pipe, 0.0)
            state.scales[SLOT] = 0.0
        return
    choice = loras[0]
    if not state.loaded:
        if not state.hotswap_ready:
            pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK)
            state.hotswap_ready = True
        _load(pipe, choice, SLOT)
    elif state.loaded[SLOT] != choice.sha256:
        _load(pipe, choice, SLOT, hotswap=True)
    state.loaded = {SLOT: choice.sha256}
    if state.scales.get(SLOT) != choice.scale:
        _scale_in_place(pipe, choice.scale)
        state.scales[SLOT] = choice.scale


def apply_loras(model: LoadedModel, loras: tuple[LoraChoice, ...], fuse: bool = False) -> dict[str, Any]:
    """Make the model hold exactly `loras` at their scales (fused or not); returns the metadata record of it.

    Raises RequestError naming the file when an adapter does not fit the model (nothing is generated then).
    """
    pipe, state = model.pipe, state_of(model)
    if lora_for(model.spec, model.backend)[0] == "hotswap":
        _apply_hotswap(pipe, state, loras)
        return {"fused": False, "hotswap": True} if loras else {}
    wanted = {choice.name: choice.sha256 for choice in loras}
    scales = {choice.name: choice.scale for choice in loras}
    if state.loaded == wanted and state.scales == scales and state.fused == fuse:
        return {"fused": fuse, "hotswap": False} if loras else {}
    if state.fused:
        pipe.unfuse_lora()
        state.fused = False
    if not loras:
        pipe.unload_lora_weights()  # the original modules back: the same pixels as before any adapter
        state.loaded, state.scales = {}, {}
        return {}
    stale = [name for name, sha in state.loaded.items() if wanted.get(name) != sha]
    if stale:
        pipe.delete_adapters(stale)
        for name in stale:
            state.loaded.pop(name)
    for choice in loras:
        if choice.name not in state.loaded:
            try:
                _load(pipe, choice, choice.name)
            except RequestError:
                if not getattr(pipe.transformer, "peft_config", None):  # _load unloaded every adapter
                    state.loaded, state.scales = {}, {}
                raise
            state.loaded[choice.name] = choice.sha256
    pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))
    state.scales = scales
    if fuse:
        pipe.fuse_lora(adapter_names=list(scales), lora_scale=1.0)
        state.fused = True
    return {"fused": fuse, "hotswap": False}


def set_scales(model: LoadedModel, scales: dict[str, float]) -> None:
    """New scales for loaded adapters (a LoRA-scale sweep): set_adapters, or in place on a hotswap slot."""
    state = state_of(model)
    if lora_for(model.spec, model.backend)[0] == "hotswap":
        (scale,) = scales.values()
        if state.scales.get(SLOT) != scale:
            _scale_in_place(model.pipe, scale)
            state.scales[SLOT] = scale
        return
    merged = {**state.scales, **scales}
    if merged != state.scales:
        model.pipe.set_adapters(list(merged), adapter_weights=list(merged.values()))
        state.scales = merged


def records(loras: tuple[LoraChoice, ...], scales: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The `loras` entry of an image's metadata: each adapter's file name, sha256 and the scale it ran at."""
    scales = scales or {}
    return [choice.record(scales.get(choice.name)) for choice in loras]
