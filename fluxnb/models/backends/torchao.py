"""torchao: FLUX.1-dev quantized at load from the bf16 weights, transformer blocks optionally torch.compiled.

Always quantized at load from the bf16 checkpoint, never a pre-quantized torchao checkpoint (knowledge id
torchao-fp8-v1-checkpoint). T5 is int8 weight-only in every variant: it runs once per prompt, and weight-only keeps
its error small. torchao's current (version 2) configs: Int8Tensor / Float8Tensor, no deprecated layouts.
"""

from __future__ import annotations

import warnings

from packaging.version import Version

from ...core.environment import package_version
from ...core.errors import ModelUnavailableError
from ..attention import AttentionChoice
from .base import HOTSWAP_REASON, Backend, LoadContext, compile_if_wanted, from_pretrained, refuse_unloaded_weights

MIN_DIFFUSERS = "0.36.0"  # TorchAoConfig accepts config objects (knowledge id torchao-no-config-classes)
MIN_TORCHAO = "0.15.0"  # diffusers >= 0.38 requires it
_FORMATS = ("AffineQuantizedTensor", "LinearActivationQuantizedTensor", "Int8Tensor", "Float8Tensor")
AUTOTUNE = "max-autotune-no-cudagraphs"  # autotuned kernels, no CUDA graphs (the H200 probe's variant)
_EXPECTED = {"transformer": _FORMATS, "text_encoder_2": _FORMATS}

# Linear layers fed by the timestep/guidance embedding see one row (M=1). Under torch.compile torchao's int8 and
# float8 dynamic-activation matmuls go straight to torch._int_mm / _scaled_mm, which need M > 16 ("self.size(0)
# needs to be greater than 16, but got 1", seen on an H100): those layers (AdaLN modulation, time/text embedders,
# 0.3% of the FLOPs) get int8 weight-only instead.
ONE_ROW_LAYERS = (r"re:(.*\.)?(norm1|norm1_context|norm|norm_out)\.linear", r"re:time_text_embed\..*\.linear_[12]")
# Compiled, they run as one int8 matvec kernel (fluxnb/models/backends/matvec.py): aten's one-row int8 kernel took a
# fifth of the float8 step. The float8 type's GELU-then-linear layers quantize their input in one kernel
# (backends/fp8_rows.py).
# Every other Linear of the FLUX transformer, named (torchao deprecates the "_default" catch-all).
MAIN_LAYERS = (
    r"re:(.*\.)?attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)",
    r"re:(.*\.)?(ff|ff_context)\.net\.(0\.proj|2)",
    r"re:(.*\.)?(proj_mlp|proj_out)",
    r"re:(x_embedder|context_embedder)",
)


def require_torchao(spec) -> None:
    """Refuse with the install command when torchao (or a diffusers that takes its configs) is missing or old."""
    torchao_version = package_version("torchao")
    if torchao_version is None:
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.type}) needs torchao, an optional extra that is not installed.",
            fix=f"`pip install -e \".[torchao]\"` (torchao >= {MIN_TORCHAO}, matching your torch); or choose "
            "flux-dev-bnb-8bit.",
            ref="torchao-extra-missing",
        )
    if Version(torchao_version) < Version(MIN_TORCHAO):
        raise ModelUnavailableError(f"model {spec.name!r} needs torchao >= {MIN_TORCHAO}, found {torchao_version}.",
                                    fix="`pip install -U torchao` (a version built for your torch).")
    diffusers_version = package_version("diffusers") or "0"
    if Version(diffusers_version) < Version(MIN_DIFFUSERS):
        raise ModelUnavailableError(
            f"model {spec.name!r} needs diffusers >= {MIN_DIFFUSERS} (TorchAoConfig with config objects), found "
            f"{diffusers_version}.",
            fix="use the default dependency line (diffusers 0.42), or flux-dev-bnb-8bit.",
            ref="torchao-no-config-classes",
        )


def weight_only_config():
    """int8 weight-only (T5, and the one-row layers of the dynamic types)."""
    import torchao.quantization as tq

    # set_inductor_config=False: torchao would otherwise switch on coordinate-descent tuning for the whole process,
    # which multiplies the compile time of the transformer blocks (results/README.md, run 5)
    return tq.Int8WeightOnlyConfig(version=2, set_inductor_config=False)


def transformer_config(backend: Backend):
    """The transformer's torchao config: the type's own, with the one-row layers int8 weight-only."""
    import torchao.quantization as tq

    name = backend.options["config"]
    if name == "Int8WeightOnlyConfig":
        return weight_only_config()
    if name == "Float8DynamicActivationFloat8WeightConfig":
        main = tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow(), set_inductor_config=False)
    else:
        with warnings.catch_warnings():  # torchao 0.17's version-2 config builds a PlainLayout it never uses
            warnings.filterwarnings("ignore", message="Deprecation: PlainLayout", category=UserWarning)
            main = tq.Int8DynamicActivationInt8WeightConfig(version=2, set_inductor_config=False)
    return tq.FqnToConfig({**{pattern: weight_only_config() for pattern in ONE_ROW_LAYERS},
                           **{pattern: main for pattern in MAIN_LAYERS}})


def offload_text_encoder(pipe) -> None:
    """T5 on the CPU, on the GPU only while it encodes: the denoising and decoding peaks drop by T5's size.

    A hook on T5 brings it (and its inputs) to the GPU when it runs; the transformer's first forward sends it back.
    The moves leave inference mode: torchao's tensors cannot be moved inside it (NotImplementedError, on an H100).
    """
    import torch

    t5, device = pipe.text_encoder_2, pipe.transformer.device

    def move(target: torch.device) -> None:
        if next(t5.parameters()).device.type != target.type:
            with torch.inference_mode(False):
                t5.to(target)
            if target.type == "cpu":
                torch.cuda.empty_cache()

    def to_gpu(module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        move(device)  # and its inputs: diffusers sends them to T5's device of the moment, the CPU
        return (tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args),
                {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    move(torch.device("cpu"))
    t5.register_forward_pre_hook(to_gpu, with_kwargs=True)
    pipe.transformer.register_forward_pre_hook(lambda module, args: move(torch.device("cpu")))


def _quantized_components(ctx: LoadContext, backend: Backend):
    """T5 first, quantized on the GPU, so that bf16 T5 (9.5 GB) and the transformer never sit there together."""
    from diffusers import FluxTransformer2DModel, TorchAoConfig
    from torchao.quantization import quantize_
    from transformers import T5EncoderModel

    from .fp8_rows import use_fused_fp8_rows
    from .matvec import use_matvecs

    with refuse_unloaded_weights(ctx.checkpoint):
        text_encoder_2 = T5EncoderModel.from_pretrained(
            ctx.checkpoint, subfolder="text_encoder_2", torch_dtype=ctx.torch_dtype, **ctx.hub_options(),
        ).to("cuda")
        quantize_(text_encoder_2, weight_only_config())
        transformer = FluxTransformer2DModel.from_pretrained(
            ctx.checkpoint, subfolder="transformer", torch_dtype=ctx.torch_dtype, **ctx.hub_options(),
            device_map="cuda", quantization_config=TorchAoConfig(transformer_config(backend)),
        )
    use_matvecs(transformer, ONE_ROW_LAYERS)
    use_fused_fp8_rows(transformer)
    return transformer, text_encoder_2


def load_torchao(spec, ctx: LoadContext, backend: Backend):
    """bf16 checkpoint quantized at load (transformer: the type's config; T5: int8 weight-only), then optionally
    T5 offload and regional compile; the LoadedModel keeps the compiled transformer, so only its first generation
    at each image size pays the compile."""
    require_torchao(spec)
    transformer, text_encoder_2 = _quantized_components(ctx, backend)
    pipe = from_pretrained(ctx, transformer=transformer, text_encoder_2=text_encoder_2)
    pipe.to("cuda")
    if spec.offload_text_encoder:
        offload_text_encoder(pipe)
        ctx.notes.append("T5 is kept on the CPU and moved to the GPU only to encode a prompt (offload_text_encoder): "
                         "a lower peak while denoising and decoding, for a copy of T5 to the GPU per image")
    compile_if_wanted(pipe, spec, backend, ctx)
    return pipe


# The attention kernel per compute capability (fluxnb/models/attention.py): what attention costs once the linears run
# in float8 (a fifth of a step's FLOPs at 1024x1024, a third of an L4's step time in bf16).
FP8_ATTENTION = (
    AttentionChoice((9, 0), "cudnn-fp8", "measured on an H100, synthetic weights: Kontext's reference picture doubles "
                    "the image tokens, so attention is a larger share of its step; with cuDNN's float8 kernel its "
                    "float8 entry took 5.65 s/image against 6.19 s with bf16 SDPA, 4.43x bnb 8-bit instead of 4.04x, "
                    "latent error 1.47x bnb 8-bit's instead of 1.40x (bench run 42)", tasks=("kontext",)),
    AttentionChoice((9, 0), "sdpa", "measured on an H100: torch's cuDNN kernel in bf16; cuDNN's float8 kernel "
                    "(attention: cudnn-fp8) gained text-to-image 1.2% only, 2.80 against 2.84 s/image at the same "
                    "error (bench run 43): not worth an extra package there"),
    AttentionChoice((8, 9), "sage", "predicted, no L4 measured: SageAttention reports 2.1x FlashAttention2's speed on "
                    "an RTX 4090, an Ada card (8.9) like the L4"),
)


# PEFT puts its LoRA layers beside torchao's quantized weights (TorchaoLoraLinear); fusing would need the
# re-quantization function, which PEFT takes only from a transformers quantizer, not diffusers' (peft/tuners/lora/
# torchao.py): so adapters run unfused.
LORA_EAGER = ("unfused: PEFT runs adapters beside torchao's quantized weights; fusing them in needs a "
              "re-quantization that diffusers' loading does not give PEFT")
_COMMON = dict(family="torchao", expected_formats=_EXPECTED, extra="torchao", offloadable_text_encoder=True,
               download_gib=34, vram_gib=19, options={})
BACKENDS = (
    Backend(
        type="flux-torchao-int8wo",
        what="int8 weights, bf16 compute (torchao weight-only), eager: compiled it ran far slower",
        load=load_torchao,
        why_gpu="quantized at load from the 33 GB bf16 weights with torchao int8 weight-only kernels (CUDA)",
        min_capability=(7, 5),
        uses=("core", "torchao", "img2img"),
        lora=LORA_EAGER,
        **{**_COMMON, "options": {"config": "Int8WeightOnlyConfig"}},
    ),
    Backend(
        type="flux-torchao-int8dq",
        what="int8 weights and dynamically quantized int8 activations (torch._int_mm), transformer blocks compiled",
        load=load_torchao,
        why_gpu="int8 dynamic-activation matmuls (torch._int_mm) need a CUDA GPU of compute capability 8.0+",
        min_capability=(8, 0),
        compilable=True,
        # compiled torch._int_mm needs more than 16 rows ("self.size(0) needs to be greater than 16", seen on an
        # H100 with a 64x64 image = 16 tokens): knowledge id compiled-int8-small-input
        min_rows_compiled=17,
        compile_modes=(AUTOTUNE,),
        # no CUDA graph: its capture failed on the tiny model (GPU lane run 26, "operation failed due to a previous
        # error during capture"), and a failed capture leaves CUDA's random generator unusable in the process
        uses=("core", "torchao", "compile", "img2img"),
        lora=HOTSWAP_REASON,  # compiled: diffusers' hotswap swaps one adapter in place
        **{**_COMMON, "options": {"config": "Int8DynamicActivationInt8WeightConfig",
                                  "inductor": {"force_fuse_int_mm_with_mul": True}}},
    ),
    Backend(
        type="flux-torchao-fp8dq",
        what="float8 e4m3 weights and dynamically quantized float8 activations, per-row scales (torch._scaled_mm), "
        "transformer blocks compiled",
        load=load_torchao,
        why_gpu="float8 matmuls (torch._scaled_mm) need compute capability 8.9+ (the L4 is 8.9)",
        min_capability=(8, 9),
        compilable=True,
        # max-autotune: slower first compile (paid once per machine with the persistent compile cache), faster steps
        compile_modes=(AUTOTUNE,),
        cuda_graph=True,  # captured and replayed in bench run 26 (H100, full size, both weight sets)
        attention=FP8_ATTENTION,
        uses=("core", "torchao", "compile", "img2img"),
        lora=HOTSWAP_REASON,  # compiled: diffusers' hotswap swaps one adapter in place
        **{**_COMMON, "options": {"config": "Float8DynamicActivationFloat8WeightConfig"}},
    ),
)
