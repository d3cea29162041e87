"""What a backend is: one frozen record per model type, and the loading steps every family shares.

A record holds every fact about a type, so that config validation, request validation, the doctor, the bench,
the synthetic builder and the knowledge base read one place. Nothing heavy is imported here: torch, diffusers,
bitsandbytes and torchao load inside a backend's load function.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.compat import compiled_call, inductor_mode_options, repeated_blocks, set_compiled_call
from ...core.errors import LoadError, ModelUnavailableError
from ...core.hub import is_cached, offline_mode
from ..attention import AttentionChoice
from ..tasks import TEXT_TO_IMAGE, pipeline_class
from . import cuda_graph

# Load-time log text that means weights were not loaded from the checkpoint (they are random).
_UNLOADED_WEIGHT_PATTERNS = ("newly initialized", "were not used when initializing", "missing keys")


@dataclass
class LoadContext:
    """Where and how to load, handed to a backend's load function; the function adds notes and the offload mode.

    Attributes:
        checkpoint: hub repo id or local folder in the hub layout.
        device: "cuda" or "cpu".
        torch_dtype: the compute dtype (bf16 on CUDA, fp32 on the CPU).
        token: the hub token for gated models (never logged).
        notes: what the load did that a user should know (shown in the load report).
        offload: "none", "model" or "sequential" (CPU offload chosen by the backend).
        task: the entry's task: its diffusers pipeline class (fluxnb.models.tasks).
    """

    checkpoint: str
    device: str
    torch_dtype: object
    token: str | None = None
    cache_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    offload: str = "none"
    task: str = TEXT_TO_IMAGE  # which diffusers pipeline (fluxnb.models.tasks): FluxPipeline, FluxFillPipeline...

    def hub_options(self) -> dict[str, Any]:
        """What every from_pretrained gets: the token, the cache, and offline mode said explicitly (diffusers' model
        classes do not read HF_HUB_OFFLINE for a sharded checkpoint: they ask the hub for the shard list and fail
        with OfflineModeIsEnabled although the files are cached; seen with diffusers 0.42.1, huggingface_hub 1.33)."""
        return {"token": self.token, "cache_dir": self.cache_dir, "local_files_only": offline_mode()}


LoadFunction = Callable[[Any, LoadContext, "Backend"], object]  # (ModelSpec, context, record) -> FluxPipeline


@dataclass(frozen=True)
class Backend:
    """Everything about one model `type` of model_config.yaml.

    Attributes:
        type: the name model_config.yaml entries use (`type: flux-bnb-8bit`).
        family: the module of fluxnb/models/backends/ that implements it (bnb, bf16, torchao, tiny).
        what: what it is and what it is for, in one sentence (doctor, README, errors).
        load: the function that loads a pipeline for an entry of this type.
        expected_formats: component -> accepted weight formats (prefixes of ComponentFootprint.format); the loader
            fails when a component that must be quantized is not.
        needs_cuda: refuses to load without a CUDA GPU; `why_gpu` says why (or why not).
        min_capability: lowest CUDA compute capability its kernels run on, e.g. (8, 9) for float8; None: any.
        extra: the pip extra it needs beyond the base install (`pip install -e ".[torchao]"`), or None.
        compilable: entries may set `compile: true` (regional torch.compile of the transformer blocks).
        compile_modes: the torch.compile modes an entry may name in `compile_mode:` (besides the default one).
        cuda_graph: compiled on a GPU, the transformer's forward is replayed as one CUDA graph (backends/cuda_graph.py);
            on for the types whose capture is proven at full size and on the tiny model.
        offloadable_text_encoder: entries may set `offload_text_encoder: true` (T5 on the CPU between prompts).
        min_rows_compiled: when compiled, requests need more image+text tokens than this (kernel limits); 0: none.
        synthetic_kind: which full-size synthetic checkpoint the bench builds for it (fluxnb.models.synthetic.KINDS);
            None: quantized at load from the bf16 one, or not benchmarked at full size.
        download_gib / vram_gib: what it downloads and its peak GPU memory at 1024x1024 (doctor).
        offload_ok: it can fall back to CPU offload when the GPU is too small.
        uses: the paths of fluxnb/knowledge.yaml it takes, so that known issues on them are flagged for it.
        embedded: built locally (the tiny model): no hub, no download, runs on a CPU.
        reference: full precision, the fidelity reference of the bench.
        baseline: the guide's verified configuration (LLM.int8: pre-quantized, or quantized at load for the editing
            models), the speed baseline of the bench.
        options: family-specific settings (e.g. the torchao config name).
        attention: the attention kernel an entry with `attention: auto` runs, per compute capability, each with why
            (fluxnb.models.attention); SDPA where none is listed.
        lora: how LoRA adapters apply (fluxnb/models/lora.py): "yes" (loaded through PEFT, `fuse` allowed),
            "unfused: why" (PEFT layers beside the weights, no fuse), "hotswap: why" (one adapter slot swapped in
            place: compiled blocks never recompile when the adapter or its scale changes), or "no: why" (refused
            before loading).
    """

    type: str
    family: str
    what: str
    load: LoadFunction
    why_gpu: str
    expected_formats: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    needs_cuda: bool = True
    min_capability: tuple[int, int] | None = None
    extra: str | None = None
    compilable: bool = False
    compile_modes: tuple[str, ...] = ()
    cuda_graph: bool = False
    offloadable_text_encoder: bool = False
    min_rows_compiled: int = 0
    synthetic_kind: str | None = None
    download_gib: float = 0.0
    vram_gib: float = 0.0
    offload_ok: bool = False
    uses: tuple[str, ...] = ("core",)
    embedded: bool = False
    reference: bool = False
    baseline: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    attention: tuple[AttentionChoice, ...] = ()
    lora: str = "no: LoRA support is not checked for this type yet"

    @property
    def lora_mode(self) -> str:
        """"yes", "unfused", "hotswap" or "no" (the `lora` field without its reason)."""
        return self.lora.split(":", 1)[0].strip()

    @property
    def capability_text(self) -> str | None:
        """"8.9" for (8, 9); None when any GPU will do."""
        return None if self.min_capability is None else f"{self.min_capability[0]}.{self.min_capability[1]}"


def compile_wanted(spec, backend: Backend) -> tuple[bool, str | None]:
    """Whether to compile this entry's transformer blocks, and a note why not (or about the override).

    The entry's `compile` key decides; FLUXNB_COMPILE=0 forces eager (debugging, or a machine without a compiler)
    and FLUXNB_COMPILE=1 compiles any type that supports it.
    """
    env = os.environ.get("FLUXNB_COMPILE", "")
    if not backend.compilable:
        if env == "1":
            return False, (f"FLUXNB_COMPILE=1 ignored for {backend.type}: its compiled blocks were much slower than "
                           "eager (results/README.md)")
        return False, None
    if env == "0":
        return False, "FLUXNB_COMPILE=0: transformer blocks run eager (several times slower per step for this type)"
    if env == "1" or spec.compile:
        return True, None
    return False, "transformer blocks run eager (the entry sets no `compile: true`); FLUXNB_COMPILE=1 compiles them"


def compile_regionally(transformer, **compile_kwargs) -> int:
    """torch.compile each repeated FLUX block (regional compilation: identical blocks share one compiled graph, so
    the first call compiles two block types, not 57 blocks); returns how many blocks. diffusers'
    `compile_repeated_blocks` where it exists, the same per-block `Module.compile` on diffusers lines without it."""
    if hasattr(transformer, "compile_repeated_blocks"):
        transformer.compile_repeated_blocks(**compile_kwargs)
        count = sum(type(m).__name__ in (repeated_blocks(transformer) or ()) for m in transformer.modules())
    else:
        blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
        for block in blocks:
            block.compile(**compile_kwargs)
        count = len(blocks)
    _share_single_block_graph(transformer)
    return count


def _share_single_block_graph(transformer) -> None:
    """Give the first single block its inputs with the strides the other 37 see, so all share one compiled graph.

    Each single block returns its text and image tokens as two slices of one (text + image) tensor; the first one
    gets two separate tensors from the last double block instead. torch.compile guards on strides, so without this
    the first single block compiled a graph of its own (3 graphs instead of 2: about a third more compile, cold and
    warm). The wrapper sits outside the compiled call (a pre-hook would be traced into it, and guarded on); it costs
    one copy of the tokens per step.
    """
    import inspect

    import torch

    blocks = getattr(transformer, "single_transformer_blocks", None)
    compiled = compiled_call(blocks[0]) if blocks else None
    if compiled is None or "encoder_hidden_states" not in inspect.signature(type(blocks[0]).forward).parameters:
        return  # older diffusers (the guide's 0.34) hands the single blocks one joint tensor: nothing to re-stride

    def call(*args, **kwargs):
        args = list(args)  # the block is called with keywords (diffusers) or positionally: keep whichever was used
        where = {name: (kwargs, name) if name in kwargs else (args, i)
                 for i, name in enumerate(("hidden_states", "encoder_hidden_states"))}
        (image_in, image_key), (text_in, text_key) = where["hidden_states"], where["encoder_hidden_states"]
        image, text = image_in[image_key], text_in[text_key]
        joint = torch.cat([text, image], dim=1)
        image_in[image_key], text_in[text_key] = joint[:, text.shape[1]:], joint[:, :text.shape[1]]
        return compiled(*args, **kwargs)

    set_compiled_call(blocks[0], call)


def compile_options(backend: Backend, mode: str | None = None) -> dict[str, Any]:
    """torch.compile's keyword arguments for a backend's blocks: the mode, plus the inductor settings its record
    carries (`options["inductor"]`), scoped to this compile instead of set for the whole process.

    torch.compile takes `mode` or `options`, not both: with settings, the mode's own options are spelled out.
    """
    settings = backend.options.get("inductor")
    if not settings:
        return {"mode": mode} if mode else {}
    return {"options": {**inductor_mode_options(mode), **settings}}


def compile_blocks(transformer, backend: Backend, mode: str | None = None) -> int:
    """Regional compile of a backend's transformer with the record's inductor settings; returns how many blocks."""
    return compile_regionally(transformer, **compile_options(backend, mode))


def compile_vae_decoder(pipe) -> None:
    """torch.compile the VAE's decoder, its convolutions in channels_last: on an H100 a 1024x1024 decode takes
    0.041 s against 0.09-0.16 s eager in the pipeline (bench runs 52-53; channels_last eager is slower, so the layout
    only pays compiled: run 20). The decoder is a module of its own in diffusers' AutoencoderKL, so `Module.compile`
    covers every decode (the pipeline's, the bench's) and leaves the encoder (image-to-image) eager."""
    import torch

    pipe.vae.decoder.to(memory_format=torch.channels_last)
    # dynamic=False: a graph per image size, as the first size gets. With dynamic shapes on, the second size compiled
    # a shape-generic graph that then served the first size too, decoding the same latents a few levels apart
    # (GPU lane run 55)
    pipe.vae.decoder.compile(dynamic=False)


def compile_if_wanted(pipe, spec, backend: Backend, ctx: LoadContext) -> bool:
    """Regional compile when the entry (or FLUXNB_COMPILE=1) asks and the record allows; notes say what happened."""
    wanted, why = compile_wanted(spec, backend)
    if why and (spec.compile or os.environ.get("FLUXNB_COMPILE")):
        ctx.notes.append(why)
    if not wanted:
        return False
    if ctx.device == "cuda":
        try:
            import triton  # noqa: F401  (torch.compile's GPU code generator)
        except ImportError:
            ctx.notes.append("triton is not installed: torch.compile skipped, running eager (slower); "
                             "`pip install triton`")
            return False
    compile_mode = getattr(spec, "compile_mode", None)
    n = compile_blocks(pipe.transformer, backend, compile_mode)
    mode = f", mode {compile_mode}" if compile_mode else ""
    ctx.notes.append(f"{n} transformer blocks wrapped in torch.compile (regional{mode}: one compiled graph per block "
                     "type). The first image at each size compiles them (H100, full size: about 15 s cold, a few "
                     "seconds with a warm compile cache: results/README.md); later images reuse the compiled code, and "
                     "each image's metadata says whether it paid the compile.")
    if spec.compile_vae:
        compile_vae_decoder(pipe)
        ctx.notes.append("the VAE decoder is torch.compiled as well (channels_last): the first image at each size "
                         "compiles it too (H100: about 11 s more cold), then it decodes in about a third of its eager "
                         "time")
    if ctx.device == "cuda" and backend.cuda_graph and cuda_graph.wanted():
        marker = cuda_graph.failure_marker()
        failed = cuda_graph.recorded_failures(marker).get(spec.name)
        if failed is not None:  # a capture of this model failed in an earlier process (fatal there)
            ctx.notes.append(f"CUDA graph off for {spec.name}: its capture failed on {failed.get('when')} "
                             f"({failed.get('error')}); the compiled steps run without it. `fluxnb cache --clear` "
                             f"(or deleting {marker}) tries the graph again")
            return True
        cuda_graph.graph_forward(pipe.transformer, spec.name, marker)
        ctx.notes.append("the compiled transformer's forward is captured as one CUDA graph at each image size and "
                         "replayed in the later steps (no kernel launch gaps; off with a step cache or "
                         "FLUXNB_CUDA_GRAPH=0); each image's metadata says how many steps replayed (cuda_graph)")
    return True


HOTSWAP_REASON = ("hotswap: compiled blocks would recompile on every change of adapter or scale; diffusers' LoRA "
                  "hotswap swaps one adapter's weights in place (one adapter at a time, unfused)")


def lora_for(spec, backend: Backend) -> tuple[str, str]:
    """How an entry applies LoRA adapters: (mode, reason). The record's `lora`, except that an entry whose blocks
    are compiled takes adapters by hotswap, whatever its type (a compiled bf16 entry too)."""
    mode, _, reason = backend.lora.partition(":")
    if mode.strip() in ("yes", "unfused") and compile_wanted(spec, backend)[0]:
        mode, _, reason = HOTSWAP_REASON.partition(":")
    return mode.strip(), reason.strip()


@contextmanager
def refuse_unloaded_weights(checkpoint: str):
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
            f"with random values.\n{bad[0][:1500]}",
            fix="the checkpoint was probably saved by another transformers/diffusers line, or is incomplete; "
            "rebuild or re-download it.",
            ref="transformers5-checkpoint-on-4x",
        )


def from_pretrained(ctx: LoadContext, **kwargs):
    """The task's pipeline (FluxPipeline, FluxFillPipeline...) from_pretrained with fluxnb's checks: offline and not
    cached, weights not loaded."""
    if not Path(ctx.checkpoint).is_dir() and offline_mode() and not is_cached(ctx.checkpoint):
        raise ModelUnavailableError(
            f"{ctx.checkpoint} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE or "
            "TRANSFORMERS_OFFLINE), so nothing can be downloaded.",
            fix=f"pre-download it where there is network (`huggingface-cli download {ctx.checkpoint}`, with HF_HOME "
            "pointing at the same cache), or unset HF_HUB_OFFLINE; model='flux-tiny' runs offline.",
        )
    with refuse_unloaded_weights(ctx.checkpoint):
        return pipeline_class(ctx.task).from_pretrained(ctx.checkpoint, torch_dtype=ctx.torch_dtype,
                                                        **ctx.hub_options(), **kwargs)
