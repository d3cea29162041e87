"""Tiny random-weight FluxFillPipeline / FluxControlPipeline / FluxKontextPipeline for the knowledge tests.

fluxnb's tiny components (fluxnb.models.tiny.tiny_components: the transformer's channels those of each task) put into
any pipeline class, including a mismatched one (a FLUX.1-dev transformer in FluxFillPipeline) as users' mistakes do.
They run in milliseconds on the CPU.
"""

from __future__ import annotations

from fluxnb.models.tiny import TINY_DIMS, pipeline_of, tiny_components

PIPELINES = {"fill": "FluxFillPipeline", "control": "FluxControlPipeline", "kontext": "FluxKontextPipeline",
             "dev": "FluxPipeline", "img2img": "FluxImg2ImgPipeline"}
TASKS = {"fill": "fill", "control": "control", "kontext": "kontext", "dev": "text-to-image",
         "img2img": "text-to-image"}  # whose transformer each kind has (fluxnb.models.tasks)
PACKED = 4 * TINY_DIMS["vae"]["latent_channels"]  # 64, as FLUX.1-dev's x_embedder input


def pipeline_class(kind: str):
    import diffusers

    return getattr(diffusers, PIPELINES[kind])  # AttributeError where this diffusers has no such pipeline


def build(kind: str, transformer: str | None = None):
    """The tiny pipeline `kind` ("fill", "control", "kontext", "dev", "img2img") with the transformer of
    `transformer` (default: its own; e.g. build("fill", transformer="dev") puts a FLUX.1-dev-shaped transformer
    into FluxFillPipeline): fluxnb's tiny components (fluxnb.models.tiny) in another pipeline class."""
    pipe = pipeline_of(pipeline_class(kind), tiny_components(TASKS[transformer or kind]))
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
