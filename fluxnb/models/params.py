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
from ..core.userfiles import MAX_MANIFEST_BYTES, parse_yaml, read_text_file
from . import sweeps
from .backends import REGISTRY, compile_wanted, get_backend, lora_for
from .config import ModelSpec
from .editing import (
    PICTURE_INPUTS,
    check_control,
    check_control_size,
    check_expand,
    check_mask,
    check_mode,
    default_size,
    picture_files,
)
from .images import check_image_file, picture_size
from .lora_files import HOTSWAP_RANK, LoraChoice, check_loras, check_scale, sha256_of
from .step_cache import request_cache
from .tasks import CONTROL, EDIT, IMAGE_TO_IMAGE, INPAINT, OUTPAINT, TEXT_TO_IMAGE

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


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, checked against one model entry by make_request (build it through make_request).

    Attributes:
        mode: TEXT_TO_IMAGE, IMAGE_TO_IMAGE, or an editing mode (INPAINT, OUTPAINT, EDIT, CONTROL: the entry's task
            must serve it, fluxnb.models.tasks).
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
        mask / expand / control / control_image (+ their files' SHA-256): the editing modes' inputs
            (fluxnb.models.editing): inpaint's mask, outpaint's margins (left, top, right, bottom), control's type
            and its given control image.
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
    mask: str | None = None
    mask_sha256: str | None = None
    expand: tuple[int, ...] | None = None
    control: str | None = None
    control_image: str | None = None
    control_image_sha256: str | None = None

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
    for name in PICTURE_INPUTS:
        data.pop(f"{name}_sha256", None)  # computed again from the files (changed_inputs compares the two)
    return make_request(spec, prompt=data.pop("prompts"), **data)


def changed_inputs(stored: dict[str, Any]) -> list[tuple[str, str]]:
    """The input files of a run's stored request (its init image, mask, control image, LoRA files) whose content is
    not what the run started from, as (parameter, "PATH: SHA-256 abc... when the run started, def... now" or "...
    missing now").
    A resume of such a run would mix two pictures or two adapters in one batch."""
    files = picture_files(stored)
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
    mask: str | Path | None = None,
    expand: Any = None,
    control: str | None = None,
    control_image: str | Path | None = None,
) -> GenerationRequest:
    """Validate parameters against `spec.params`; None means the model's default.

    loras: LoRA adapters, [{path, scale, name}] or ["PATH[:SCALE]"] (fluxnb.models.lora_files); fuse_loras: fuse them
    into the weights (faster steps, where the backend allows); sweep: {axis: [values]} (fluxnb.models.sweeps).
    mask (inpaint), expand (outpaint), control and control_image (control): the editing modes' inputs
    (fluxnb.models.editing); for those modes width and height default to the picture's size.
    Every bad value is reported at once: one RequestError listing each problem (RequestError.several), its
    `parameter` the first of them and `parameters` all of them.

    Returns:
        GenerationRequest: the checked request (defaults filled in from the model entry).

    Raises:
        RequestError: every bad value at once, each naming the parameter, what is allowed and the fix (exit 2 in the
            CLI); raised before any model loads.
    """
    params = spec.params
    check_mode(spec, mode)
    problems: list[RequestError] = []
    prompts = _collect(problems, _prompts, prompt)
    negative = _collect(problems, _negative_prompt, spec, negative_prompt)
    seed = _collect(problems, _int, "seed", seed, 0, MAX_SEED, "Fix: use a non-negative integer such as 0 or 42.")
    steps = _collect(problems, _int, "steps", params.default_steps if steps is None else steps, 1, params.max_steps,
                     f"Fix: use 1..{params.max_steps} (default {params.default_steps}).")
    guidance = _collect(problems, _guidance, spec, guidance_scale)
    inputs = _collect(problems, _mode_inputs, spec, mode, init_image, strength, mask, expand, control,
                      control_image) or {}
    if mode == OUTPAINT and inputs.get("size") and (width, height) not in ((None, None), inputs["size"]):
        problems.append(RequestError("width", f"outpaint's size is the picture grown by expand: "
                                     f"{inputs['size'][0]}x{inputs['size'][1]}, not {width}x{height}.",
                                     fix="leave width and height unset (or change expand)"))
    if width is None and height is None and inputs.get("size"):
        width, height = inputs["size"]
    width, height = _collect(problems, _sizes, spec, width, height) or (None, None)
    if inputs.get("control_image") and None not in (width, height):
        _collect(problems, check_control_size, inputs["control_image"], width, height)
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
    if problems:
        raise RequestError.several(problems)
    inputs.pop("size", None)
    request = GenerationRequest(mode, prompts, negative, seed, steps, guidance, width, height, num_images,
                                max_sequence_length, cache=cache, **inputs)
    return _explore(spec, request, loras, fuse_loras, sweep)


def _mode_inputs(spec: ModelSpec, mode: str, init_image: Any, strength: Any, mask: Any, expand: Any, control: Any,
                 control_image: Any) -> dict[str, Any]:
    """The mode's pictures and settings as GenerationRequest fields (with their files' SHA-256), and `size`: the
    result's default size where the mode has one. Every problem is listed at once."""
    if mode == TEXT_TO_IMAGE:
        _text_only(init_image, strength)
        _none_given(mode, mask=mask, expand=expand, control=control, control_image=control_image)
        return {}
    if mode == IMAGE_TO_IMAGE:
        _none_given(mode, mask=mask, expand=expand, control=control, control_image=control_image)
        path, strength_value = _image_to_image(spec, init_image, strength)
        return {"init_image": path, "strength": strength_value, "init_image_sha256": sha256_of(Path(path))}
    return _editing_inputs(spec, mode, init_image, strength, mask, expand, control, control_image)


def _editing_inputs(spec: ModelSpec, mode: str, init_image: Any, strength: Any, mask: Any, expand: Any,
                    control: Any, control_image: Any) -> dict[str, Any]:
    """inpaint, outpaint, edit and control (fluxnb.models.editing)."""
    problems: list[RequestError] = []
    if strength is not None:
        problems.append(RequestError("strength", f"{mode} repaints what its inputs say; strength is "
                                     "image-to-image's.", fix="leave strength unset"))
    others = {name: value for name, value in {"mask": mask, "expand": expand, "control": control,
                                               "control_image": control_image}.items()
              if name not in EDITING_INPUTS[mode]}
    _collect(problems, lambda: _none_given(mode, **others))
    needs_picture = mode != CONTROL or control_image is None
    picture = None
    if init_image is None and needs_picture:
        problems.append(RequestError("init_image", f"{mode} needs the picture to work on.",
                                     fix="init_image=PATH of a PNG or JPEG"))
    elif init_image is not None:
        picture = _collect(problems, check_image_file, "init_image", init_image)
    fields: dict[str, Any] = {"init_image": picture,
                              "init_image_sha256": sha256_of(Path(picture)) if picture else None}
    canvas = None
    if mode == INPAINT:
        fields["mask"] = _collect(problems, check_mask, mask, picture) if mask is not None else None
        if mask is None:
            problems.append(RequestError("mask", "inpaint needs a mask: white where the picture is repainted.",
                                         fix="mask=PATH (paint it in notebook 06_edit), or mode='outpaint'"))
    elif mode == OUTPAINT and picture is not None:
        fields["expand"], canvas = _collect(problems, check_expand, expand, picture_size("init_image", picture),
                                            spec.params.max_size) or (None, None)
    elif mode == CONTROL:
        fields["control"], fields["control_image"] = _collect(problems, check_control, spec, control, control_image,
                                                              picture) or (None, None)
    if problems:
        raise RequestError.several(problems)
    for name in PICTURE_INPUTS[1:]:  # the init image's digest is set above
        if fields.get(name):
            fields[f"{name}_sha256"] = sha256_of(Path(fields[name]))
    fields["size"] = default_size(mode, picture, fields.get("control_image"), canvas, spec.params.max_size)
    return fields


# What each editing mode takes besides the picture (init_image); any other editing input is refused.
EDITING_INPUTS = {INPAINT: ("mask",), OUTPAINT: ("expand",), EDIT: (), CONTROL: ("control", "control_image")}
EDITING_INPUT_NAMES = tuple(sorted({name for names in EDITING_INPUTS.values() for name in names}))


def _none_given(mode: str, **inputs: Any) -> None:
    """Editing inputs a mode does not take, refused by name (a mask given to text-to-image is a mistake)."""
    given = [name for name, value in inputs.items() if value is not None]
    if given:
        takers = {name: [m for m, takes in EDITING_INPUTS.items() if name in takes] for name in given}
        raise RequestError.several([RequestError(name, f"is not an input of {mode}; it belongs to "
                                                 f"{' or '.join(takers[name])}.", fix=f"leave {name} unset, or "
                                                 f"mode={takers[name][0]!r}") for name in given])


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
                init_image=request.init_image, strength=request.strength, mode=request.mode, cache=request.cache,
                mask=request.mask, expand=request.expand, control=request.control, control_image=request.control_image)

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
