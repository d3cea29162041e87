"""Tiny random-weight FluxFillPipeline / FluxControlPipeline / FluxKontextPipeline for the knowledge tests.

fluxnb's own builders for the editing pipelines are written elsewhere (issue 24); this copies what the knowledge
base's tests need from the issue's prototype: the tiny FLUX's components with the transformer's channels changed.
  Fill:    in_channels 384 = 64 noise latents (16 channels, 2x2 packed) + 64 masked-image latents + 256 mask
  Control: in_channels 128 = 64 noise latents + 64 VAE latents of the control image
  Kontext: in_channels 64, as FLUX.1-dev (the reference image is appended as extra tokens)
They run in milliseconds on the CPU.
"""

from __future__ import annotations

import inspect
from copy import deepcopy

from fluxnb.models.tiny import TINY_DIMS, TINY_SEED, build_flux_pipeline

PIPELINES = {"fill": "FluxFillPipeline", "control": "FluxControlPipeline", "kontext": "FluxKontextPipeline",
             "dev": "FluxPipeline", "img2img": "FluxImg2ImgPipeline"}
PACKED = 4 * TINY_DIMS["vae"]["latent_channels"]  # 64, as FLUX.1-dev's x_embedder input
VAE_SCALE = 2 ** (len(TINY_DIMS["vae"]["block_out_channels"]) - 1)  # 8
IN_CHANNELS = {"fill": 2 * PACKED + 4 * VAE_SCALE * VAE_SCALE, "control": 2 * PACKED, "kontext": PACKED,
               "dev": PACKED}


def editing_dims(in_channels: int) -> dict:
    """The tiny dims with the transformer's in_channels changed (out_channels stays 64)."""
    dims = deepcopy(TINY_DIMS)
    dims["transformer"].update(in_channels=in_channels, out_channels=PACKED)
    return dims


def pipeline_class(kind: str):
    import diffusers

    return getattr(diffusers, PIPELINES[kind])  # AttributeError where this diffusers has no such pipeline


def build(kind: str, transformer: str | None = None):
    """The tiny pipeline `kind` ("fill", "control", "kontext", "dev", "img2img") with the transformer of
    `transformer` (default: its own; e.g. build("fill", transformer="dev") puts a FLUX.1-dev-shaped transformer
    into FluxFillPipeline)."""
    base = build_flux_pipeline(editing_dims(IN_CHANNELS[transformer or kind]), TINY_SEED)
    cls = pipeline_class(kind)
    wanted = inspect.signature(cls.__init__).parameters  # Fill/Control take no image_encoder/feature_extractor
    pipe = cls(**{k: v for k, v in base.components.items() if k in wanted})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_state_dict(pipe, rank: int = 4, in_features: dict[str, int] | None = None,
                    ranks: dict[str, int] | None = None) -> dict:
    """A LoRA (diffusers key format, random weights) over the transformer's x_embedder, proj_out and the first
    single block's proj_out; `in_features` overrides a module's input width (e.g. {"x_embedder": 128} for a
    Canny/Depth Control LoRA, which widens FLUX.1-dev's 64 input channels), `ranks` a module's rank."""
    import torch

    in_features, ranks = in_features or {}, ranks or {}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name in ("x_embedder", "proj_out", "single_transformer_blocks.0.proj_out"):
        module = pipe.transformer.get_submodule(name)
        r = ranks.get(name, rank)
        fan_in = in_features.get(name, module.in_features)
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(r, fan_in, generator=generator) * 0.01
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, r, generator=generator) * 0.01
    return state
