"""bitsandbytes: the guide's pre-quantized checkpoints (8-bit LLM.int8, NF4) and LLM.int8 without outliers."""

from __future__ import annotations

from .base import Backend, LoadContext, from_pretrained, refuse_unloaded_weights

NO_GPU = "diffusers refuses bitsandbytes-quantized loading without a GPU ('No GPU found')"


def load_prequantized(spec, ctx: LoadContext, backend: Backend):
    """Pre-quantized bitsandbytes checkpoint (the guide's path): the quantization config comes with the weights."""
    pipe = from_pretrained(ctx)
    pipe.to("cuda")  # quantized modules are already on the GPU; this moves the VAE and CLIP
    return pipe


def load_threshold0(spec, ctx: LoadContext, backend: Backend):
    """The 8-bit checkpoint with LLM.int8's outlier decomposition off (threshold 0): every matmul int8.

    The checkpoint carries llm_int8_threshold=6.0; bitsandbytes reads the threshold from each layer's state at
    call time, so setting it to 0 after loading switches off the mixed fp16 part of each matmul.
    """
    from bitsandbytes.nn import Linear8bitLt

    pipe = load_prequantized(spec, ctx, backend)
    layers = [m for c in (pipe.transformer, pipe.text_encoder_2) for m in c.modules() if isinstance(m, Linear8bitLt)]
    for layer in layers:
        layer.state.threshold = 0.0
    ctx.notes.append(f"LLM.int8 outlier threshold set to 0 on {len(layers)} 8-bit layers (no fp16 outlier matmuls)")
    return pipe


def load_8bit_at_load(spec, ctx: LoadContext, backend: Backend):
    """bf16 weights quantized to LLM.int8 while they load (transformer and T5, as the guide's 8-bit checkpoint
    holds them): for the models no pre-quantized copy exists of (FLUX.1-Fill, Kontext, Canny, Depth; the
    pre-quantized FLUX.1-dev transformer has 64 input channels, Fill's 384 and Control's 128)."""
    from diffusers import BitsAndBytesConfig as DiffusersBitsAndBytesConfig
    from diffusers import FluxTransformer2DModel
    from transformers import BitsAndBytesConfig, T5EncoderModel

    with refuse_unloaded_weights(ctx.checkpoint):
        text_encoder_2 = T5EncoderModel.from_pretrained(
            ctx.checkpoint, subfolder="text_encoder_2", torch_dtype=ctx.torch_dtype, **ctx.hub_options(),
            quantization_config=BitsAndBytesConfig(load_in_8bit=True))
        transformer = FluxTransformer2DModel.from_pretrained(
            ctx.checkpoint, subfolder="transformer", torch_dtype=ctx.torch_dtype, **ctx.hub_options(),
            quantization_config=DiffusersBitsAndBytesConfig(load_in_8bit=True))
    pipe = from_pretrained(ctx, transformer=transformer, text_encoder_2=text_encoder_2)
    pipe.to("cuda")
    ctx.notes.append("the bf16 checkpoint was quantized to LLM.int8 while loading (transformer and T5): the 8-bit "
                     "format of the guide's configuration, for a model that has no pre-quantized copy")
    return pipe


# PEFT wraps bitsandbytes' Linear8bitLt / Linear4bit; fusing dequantizes, adds and re-quantizes (rounding: the fused
# image differs slightly from the unfused one).
LORA = "yes"
_COMMON = dict(family="bnb", why_gpu=NO_GPU, min_capability=(7, 5), lora=LORA)  # every pre-quantized checkpoint
_INT8 = dict(expected_formats={"transformer": ("int8",), "text_encoder_2": ("int8",)}, synthetic_kind="bnb-8bit",
             download_gib=17.5, vram_gib=21, uses=("core", "bnb", "bnb-8bit", "img2img"))

BACKENDS = (
    Backend(
        type="flux-bnb-8bit",
        what="the guide's configuration: pre-quantized bitsandbytes LLM.int8 (transformer and T5), about 21 GB",
        load=load_prequantized,
        baseline=True,
        **_COMMON,
        **_INT8,
    ),
    Backend(
        type="flux-bnb-8bit-threshold0",
        what="the 8-bit checkpoint with LLM.int8's outlier threshold set to 0 (every matmul int8; faster, no "
        "outlier protection)",
        load=load_threshold0,
        **_COMMON,
        **_INT8,
    ),
    Backend(
        type="flux-bnb-8bit-at-load",
        what="LLM.int8 (transformer and T5) quantized while the bf16 checkpoint loads: the guide's 8-bit format for "
        "the models without a pre-quantized copy (Fill, Kontext, Canny, Depth), about 21 GB",
        load=load_8bit_at_load,
        baseline=True,  # the editing models' bnb 8-bit: their bench's speed baseline (one task per run)
        **_COMMON,
        **{**_INT8, "synthetic_kind": None, "download_gib": 33.7},
    ),
    Backend(
        type="flux-bnb-4bit",
        what="pre-quantized bitsandbytes NF4: about half the memory of 8-bit, further from bf16",
        load=load_prequantized,
        expected_formats={"transformer": ("nf4",), "text_encoder_2": ("nf4", "int8")},
        synthetic_kind="bnb-nf4",
        download_gib=10,
        vram_gib=13,
        uses=("core", "bnb", "bnb-4bit", "img2img"),
        **_COMMON,
    ),
)
