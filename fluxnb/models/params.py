"""Generation requests, validated against the chosen model's params before any model is loaded.

Each error names the parameter, what is allowed for this model, and the fix: bad input gets a clear error
before minutes are spent loading 17 GB of weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError, RequestError
from ..core.units import SIZE_MULTIPLE, is_image_side
from ..core.userfiles import MAX_MANIFEST_BYTES, describe_path, parse_yaml, read_text_file
from . import sweeps
from .backends import REGISTRY, compile_wanted, get_backend, lora_for
from .config import ModelSpec
from .lora_files import HOTSWAP_RANK, LoraChoice, check_loras, check_scale, sha256_of
from .step_cache import request_cache

TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
MAX_IMAGES_PER_PROMPT = 64
MAX_SEED = 2**63 - 1
MAX_PROMPTS = 1000  # per request: a longer batch belongs in several runs (each run folder stays manageable)
# Images per request, sweeps and every prompt counted: 10,000 FLUX images are days of an L4's time; a larger batch
# belongs in several runs. And what the request's manifest will weigh (README "Guarantees"): each image's entry is
# its prompt's JSON text plus about 2 KB of metadata (1.9 KB measured on the CPU, more with GPU figures and LoRA
# records: counted as MANIFEST_ENTRY_BYTES), which must stay under three quarters of the manifest's read limit.
MAX_IMAGES_PER_REQUEST = 10_000
MANIFEST_ENTRY_BYTES = 3072
MANIFEST_BUDGET = MAX_MANIFEST_BYTES * 3 // 4
MAX_INIT_IMAGE_PIXELS = 64_000_000  # an init image is resized to width x height; larger files are refused unread


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, checked against one model entry by make_request (build it through make_request).

    Attributes:
        mode: TEXT_TO_IMAGE or IMAGE_TO_IMAGE.
        prompts: one or more prompts; each makes `num_images` images.
        negative_prompt: None for FLUX.1-dev (guidance-distilled: it has no negative prompt).
        seed: image k of each prompt uses seed + k, so any one image can be made again on its own.
        steps / guidance_scale / width / height: the denoising settings (width and height multiples of 16).
        num_images: images per prompt.
        max_sequence_length: T5 tokens kept from each prompt (CLIP keeps 77).
        init_image / strength: image-to-image only: the starting picture and how much to change it, in (0, 1].
        loras / fuse_loras: LoRA adapters (fluxnb.models.lora_files) and whether to fuse them into the weights.
        sweep: ((axis, values), ...) expanded into the batch (fluxnb.models.sweeps); each image records its coordinates.
        cache: the cached mode for this request (None: the entry's; "off"; or a setting of fluxnb.models.step_cache).
        init_image_sha256: the starting picture's SHA-256 (a resume refuses a picture changed since: see
            changed_inputs; LoRA files carry theirs in `loras`).
    """

    mode: str
    prompts: tuple[str, ...]
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    num_images: int  # per prompt
    max_sequence_length: int
    init_image: str | None = None
    strength: float | None = None
    loras: tuple[LoraChoice, ...] = ()  # LoRA adapters (fluxnb.models.lora_files), applied by fluxnb.models.lora
    fuse_loras: bool = False
    sweep: sweeps.Sweep = ()  # ((axis, values), ...): see fluxnb.models.sweeps
    cache: str | None = None  # cached mode for this request: None = the entry's, "off", or a setting (step_cache)
    init_image_sha256: str | None = None

    def points(self) -> list[dict[str, Any]]:
        """Every image of the request with its sweep coordinates (fluxnb.models.sweeps.expand); without a sweep, the
        same images in the same order as items()."""
        return sweeps.expand(self.prompts, self.seed, self.num_images, self.sweep)

    def items(self) -> list[tuple[int, str, int]]:
        """(index, prompt, seed) of every image: image k of each prompt uses seed + k, so any one image
        can be regenerated on its own and the same seed compares prompts."""
        return [
            (p * self.num_images + k, prompt, self.seed + k)
            for p, prompt in enumerate(self.prompts)
            for k in range(self.num_images)
        ]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompts"] = list(self.prompts)
        data["loras"] = [choice.to_dict() for choice in self.loras]
        data["sweep"] = sweeps.to_dict(self.sweep)
        return data


def _int(name: str, value: Any, low: int, high: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(name, f"must be a whole number between {low} and {high}, got {value!r}. {fix}")
    if not low <= value <= high:
        raise RequestError(name, f"must be between {low} and {high} for this model, got {value}. {fix}")
    return value


def _size(name: str, value: Any, maximum: int) -> int:
    value = _int(name, value, SIZE_MULTIPLE, maximum, f"Fix: use a multiple of {SIZE_MULTIPLE} up to {maximum}.")
    if not is_image_side(value):
        lower = value - value % SIZE_MULTIPLE
        raise RequestError(
            name,
            f"{value} is not a multiple of {SIZE_MULTIPLE} (FLUX: the VAE downsamples by 8 and the transformer "
            f"packs 2x2 patches). Fix: use {lower} or {lower + SIZE_MULTIPLE}.",
        )
    return value


def _prompts(value: Any) -> tuple[str, ...]:
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise RequestError("prompt", f"must be a non-empty string or a list of them, got {str(value)[:100]!r}. "
                           "Fix: describe the picture, e.g. prompt='a red fox in the snow'.")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError("prompt", f"{len(prompts):,} prompts in one request; the limit is {MAX_PROMPTS:,}. "
                           "Fix: split the batch into several runs.")
    for i, p in enumerate(prompts):
        where = "" if isinstance(value, str) else f" (item {i})"
        if not isinstance(p, str):
            shown = repr(p)[:80]
            raise RequestError("prompt", f"must be text{where}, got {shown}. Fix: quote it, e.g. prompt='...'.")
        if not p.strip():
            raise RequestError("prompt", f"is empty{where}: FLUX needs a description to generate from. "
                               "Fix: describe the picture, e.g. prompt='a red fox in the snow'.")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError("prompt", f"is not valid Unicode text{where} (it holds a lone surrogate). "
                               "Fix: retype or re-save the prompt as UTF-8.") from None
    return tuple(prompts)


def _open_image(name: str, file: Path):
    """PIL's lazy open (header only), with its decompression-bomb guard turned into a clear refusal."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    fix = "Fix: give a PNG or JPEG file."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
    except Image.DecompressionBombError as exc:
        raise RequestError(name, f"file {str(file)!r} is too large to decode safely ({exc}). Fix: downscale it "
                           "(it is resized to width x height anyway).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestError(name, f"file {str(file)!r} is not an image that can be read ({exc}). {fix}") from None
    width, height = image.size
    if width * height > MAX_INIT_IMAGE_PIXELS:
        image.close()
        raise RequestError(name, f"file {str(file)!r} is {width}x{height} pixels ({width * height / 1e6:.0f} "
                           f"megapixels); the limit is {MAX_INIT_IMAGE_PIXELS / 1e6:.0f} megapixels. Fix: downscale "
                           "it (it is resized to width x height anyway).")
    return image


def check_image_file(name: str, path: Any) -> str:
    """An existing regular file that PIL can read as an image of sane size; its path as a string."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise RequestError(name, f"must be the path of an image file, got {str(path)[:100]!r}.")
    file = Path(path).expanduser()
    problem = describe_path(file)
    if problem:
        where = "(relative paths are taken from the working directory)" if file.is_absolute() else \
            f"(looked for as {str(file.absolute())!r}: relative paths are read from the working directory " \
            f"{str(Path.cwd())!r})"
        raise RequestError(name, f"{str(file)!r} {problem}. Fix: give the path of a PNG or JPEG file {where}.")
    with _open_image(name, file) as image:
        try:
            image.verify()
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(name, f"file {str(file)!r} is not an image that can be read ({exc}). "
                               "Fix: give a PNG or JPEG file.") from None
    return str(file)


def load_image_file(name: str, path: str | Path):
    """The picture an init image shows, as 8-bit RGB: EXIF orientation applied (a phone photo stands upright)
    and 16-bit data scaled to 8 bits (a plain convert("RGB") would clip nearly every pixel to white).

    Returns:
        PIL.Image.Image: an RGB image, EXIF orientation applied, 16-bit data scaled to 8 bits.

    Raises:
        RequestError: the file is missing, not a regular file, not an image, or too large (named, with the fix).
    """
    import numpy as np
    from PIL import Image, ImageOps

    file = Path(check_image_file(name, path))
    with _open_image(name, file) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(name, f"file {str(file)!r} cannot be decoded ({exc}). Fix: give a PNG or JPEG "
                               "file.") from None
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I") or upright.mode == "F":
            values = np.asarray(upright, dtype=np.float64)
            top = 65535.0 if upright.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
            if upright.mode == "F":
                top = 1.0 if values.max(initial=0) <= 1.0 else values.max()
            eight = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
            upright = Image.fromarray(eight, mode="L")
        return upright.convert("RGB")


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts for a batch: a YAML list (.yaml/.yml) or a text file with one prompt per line (# comments)."""
    file = Path(path)
    fix = "give a UTF-8 text file, one prompt per line, or a YAML list (.yaml)"
    try:
        text = read_text_file(file, "prompts file", fix=fix)
        if file.suffix.lower() in (".yaml", ".yml"):
            prompts = parse_yaml(text, f"prompts file {file}", fix=fix)
            if not isinstance(prompts, list):
                raise RequestError("prompts", f"{file} must hold a YAML list of prompts, got "
                                   f"{type(prompts).__name__}. Fix: one `- prompt` per line.")
        else:
            prompts = [line.strip() for line in text.splitlines()
                       if line.strip() and not line.lstrip().startswith("#")]
    except RequestError:
        raise
    except InputError as exc:
        raise RequestError("prompts", exc.message, fix=exc.fix) from None
    if not prompts:
        raise RequestError("prompts", f"{file} holds no prompt. Fix: one prompt per line.")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError("prompts", f"{file} holds {len(prompts):,} prompts; the limit is {MAX_PROMPTS:,} per run. "
                           "Fix: split the batch into several files and runs.")
    return prompts


def request_from_dict(spec: ModelSpec, data: dict[str, Any]) -> GenerationRequest:
    """Rebuild (and re-validate) a request from GenerationRequest.to_dict(), e.g. a manifest's parameters.

    Raises:
        RequestError: a value make_request refuses, or a stored request that is not one (no prompts, unknown keys:
            a manifest someone edited).
    """
    fields = {field.name for field in dataclasses.fields(GenerationRequest)}
    unknown = sorted(str(key) for key in data if key not in fields)
    if "prompts" not in data or unknown:
        what = f"unknown keys {', '.join(unknown)[:200]}" if unknown else "no prompts"
        raise RequestError("parameters", f"the stored request has {what}: it was not written by fluxnb, or was "
                           "edited.", fix="start a new run with the request you want")
    data = dict(data)
    data.pop("init_image_sha256", None)  # computed again from the file (changed_inputs compares the two)
    return make_request(spec, prompt=data.pop("prompts"), **data)


def changed_inputs(stored: dict[str, Any]) -> list[tuple[str, str]]:
    """The input files of a run's stored request (its init image, its LoRA files) whose content is not what the
    run started from, as (parameter, "PATH: SHA-256 abc... when the run started, def... now" or "... missing now").
    A resume of such a run would mix two pictures or two adapters in one batch."""
    files = [("init_image", stored.get("init_image"), stored.get("init_image_sha256"))]
    files += [("loras", lora.get("path"), lora.get("sha256")) for lora in stored.get("loras") or []
              if isinstance(lora, dict)]
    changes = []
    for parameter, path, digest in files:
        if not isinstance(path, str) or not isinstance(digest, str):
            continue  # not recorded (a run from before digests, or a hub id)
        file = Path(path).expanduser()
        now = sha256_of(file) if file.is_file() else None
        if now != digest:
            changes.append((parameter, f"{path}: SHA-256 {digest[:12]}... when the run started, "
                            + (f"{now[:12]}... now" if now else "missing now")))
    return changes


def refuse_changed_inputs(stored: dict[str, Any], run_dir: str | Path) -> None:
    """A resume finishes the original request with its original files: refused (RequestError) when one changed."""
    changes = changed_inputs(stored)
    if changes:
        raise RequestError(changes[0][0], f"the run in {run_dir} was started from other file contents than are there "
                           f"now ({'; '.join(text for _, text in changes)}); resuming would mix both in one batch.",
                           fix="put the original files back to resume, or start a new run (without --resume) for "
                           "the new ones; the finished images of this run stay as they are")


def _check_compiled_minimum(spec: ModelSpec, width: int, height: int, max_sequence_length: int) -> None:
    """Compiled int8 dynamic matmuls (torch._int_mm) need more than 16 rows: image tokens and T5 tokens."""
    backend = get_backend(spec.type)
    need = backend.min_rows_compiled
    if not need or not compile_wanted(spec, backend)[0]:
        return
    tokens = (width // 16) * (height // 16)
    if tokens < need:
        raise RequestError("width", f"{width}x{height} gives {tokens} image tokens (one per 16x16 pixels); compiled "
                           f"{spec.name} needs at least {need} (its int8 matmuls need more than 16 rows). Fix: at "
                           f"least {need * 256} pixels (e.g. 80x64), or another model.")
    if max_sequence_length < need:
        raise RequestError("max_sequence_length", f"{max_sequence_length} T5 tokens is below the {need} that "
                           f"compiled {spec.name} needs (its int8 matmuls need more than 16 rows). Fix: use at "
                           f"least {need}, or leave it unset ({spec.params.max_tokens}).")


def _negative_prompt(spec: ModelSpec, negative_prompt: Any) -> str | None:
    """The negative prompt, refused for models that do not use one (FLUX.1-dev)."""
    if negative_prompt in (None, ""):
        return None
    if not spec.params.use_negative_prompt:
        raise RequestError(
            "negative_prompt",
            f"model {spec.name!r} does not use a negative prompt (FLUX.1-dev is guidance-distilled: "
            "it has no unconditional branch to steer away from). Fix: set negative_prompt=None and "
            "describe what you want in the prompt instead.",
        )
    if not isinstance(negative_prompt, str):
        raise RequestError("negative_prompt", f"must be a string or None, got {negative_prompt!r}.")
    return negative_prompt


def _guidance(spec: ModelSpec, guidance_scale: Any) -> float:
    """The guidance scale (the model's default for None): a number > 0."""
    guidance = spec.params.guidance_scale if guidance_scale is None else guidance_scale
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 < guidance < math.inf:
        raise RequestError("guidance_scale", f"must be a finite number > 0, got {guidance!r}. "
                           f"Fix: FLUX.1-dev works best near {spec.params.guidance_scale}.")
    return float(guidance)


def _sizes(spec: ModelSpec, width: Any, height: Any) -> tuple[int, int]:
    """Width and height (the model's defaults for None): multiples of 16 up to the model's maximum; both checked."""
    default_w, default_h = spec.params.default_size
    max_w, max_h = spec.params.max_size
    problems: list[RequestError] = []
    sizes = (_collect(problems, _size, "width", default_w if width is None else width, max_w),
             _collect(problems, _size, "height", default_h if height is None else height, max_h))
    if problems:
        raise RequestError.several(problems)
    return sizes


def _text_only(init_image: Any, strength: Any) -> None:
    """Text-to-image takes no init_image or strength."""
    if init_image is not None or strength is not None:
        which = "init_image" if init_image is not None else "strength"
        raise RequestError(which, "only applies to image-to-image. Fix: leave it unset, or use "
                           "notebook 02_image_to_image (fluxnb generate --init-image).")


def _image_to_image(spec: ModelSpec, init_image: Any, strength: Any) -> tuple[str, float]:
    """Image-to-image's init_image (a readable PNG or JPEG) and strength in (0, 1] (0.6 for None); both checked."""
    problems: list[RequestError] = []
    path = None
    if not spec.params.supports_i2i:
        problems.append(RequestError("init_image", f"model {spec.name!r} does not support image-to-image "
                                     "(supports_i2i: false). Fix: choose a model with supports_i2i: true."))
    elif init_image is None:
        problems.append(RequestError("init_image", "is required for image-to-image. Fix: give the path of a PNG "
                                     "or JPEG."))
    else:
        path = _collect(problems, check_image_file, "init_image", init_image)
    strength = 0.6 if strength is None else strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        problems.append(RequestError("strength", f"must be a number in (0, 1], got {strength!r}. Fix: 0.3 keeps "
                                     "the picture close to init_image, 0.9 changes most of it."))
    if problems:
        raise RequestError.several(problems)
    return path, float(strength)


def _collect(problems: list[RequestError], validate: Callable[..., Any], *args: Any) -> Any:
    """The validated value, or None with its problem(s) kept in `problems` for the one error raised at the end."""
    try:
        return validate(*args)
    except RequestError as exc:
        problems.extend(exc.problems)
        return None


def make_request(
    spec: ModelSpec,
    *,
    prompt: str | list[str],
    negative_prompt: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    num_images: int = 1,
    max_sequence_length: int | None = None,
    init_image: str | Path | None = None,
    strength: float | None = None,
    mode: str = TEXT_TO_IMAGE,
    loras: Any = None,
    fuse_loras: bool = False,
    sweep: Any = None,
    cache: str | None = None,
) -> GenerationRequest:
    """Validate parameters against `spec.params`; None means the model's default.

    loras: LoRA adapters, [{path, scale, name}] or ["PATH[:SCALE]"] (fluxnb.models.lora_files); fuse_loras: fuse them
    into the weights (faster steps, where the backend allows); sweep: {axis: [values]} (fluxnb.models.sweeps).
    Every bad value is reported at once: one RequestError listing each problem (RequestError.several), its
    `parameter` the first of them and `parameters` all of them.

    Returns:
        GenerationRequest: the checked request (defaults filled in from the model entry).

    Raises:
        RequestError: every bad value at once, each naming the parameter, what is allowed and the fix (exit 2 in the
            CLI); raised before any model loads.
    """
    params = spec.params
    if mode not in (TEXT_TO_IMAGE, IMAGE_TO_IMAGE):
        raise RequestError("mode", f"must be {TEXT_TO_IMAGE!r} or {IMAGE_TO_IMAGE!r}, got {mode!r}.")
    problems: list[RequestError] = []
    prompts = _collect(problems, _prompts, prompt)
    negative = _collect(problems, _negative_prompt, spec, negative_prompt)
    seed = _collect(problems, _int, "seed", seed, 0, MAX_SEED, "Fix: use a non-negative integer such as 0 or 42.")
    steps = _collect(problems, _int, "steps", params.default_steps if steps is None else steps, 1, params.max_steps,
                     f"Fix: use 1..{params.max_steps} (default {params.default_steps}).")
    guidance = _collect(problems, _guidance, spec, guidance_scale)
    width, height = _collect(problems, _sizes, spec, width, height) or (None, None)
    num_images = _collect(problems, _int, "num_images", num_images, 1, MAX_IMAGES_PER_PROMPT,
                          f"Fix: ask for 1..{MAX_IMAGES_PER_PROMPT} images per prompt.")
    max_sequence_length = _collect(
        problems, _int, "max_sequence_length",
        params.max_tokens if max_sequence_length is None else max_sequence_length, 1, params.max_tokens,
        f"Fix: use at most {params.max_tokens} T5 tokens.",
    )
    if None not in (width, height, max_sequence_length):
        _collect(problems, _check_compiled_minimum, spec, width, height, max_sequence_length)
    cache = _collect(problems, request_cache, cache)
    if mode == TEXT_TO_IMAGE:
        _collect(problems, _text_only, init_image, strength)
        if problems:
            raise RequestError.several(problems)
        request = GenerationRequest(mode, prompts, negative, seed, steps, guidance, width, height, num_images,
                                    max_sequence_length, cache=cache)
        return _explore(spec, request, loras, fuse_loras, sweep)
    path, strength_value = _collect(problems, _image_to_image, spec, init_image, strength) or (None, None)
    if problems:
        raise RequestError.several(problems)
    request = GenerationRequest(mode, prompts, negative, seed, steps, guidance, width, height, num_images,
                                max_sequence_length, path, strength_value, cache=cache,
                                init_image_sha256=sha256_of(Path(path)))
    return _explore(spec, request, loras, fuse_loras, sweep)


def _check_lora_backend(spec: ModelSpec, choices: tuple[LoraChoice, ...], fuse: bool) -> None:
    """Refuse, before loading, a combination of adapters and backend that cannot work (the record's `lora`)."""
    mode, reason = lora_for(spec, get_backend(spec.type))
    able = ", ".join(sorted(t for t, b in REGISTRY.items() if b.lora_mode == "yes"))
    if mode == "no":
        raise RequestError("loras", f"model {spec.name!r} ({spec.type}) cannot apply LoRA adapters: {reason}.",
                           fix=f"use a model of type {able}, or leave loras unset.")
    if fuse and mode != "yes":
        raise RequestError("fuse_loras", f"model {spec.name!r} ({spec.type}) runs adapters {mode} only: "
                           f"{reason}.", fix=f"set fuse_loras=False (adapters then run beside the weights, a "
                           f"little slower per step), or fuse on a model of type {able}.")
    if mode == "hotswap" and len(choices) > 1:
        raise RequestError("loras", f"model {spec.name!r} ({spec.type}) holds one adapter at a time "
                           f"({reason}); the request has {len(choices)}.",
                           fix=f"apply one adapter, or use a model of type {able} for several at once.")
    if mode == "hotswap" and choices and choices[0].rank > HOTSWAP_RANK:
        raise RequestError("loras", f"LoRA file {choices[0].file!r} has rank {choices[0].rank}; model {spec.name!r} "
                           f"pads adapters to rank {HOTSWAP_RANK} so that swapping them never recompiles.",
                           fix=f"use an adapter of rank <= {HOTSWAP_RANK}, or a model of type {able}.")


def _explore(spec: ModelSpec, request: GenerationRequest, loras: Any, fuse_loras: Any, sweep: Any
             ) -> GenerationRequest:
    """The exploration parameters of a checked request: LoRA adapters, fuse, sweep (each sweep value is checked
    by make_request itself, like the plain parameter)."""
    choices = check_loras(loras)
    if not isinstance(fuse_loras, bool):
        raise RequestError("fuse_loras", f"must be True or False, got {fuse_loras!r}.")
    fuse = fuse_loras and bool(choices)
    if choices:
        _check_lora_backend(spec, choices, fuse)
    if sweep in (None, {}, [], ()):
        return _bounded(dataclasses.replace(request, loras=choices, fuse_loras=fuse))
    names = [choice.name for choice in choices]
    # each axis value is checked as that parameter of a one-image request (the request's size is checked after)
    base = dict(prompt=request.prompts[0], negative_prompt=request.negative_prompt, seed=request.seed,
                steps=request.steps, guidance_scale=request.guidance_scale, width=request.width,
                height=request.height, num_images=1, max_sequence_length=request.max_sequence_length,
                init_image=request.init_image, strength=request.strength, mode=request.mode, cache=request.cache)

    def validate(axis: str, value: Any) -> Any:
        if sweeps.lora_axis(axis, names) is not None:
            return check_scale(f"sweep axis {axis!r}", value)
        return getattr(make_request(spec, **{**base, axis: value}), axis)

    allowed = tuple(a for a in sweeps.AXES if a != "strength" or request.mode == IMAGE_TO_IMAGE)
    if not choices:
        allowed = tuple(a for a in allowed if a != "lora_scale")
    checked = sweeps.check_sweep(sweep, validate, names, allowed)
    if fuse and any(sweeps.lora_axis(axis, names) for axis, _ in checked):
        raise RequestError("sweep", "a LoRA scale cannot be swept with fuse_loras=True: fusing bakes one scale into "
                           "the weights.", fix="set fuse_loras=False for the sweep.")
    return _bounded(dataclasses.replace(request, loras=choices, fuse_loras=fuse, sweep=checked))


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def manifest_estimate(request: GenerationRequest) -> int:
    """An upper estimate of the bytes the request's manifest will hold: each image's entry (its prompt, negative
    prompt and LoRA records as JSON, plus MANIFEST_ENTRY_BYTES of metadata), and the request itself once."""
    per_prompt = request.num_images * math.prod(len(values) for _, values in request.sweep)
    shared = MANIFEST_ENTRY_BYTES + _json_bytes(request.negative_prompt) + _json_bytes(
        [choice.to_dict() for choice in request.loras])
    return sum(per_prompt * (shared + _json_bytes(p)) for p in request.prompts) + _json_bytes(request.to_dict())


def _bounded(request: GenerationRequest) -> GenerationRequest:
    """Refuse, before anything loads, a request larger than one run folder holds (counted, never expanded)."""
    sweep_points = math.prod(len(values) for _, values in request.sweep)
    images = len(request.prompts) * request.num_images * sweep_points
    shape = f"{len(request.prompts):,} prompt(s) x {request.num_images} image(s)" + (
        f" x {sweep_points:,} sweep point(s)" if request.sweep else "")
    if images > MAX_IMAGES_PER_REQUEST:
        runs = math.ceil(images / MAX_IMAGES_PER_REQUEST)
        raise RequestError("num_images", f"this request makes {images:,} images ({shape}); one run makes at most "
                           f"{MAX_IMAGES_PER_REQUEST:,}.",
                           fix=f"split it into {runs} runs or more (fewer prompts, images or sweep values each)")
    weight = manifest_estimate(request)
    if weight > MANIFEST_BUDGET:
        runs = math.ceil(weight / MANIFEST_BUDGET)
        raise RequestError("prompt", f"this request's manifest would hold about {weight / 2**20:,.1f} MiB ({shape}, "
                           f"with their prompts); one run folder's manifest holds at most "
                           f"{MANIFEST_BUDGET / 2**20:.0f} MiB.", fix=f"split it into {runs} runs or more, or shorten "
                           "the prompts")
    return request
