"""A full-size synthetic FLUX.1-dev checkpoint: the real architecture and dimensions, random weights.

It lets the real loaders run at real scale with no download (GPU scale and speed tests, `fluxnb bench
--synthetic`): FluxTransformer2DModel with FLUX.1-dev's 19 double and 38 single blocks (11.9 B
parameters), the T5-XXL encoder (4.8 B), CLIP-L and the FLUX VAE, in bf16, saved in the hub layout;
then, from that bf16 save, the same model quantized with bitsandbytes (8-bit or NF4, transformer and
T5) through `from_pretrained(..., quantization_config=...)` and saved with `save_pretrained`, i.e. the
layout of `diffusers/FLUX.1-dev-bnb-8bit` / `-bnb-4bit`. So

    load_model(config.get("flux-dev-bnb-8bit"), checkpoint=ensure_synthetic_checkpoint("bnb-8bit"))

runs the guide's exact loader on 12 B parameters.

The editing models (issue 24) have the same components and FLUX.1-dev's dimensions but for the transformer's input
channels (fluxnb.models.tasks: FLUX.1-Fill 384, Kontext 64): `ensure_synthetic_checkpoint("bf16", task="fill")`
builds that transformer (fluxnb.models.tiny.task_dims) in the task's pipeline class (FluxFillPipeline...), so that
`load_model(config.get("flux-fill-bnb-8bit"), checkpoint=...)` runs the entry's real loader. Only bf16 is built for
them: their 8-bit and float8 entries quantize the bf16 checkpoint while it loads.

Weights are random (seeded): pictures are noise, and figures measured on them are speed and memory
figures, plus fidelity *between backends* on the same random model. Say so wherever they are shown.
The tokenizers are the tiny model's (their ids fit the real vocabularies).

Building needs a CUDA GPU for the quantized kinds (diffusers refuses bitsandbytes without one) and
about 34 GB of disk for bf16, 17 GB for 8-bit, 10 GB for NF4. Each kind is built once into its own
folder, atomically (a half-written folder is never used), with a marker file recording how.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..core.files import remove_own_folder
from .tasks import TASKS, TEXT_TO_IMAGE, pipeline_class
from .tiny import TINY_DIMS, atomic_build, build_flux_pipeline, cache_root, library_lines, pipeline_of, task_dims

SYNTHETIC_SEED = 20251122
BUILD_MARKER = "fluxnb_synthetic.json"
KINDS = ("bf16", "bnb-8bit", "bnb-nf4")
# The weight sets: "gaussian" (variance-preserving random init) and "outliers" (the same weights with activation
# outliers injected by inject_outliers, function-preserving): fidelity figures that do not hinge on Gaussian weights.
WEIGHT_SETS = ("gaussian", "outliers")

# FLUX.1-dev's real dimensions (black-forest-labs/FLUX.1-dev config files).
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=[16, 56, 56],
)
FLUX_DEV_T5 = dict(  # google/t5-v1_1-xxl encoder
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
)
FLUX_DEV_CLIP = dict(  # openai/clip-vit-large-patch14 text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
FLUX_DEV_VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
FULL_DIMS = {"transformer": FLUX_DEV_TRANSFORMER, "t5": FLUX_DEV_T5, "clip": FLUX_DEV_CLIP, "vae": FLUX_DEV_VAE}


def scaled_dims(layers: int = 1, single_layers: int = 2, t5_layers: int = 2, clip_layers: int = 2) -> dict:
    """FLUX.1-dev's widths with fewer blocks: the same code path, small enough for a CPU test."""
    dims = json.loads(json.dumps(FULL_DIMS))
    dims["transformer"].update(num_layers=layers, num_single_layers=single_layers)
    dims["t5"].update(num_layers=t5_layers)
    dims["clip"].update(num_hidden_layers=clip_layers)
    return dims


def synthetic_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else FLUXNB_SYNTHETIC, else <fluxnb cache>/synthetic."""
    if root is not None:
        return Path(root)
    if os.environ.get("FLUXNB_SYNTHETIC"):
        return Path(os.environ["FLUXNB_SYNTHETIC"])
    return cache_root() / "synthetic"


def check_weight_set(weight_set: str) -> str:
    if weight_set not in WEIGHT_SETS:
        raise ValueError(f"unknown synthetic weight set {weight_set!r}; allowed: {', '.join(WEIGHT_SETS)}")
    return weight_set


def check_task(task: str, kind: str) -> str:
    """A known task; an editing task only in bf16 (its quantized entries quantize the bf16 checkpoint at load)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if task != TEXT_TO_IMAGE and kind != "bf16":
        raise ValueError(f"the {task} synthetic checkpoint is built in bf16 only, not {kind!r}: its 8-bit and float8 "
                         "entries quantize the bf16 checkpoint while it loads")
    return task


def synthetic_dir(kind: str, root: str | os.PathLike | None = None, dims: dict | None = None,
                  weight_set: str = "gaussian", task: str = TEXT_TO_IMAGE) -> Path:
    """Folder of one kind, weight set and task, keyed by size and by the library lines that write it (knowledge entry
    transformers5-checkpoint-on-4x). Text-to-image and the Gaussian set keep the folder names they always had."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic checkpoint kind {kind!r}; allowed: {', '.join(KINDS)}")
    check_weight_set(weight_set)
    check_task(task, kind)
    size = "full" if dims is None or dims == FULL_DIMS else "tiny" if dims == TINY_DIMS else "scaled"
    weights = "" if weight_set == "gaussian" else f"{weight_set}-"
    model = "flux-dev" if task == TEXT_TO_IMAGE else f"flux-{task}"
    return synthetic_root(root) / f"{model}-synthetic-{size}-{weights}{kind}-{library_lines()}"


def _variance_preserving_init(module) -> None:
    """Linear weights ~ N(0, 1/fan_in), biases 0: every block does real work, and nothing blows up.

    With PyTorch's default Linear init (std 1/sqrt(3 fan_in)) the AdaLN gates come out tiny and the 57 blocks
    barely touch the residual stream (measured: its std moves 0.584 -> 0.586 over 9 blocks), so quantization
    error inside the blocks would hardly show in the output. With this init each block adds about 0.05 to the
    residual std (1.1 -> 1.7 over 9 full-width blocks, about 4-6 after 57: finite in bf16) and the velocity
    output has std ~1.2, the scale of a trained flow model's.
    """
    import math

    import torch

    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            torch.nn.init.normal_(sub.weight, 0.0, 1.0 / math.sqrt(sub.in_features))
            if sub.bias is not None:
                torch.nn.init.zeros_(sub.bias)


# The second weight set: activation outliers as trained DiTs have them ("massive activations": a few hidden channels
# tens to hundreds of times larger than the rest, entering the quantized linears). Gaussian random weights have
# none, and outliers are exactly where LLM.int8 (outlier decomposition), int8 dynamic and float8 differ.
OUTLIER_CHANNELS = 8  # per block and per stream
OUTLIER_SCALE = 50.0  # x the channel's normal size


def _adaln_rows(linear, dim: int, chunk: int, channels, factor: float, offset: float = 0.0) -> None:
    """Multiply output rows `chunk*dim + channels` of an AdaLN linear by `factor` (and add `offset` to the bias)."""
    rows = chunk * dim + channels
    linear.weight.data[rows] *= factor
    if linear.bias is not None:
        linear.bias.data[rows] = linear.bias.data[rows] * factor + offset


def _scale_normalized_channels(norm_linear, dim: int, shift_chunk: int, scale_chunk: int, consumers, channels,
                               factor: float) -> None:
    """x_norm * (1 + scale) + shift, channels c: both terms x factor; each consumer's input column c / factor.

    The block computes the same function (exactly in real arithmetic), but the activations its consumers quantize
    now carry `len(channels)` outlier channels.
    """
    _adaln_rows(norm_linear, dim, shift_chunk, channels, factor)
    _adaln_rows(norm_linear, dim, scale_chunk, channels, factor, offset=factor - 1.0)
    for consumer in consumers:
        consumer.weight.data[:, channels] /= factor


def inject_outliers(transformer, channels: int = OUTLIER_CHANNELS, scale: float = OUTLIER_SCALE,
                    seed: int = SYNTHETIC_SEED) -> dict:
    """Give a FLUX transformer activation outliers without changing what it computes (function-preserving).

    In every block and stream, the AdaLN shift/scale rows of `channels` random hidden channels are multiplied by
    `scale` and the linears that consume that normalized activation (attention q/k/v, the MLP's first projection)
    have those input columns divided by `scale`. Returns what was done, for the checkpoint's marker file.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim

    def pick():
        return torch.randperm(dim, generator=generator)[:channels].to(transformer.device)

    with torch.no_grad():
        # AdaLayerNormZero chunks: shift, scale, gate (attention), shift, scale, gate (MLP)
        for block in transformer.transformer_blocks:
            attn = block.attn
            _scale_normalized_channels(block.norm1.linear, dim, 0, 1, (attn.to_q, attn.to_k, attn.to_v), pick(), scale)
            _scale_normalized_channels(block.norm1.linear, dim, 3, 4, (block.ff.net[0].proj,), pick(), scale)
            _scale_normalized_channels(block.norm1_context.linear, dim, 0, 1,
                                       (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj), pick(), scale)
            _scale_normalized_channels(block.norm1_context.linear, dim, 3, 4, (block.ff_context.net[0].proj,), pick(),
                                       scale)
        for block in transformer.single_transformer_blocks:  # AdaLayerNormZeroSingle: shift, scale, gate
            attn = block.attn
            _scale_normalized_channels(block.norm.linear, dim, 0, 1,
                                       (block.proj_mlp, attn.to_q, attn.to_k, attn.to_v), pick(), scale)
    return {"outlier_channels": channels, "outlier_scale": scale, "outlier_seed": seed}


def build_synthetic_pipeline(device: str = "cuda", dims: dict | None = None, seed: int = SYNTHETIC_SEED,
                             weight_set: str = "gaussian", task: str = TEXT_TO_IMAGE):
    """Construct the pipeline in bf16 directly on `device` (seconds on a GPU; ~34 GB at full size); the "outliers"
    weight set is the Gaussian one with inject_outliers' defaults applied to the transformer. An editing `task`: the
    same components, the transformer shaped for it (task_dims), in the task's pipeline class."""
    check_weight_set(weight_set)
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            pipe = build_flux_pipeline(task_dims(dims or FULL_DIMS, task), seed, init=_variance_preserving_init)
    finally:
        torch.set_default_dtype(previous)
    if task != TEXT_TO_IMAGE:
        pipe = pipeline_of(pipeline_class(task), pipe.components)
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        module.to(torch.bfloat16).eval().requires_grad_(False)
    if weight_set == "outliers":
        inject_outliers(pipe.transformer)
    return pipe


def smoke_inputs(task: str, height: int, width: int) -> dict:
    """The pictures an editing pipeline's call needs for check_finite: a grey picture and, for Fill, a mask of its
    middle (Kontext keeps the reference at the given size); nothing for text-to-image."""
    from PIL import Image

    from ..core.compat import kontext_keep_size

    if task == TEXT_TO_IMAGE:
        return {}
    picture = Image.new("RGB", (width, height), (120, 130, 140))
    if task == "kontext":
        return {"image": picture, "max_area": width * height, **kontext_keep_size()}
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    inputs = {"image": picture, "mask_image": mask}
    return inputs if task == "fill" else {"control_image": picture}


def check_finite(pipe, height: int = 256, width: int = 256, steps: int = 1, task: str = TEXT_TO_IMAGE) -> dict:
    """One short generation; raise if any latent is NaN/inf (random weights must not blow up)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        latents = pipe(
            prompt="a photo of a cat",
            num_inference_steps=steps,
            height=height,
            width=width,
            max_sequence_length=512,
            generator=generator,
            output_type="latent",
            **smoke_inputs(task, height, width),
        ).images
    latents = latents.float()
    if not torch.isfinite(latents).all():
        raise RuntimeError("synthetic model produced non-finite latents: the random init blows up")
    return {"latent_std": round(float(latents.std()), 4), "latent_absmax": round(float(latents.abs().max()), 4)}


def _quantization_mapping(kind: str):
    import torch
    from diffusers import BitsAndBytesConfig as DiffusersBnb
    from diffusers import PipelineQuantizationConfig
    from transformers import BitsAndBytesConfig as TransformersBnb

    if kind == "bnb-8bit":
        kwargs = {"load_in_8bit": True}
    elif kind == "bnb-nf4":
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}
    else:
        raise ValueError(f"{kind!r} is not a quantized kind")
    return PipelineQuantizationConfig(
        quant_mapping={"transformer": DiffusersBnb(**kwargs), "text_encoder_2": TransformersBnb(**kwargs)}
    )


def quantize_checkpoint(source: str | os.PathLike, target: str | os.PathLike, kind: str) -> None:
    """Load the bf16 checkpoint at `source` quantized (bitsandbytes, transformer + T5) and save it to `target`.

    The result has the pre-quantized layout of diffusers/FLUX.1-dev-bnb-8bit (or -bnb-4bit): each quantized
    component's config.json carries its quantization_config, so a plain `from_pretrained` reloads it.
    """
    import gc

    import torch
    from diffusers import FluxPipeline

    quantization = _quantization_mapping(kind)
    pipe = FluxPipeline.from_pretrained(source, torch_dtype=torch.bfloat16, quantization_config=quantization)
    pipe.save_pretrained(target, safe_serialization=True)
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _build_info(kind: str, dims: dict | None, weight_set: str, task: str) -> dict:
    """What the marker file of a synthetic checkpoint records about how it was built."""
    import diffusers
    import torch
    import transformers

    info = {
        "kind": kind,
        "seed": SYNTHETIC_SEED,
        "dims": task_dims(dims or FULL_DIMS, task),
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "note": "random weights (FLUX.1-dev architecture and dimensions): images are noise",
        "weight_set": weight_set,
        "task": task,
    }
    if task != TEXT_TO_IMAGE:
        info["note"] = (f"random weights ({TASKS[task].pipeline}: FLUX.1-dev's dimensions, transformer in_channels "
                        f"{TASKS[task].in_channels}): images are noise")
    if weight_set == "outliers":  # what inject_outliers did (its defaults), for the record
        info["outliers"] = {"outlier_channels": OUTLIER_CHANNELS, "outlier_scale": OUTLIER_SCALE,
                            "outlier_seed": SYNTHETIC_SEED, "method": "inject_outliers: AdaLN shift/scale rows x S, "
                            "consuming linears' input columns / S (function-preserving)"}
    return info


def ensure_synthetic_checkpoint(
    kind: str = "bf16",
    root: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dims: dict | None = None,
    log=print,
    weight_set: str = "gaussian",
    task: str = TEXT_TO_IMAGE,
) -> Path:
    """Return the folder of a synthetic checkpoint of `kind`, `weight_set` and `task` (an editing task: bf16 only),
    building it (and the bf16 one it comes from) once."""
    import torch

    target = synthetic_dir(kind, root, dims, weight_set, task)
    if (target / BUILD_MARKER).is_file():
        return target
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = _build_info(kind, dims, weight_set, task)
    if kind == "bf16":

        def build(staging: Path) -> dict:
            start = time.perf_counter()
            pipe = build_synthetic_pipeline(device=device, dims=dims, weight_set=weight_set, task=task)
            built = time.perf_counter() - start
            side = 128 if dims is None or dims == FULL_DIMS else 64
            smoke = check_finite(pipe, side, side, task=task)
            start = time.perf_counter()
            pipe.save_pretrained(staging, safe_serialization=True)
            saved = time.perf_counter() - start
            del pipe
            if device == "cuda":
                torch.cuda.empty_cache()
            return {"construct_seconds": round(built, 1), "save_seconds": round(saved, 1), "smoke": smoke}

        log(f"building synthetic bf16 {task} checkpoint ({weight_set} weights) into {target} ...")
    else:
        source = ensure_synthetic_checkpoint("bf16", root, device=device, dims=dims, log=log, weight_set=weight_set)
        info["source"] = str(source)

        def build(staging: Path) -> dict:
            quantize_checkpoint(source, staging, kind)
            return {}

        log(f"building synthetic {kind} checkpoint from {source} into {target} ...")
    path = atomic_build(target, build, info, marker=BUILD_MARKER)
    log(f"  done in {json.loads((path / BUILD_MARKER).read_text())['build_seconds']} s")
    return path


def remove_synthetic_checkpoint(kind: str, root: str | os.PathLike | None = None, dims: dict | None = None,
                                weight_set: str = "gaussian", task: str = TEXT_TO_IMAGE) -> None:
    """Delete one kind's folder (disk is scarce: bf16 + 8-bit + NF4 take about 60 GB): only a real folder that
    fluxnb built under the synthetic root; a symbolic link there is refused (fluxnb.core.files.remove_own_folder)."""
    folder = synthetic_dir(kind, root, dims, weight_set, task)
    if os.path.lexists(folder):
        remove_own_folder(folder.parent, folder.name, "synthetic checkpoint")


def remove_weight_set(weight_set: str, root: str | os.PathLike | None = None, dims: dict | None = None,
                      task: str = TEXT_TO_IMAGE) -> list[str]:
    """Delete every kind of one weight set (the outlier set after its bench, ~34 GB bf16 + ~17 GB 8-bit); an
    editing task has only its bf16 one."""
    removed = []
    for kind in KINDS if task == TEXT_TO_IMAGE else ("bf16",):
        folder = synthetic_dir(kind, root, dims, weight_set, task)
        if os.path.lexists(folder):
            removed.append(str(remove_own_folder(folder.parent, folder.name, "synthetic checkpoint")))
    return removed


# full: FLUX.1-dev's size; tiny: the tiny model's (fluxnb.models.tiny), so that the bench's weight sets and the GPU
# script's logic run on a CPU in seconds (FLUXNB_SYNTHETIC_DIMS=tiny)
DIMS_BY_NAME = {"full": None, "tiny": TINY_DIMS}
