"""The six live runners: each replays one of the guide's attempts with the installed versions on the tiny FLUX.

Hub checkpoints are replaced by tiny ones made here the same way (torchao float8, bitsandbytes 8-bit). A runner
returns a LiveOutcome, raises NotLiveHere before doing anything when this machine's versions cannot run it, and
takes its fixed prose from fluxnb/replay.yaml (Attempt.text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.sanity import check_image
from ..models.config import load_config
from ..models.loading import load_model
from .context import (
    EXPECTED_ERRORS,
    LiveOutcome,
    NotLiveHere,
    ReplayContext,
    attempt_call,
    diffusers_at_least,
    error_text,
    gpu_name,
    version,
)
from .record import get_attempt

logger = logging.getLogger(__name__)


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

    attempt = get_attempt(1)
    if not diffusers_at_least("0.36"):
        raise NotLiveHere(f"quantizing with a torchao config object needs diffusers >= 0.36 (installed "
                          f"{version('diffusers')}; knowledge entry torchao-quant-type-api)")
    checkpoint, config_name = make_torchao_checkpoint(ctx)
    ran = (f"# tiny checkpoint quantized with TorchAoConfig({config_name}()) by torchao {version('torchao')}, "
           f"saved with save_pretrained(safe_serialization=False)\n"
           f"pipe = FluxPipeline.from_pretrained({str(checkpoint)!r}, torch_dtype={ctx.dtype})\n"
           f"pipe.to({ctx.device!r}); image = pipe(prompt, ...).images[0]")
    try:
        pipe = FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype)
        pipe.to(ctx.device)
        image = ctx.generate(pipe)
    except EXPECTED_ERRORS as exc:
        text = error_text(exc)
        return LiveOutcome("failed", text[:2000], "4096" not in text, attempt.text("other_error"), ran)
    weight = type(pipe.transformer.x_embedder.weight).__name__
    sanity = check_image(image)
    del pipe
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    v1 = _torchao_v1_float8_status()
    return LiveOutcome(
        "succeeded" if sanity.ok else "generated a broken image",
        f"a tiny checkpoint pre-quantized by torchao {version('torchao')} ({config_name}) loads "
        f"(transformer weights are {weight}) and generates an image; {sanity}. {v1}",
        True,
        attempt.text("loads_here"),
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
        return f"torchao {version('torchao')} refuses the version-1 float8 config ({error_text(exc)[:200]})"
    return (f"torchao {version('torchao')} still accepts Float8DynamicActivationFloat8WeightConfig(version="
            f"{getattr(config, 'version', '?')}) (deprecated)")


# -------------------------------------------------------------- attempt 2: device_map="balanced"


def _balanced_on_small_gpu(ctx: ReplayContext, checkpoint: Path, details: dict[str, Any],
                           lines: list[str]) -> tuple[str | None, bool]:
    """On a GPU: 'balanced' with a GPU budget too small for the transformer, then the fix device_map='cuda'.

    On the L4, 'balanced' sized the components unquantized and the transformer (~24 GB in bf16) did not fit the
    GPU, so it mapped the transformer to "cpu". Same here: a GPU budget of 330 kB fits the tiny VAE and encoders
    (285 kB) but not the transformer's estimate (390 kB, estimated in fp32). Returns (the refusal or None, fix ok).
    """
    import torch
    from diffusers import FluxPipeline

    observed = None
    lines.append(f"pipe = FluxPipeline.from_pretrained({str(checkpoint)!r}, device_map='balanced', "
                 "torch_dtype={'transformer': torch.float32, 'default': torch.bfloat16}, "
                 "max_memory={0: 330_000, 'cpu': '8GiB'})   # a GPU too small for the transformer")
    try:
        FluxPipeline.from_pretrained(checkpoint, torch_dtype={"transformer": torch.float32, "default": ctx.dtype},
                                     device_map="balanced", max_memory={0: 330_000, "cpu": 8 * 2**30})
    except EXPECTED_ERRORS as exc:
        observed = error_text(exc)
    else:
        details["balanced_small_gpu"] = "loads: no component was placed on 'cpu'"
    fix_ok, details["fix_device_map_cuda"] = attempt_call(
        lambda: FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype, device_map="cuda"))
    return observed, fix_ok


def _balanced_without_gpu(ctx: ReplayContext, checkpoint: Path, details: dict[str, Any], lines: list[str]) -> bool:
    """Without a GPU: 'balanced' (nothing to offload from), then the fix (no device_map). Returns fix ok."""
    from diffusers import FluxPipeline

    _, placed_text = attempt_call(
        lambda: FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype, device_map="balanced"))
    details["balanced_without_gpu"] = placed_text
    lines.append(f"FluxPipeline.from_pretrained({str(checkpoint)!r}, device_map='balanced')   # {placed_text}")
    fix_ok, details["fix_no_device_map"] = attempt_call(
        lambda: FluxPipeline.from_pretrained(checkpoint, torch_dtype=ctx.dtype))
    return fix_ok


def _placement_on_cpu(ctx: ReplayContext, checkpoint: Path, lines: list[str]) -> str | None:
    """The placement 'balanced' makes on a GPU too small for the transformer, made explicitly: the refusal or None.

    The refusal happens when a component of a pre-quantized torchao model is placed on "cpu"; without a GPU
    (nothing to offload from), 'balanced' never makes that placement itself.
    """
    from diffusers import FluxTransformer2DModel

    lines += ["# the placement 'balanced' makes on a GPU too small for the transformer:",
              f"FluxTransformer2DModel.from_pretrained({str(checkpoint)!r}, subfolder='transformer', "
              "device_map={'': 'cpu'})"]
    try:
        FluxTransformer2DModel.from_pretrained(checkpoint, subfolder="transformer", torch_dtype=ctx.dtype,
                                               device_map={"": "cpu"}, use_safetensors=False)
    except EXPECTED_ERRORS as exc:
        return error_text(exc)
    return None


def run_attempt_2(ctx: ReplayContext) -> LiveOutcome:
    attempt = get_attempt(2)
    if not diffusers_at_least("0.36"):
        raise NotLiveHere(f"the pre-quantized tiny checkpoint needs diffusers >= 0.36 "
                          f"(installed {version('diffusers')})")
    checkpoint, config_name = make_torchao_checkpoint(ctx)
    details: dict[str, Any] = {"checkpoint_config": config_name}
    lines: list[str] = []
    if ctx.device == "cuda":
        observed, fix_ok = _balanced_on_small_gpu(ctx, checkpoint, details, lines)
    else:
        observed, fix_ok = None, _balanced_without_gpu(ctx, checkpoint, details, lines)
    pipeline_level = observed is not None
    if observed is None:
        observed = _placement_on_cpu(ctx, checkpoint, lines)
        if observed is None:
            return LiveOutcome("succeeded", "the pre-quantized torchao transformer loaded onto 'cpu'", True,
                               "no refusal on this version", "\n".join(lines), details)
    details["fix_works"] = fix_ok
    details["refused_by"] = "device_map='balanced' on the pipeline" if pipeline_level else "the component placement"
    if attempt.text("refusal") not in observed:
        difference = attempt.text("other_error")
    elif pipeline_level:
        difference = ""
    else:
        difference = attempt.text("shown_on_placement")
    return LiveOutcome("failed", observed[:2000], bool(difference), difference, "\n".join(lines), details)


# -------------------------------------------------------------- attempt 3: device_map="cuda:0"


def run_attempt_3(ctx: ReplayContext) -> LiveOutcome:
    from diffusers import FluxPipeline

    ran = f"pipe = FluxPipeline.from_pretrained({str(ctx.checkpoint)!r}, torch_dtype={ctx.dtype}, device_map='cuda:0')"
    guide_error = get_attempt(3).text("guide_error")
    try:
        FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype, device_map="cuda:0")
    except (NotImplementedError, ValueError) as exc:
        observed = error_text(exc)
    else:
        return LiveOutcome("succeeded", "device_map='cuda:0' was accepted", True,
                           f"diffusers {version('diffusers')} accepts 'cuda:0'", ran)
    details: dict[str, Any] = {}
    accepted, text = attempt_call(
        lambda: FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype, device_map="cuda"))
    details["device_map_cuda"] = text
    fix_ok, fix_text = attempt_call(
        lambda: FluxPipeline.from_pretrained(ctx.checkpoint, torch_dtype=ctx.dtype).to(ctx.device))
    details["fix_no_device_map_then_to"] = fix_text
    details["fix_works"] = fix_ok
    if observed.endswith(guide_error):
        differs, difference = False, ""
    else:
        differs = True
        strategies = observed.split("Supported strategies are:")[-1].strip()
        difference = (f"diffusers {version('diffusers')} lists more strategies ({strategies}): 'cuda' is "
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
        outcome = get_attempt(4).text("artifact")
        difference = ("the guide's measurement reproduces (unchanged), but the quantization was applied: the real "
                      f"size is x{real_ratio:.2f}")
    else:
        outcome = "quantization applied" if real_ratio < 0.75 else "not quantized"
        difference = get_attempt(4).text("numbers_differ")
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

    attempt = get_attempt(5)
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
        outcome = attempt.text("garbage")
        differs, difference = False, ""
        if not sanity.ok:
            outcome = attempt.text("mosaic")
    else:
        outcome = attempt.text("correct")
        differs = True
        difference = ("the qfloat8 layer is correct here: "
                      + (f"the Marlin FP8 kernel is used but computes correctly on this GPU ({gpu_name()}) with "
                         f"optimum-quanto {version('optimum-quanto')}; " + attempt.text("marlin_correct_tail")
                         if marlin else attempt.text("not_marlin")))
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
        return LiveOutcome("failed", error_text(exc)[:2000], True, get_attempt(6).text("fails_here"), ran)
    formats = {c.name: c.format for c in model.report.components}
    sanity = check_image(image)
    observed = (f"loaded through fluxnb's flux-bnb-8bit loader, quantization verified: transformer "
                f"{formats.get('transformer')}, text_encoder_2 {formats.get('text_encoder_2')}; one image in "
                f"{seconds:.2f} s; {sanity}")
    details = {"formats": formats, "load_report": model.report.to_dict(), "image_seconds": round(seconds, 3),
               "sanity": sanity.to_dict()}
    return LiveOutcome("succeeded" if sanity.ok else "generated a broken image", observed, not sanity.ok,
                       "" if sanity.ok else get_attempt(6).text("broken_image"), ran, details, [image])


RUNNERS: dict[int, Callable[[ReplayContext], LiveOutcome]] = {
    1: run_attempt_1, 2: run_attempt_2, 3: run_attempt_3, 4: run_attempt_4, 5: run_attempt_5, 6: run_attempt_6,
}
