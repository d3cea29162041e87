"""Loading FLUX pipelines: one registry of loaders keyed by the model `type` in model_config.yaml.

Adding a backend is one function and one entry in LOADERS. Every load returns a LoadReport (per
component: class, format, device, real bytes; total; seconds) and is verified: a model entry that
promises 8-bit weights fails loudly when the weights are not 8-bit, and a checkpoint whose weights
were "newly initialized" on load (random weights in disguise, KNOWN_ISSUES row 16) is refused.
"""

from __future__ import annotations

import html
import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import ModelConfig, ModelSpec, load_config
from .errors import LoadError, ModelUnavailableError, QuantizationError
from .footprint import ComponentFootprint, pipeline_footprint
from .hub import find_corrupt_weights, hf_token, is_cached, offline_mode
from .selection import resolve_model

logger = logging.getLogger(__name__)

GIB = 2**30


def human_bytes(n: int) -> str:
    """1.23 GiB / 45.6 MiB / 789 KiB: tiny and full-size models in one table."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
# Load-time log text that means weights were not loaded from the checkpoint (they are random).
_UNLOADED_WEIGHT_PATTERNS = ("newly initialized", "were not used when initializing", "missing keys")


@dataclass
class LoadContext:
    """Where and how to load: the resolved checkpoint (hub id or local folder), device and dtype."""

    checkpoint: str
    device: str
    torch_dtype: object
    token: str | None = None
    cache_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    offload: str = "none"


@dataclass
class LoadReport:
    model: str
    model_id: str
    type: str
    checkpoint: str
    weights: str  # "hub checkpoint" or "embedded tiny model (random weights)" or "local checkpoint"
    device: str
    offload: str
    load_seconds: float
    components: list[ComponentFootprint]
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    def component(self, name: str) -> ComponentFootprint:
        return next(c for c in self.components if c.name == name)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_id": self.model_id,
            "type": self.type,
            "checkpoint": self.checkpoint,
            "weights": self.weights,
            "device": self.device,
            "offload": self.offload,
            "load_seconds": round(self.load_seconds, 3),
            "total_bytes": self.total_bytes,
            "components": [c.to_dict() for c in self.components],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [
            f"{self.model} ({self.model_id}, type {self.type}): {self.weights}",
            f"loaded in {self.load_seconds:.1f} s on {self.device}, offload: {self.offload}",
        ]
        for c in self.components:
            lines.append(f"  {c.name:<15} {c.cls:<24} {c.format:<22} {c.device:<10} {human_bytes(c.bytes):>11}")
        lines.append(f"  {'total':<15} {'':<24} {'':<22} {'':<10} {human_bytes(self.total_bytes):>11}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{c.name}</td><td>{c.cls}</td><td>{html.escape(c.format)}</td><td>{c.device}</td>"
            f"<td style='text-align:right'>{human_bytes(c.bytes)}</td></tr>"
            for c in self.components
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>{html.escape(self.model)}</b> ({html.escape(self.model_id)}, type {self.type}): "
            f"{html.escape(self.weights)}; loaded in {self.load_seconds:.1f} s on {self.device}, "
            f"offload: {self.offload}</p>"
            "<table><tr><th>component</th><th>class</th><th>format</th><th>device</th><th>memory</th></tr>"
            f"{rows}<tr><td><b>total</b></td><td></td><td></td><td></td>"
            f"<td style='text-align:right'><b>{human_bytes(self.total_bytes)}</b></td></tr></table>"
            + (f"<ul>{notes}</ul>" if notes else "")
        )


@contextmanager
def _refuse_unloaded_weights(checkpoint: str):
    """Turn transformers/diffusers warnings about weights not loaded from the checkpoint into a LoadError."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    loggers = [logging.getLogger("transformers"), logging.getLogger("diffusers")]
    for log in loggers:
        log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
            yield
    finally:
        for log in loggers:
            log.removeHandler(handler)
    bad = [m for m in messages if any(p in m.lower() for p in _UNLOADED_WEIGHT_PATTERNS)]
    if bad:
        raise LoadError(
            f"checkpoint {checkpoint} did not load cleanly: some weights were not found in it and would run "
            f"with random values.\n{bad[0][:1500]}\nFix: the checkpoint was probably saved by another "
            "transformers/diffusers line (KNOWN_ISSUES row 16) or is incomplete; rebuild or re-download it."
        )


@contextmanager
def _progress_bars(enabled: bool):
    """Loading bars for people, none in headless logs (diffusers' and transformers' own switches)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    if enabled:
        yield
        return
    modules = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in modules:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in modules:
            module.enable_progress_bar()


def _from_pretrained(ctx: LoadContext, **kwargs):
    from diffusers import FluxPipeline

    if not Path(ctx.checkpoint).is_dir() and offline_mode() and not is_cached(ctx.checkpoint):
        raise ModelUnavailableError(
            f"{ctx.checkpoint} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE or "
            "TRANSFORMERS_OFFLINE), so "
            f"nothing can be downloaded. Fix: pre-download it where there is network (`huggingface-cli download "
            f"{ctx.checkpoint}`, with HF_HOME pointing at the same cache), or unset HF_HUB_OFFLINE; "
            "model='flux-tiny' runs offline."
        )

    with _refuse_unloaded_weights(ctx.checkpoint):
        return FluxPipeline.from_pretrained(
            ctx.checkpoint, torch_dtype=ctx.torch_dtype, token=ctx.token, cache_dir=ctx.cache_dir, **kwargs
        )


def _require_cuda(spec: ModelSpec, ctx: LoadContext, why: str) -> None:
    if ctx.device != "cuda":
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.type}) needs a CUDA GPU: {why}. This machine has none "
            "(torch.cuda.is_available() is False; `fluxnb doctor` says why). "
            "Fix: run on a GPU machine, or use model='flux-tiny' (or 'auto') here."
        )


def load_flux_bnb(spec: ModelSpec, ctx: LoadContext):
    """Pre-quantized bitsandbytes checkpoint (the guide's path): quantization config comes with the weights."""
    _require_cuda(spec, ctx, "diffusers refuses bitsandbytes-quantized loading without one ('No GPU found')")
    pipe = _from_pretrained(ctx)
    pipe.to("cuda")  # quantized modules are already on the GPU; this moves the VAE and CLIP
    return pipe


def load_flux_bnb_threshold0(spec: ModelSpec, ctx: LoadContext):
    """The bnb 8-bit checkpoint with LLM.int8's outlier decomposition off (threshold 0): every matmul int8.

    The checkpoint carries llm_int8_threshold=6.0; bitsandbytes reads the threshold from each layer's state at
    call time, so setting it to 0 after loading switches off the mixed fp16 part of each matmul (issue 6).
    """
    from bitsandbytes.nn import Linear8bitLt

    pipe = load_flux_bnb(spec, ctx)
    layers = [m for c in (pipe.transformer, pipe.text_encoder_2) for m in c.modules() if isinstance(m, Linear8bitLt)]
    for layer in layers:
        layer.state.threshold = 0.0
    ctx.notes.append(f"LLM.int8 outlier threshold set to 0 on {len(layers)} 8-bit layers (no fp16 outlier matmuls)")
    return pipe


def load_flux_bf16(spec: ModelSpec, ctx: LoadContext):
    """Full-precision FLUX.1-dev (bf16): on the GPU if it fits, else model or sequential CPU offload."""
    import torch

    _require_cuda(spec, ctx, "the bf16 model needs about 33 GB of weights; a CPU would take hours per image")
    pipe = _from_pretrained(ctx)
    footprint = {c.name: c.bytes for c in pipeline_footprint(pipe)}
    free, _total = torch.cuda.mem_get_info()
    margin = 3 * GIB  # activations at 1024x1024 plus the CUDA context
    if sum(footprint.values()) + margin <= free:
        pipe.to("cuda")
        ctx.offload = "none"
    elif footprint.get("transformer", 0) + margin <= free:
        pipe.enable_model_cpu_offload()
        ctx.offload = "model"
        ctx.notes.append(
            f"all weights ({sum(footprint.values()) / GIB:.1f} GiB) exceed free GPU memory ({free / GIB:.1f} GiB): "
            "model CPU offload keeps one component at a time on the GPU (slower start of each phase)"
        )
    else:
        pipe.enable_sequential_cpu_offload()
        ctx.offload = "sequential"
        ctx.notes.append(
            f"the transformer alone ({footprint.get('transformer', 0) / GIB:.1f} GiB) exceeds free GPU memory "
            f"({free / GIB:.1f} GiB): sequential CPU offload streams layers to the GPU (much slower)"
        )
    return pipe


def load_flux_tiny(spec: ModelSpec, ctx: LoadContext):
    """The embedded tiny FLUX, loaded from its locally built folder by the same from_pretrained path."""
    pipe = _from_pretrained(ctx)
    pipe.to(ctx.device)
    return pipe


LOADERS: dict[str, Callable[[ModelSpec, LoadContext], object]] = {
    "flux-bnb-8bit": load_flux_bnb,
    "flux-bnb-4bit": load_flux_bnb,
    "flux-bnb-8bit-threshold0": load_flux_bnb_threshold0,
    "flux-bf16": load_flux_bf16,
    "flux-tiny": load_flux_tiny,
}

# What each type promises: component -> accepted formats (prefix of ComponentFootprint.format).
EXPECTED_FORMATS: dict[str, dict[str, tuple[str, ...]]] = {
    "flux-bnb-8bit": {"transformer": ("int8",), "text_encoder_2": ("int8",)},
    "flux-bnb-8bit-threshold0": {"transformer": ("int8",), "text_encoder_2": ("int8",)},
    "flux-bnb-4bit": {"transformer": ("nf4",), "text_encoder_2": ("nf4", "int8")},
}


def verify_quantization(model_type: str, components: list[ComponentFootprint]) -> None:
    """Fail loudly when a component that must be quantized is not: module types and real bytes both count."""
    problems = []
    for c in components:
        accepted = EXPECTED_FORMATS.get(model_type, {}).get(c.name)
        if not accepted:
            continue
        if not c.format.startswith(accepted):
            problems.append(
                f"{c.name} ({c.cls}) is {c.format}, expected {' or '.join(accepted)}: "
                f"{c.quantized_layers} quantized and {c.linear_layers} plain Linear layers"
            )
        elif c.linear_layers > c.quantized_layers:
            problems.append(
                f"{c.name} ({c.cls}) has only {c.quantized_layers} quantized layers beside {c.linear_layers} "
                "plain Linear layers"
            )
    if problems:
        raise QuantizationError(
            f"quantization was not applied as the {model_type} entry promises:\n  - "
            + "\n  - ".join(problems)
            + "\nFix: check that the checkpoint is the pre-quantized one named in model_config.yaml and that "
            "bitsandbytes imports on this machine (`fluxnb doctor`)."
        )


def load_model(
    model: str | ModelSpec = "auto",
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    config: ModelConfig | None = None,
    progress: bool = True,
    reuse: bool = False,
) -> LoadedModel:
    """Load a model entry by name (or 'auto'), verify it, and return it with its report.

    `checkpoint` overrides where the weights come from (a local folder in the hub layout), so the very
    same loader runs on checkpoints built here (tiny, full-size synthetic).
    `reuse=True` (the notebooks): the same entry, checkpoint and device loaded earlier with reuse=True in this
    process is returned as it is, compiled blocks included, instead of a second copy on the GPU; asking for
    another model releases fluxnb's hold on the previous one first.
    """
    import torch

    config = config or load_config()
    spec = model if isinstance(model, ModelSpec) else resolve_model(model, config).spec
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if checkpoint is not None:
        source, weights = str(checkpoint), "local checkpoint"
    elif spec.type == "flux-tiny":
        from .tiny import ensure_tiny_checkpoint

        source, weights = str(ensure_tiny_checkpoint()), "embedded tiny model (random weights: images are noise)"
    else:
        source, weights = spec.id, "hub checkpoint"
    if spec.requires_auth and checkpoint is None:
        token = hf_token()
        if token is None:
            raise ModelUnavailableError(
                f"model {spec.name!r} ({spec.id}) is gated: it needs a Hugging Face token with access. "
                "Fix: accept the license on its model page, then `huggingface-cli login` or set HF_TOKEN "
                "(never pass the token as a notebook parameter: it would be saved in the executed notebook)."
            )
    else:
        token = None
    key = (spec, source, device)
    if reuse and key in _SESSION_MODEL:
        kept = _SESSION_MODEL[key]
        if REUSED_NOTE not in kept.report.notes:
            kept.report.notes.append(REUSED_NOTE)
        return kept
    if reuse and _SESSION_MODEL:  # another model: let the previous one go before loading this one
        from .generation import free_memory  # generation imports this module: imported here

        previous_device = next(iter(_SESSION_MODEL.values())).device
        _SESSION_MODEL.clear()
        free_memory(previous_device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    ctx = LoadContext(checkpoint=source, device=device, torch_dtype=dtype, token=token)
    start = time.perf_counter()
    with _progress_bars(progress):
        try:
            pipe = LOADERS[spec.type](spec, ctx)
        except Exception as exc:
            corrupt = find_corrupt_weights(source)
            if corrupt is None:
                raise
            raise LoadError(
                f"{corrupt[0]} is truncated or corrupted ({corrupt[1]}). Fix: delete that file (or the whole "
                f"model folder) and download it again (`huggingface-cli download {spec.id}`); a checkpoint built "
                "by fluxnb is rebuilt on the next load once its folder is deleted."
            ) from exc
    seconds = time.perf_counter() - start
    components = pipeline_footprint(pipe)
    verify_quantization(spec.type, components)
    report = LoadReport(
        model=spec.name,
        model_id=spec.id,
        type=spec.type,
        checkpoint=source,
        weights=weights,
        device=device,
        offload=ctx.offload,
        load_seconds=seconds,
        components=components,
        notes=ctx.notes,
    )
    loaded = LoadedModel(spec=spec, pipe=pipe, report=report)
    if reuse:
        _SESSION_MODEL[key] = loaded
    return loaded


# The model kept by load_model(reuse=True): one at a time, so re-running a notebook's load cell costs nothing.
_SESSION_MODEL: dict[tuple, LoadedModel] = {}
REUSED_NOTE = ("reused: this model was already loaded in this process (load_model(reuse=True)); its weights and any "
               "compiled blocks are the same objects, nothing was read again")


@dataclass
class LoadedModel:
    """A loaded pipeline with its model entry and load report; derives the image-to-image pipeline once."""

    spec: ModelSpec
    pipe: object
    report: LoadReport
    _img2img: object = None

    @property
    def device(self) -> str:
        return self.report.device

    def img2img_pipeline(self):
        """The image-to-image pipeline, sharing the very same component objects as the text-to-image one."""
        if self._img2img is None:
            self._img2img, note = derive_img2img(self.pipe)
            if note:
                self.report.notes.append(note)
        return self._img2img


def derive_img2img(pipe) -> tuple[object, str | None]:
    """AutoPipelineForImage2Image.from_pipe, or FluxImg2ImgPipeline(**components) when that cannot import.

    Returns the pipeline and a note saying why the fallback was used (None when it was not).
    """
    try:
        from diffusers import AutoPipelineForImage2Image

        return AutoPipelineForImage2Image.from_pipe(pipe), None
    except (ImportError, ValueError) as exc:  # KNOWN_ISSUES 11 (no mapping) and 12 (MT5Tokenizer import)
        from diffusers import FluxImg2ImgPipeline

        note = (
            f"AutoPipelineForImage2Image.from_pipe failed ({type(exc).__name__}: {str(exc)[:300]}); "
            "built FluxImg2ImgPipeline from the same components instead"
        )
        logger.warning(note)
        return FluxImg2ImgPipeline(**pipe.components), note


# --- torchao quantize-at-load backends (issue 6) -------------------------------------------------------------
# Quantized at load from the bf16 checkpoint (never a pre-quantized torchao checkpoint: KNOWN_ISSUES row 4);
# regional torch.compile of the transformer blocks where the entry says `compile: true` (see compile_wanted).
# T5 is quantized int8 weight-only in every variant (it runs once per prompt; weight-only keeps its error small).
TORCHAO_BACKENDS: dict[str, dict] = {
    "flux-torchao-int8wo": {
        "config": "Int8WeightOnlyConfig",
        "min_capability": (7, 5),
        "what": "int8 weights, bf16 compute",
    },
    "flux-torchao-int8dq": {
        "config": "Int8DynamicActivationInt8WeightConfig",
        "min_capability": (8, 0),
        "what": "int8 weights and dynamically quantized int8 activations (torch._int_mm)",
    },
    "flux-torchao-fp8dq": {
        "config": "Float8DynamicActivationFloat8WeightConfig",
        "min_capability": (8, 9),
        "what": "float8 e4m3 weights and dynamically quantized float8 activations, per-row scales (torch._scaled_mm)",
    },
}
MIN_DIFFUSERS_FOR_TORCHAO = "0.36.0"  # TorchAoConfig accepts config objects (KNOWN_ISSUES row 3)
MIN_TORCHAO = "0.15.0"  # diffusers >= 0.38 requires it; config classes since 0.9


def check_torchao_capability(model_type: str, capability: tuple[int, int], gpu: str = "this GPU") -> None:
    """Refuse a torchao backend on a GPU whose compute capability cannot run its kernels."""
    need = TORCHAO_BACKENDS[model_type]["min_capability"]
    if tuple(capability) < need:
        raise ModelUnavailableError(
            f"{model_type} ({TORCHAO_BACKENDS[model_type]['what']}) needs a GPU of compute capability "
            f"{need[0]}.{need[1]} or newer; {gpu} is {capability[0]}.{capability[1]}. Fix: on this GPU use "
            + ("flux-dev-torchao-int8dq (int8 dynamic, compiled, 8.0+), " if tuple(capability) >= (8, 0) else "")
            + "flux-dev-torchao-int8 (int8 weight-only, 7.5+) or flux-dev-bnb-8bit."
        )


def _require_torchao(spec: ModelSpec) -> None:
    from packaging.version import Version

    from .environment import package_version

    torchao_version = package_version("torchao")
    if torchao_version is None:
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.type}) needs torchao, an optional extra that is not installed. "
            f"Fix: `pip install torchao` (>= {MIN_TORCHAO}, matching your torch) or `pip install \"fluxnb[torchao]\"`; "
            "or choose flux-dev-bnb-8bit."
        )
    if Version(torchao_version) < Version(MIN_TORCHAO):
        raise ModelUnavailableError(
            f"model {spec.name!r} needs torchao >= {MIN_TORCHAO}, found {torchao_version}. "
            f"Fix: `pip install -U torchao` (a version built for your torch)."
        )
    diffusers_version = package_version("diffusers") or "0"
    if Version(diffusers_version) < Version(MIN_DIFFUSERS_FOR_TORCHAO):
        raise ModelUnavailableError(
            f"model {spec.name!r} needs diffusers >= {MIN_DIFFUSERS_FOR_TORCHAO} (TorchAoConfig with config objects), "
            f"found {diffusers_version}. Fix: use the default dependency line (diffusers 0.42), or flux-dev-bnb-8bit."
        )


# Linear layers fed by the timestep/guidance embedding see one row (M=1). Under torch.compile torchao's int8 and
# float8 dynamic-activation matmuls go straight to torch._int_mm / _scaled_mm, which need M > 16 ("self.size(0)
# needs to be greater than 16, but got 1", seen on an H100): those layers (AdaLN modulation, time/text embedders,
# 0.3% of the FLOPs) get int8 weight-only instead.
_ONE_ROW_LAYERS = (r"re:(.*\.)?(norm1|norm1_context|norm|norm_out)\.linear", r"re:time_text_embed\..*\.linear_[12]")


def _torchao_config(model_type: str):
    """The torchao config of a type. torchao's own inductor presets (coordinate-descent tuning) are left off:
    they multiply compile time; the one flag int8 dynamic quantization needs is set in the loader."""
    import torchao.quantization as tq

    name = TORCHAO_BACKENDS[model_type]["config"]
    weight_only = tq.Int8WeightOnlyConfig(set_inductor_config=False)
    if name == "Int8WeightOnlyConfig":
        return weight_only
    if name == "Float8DynamicActivationFloat8WeightConfig":
        main = tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow(), set_inductor_config=False)
    else:
        main = getattr(tq, name)(set_inductor_config=False)
    return tq.FqnToConfig({**{pattern: weight_only for pattern in _ONE_ROW_LAYERS}, "_default": main})


def compile_blocks(transformer, model_type: str) -> int:
    """diffusers' regional compilation (each repeated FLUX block, not the whole model); returns how many blocks.

    Identical blocks share one compiled graph, so the compile cost is that of the two block types, not of 57 blocks.
    """
    if model_type == "flux-torchao-int8dq":
        import torch._inductor.config as inductor_config

        inductor_config.force_fuse_int_mm_with_mul = True  # fuse the int8 matmul with its rescale
    transformer.compile_repeated_blocks()
    return sum(type(m).__name__ in transformer._repeated_blocks for m in transformer.modules())


def load_flux_torchao(spec: ModelSpec, ctx: LoadContext):
    """bf16 checkpoint quantized at load with torchao (transformer: the type's config; T5: int8 weight-only).

    Entries with `compile: true` get regional torch.compile of the transformer's blocks (compile_blocks); the
    LoadedModel keeps the compiled transformer, so only its first generation at each image size pays the compile.
    `offload_text_encoder: true` keeps T5 on the CPU except while it encodes.
    """
    import torch

    _require_torchao(spec)
    _require_cuda(spec, ctx, "torchao's quantized kernels and torch.compile run on CUDA here")
    props = torch.cuda.get_device_properties(0)
    check_torchao_capability(spec.type, (props.major, props.minor), props.name)
    from diffusers import FluxTransformer2DModel, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from transformers import T5EncoderModel

    with _refuse_unloaded_weights(ctx.checkpoint):
        # T5 first, quantized on the GPU, so that bf16 T5 (9.5 GB) and the transformer never sit there together.
        text_encoder_2 = T5EncoderModel.from_pretrained(
            ctx.checkpoint, subfolder="text_encoder_2", torch_dtype=ctx.torch_dtype, token=ctx.token,
            cache_dir=ctx.cache_dir,
        ).to("cuda")
        # set_inductor_config=False: torchao would otherwise switch on coordinate-descent tuning for the whole
        # process, which multiplies the compile time of the transformer blocks too (results/README.md, run 5)
        quantize_(text_encoder_2, Int8WeightOnlyConfig(set_inductor_config=False))
        transformer = FluxTransformer2DModel.from_pretrained(
            ctx.checkpoint, subfolder="transformer", torch_dtype=ctx.torch_dtype, token=ctx.token,
            cache_dir=ctx.cache_dir, device_map="cuda", quantization_config=TorchAoConfig(_torchao_config(spec.type)),
        )
    pipe = _from_pretrained(ctx, transformer=transformer, text_encoder_2=text_encoder_2)
    pipe.to("cuda")
    if spec.offload_text_encoder:
        offload_text_encoder(pipe)
        ctx.notes.append("T5 is kept on the CPU and moved to the GPU only to encode a prompt (offload_text_encoder): "
                         "a lower peak while denoising and decoding, for a copy of T5 to the GPU per image")
    wanted, why = compile_wanted(spec)
    if why:
        ctx.notes.append(why)
    if not wanted:
        return pipe
    try:
        import triton  # noqa: F401  (torch.compile's GPU code generator)
    except ImportError:
        ctx.notes.append("triton is not installed: torch.compile skipped, running eager (slower); `pip install triton`")
        return pipe
    n = compile_blocks(pipe.transformer, spec.type)
    ctx.notes.append(
        f"{n} transformer blocks wrapped in torch.compile (regional: one compiled graph per block type). The first "
        "generation at each image size compiles them (H100, full size: 10-30 s, results/README.md); later "
        "generations with this loaded model reuse the compiled code. Each image's metadata says whether it paid "
        "the compile."
    )
    return pipe


# Types whose blocks fluxnb compiles (entry key `compile`). Not int8 weight-only: its compiled blocks ran over 300x
# slower than eager on an H100 (results/run6/probe.jsonl), so it stays eager.
COMPILABLE_TYPES = frozenset({"flux-torchao-int8dq", "flux-torchao-fp8dq"})
OFFLOADABLE_TYPES = frozenset(TORCHAO_BACKENDS)  # entry key `offload_text_encoder` (torchao's T5 moves cleanly)
# Compiled int8 dynamic calls torch._int_mm, which needs more than 16 rows ("self.size(0) needs to be greater than
# 16", seen on an H100 with a 64x64 image = 16 tokens): requests for such an entry need at least this many tokens.
MIN_ROWS_COMPILED = {"flux-torchao-int8dq": 17}


def compile_wanted(spec: ModelSpec) -> tuple[bool, str | None]:
    """Whether to compile this entry's transformer blocks, and a note why not (or about the override).

    The entry's `compile` key decides; FLUXNB_COMPILE=0 forces eager (debugging, or a machine without a compiler)
    and FLUXNB_COMPILE=1 compiles any type that supports it.
    """
    env = os.environ.get("FLUXNB_COMPILE", "")
    if spec.type not in COMPILABLE_TYPES:
        if env == "1":
            return False, (f"FLUXNB_COMPILE=1 ignored for {spec.type}: its compiled blocks were much slower than eager "
                           f"(results/README.md); compiled types: {', '.join(sorted(COMPILABLE_TYPES))}")
        return False, None
    if env == "0":
        return False, "FLUXNB_COMPILE=0: transformer blocks run eager (several times slower per step for this type)"
    if env == "1" or spec.compile:
        return True, None
    return False, "transformer blocks run eager (the entry sets no `compile: true`); FLUXNB_COMPILE=1 compiles them"


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


LOADERS.update({model_type: load_flux_torchao for model_type in TORCHAO_BACKENDS})
_TORCHAO_FORMATS = ("AffineQuantizedTensor", "LinearActivationQuantizedTensor", "Int8Tensor", "Float8Tensor")
EXPECTED_FORMATS.update(
    {t: {"transformer": _TORCHAO_FORMATS, "text_encoder_2": _TORCHAO_FORMATS} for t in TORCHAO_BACKENDS}
)
