"""bitsandbytes: the guide's pre-quantized checkpoints (8-bit LLM.int8, NF4) and LLM.int8 without outliers."""

from __future__ import annotations

from .base import Backend, LoadContext, from_pretrained

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
