"""Loading a model entry: its backend's load function, then the checks every load gets, then the report.

`load_model` resolves the entry and its backend record (fluxnb/models/backends/), refuses what cannot run here before
reading any weights, loads, measures every component and verifies that the weights are what the type promises: a
model entry that promises 8-bit weights fails loudly when they are not, and a checkpoint whose weights were "newly
initialized" on load (random weights in disguise: knowledge id transformers5-checkpoint-on-4x) is refused.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError, LoadError, ModelUnavailableError, QuantizationError
from ..core.footprint import ComponentFootprint, pipeline_footprint
from ..core.hub import cache_folder, find_corrupt_weights, hf_token
from ..core.memory import apply_gpu_memory_limit, free_memory
from . import compile_cache, step_cache
from .attention import attention_backend, choose_attention, fit_to_heads, use_attention
from .backends import Backend, LoadContext, check_device, compile_wanted, get_backend
from .config import ModelConfig, ModelSpec, load_config
from .load_report import LoadReport
from .selection import resolve_model
from .tasks import TASKS, TEXT_TO_IMAGE, missing_pipeline
from .tiny import ensure_tiny_checkpoint, tiny_cache_dir

logger = logging.getLogger(__name__)

TINY_WEIGHTS = "embedded tiny model (random weights: images are noise)"
REUSED_NOTE = ("reused: this model was already loaded in this process (load_model(reuse=True)); its weights and any "
               "compiled blocks are the same objects, nothing was read again")


@dataclass
class LoadedModel:
    """A loaded pipeline with its model entry, backend record and load report.

    Attributes:
        spec: the model entry (model_config.yaml).
        pipe: the diffusers FluxPipeline.
        report: what was loaded (LoadReport).
    """

    spec: ModelSpec
    pipe: object
    report: LoadReport
    _img2img: object = None

    @property
    def device(self) -> str:
        return self.report.device

    @property
    def backend(self) -> Backend:
        return get_backend(self.spec.type)

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
    except (ImportError, ValueError) as exc:  # knowledge ids autopipeline-no-flux, mt5tokenizer-transformers5
        from diffusers import FluxImg2ImgPipeline

        note = (
            f"AutoPipelineForImage2Image.from_pipe failed ({type(exc).__name__}: {str(exc)[:300]}); "
            "built FluxImg2ImgPipeline from the same components instead"
        )
        logger.warning(note)
        return FluxImg2ImgPipeline(**pipe.components), note


def quantization_problem(component: ComponentFootprint, promised: tuple[str, ...] | None) -> str | None:
    """The one rule: a component the type promises quantized must be in a promised format, every Linear of it.

    Returns what is wrong, or None when the component keeps the promise (or none was made for it).
    """
    if not promised:
        return None
    if not component.format.startswith(promised):
        return (f"{component.name} ({component.cls}) is {component.format}, expected {' or '.join(promised)}: "
                f"{component.quantized_layers} quantized and {component.linear_layers} plain Linear layers")
    if component.linear_layers > component.quantized_layers:
        return (f"{component.name} ({component.cls}) has only {component.quantized_layers} quantized layers beside "
                f"{component.linear_layers} plain Linear layers")
    return None


def verify_quantization(model_type: str, components: list[ComponentFootprint]) -> None:
    """Fail loudly when a component that must be quantized is not: module types and real bytes both count."""
    promised = get_backend(model_type).expected_formats
    problems = [p for c in components if (p := quantization_problem(c, promised.get(c.name)))]
    if problems:
        raise QuantizationError(
            f"quantization was not applied as the {model_type} entry promises:\n  - " + "\n  - ".join(problems),
            fix="check that the checkpoint is the one named in model_config.yaml and that the quantization library "
            "imports on this machine (`fluxnb doctor`).",
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


def check_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A local checkpoint folder in the hub layout (a model_index.json beside its components), or an InputError
    naming what it is instead, before any run folder is made or weights read."""
    folder = Path(checkpoint).expanduser()
    fix = "give the folder of a checkpoint in the hub layout (model_index.json, transformer/, text_encoder/, ...)"
    if not folder.exists():
        raise InputError(f"checkpoint {folder} does not exist.", fix=fix)
    if not folder.is_dir():
        raise InputError(f"checkpoint {folder} is a file, not a checkpoint folder.", fix=fix)
    if not (folder / "model_index.json").is_file():
        raise InputError(f"checkpoint {folder} holds no model_index.json: it is not a diffusers checkpoint "
                         f"({len(list(folder.iterdir()))} entries in it).", fix=fix)
    return folder


def _weights_source(spec: ModelSpec, backend: Backend, checkpoint: str | os.PathLike | None) -> tuple[str, str]:
    """Where the weights come from and how the report names them."""
    if checkpoint is not None:
        return str(check_checkpoint(checkpoint)), "local checkpoint"
    if backend.embedded:
        return str(embedded_checkpoint(spec.task)), TINY_WEIGHTS
    return spec.id, "hub checkpoint"


def embedded_checkpoint(task: str = TEXT_TO_IMAGE) -> Path:
    """The tiny checkpoint of `task`, built on first use into fluxnb's cache; a cache fluxnb cannot write (a read-only
    folder or home) is named with the fix, not a traceback."""
    try:
        return ensure_tiny_checkpoint(task=task)
    except OSError as exc:
        raise InputError(f"cannot build the embedded tiny model in {tiny_cache_dir(task=task)}: "
                         f"{exc.strerror or exc}.",
                         fix="point FLUXNB_CACHE at a folder you can write (e.g. export FLUXNB_CACHE=/tmp/fluxnb-cache)"
                         ) from None


def _token_for(spec: ModelSpec, checkpoint: str | os.PathLike | None) -> str | None:
    """The hub token a gated entry needs (from HF_TOKEN or the saved login), or a refusal saying how to get one."""
    if not spec.requires_auth or checkpoint is not None:
        return None
    token = hf_token()
    if token is None:
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.id}) is gated: it needs a Hugging Face token with access.",
            fix="accept the license on its model page, then `huggingface-cli login` or set HF_TOKEN (never pass the "
            "token as a notebook parameter: it would be saved in the executed notebook).",
        )
    return token


def _gpu_capability(device: str) -> tuple[tuple[int, int] | None, str]:
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return None, "this machine"
    props = torch.cuda.get_device_properties(0)
    return (props.major, props.minor), props.name


def _run_loader(spec: ModelSpec, backend: Backend, ctx: LoadContext, progress: bool):
    """The backend's load function; a failure caused by a damaged weights file is named with the file to delete."""
    with _progress_bars(progress):
        try:
            return backend.load(spec, ctx, backend)
        except Exception as exc:
            corrupt = find_corrupt_weights(ctx.checkpoint)
            if corrupt is None:
                raise
            raise LoadError(f"{corrupt[0]} is truncated or corrupted ({corrupt[1]}).",
                            fix=corrupt_weights_fix(spec, ctx.checkpoint)) from exc


def corrupt_weights_fix(spec: ModelSpec, source: str) -> str:
    """A fix that works for damaged weights: the whole folder goes (deleting one file of a hub snapshot or of a
    built checkpoint leaves a folder that looks complete and fails with a bare OSError), then it comes back."""
    if Path(source).is_dir():
        return (f"delete the whole checkpoint folder: `rm -rf {source}`; a checkpoint built by fluxnb (the tiny "
                "model) is rebuilt on the next load, a folder of your own must be copied again")
    folder = cache_folder(spec.id)
    return f"delete the model's cache folder and download it again: `rm -rf {folder}`, then " \
           f"`huggingface-cli download {spec.id}`"


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

    Args:
        model: a name from model_config.yaml, "auto", or a ModelSpec.
        checkpoint: where the weights come from instead of the entry's id (a local folder in the hub layout), so
            the very same loader runs on checkpoints built here (tiny, full-size synthetic).
        device: "cuda" or "cpu" (default: cuda when available).
        config: the model config (default: the project's model_config.yaml).
        progress: show the libraries' loading bars (off for headless logs).
        reuse: the notebooks' mode: the same entry, checkpoint and device loaded earlier with reuse=True in this
            process is returned as it is, compiled blocks included; asking for another model first releases
            fluxnb's hold on the previous one.

    Returns:
        LoadedModel: the pipeline, its entry and its LoadReport.

    Raises:
        RequestError: an unknown model name.
        ModelUnavailableError: the entry cannot run here (no CUDA, GPU too old, gated without a token, offline
            and not cached, a missing extra), raised before any weights are read.
        LoadError: a damaged or incomplete checkpoint (the file to delete is named).
        QuantizationError: the weights are not in the format the type promises.
    """
    import torch

    config = config or load_config()
    spec = model if isinstance(model, ModelSpec) else resolve_model(model, config).spec
    backend = get_backend(spec.type)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    token = _token_for(spec, checkpoint)
    capability, gpu = _gpu_capability(device)
    check_device(spec, backend, device, capability, gpu)
    attention = choose_attention(spec, backend.attention, device, capability)
    missing = missing_pipeline(TASKS[spec.task])
    if missing:
        raise ModelUnavailableError(f"model {spec.name!r} is a {spec.task} model: {missing}.",
                                    fix=f"pip install 'diffusers>={TASKS[spec.task].since_diffusers}' (the default "
                                    "stack, requirements/default.txt, has it)")
    source, weights = _weights_source(spec, backend, checkpoint)
    key = (spec, source, device)
    if reuse and key in _SESSION_MODEL:
        kept = _SESSION_MODEL[key]
        if REUSED_NOTE not in kept.report.notes:
            kept.report.notes.append(REUSED_NOTE)
        return kept
    if reuse:
        release_session_model()
    ctx = LoadContext(checkpoint=source, device=device, torch_dtype=torch.bfloat16 if device == "cuda" else
                      torch.float32, token=token, task=spec.task)
    cache_setting, compile_state = _speed_setup(spec, backend, ctx)
    cap = apply_gpu_memory_limit(device)  # FLUXNB_GPU_MEMORY_LIMIT: the process stays inside the user's limit
    if cap is not None:
        ctx.notes.append(cap.note())
    start = time.perf_counter()
    pipe = _run_loader(spec, backend, ctx, progress)
    attention = fit_to_heads(attention, pipe.transformer, spec.attention)
    use_attention(pipe.transformer, attention.kernel)
    if attention.note:
        ctx.notes.append(attention.note)
    if cache_setting is not None:
        step_cache.enable(pipe.transformer, cache_setting)
        ctx.notes.append(f"cached mode {cache_setting.describe()}: off by default, chosen by the entry's `cache:`")
    seconds = time.perf_counter() - start
    components = pipeline_footprint(pipe)
    verify_quantization(spec.type, components)
    report = LoadReport(model=spec.name, model_id=spec.id, type=spec.type, checkpoint=source, weights=weights,
                        device=device, offload=ctx.offload, load_seconds=seconds, components=components,
                        notes=ctx.notes, compile_mode=spec.compile_mode if compile_state else None,
                        compile_cache=compile_state.to_dict() if compile_state else None,
                        cache=cache_setting.to_dict() if cache_setting else None,
                        attention=attention_backend(pipe.transformer))
    loaded = LoadedModel(spec=spec, pipe=pipe, report=report)
    if reuse:
        _SESSION_MODEL[key] = loaded
    return loaded


def _speed_setup(spec: ModelSpec, backend: Backend, ctx: LoadContext):
    """Before any weights are read: the cached mode's setting (refused where this diffusers lacks the hook) and,
    for a compiled entry, the persistent compile cache (fluxnb.models.compile_cache), so compile is paid once per
    machine."""
    setting = step_cache.parse_cache(spec.cache, parameter=f"{spec.name}.cache")
    if setting is not None:
        step_cache.require_available(setting, parameter=f"{spec.name}.cache")
    if not compile_wanted(spec, backend)[0]:
        return setting, None
    try:
        state = compile_cache.activate()
    except OSError as exc:
        raise InputError(f"cannot use the compile cache in {compile_cache.compile_root()}: {exc.strerror or exc}.",
                         fix="point FLUXNB_CACHE at a folder you can write, or FLUXNB_COMPILE=0 to run uncompiled"
                         ) from None
    ctx.notes.append(state.note())
    return setting, state


# The model kept by load_model(reuse=True): one at a time, so re-running a notebook's load cell costs nothing.
_SESSION_MODEL: dict[tuple, LoadedModel] = {}


def release_session_model() -> None:
    """Let go of the model kept by load_model(reuse=True), and give its GPU memory back."""
    if not _SESSION_MODEL:
        return
    device = next(iter(_SESSION_MODEL.values())).device
    _SESSION_MODEL.clear()
    free_memory(device)
