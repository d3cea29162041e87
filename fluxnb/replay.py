"""The troubleshooting replay: the guide's six attempts (GUIDE.md, "What did not work"), replayed on this machine.

Each attempt is an entry: the code the guide's authors ran, what the guide recorded (error, time, symptom, its
explanation), the diagnosis from the knowledge base (knowledge.yaml id; the research corrects the guide on
attempt 4 and on the AutoImageProcessor trap), and the fix. Each has a live runner that executes the same
calls with the installed versions on the embedded tiny FLUX (hub checkpoints are replaced by tiny ones made
here the same way), and says whether today's behaviour differs from the guide's. Where the machine cannot run
an attempt (no CUDA GPU, optional package missing), the result falls back to the guide's recording and says
why and how to install what is missing. Every result is labelled LIVE ("live here") or RECORDED
("recorded in the guide").

    python -m fluxnb.replay --json replay.json          # every attempt, live where possible
"""

from __future__ import annotations

import html
import importlib.util
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .environment import device_info, package_versions

LIVE = "live here"
RECORDED = "recorded in the guide"
INSTALL_HINT = 'pip install -e ".[replay]"  (torchao and optimum-quanto, pinned in pyproject.toml)'
# Optional packages by import name -> the distribution to install.
OPTIONAL = {"torchao": "torchao", "optimum.quanto": "optimum-quanto", "bitsandbytes": "bitsandbytes"}
# Exceptions the attempts are expected to raise (or that a live run on an unforeseen version may raise):
# recorded as the observed outcome, never swallowed silently.
EXPECTED_ERRORS = (NotImplementedError, ValueError, RuntimeError, TypeError, AssertionError, ImportError, OSError)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuideRecord:
    result: str
    error: str
    time: str | None
    explanation: str


@dataclass(frozen=True)
class Attempt:
    number: int
    title: str
    code: str  # what the guide's authors ran
    guide: GuideRecord
    diagnosis_id: str  # knowledge.yaml entry
    correction: str | None  # where the research corrects the guide
    fix: str
    requires: tuple[str, ...]  # optional packages (import names) the live run needs
    needs_cuda: bool  # live only on a CUDA GPU
    runner: Callable[[ReplayContext], LiveOutcome]


@dataclass
class LiveOutcome:
    outcome: str
    observed: str
    differs: bool
    difference: str
    ran: str  # the code that ran here (tiny checkpoint in place of the hub one)
    details: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)


@dataclass
class AttemptResult:
    attempt: int
    title: str
    mode: str  # LIVE or RECORDED
    outcome: str
    observed: str
    differs_from_guide: bool
    difference: str
    diagnosis_id: str
    diagnosis_confirmed: bool  # fluxnb.diagnosis.diagnose() on the observed (or recorded) text found diagnosis_id
    diagnosis_ids: list[str]
    cause: str
    fix: str
    seconds: float
    device: str
    ran: str | None = None
    note: str | None = None  # why recorded, and how to make it live
    details: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("images")
        data["images"] = len(self.images)
        return data

    def __str__(self) -> str:
        lines = [
            f"attempt {self.attempt}: {self.title}  [{self._where()}]",
            f"  outcome: {self.outcome}",
            f"  observed: {self.observed}",
            f"  differs from the guide: {'yes: ' + self.difference if self.differs_from_guide else 'no'}",
            f"  diagnosis: {self.diagnosis_id} "
            f"({'confirmed by fluxnb.diagnosis' if self.diagnosis_confirmed else 'not matched by the text'})",
            f"  cause: {self.cause}",
            f"  fix: {self.fix}",
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        colour = "#1a7f37" if self.mode == LIVE else "#6e7781"
        rows = [
            ("outcome", e(self.outcome)),
            ("observed", f"<code>{e(self.observed)}</code>"),
            ("differs from the guide", e("yes: " + self.difference if self.differs_from_guide else "no")),
            ("diagnosis", f"<code>{e(self.diagnosis_id)}</code>"
                          + (" (confirmed by fluxnb.diagnosis)" if self.diagnosis_confirmed else "")),
            ("cause", e(self.cause)),
            ("fix", e(self.fix)),
        ]
        if self.note:
            rows.append(("note", e(self.note)))
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in rows)
        return (f"<p><b>Attempt {self.attempt}: {e(self.title)}</b> "
                f"<span style='color:white;background:{colour};padding:1px 6px'>{e(self.mode)}</span> "
                f"({e(self._where(with_mode=False))})</p><table>{body}</table>")

    def _where(self, with_mode: bool = True) -> str:
        """Where and how long it ran; a recording ran nowhere here, so it gets no device or seconds."""
        if self.mode != LIVE:
            return f"{self.mode}, not run here" if with_mode else "not run here"
        return (f"{self.mode}, " if with_mode else "") + f"{self.device}, {self.seconds:.2f} s"


@dataclass
class ReplayContext:
    """Where the live runs happen: device, a scratch folder, the tiny checkpoint, a small generation request."""

    device: str
    workdir: Path
    checkpoint: Path
    prompt: str = "a red fox in the snow, watercolor"
    size: int = 64
    steps: int = 4
    seed: int = 20251122
    shared: dict[str, Any] = field(default_factory=dict)  # made by one attempt, reused by a later one

    @classmethod
    def create(cls, workdir: str | Path | None = None, device: str | None = None) -> ReplayContext:
        import torch

        from .tiny import ensure_tiny_checkpoint

        path = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fluxnb-replay-"))
        path.mkdir(parents=True, exist_ok=True)
        return cls(device=device or ("cuda" if torch.cuda.is_available() else "cpu"), workdir=path,
                   checkpoint=ensure_tiny_checkpoint())

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def generate(self, pipe):
        """One small image with a fixed seed (the same for every attempt, so images can be compared)."""
        import torch

        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt=self.prompt, num_inference_steps=self.steps, guidance_scale=3.5, width=self.size,
                    height=self.size, max_sequence_length=32,
                    generator=torch.Generator(device="cpu").manual_seed(self.seed)).images[0]


@contextmanager
def _quiet():
    """Keep diffusers/transformers' own warnings and loading bars out of the lesson (the results carry what
    matters); restores their settings afterwards."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    modules = (diffusers_logging, transformers_logging)
    saved = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in modules]
    for m in modules:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*[Dd]eprecat", category=UserWarning)
            yield
    finally:
        for m, (verbosity, bars) in zip(modules, saved, strict=True):
            m.set_verbosity(verbosity)
            (m.enable_progress_bar if bars else m.disable_progress_bar)()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _version(name: str) -> str:
    return package_versions().get(name, "not installed")


def _gpu_name() -> str:
    info = device_info()
    return f"{info['gpu']}, capability {info['compute_capability']}" if info.get("gpu") else "no GPU"


def _diffusers_at_least(minimum: str) -> bool:
    from packaging.version import Version

    return Version(_version("diffusers")) >= Version(minimum)


# -------------------------------------------------------------- attempt 1: pre-quantized torchao FP8 checkpoint


def _torchao_float8_config(device: str):
    """The guide checkpoint's config on a GPU that has float8 matmuls (capability >= 8.9); weight-only elsewhere."""
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig

    if device == "cuda" and torch.cuda.get_device_capability() >= (8, 9):
        return Float8DynamicActivationFloat8WeightConfig()
    return Float8WeightOnlyConfig()


def make_torchao_checkpoint(ctx: ReplayContext) -> tuple[Path, str]:
    """A tiny pre-quantized torchao FLUX checkpoint, written by the installed torchao (like the hub one was)."""
    if "torchao_checkpoint" in ctx.shared:
        return ctx.shared["torchao_checkpoint"], ctx.shared["torchao_config"]
    from diffusers import FluxPipeline, FluxTransformer2DModel, TorchAoConfig

    config = _torchao_float8_config(ctx.device)
    transformer = FluxTransformer2DModel.from_pretrained(
        ctx.checkpoint, subfolder="transformer", torch_dtype=ctx.dtype, quantization_config=TorchAoConfig(config))
    pipe = FluxPipeline.from_pretrained(ctx.checkpoint, transformer=transformer, torch_dtype=ctx.dtype)
    target = ctx.workdir / "flux-tiny-torchao-fp8"
    pipe.save_pretrained(target, safe_serialization=False)  # torchao tensor subclasses are pickled
    ctx.shared["torchao_checkpoint"], ctx.shared["torchao_config"] = target, type(config).__name__
    return target, type(config).__name__


def run_attempt_1(ctx: ReplayContext) -> LiveOutcome:
    import torch
    from diffusers import FluxPipeline

    from .sanity import check_image

    if not _diffusers_at_least("0.36"):
        raise _NotLiveHere(f"quantizing with a torchao config object needs diffusers >= 0.36 (installed "
                           f"{_version('diffusers')}; knowledge entry torchao-quant-type-api)")
    checkpoint, config_name = make_torchao_checkpoint(ctx)
    ran = (f"# tiny checkpoint quantized with TorchAoConfig({config_name}()) by torchao {_version('torchao')}, "
           f"saved with save_pretrained(safe_serialization=False)\n"
           f"pipe = FluxPipeline.from_pretrained({str(checkpoint)!r}, torch_dtype={ctx.dtype})\n"
           f"pipe.to({ctx.device!r}); image = pipe(prompt, ...).images[0]")
    try:
        pipe = FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype)
        pipe.to(ctx.device)
        image = ctx.generate(pipe)
    except EXPECTED_ERRORS as exc:
        text = _error_text(exc)
        return LiveOutcome("failed", text[:2000], "4096" not in text,
                           "a different error from the guide's size mismatch", ran)
    weight = type(pipe.transformer.x_embedder.weight).__name__
    sanity = check_image(image)
    del pipe
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    v1 = _torchao_v1_float8_status()
    return LiveOutcome(
        "succeeded" if sanity.ok else "generated a broken image",
        f"a tiny checkpoint pre-quantized by torchao {_version('torchao')} ({config_name}) loads "
        f"(transformer weights are {weight}) and generates an image; {sanity}. {v1}",
        True,
        "the guide's hub checkpoint (diffusers/FLUX.1-dev-torchao-fp8) was serialized in torchao's version-1 "
        "float8 format; a checkpoint written by the installed torchao loads fine. The failure belongs to that "
        "checkpoint's format, not to torchao pre-quantized checkpoints in general (the hub one cannot be "
        "downloaded here)",
        ran,
        {"config": config_name, "weight_class": weight, "sanity": sanity.to_dict(), "torchao_v1_float8": v1},
        [image],
    )


def _torchao_v1_float8_status() -> str:
    """Can this torchao still build the version-1 float8 format the guide's checkpoint was saved in?"""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

    try:
        config = Float8DynamicActivationFloat8WeightConfig(version=1)
    except (TypeError, ValueError, AssertionError, NotImplementedError) as exc:
        return f"torchao {_version('torchao')} refuses the version-1 float8 config ({_error_text(exc)[:200]})"
    return (f"torchao {_version('torchao')} still accepts Float8DynamicActivationFloat8WeightConfig(version="
            f"{getattr(config, 'version', '?')}) (deprecated)")


# -------------------------------------------------------------- attempt 2: device_map="balanced"


def run_attempt_2(ctx: ReplayContext) -> LiveOutcome:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    if not _diffusers_at_least("0.36"):
        raise _NotLiveHere(f"the pre-quantized tiny checkpoint needs diffusers >= 0.36 "
                           f"(installed {_version('diffusers')})")
    checkpoint, config_name = make_torchao_checkpoint(ctx)
    details: dict[str, Any] = {"checkpoint_config": config_name}
    observed = None
    lines = []
    if ctx.device == "cuda":
        import torch

        # On the L4, 'balanced' sized the components unquantized and the transformer (~24 GB in bf16) did not fit
        # the GPU, so it mapped the transformer to "cpu". Same here: a GPU budget of 330 kB fits the tiny VAE and
        # encoders (285 kB) but not the transformer's estimate (390 kB, estimated in fp32).
        lines.append(f"pipe = FluxPipeline.from_pretrained({str(checkpoint)!r}, device_map='balanced', "
                     "torch_dtype={'transformer': torch.float32, 'default': torch.bfloat16}, "
                     "max_memory={0: 330_000, 'cpu': '8GiB'})   # a GPU too small for the transformer")
        try:
            FluxPipeline.from_pretrained(checkpoint, torch_dtype={"transformer": torch.float32, "default": ctx.dtype},
                                         device_map="balanced", max_memory={0: 330_000, "cpu": 8 * 2**30})
        except EXPECTED_ERRORS as exc:
            observed = _error_text(exc)
        else:
            details["balanced_small_gpu"] = "loads: no component was placed on 'cpu'"
        fix_ok, fix_text = _try(lambda: FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype,
                                                                      device_map="cuda"))
        details["fix_device_map_cuda"] = fix_text
    else:
        placed, placed_text = _try(lambda: FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype,
                                                                        device_map="balanced"))
        details["balanced_without_gpu"] = placed_text
        lines.append(f"FluxPipeline.from_pretrained({str(checkpoint)!r}, device_map='balanced')   # {placed_text}")
        fix_ok, fix_text = _try(lambda: FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype))
        details["fix_no_device_map"] = fix_text
    pipeline_level = observed is not None
    if observed is None:
        # The refusal happens when a component of a pre-quantized torchao model is placed on "cpu": the placement
        # 'balanced' makes on a GPU too small for the transformer. Without a GPU (nothing to offload from), that
        # placement is made explicitly.
        lines += ["# the placement 'balanced' makes on a GPU too small for the transformer:",
                  f"FluxTransformer2DModel.from_pretrained({str(checkpoint)!r}, subfolder='transformer', "
                  "device_map={'': 'cpu'})"]
        try:
            FluxTransformer2DModel.from_pretrained(checkpoint, subfolder="transformer", torch_dtype=ctx.dtype,
                                                   device_map={"": "cpu"}, use_safetensors=False)
        except EXPECTED_ERRORS as exc:
            observed = _error_text(exc)
        else:
            return LiveOutcome("succeeded", "the pre-quantized torchao transformer loaded onto 'cpu'", True,
                               "no refusal on this version", "\n".join(lines), details)
    same = "You are attempting to perform cpu/disk offload with a pre-quantized torchao model" in observed
    details["fix_works"] = fix_ok
    details["refused_by"] = "device_map='balanced' on the pipeline" if pipeline_level else "the component placement"
    if not same:
        difference = "a different error from the guide's"
    elif pipeline_level:
        difference = ""
    else:
        difference = ("same refusal; 'balanced' itself loads here (nothing had to be offloaded), so the refusal is "
                      "shown on the placement it makes on a GPU too small for the transformer")
    return LiveOutcome("failed", observed[:2000], bool(difference), difference, "\n".join(lines), details)


def _try(call: Callable[[], Any]) -> tuple[bool, str]:
    try:
        call()
    except EXPECTED_ERRORS as exc:
        return False, f"fails: {_error_text(exc)[:300]}"
    return True, "loads"


# -------------------------------------------------------------- attempt 3: device_map="cuda:0"


def run_attempt_3(ctx: ReplayContext) -> LiveOutcome:
    from diffusers import FluxPipeline

    ran = f"pipe = FluxPipeline.from_pretrained({str(ctx.checkpoint)!r}, torch_dtype={ctx.dtype}, device_map='cuda:0')"
    guide_error = "cuda:0 not supported. Supported strategies are: balanced"
    try:
        FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype, device_map="cuda:0")
    except (NotImplementedError, ValueError) as exc:
        observed = _error_text(exc)
    else:
        return LiveOutcome("succeeded", "device_map='cuda:0' was accepted", True,
                           f"diffusers {_version('diffusers')} accepts 'cuda:0'", ran)
    details: dict[str, Any] = {}
    accepted, text = _try(lambda: FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype,
                                                               device_map="cuda"))
    details["device_map_cuda"] = text
    fix_ok, fix_text = _try(lambda: FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype).to(ctx.device))
    details["fix_no_device_map_then_to"] = fix_text
    details["fix_works"] = fix_ok
    if observed.endswith(guide_error):
        differs, difference = False, ""
    else:
        differs = True
        strategies = observed.split("Supported strategies are:")[-1].strip()
        difference = (f"diffusers {_version('diffusers')} lists more strategies ({strategies}): 'cuda' is "
                      f"{'accepted' if accepted else 'rejected on this machine (no CUDA device)'} "
                      "but 'cuda:0' is still rejected")
    return LiveOutcome("failed", observed, differs, difference, ran, details)


# -------------------------------------------------------------- attempt 4: torchao quantize_ "not applied"


def measure_torchao_footprint(ctx: ReplayContext) -> dict[str, Any]:
    """The tiny transformer in bf16, quantized with torchao quantize_, measured both ways (and on the GPU)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    from torchao.utils import get_model_size_in_bytes

    def numel_bytes(model) -> int:  # what get_memory_footprint() does: numel x element_size
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    def allocated() -> int | None:
        if ctx.device != "cuda":
            return None
        import gc

        gc.collect()  # leftovers of earlier attempts must not be freed between the two readings
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated()

    base = allocated()
    transformer = FluxTransformer2DModel.from_pretrained(ctx.checkpoint, subfolder="transformer",
                                                         torch_dtype=torch.bfloat16).to(ctx.device)
    loaded = allocated()
    before = {"numel_x_element_size": numel_bytes(transformer),
              "get_memory_footprint": int(transformer.get_memory_footprint()),
              "torchao_get_model_size_in_bytes": int(get_model_size_in_bytes(transformer))}
    config_name = "Float8WeightOnlyConfig"
    try:
        quantize_(transformer, Float8WeightOnlyConfig())
    except (RuntimeError, NotImplementedError, AssertionError) as exc:  # older torchao: no float8 on this device
        logger.info("Float8WeightOnlyConfig failed here (%s); using Int8WeightOnlyConfig", exc)
        config_name = "Int8WeightOnlyConfig"
        transformer = FluxTransformer2DModel.from_pretrained(ctx.checkpoint, subfolder="transformer",
                                                             torch_dtype=torch.bfloat16).to(ctx.device)
        quantize_(transformer, Int8WeightOnlyConfig())
    quantized = allocated()
    weight = transformer.x_embedder.weight
    after = {"numel_x_element_size": numel_bytes(transformer),
             "get_memory_footprint": int(transformer.get_memory_footprint()),
             "torchao_get_model_size_in_bytes": int(get_model_size_in_bytes(transformer))}
    result = {"config": config_name, "before": before, "after": after,
              "weight_class": type(weight).__name__, "weight_reported_dtype": str(weight.dtype),
              "weight_reported_element_size": weight.element_size()}
    if base is not None:
        result["cuda_memory_allocated"] = {"weights_before": loaded - base, "weights_after": quantized - base}
    return result


def run_attempt_4(ctx: ReplayContext) -> LiveOutcome:
    m = measure_torchao_footprint(ctx)
    before, after = m["before"], m["after"]
    naive_same = before["get_memory_footprint"] == after["get_memory_footprint"]
    real_ratio = after["torchao_get_model_size_in_bytes"] / before["torchao_get_model_size_in_bytes"]
    cuda = m.get("cuda_memory_allocated")
    cuda_text = (f"; torch.cuda.memory_allocated: {cuda['weights_before']} -> {cuda['weights_after']} bytes"
                 if cuda else "")
    observed = (
        f"quantize_(transformer, {m['config']}()) on the tiny transformer (bf16): get_memory_footprint() "
        f"{before['get_memory_footprint']} -> {after['get_memory_footprint']} bytes"
        f"{' (model size unchanged, as the guide saw)' if naive_same else ''}; "
        f"torchao.utils.get_model_size_in_bytes {before['torchao_get_model_size_in_bytes']} -> "
        f"{after['torchao_get_model_size_in_bytes']} bytes (x{real_ratio:.2f}){cuda_text}. The weights are "
        f"{m['weight_class']} but report dtype {m['weight_reported_dtype']}, element_size "
        f"{m['weight_reported_element_size']}"
    )
    ran = ("transformer = FluxTransformer2DModel.from_pretrained(tiny, subfolder='transformer', "
           f"torch_dtype=torch.bfloat16).to({ctx.device!r})\n"
           "print(transformer.get_memory_footprint(), get_model_size_in_bytes(transformer))\n"
           f"quantize_(transformer, {m['config']}())\n"
           "print(transformer.get_memory_footprint(), get_model_size_in_bytes(transformer))")
    if naive_same and real_ratio < 0.75:
        outcome = "quantization applied; the size only looked unchanged (measurement artifact)"
        difference = ("the guide's measurement reproduces (unchanged), but the quantization was applied: the real "
                      f"size is x{real_ratio:.2f}")
    else:
        outcome = "quantization applied" if real_ratio < 0.75 else "not quantized"
        difference = "the numbers differ from the guide's"
    return LiveOutcome(outcome, observed, True, difference, ran, m)


# -------------------------------------------------------------- attempt 5: optimum-quanto qfloat8


FLUX_WIDTH = 3072  # FLUX.1-dev's hidden size: the layer shapes quanto routes to the Marlin FP8 kernel


def quanto_layer_error(device: str, qtype_name: str, width: int = FLUX_WIDTH) -> dict[str, Any]:
    """Relative error of one FLUX-sized bf16 Linear quantized by quanto (qfloat8 or qint8), and its weight class."""
    import torch
    from optimum.quanto import freeze, qfloat8, qint8, quantize

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(width, width)).to(device=device, dtype=torch.bfloat16)
    x = torch.randn(16, width, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = layer(x).float()
        quantize(layer, weights={"qfloat8": qfloat8, "qint8": qint8}[qtype_name])
        freeze(layer)
        start = time.perf_counter()
        out = layer(x).float()  # on a GPU, the first Marlin call compiles quanto's CUDA extension
        seconds = time.perf_counter() - start
    error = ((out - reference).norm() / reference.norm()).item()
    return {"qtype": qtype_name, "weight_class": type(layer[0].weight).__name__,
            "relative_error": round(error, 5), "finite": bool(torch.isfinite(out).all()),
            "first_call_seconds": round(seconds, 2)}


def run_attempt_5(ctx: ReplayContext) -> LiveOutcome:
    import numpy as np
    import torch
    from diffusers import FluxPipeline
    from optimum.quanto import freeze, qfloat8, quantize

    from .sanity import check_image

    details: dict[str, Any] = {"layer": {q: quanto_layer_error(ctx.device, q) for q in ("qint8", "qfloat8")}}
    pipe = FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype).to(ctx.device)
    reference = ctx.generate(pipe)
    quantize(pipe.transformer, weights=qfloat8)
    freeze(pipe.transformer)
    start = time.perf_counter()
    image = ctx.generate(pipe)
    details["tiny_image_seconds"] = round(time.perf_counter() - start, 3)
    sanity = check_image(image)
    diff = float(np.abs(np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64)).mean())
    details.update(sanity=sanity.to_dict(), mean_abs_pixel_difference_vs_unquantized=round(diff, 2))
    del pipe
    layer = details["layer"]["qfloat8"]
    marlin = "Marlin" in layer["weight_class"]
    broken = layer["relative_error"] > 0.1 or not layer["finite"]
    ran = ("quantize(pipe.transformer, weights=qfloat8); freeze(pipe.transformer)   # tiny FLUX, then one image\n"
           f"# and one FLUX-sized Linear({FLUX_WIDTH}, {FLUX_WIDTH}) in bf16: qfloat8 vs qint8 output error")
    observed = (f"FLUX-sized layer: qfloat8 weights are {layer['weight_class']}, relative error "
                f"{layer['relative_error']} (qint8: {details['layer']['qint8']['relative_error']}); tiny FLUX "
                f"image: {sanity}; mean pixel difference vs unquantized {diff:.1f}/255")
    if broken:
        outcome = "wrong output: the qfloat8 layer's result is garbage (the pixel mosaic's cause)"
        differs, difference = False, ""
        if not sanity.ok:
            outcome = "pixel mosaic / broken image, as in the guide"
    else:
        outcome = "correct output (no mosaic)"
        differs = True
        difference = ("the qfloat8 layer is correct here: "
                      + (f"the Marlin FP8 kernel is used but computes correctly on this GPU ({_gpu_name()}) with "
                         f"optimum-quanto {_version('optimum-quanto')}; the reports of the bug are from Ampere/Ada "
                         "GPUs (the guide's L4 is Ada, capability 8.9)"
                         if marlin else
                         "quanto did not route it to the Marlin FP8 kernel (that needs a CUDA GPU of capability "
                         ">= 8.0 with quanto's CUDA extension), which is the faulty part"))
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    return LiveOutcome(outcome, observed, differs, difference, ran, details, [reference, image])


# -------------------------------------------------------------- attempt 6: bitsandbytes 8-bit (the working setup)


def make_bnb_8bit_checkpoint(ctx: ReplayContext) -> Path:
    """A tiny pre-quantized bitsandbytes 8-bit FLUX checkpoint (transformer + T5), like the hub's bnb-8bit one."""
    from diffusers import BitsAndBytesConfig as DiffusersBnbConfig
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import BitsAndBytesConfig, T5EncoderModel

    transformer = FluxTransformer2DModel.from_pretrained(
        ctx.checkpoint, subfolder="transformer", torch_dtype=ctx.dtype,
        quantization_config=DiffusersBnbConfig(load_in_8bit=True))
    text_encoder_2 = T5EncoderModel.from_pretrained(
        ctx.checkpoint, subfolder="text_encoder_2", torch_dtype=ctx.dtype,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    pipe = FluxPipeline.from_pretrained(ctx.checkpoint, transformer=transformer, text_encoder_2=text_encoder_2,
                                        torch_dtype=ctx.dtype)
    target = ctx.workdir / "flux-tiny-bnb-8bit"
    pipe.save_pretrained(target)
    return target


def run_attempt_6(ctx: ReplayContext) -> LiveOutcome:
    from .config import load_config
    from .loading import load_model
    from .sanity import check_image

    checkpoint = make_bnb_8bit_checkpoint(ctx)
    ran = (f"# tiny checkpoint pre-quantized to bitsandbytes 8-bit (transformer + T5), saved to {checkpoint}\n"
           "model = fluxnb.load_model('flux-dev-bnb-8bit', checkpoint=...)   # the project's loader: "
           "FluxPipeline.from_pretrained(...); pipe.to('cuda')")
    try:
        model = load_model(load_config().get("flux-dev-bnb-8bit"), checkpoint=checkpoint, device=ctx.device,
                           progress=False)
        start = time.perf_counter()
        image = ctx.generate(model.pipe)
        seconds = time.perf_counter() - start
    except EXPECTED_ERRORS as exc:
        return LiveOutcome("failed", _error_text(exc)[:2000], True, "the guide's working setup fails here", ran)
    formats = {c.name: c.format for c in model.report.components}
    sanity = check_image(image)
    observed = (f"loaded through fluxnb's flux-bnb-8bit loader, quantization verified: transformer "
                f"{formats.get('transformer')}, text_encoder_2 {formats.get('text_encoder_2')}; one image in "
                f"{seconds:.2f} s; {sanity}")
    details = {"formats": formats, "load_report": model.report.to_dict(), "image_seconds": round(seconds, 3),
               "sanity": sanity.to_dict()}
    return LiveOutcome("succeeded" if sanity.ok else "generated a broken image", observed, not sanity.ok,
                       "" if sanity.ok else "the image fails the sanity check", ran, details, [image])


# -------------------------------------------------------------- the entries


class _NotLiveHere(Exception):
    """Raised by a runner before doing anything when this machine's versions cannot run it live."""


ATTEMPTS: tuple[Attempt, ...] = (
    Attempt(
        1, "pre-quantized torchao FP8 checkpoint",
        'pipe = FluxPipeline.from_pretrained("diffusers/FLUX.1-dev-torchao-fp8", torch_dtype=torch.bfloat16)\n'
        'pipe.to("cuda")',
        GuideRecord("failed", "RuntimeError: The size of tensor a (4096) must match the size of tensor b (10240); "
                    "warning: Models quantized with version 1 of Float8DynamicActivationFloat8WeightConfig is "
                    "deprecated", None,
                    "model quantized with an older torchao, incompatible with the installed one"),
        "torchao-fp8-v1-checkpoint",
        "The guide was right about the format: the checkpoint is torchao's version-1 float8 format (torchao 0.17 "
        "deleted that code). The size error's exact cause is unconfirmed (4096/10240 are T5-XXL's sizes).",
        "use the bitsandbytes 8-bit checkpoint (attempt 6), or quantize at load from bf16 with "
        "TorchAoConfig(Float8WeightOnlyConfig()) on diffusers >= 0.36 and a current torchao",
        ("torchao",), False, run_attempt_1),
    Attempt(
        2, 'device_map="balanced"',
        'pipe = FluxPipeline.from_pretrained("diffusers/FLUX.1-dev-torchao-fp8", torch_dtype=torch.bfloat16,\n'
        '                                    device_map="balanced")',
        GuideRecord("failed", "ValueError: You are attempting to perform cpu/disk offload with a pre-quantized "
                    "torchao model", None, "pre-quantized torchao models cannot be offloaded to CPU"),
        "torchao-prequantized-offload",
        "Right, and the reason it offloaded at all: 'balanced' estimates component sizes unquantized and maps what "
        "does not fit the GPU to 'cpu'.",
        "device_map='cuda' (diffusers >= 0.35), or no device_map and then pipe.to('cuda') / "
        "pipe.enable_model_cpu_offload()",
        ("torchao",), False, run_attempt_2),
    Attempt(
        3, 'device_map="cuda:0"',
        'pipe = FluxPipeline.from_pretrained(model_id, torch_dtype=torch.bfloat16, device_map="cuda:0")',
        GuideRecord("failed", "NotImplementedError: cuda:0 not supported. Supported strategies are: balanced", None,
                    "diffusers pipelines did not accept a device string there"),
        "device-map-cuda0",
        "Still true for 'cuda:0' on every diffusers up to 0.42.1; 'cuda' is accepted from 0.35 on a machine with a "
        "GPU.",
        "leave device_map out and call pipe.to('cuda') (what fluxnb does), or device_map='cuda' on diffusers >= 0.35",
        (), False, run_attempt_3),
    Attempt(
        4, "quantizing directly with torchao quantize_",
        "from torchao.quantization import Float8WeightOnlyConfig, quantize_\n"
        "print(pipe.transformer.get_memory_footprint() / 1e9)   # 22 GB\n"
        "quantize_(pipe.transformer, Float8WeightOnlyConfig())\n"
        "print(pipe.transformer.get_memory_footprint() / 1e9)   # 22 GB: 'not applied'?",
        GuideRecord('"failed"', "model size unchanged (22 GB -> 22 GB)", None, "quantization not applied"),
        "torchao-size-measurement",
        "Wrong conclusion (a measurement artifact): the quantization was applied. torchao's weight tensor subclass "
        "reports dtype bf16 and "
        "element_size 2, so numel x element_size (get_memory_footprint) cannot see the halving.",
        "measure with torchao.utils.get_model_size_in_bytes or torch.cuda.memory_allocated() (fluxnb's LoadReport "
        "does); the quantized model was usable",
        ("torchao",), False, run_attempt_4),
    Attempt(
        5, "optimum-quanto FP8 (qfloat8)",
        "from optimum.quanto import freeze, qfloat8, quantize\n"
        "quantize(pipe.transformer, weights=qfloat8); freeze(pipe.transformer)\n"
        "pipe.to('cuda'); image = pipe(prompt, num_inference_steps=28).images[0]",
        GuideRecord("image produced, but", "the whole image is a pixel mosaic", "69 s",
                    "guessed a VAE/encoder problem"),
        "quanto-qfloat8-marlin",
        "Not the VAE or the encoders: on CUDA GPUs of capability >= 8.0 (the L4 is 8.9) quanto 0.2.5-0.2.7 routes "
        "qfloat8 weights to the Marlin FP8 kernel, which computes wrong results.",
        "use qint8, or optimum-quanto 0.2.4, or another backend (bitsandbytes 8-bit, attempt 6)",
        ("optimum.quanto",), False, run_attempt_5),
    Attempt(
        6, "bitsandbytes 8-bit pre-quantized checkpoint",
        'pipe = FluxPipeline.from_pretrained("diffusers/FLUX.1-dev-bnb-8bit", torch_dtype=torch.bfloat16)\n'
        'pipe.to("cuda"); image = pipe(prompt, num_inference_steps=28, guidance_scale=3.5).images[0]',
        GuideRecord("success", "The module 'FluxTransformer2DModel' has been loaded in `bitsandbytes` 8bit; "
                    "normal quality, ~21 GB GPU memory", "77 s / image", ""),
        "bnb-8bit-prequantized",
        None,
        "this is the working configuration (model_config.yaml: flux-dev-bnb-8bit, loader fluxnb.loading.load_flux_bnb)",
        ("bitsandbytes",), True, run_attempt_6),
)


def get_attempt(number: int) -> Attempt:
    for attempt in ATTEMPTS:
        if attempt.number == number:
            return attempt
    raise KeyError(f"no attempt {number}; the guide has attempts 1-{len(ATTEMPTS)}")


def _diagnose(text: str, expected: str) -> tuple[bool, list[str]]:
    from .diagnosis import diagnose

    ids = [d.entry.id for d in diagnose(text)]
    return expected in ids, ids


def _why_not_live(attempt: Attempt, ctx: ReplayContext | None, live: bool) -> str | None:
    if not live:
        return "live runs turned off (live=False)"
    missing = [OPTIONAL[name] for name in attempt.requires if importlib.util.find_spec(name.split(".")[0]) is None
               or importlib.util.find_spec(name) is None]
    if missing:
        return (f"{', '.join(missing)} is not installed (an optional extra). To run this attempt live: "
                f"{INSTALL_HINT}")
    device = ctx.device if ctx is not None else device_info()["device"]
    if attempt.needs_cuda and device != "cuda":
        return "needs a CUDA GPU (this machine has none); the guide's recording is shown"
    return None


def run_attempt(number: int, ctx: ReplayContext | None = None, *, live: bool = True) -> AttemptResult:
    """Replay one attempt: live on this machine when it can, else the guide's recording (and why)."""
    from .knowledge import load_knowledge

    attempt = get_attempt(number)
    entry = load_knowledge().get(attempt.diagnosis_id)  # KeyError names the known ids if the data file lacks it
    start = time.perf_counter()
    note = _why_not_live(attempt, ctx, live)
    outcome = None
    if note is None:
        if ctx is None:
            ctx = ReplayContext.create()
        try:
            with _quiet():
                outcome = attempt.runner(ctx)
        except _NotLiveHere as exc:
            note = f"{exc}; the guide's recording is shown"
    seconds = time.perf_counter() - start
    device = ctx.device if ctx is not None else device_info()["device"]
    if outcome is None:
        g = attempt.guide
        observed = g.error + (f" ({g.time})" if g.time else "")
        confirmed, ids = _diagnose(g.error, attempt.diagnosis_id)
        return AttemptResult(number, attempt.title, RECORDED, g.result, observed, False, "", attempt.diagnosis_id,
                             confirmed, ids, entry.cause, attempt.fix, round(seconds, 3), device, note=note)
    confirmed, ids = _diagnose(outcome.observed, attempt.diagnosis_id)
    if not confirmed and not outcome.outcome.startswith("failed"):  # e.g. a success: the guide's words name it
        confirmed, ids = _diagnose(outcome.observed + "\n" + attempt.guide.error, attempt.diagnosis_id)
    return AttemptResult(number, attempt.title, LIVE, outcome.outcome, outcome.observed, outcome.differs,
                         outcome.difference, attempt.diagnosis_id, confirmed, ids, entry.cause, attempt.fix,
                         round(seconds, 3), device, ran=outcome.ran, details=outcome.details, images=outcome.images)


def run_all(ctx: ReplayContext | None = None, *, live: bool = True,
            numbers: list[int] | None = None) -> list[AttemptResult]:
    ctx = ctx if ctx is not None or not live else ReplayContext.create()
    return [run_attempt(n, ctx, live=live) for n in (numbers or [a.number for a in ATTEMPTS])]


# -------------------------------------------------------------- tables and records


class Table:
    """A small table that renders as HTML in Jupyter and as Markdown elsewhere."""

    def __init__(self, header: list[str], rows: list[list[str]]):
        self.header, self.rows = header, rows

    def __str__(self) -> str:
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row)
                       + "</tr>" for row in self.rows)
        return f"<table><tr>{head}</tr>{body}</table>"


def timeline() -> Table:
    """The guide's six attempts as it recorded them, in order."""
    rows = [[str(a.number), a.title, a.guide.result, a.guide.error + (f" ({a.guide.time})" if a.guide.time else ""),
             a.guide.explanation or "-"] for a in ATTEMPTS]
    return Table(["#", "attempt", "result", "error / symptom", "the guide's explanation"], rows)


def summary(results: list[AttemptResult]) -> Table:
    """Attempt, live/recorded, outcome, cause, fix: the lesson in one table."""
    from .knowledge import load_knowledge

    kb = load_knowledge()
    rows = [[str(r.attempt), r.title, r.mode, r.outcome, f"{r.diagnosis_id}: {kb.get(r.diagnosis_id).title}", r.fix]
            for r in results]
    return Table(["#", "attempt", "live / recorded", "outcome", "cause (diagnosis)", "fix"], rows)


def autoimageprocessor_trap() -> dict[str, Any]:
    """The guide's version note 1 ("diffusers 0.35 + transformers 4.57: AutoImageProcessor import error"), re-diagnosed:
    the knowledge base traces it to a torch/torchvision build mismatch; this machine's pair is checked too."""
    from .diagnosis import diagnose
    from .knowledge import torch_torchvision_mismatch

    text = "ImportError: cannot import name 'AutoImageProcessor' from 'transformers'"
    torch_version, vision = _version("torch"), package_versions().get("torchvision")
    here = (torch_torchvision_mismatch(torch_version, vision) if vision else None)
    return {"guide_says": "diffusers 0.35.x + transformers 4.57.x: AutoImageProcessor import error",
            "diagnosis_ids": [d.entry.id for d in diagnose(text)],
            "this_machine": (f"torch {torch_version} with torchvision {vision}: "
                             + (f"MISMATCH ({here})" if here else "a matched pair")) if vision
            else f"torch {torch_version} without torchvision: the trap cannot spring here"}


def working_configuration() -> dict[str, Any]:
    """The guide's final configuration: its model_config.yaml entry and the loader fluxnb runs for it."""
    import dataclasses
    import inspect

    import yaml

    from .config import load_config
    from .loading import LOADERS

    spec = load_config().get("flux-dev-bnb-8bit")
    loader = LOADERS[spec.type]
    entry = {spec.name: {"id": spec.id, "type": spec.type, "requires_auth": spec.requires_auth,
                         "params": dataclasses.asdict(spec.params), "description": spec.description}}
    return {"model": spec.name, "id": spec.id, "type": spec.type, "loader": f"fluxnb.loading.{loader.__name__}",
            "model_config_entry": yaml.safe_dump({"models": entry}, sort_keys=False, default_flow_style=None),
            "loader_source": inspect.getsource(loader)}


def results_record(results: list[AttemptResult]) -> dict[str, Any]:
    """What replay.json holds: the machine, the versions and every attempt's result."""
    from datetime import datetime, timezone

    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_info(),
            "versions": package_versions(), "attempts": [r.to_dict() for r in results]}
