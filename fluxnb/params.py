"""Generation requests, validated against the chosen model's params before any model is loaded.

Each error names the parameter, what is allowed for this model, and the fix: bad input gets a clear error
before minutes are spent loading 17 GB of weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .backends import compile_wanted, get_backend
from .config import PROJECT_ROOT, ModelSpec
from .errors import RequestError
from .units import SIZE_MULTIPLE, is_image_side

SAMPLE_INIT_IMAGE = PROJECT_ROOT / "notebooks" / "assets" / "init_image.png"  # image-to-image default
TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
MAX_IMAGES_PER_PROMPT = 64
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationRequest:
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
        raise RequestError("prompt", f"must be a non-empty string or a list of them, got {value!r}. "
                           "Fix: describe the picture, e.g. prompt='a red fox in the snow'.")
    for i, p in enumerate(prompts):
        where = "" if isinstance(value, str) else f" (item {i})"
        if not isinstance(p, str):
            raise RequestError("prompt", f"must be text{where}, got {p!r}. Fix: quote it, e.g. prompt='{p}'.")
        if not p.strip():
            raise RequestError("prompt", f"is empty{where}: FLUX needs a description to generate from. "
                               "Fix: describe the picture, e.g. prompt='a red fox in the snow'.")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError("prompt", f"is not valid Unicode text{where} (it holds a lone surrogate). "
                               "Fix: retype or re-save the prompt as UTF-8.") from None
    return tuple(prompts)


def check_image_file(name: str, path: Any) -> str:
    """An existing file that PIL can read as an image; its path as a string."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise RequestError(name, f"must be the path of an image file, got {path!r}.")
    file = Path(path).expanduser()
    if not file.is_file():
        where = "" if file.is_absolute() else f", looked for as {str(file.absolute())!r}: relative paths are read " \
            f"from the working directory {str(Path.cwd())!r}"
        raise RequestError(name, f"file {str(file)!r} does not exist{where}. Fix: give the path of a PNG or JPEG.")
    try:
        with Image.open(file) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise RequestError(name, f"file {str(file)!r} is not an image that can be read ({exc}). "
                           "Fix: give a PNG or JPEG file.") from None
    return str(file)


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts for a batch: a YAML list (.yaml/.yml) or a text file with one prompt per line (# comments)."""
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RequestError("prompts", f"cannot read {file}: {exc}. Fix: give a UTF-8 text file, one prompt "
                           "per line, or a YAML list.") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            prompts = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RequestError("prompts", f"{file} is not valid YAML: {exc}") from None
        if not isinstance(prompts, list):
            raise RequestError("prompts", f"{file} must hold a YAML list of prompts, got {type(prompts).__name__}")
        return prompts
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise RequestError("prompts", f"{file} holds no prompt. Fix: one prompt per line.")
    return prompts


def request_from_dict(spec: ModelSpec, data: dict[str, Any]) -> GenerationRequest:
    """Rebuild (and re-validate) a request from GenerationRequest.to_dict(), e.g. a manifest's parameters."""
    data = dict(data)
    return make_request(spec, prompt=data.pop("prompts"), **data)


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
        raise RequestError("guidance_scale", f"must be a number > 0, got {guidance!r}. "
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
                           "notebooks/02_image_to_image.ipynb (fluxnb generate --init-image).")


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
) -> GenerationRequest:
    """Validate parameters against `spec.params`; None means the model's default.

    Every bad value is reported at once: one RequestError listing each problem (RequestError.several), its
    `parameter` the first of them and `parameters` all of them.
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
    if mode == TEXT_TO_IMAGE:
        _collect(problems, _text_only, init_image, strength)
        if problems:
            raise RequestError.several(problems)
        return GenerationRequest(mode, prompts, negative, seed, steps, guidance, width, height, num_images,
                                 max_sequence_length)
    path, strength_value = _collect(problems, _image_to_image, spec, init_image, strength) or (None, None)
    if problems:
        raise RequestError.several(problems)
    return GenerationRequest(mode, prompts, negative, seed, steps, guidance, width, height, num_images,
                             max_sequence_length, path, strength_value)
