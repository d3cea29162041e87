"""model_config.yaml: load it, check every key at once, and hand out typed model entries.

The file is the one place where models are declared; their `type:` names a record of the backends registry
(fluxnb/models/backends/), which says what each type supports. A typo must fail with the key path and the fix, not as
a KeyError deep inside a loader.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, InputError, RequestError
from ..core.packaged import CONFIG_NAME, DEFAULT_CONFIG_PATH
from ..core.units import SIZE_MULTIPLE, is_image_side
from ..core.userfiles import load_yaml
from .attention import SETTINGS as ATTENTION_SETTINGS
from .backends import REGISTRY, types_where
from .step_cache import parse_cache
from .tasks import CONTROL_TYPES, TASKS
from .tasks import TEXT_TO_IMAGE as TEXT_TO_IMAGE_TASK

# The model config in use is found in this order (README "Models"; `fluxnb doctor` says which one it read):
# --config (any subcommand; it sets CONFIG_ENV for the process and the kernels and ranks it starts), the CONFIG_ENV
# variable, CONFIG_NAME in the current folder, the default shipped inside the package.
CONFIG_ENV = "FLUXNB_CONFIG"
# FLUX.1 was trained for 0.1 to 2 megapixels; 2048 per side is the most anyone runs (4 MP: 16,384 image tokens),
# and beyond it the attention alone needs more memory than any single GPU has.
MAX_SIDE = 2048
# The flow-matching scheduler has 1000 training timesteps: more steps than that only repeat them.
MAX_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """An entry's generation limits and defaults (model_config.yaml `params:`), checked by every request."""

    default_steps: int
    max_steps: int
    use_negative_prompt: bool
    guidance_scale: float
    supports_i2i: bool
    max_tokens: int
    default_size: tuple[int, int]  # (width, height)
    max_size: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One entry of model_config.yaml.

    Attributes:
        name: the entry's key (what `model=` takes).
        id: the hub checkpoint id (the tiny model's is a label: it is built locally).
        type: the backend type, a key of fluxnb.models.backends.REGISTRY.
        requires_auth: gated on the hub: needs a token (HF_TOKEN or the saved login).
        params: the generation limits and defaults.
        description: one line for people (doctor, banners).
        compile: torch.compile the transformer's repeated blocks (only types whose record is `compilable`).
        offload_text_encoder: T5 lives on the CPU, on the GPU only while it encodes (records that allow it).
        compile_mode: torch.compile's `mode` for the compiled blocks (one of the record's `compile_modes`).
        compile_vae: with `compile`, also torch.compile the VAE decoder (channels_last): its decode in about a third
            of the eager time, for one more compile at each image size (results/README.md, runs 20 and 52).
        cache: the cached mode's setting (fluxnb.models.step_cache: "taylorseer@2", "taylorseer@2:from=6:until=22",
            "first-block@0.08"), off when None.
        attention: the attention kernel (fluxnb.models.attention.SETTINGS): "auto" takes the record's choice for the
            GPU, "sdpa" or "sage" names one.
    """

    name: str
    id: str
    type: str
    requires_auth: bool
    params: ModelParams
    description: str
    compile: bool = False
    offload_text_encoder: bool = False
    compile_mode: str | None = None
    compile_vae: bool = False
    cache: str | None = None
    attention: str = "auto"
    task: str = TEXT_TO_IMAGE_TASK  # fluxnb.models.tasks.TASKS: which pipeline, which request modes
    controls: tuple[str, ...] = ()  # a control model's control types (canny, depth)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The validated file; `recommended` is the one fast entry README, doctor and bench summary point to."""

    models: dict[str, ModelSpec]
    primary_model: str
    fallback_model: str
    path: str
    recommended: str | None = None
    source: str = "given"  # how the file was found (config_location): "--config", "$FLUXNB_CONFIG", ...

    def get(self, name: str) -> ModelSpec:
        """The entry called `name`, or an error that lists the names that exist."""
        if name not in self.models:
            raise RequestError(
                "model",
                f"{name!r} is not defined in {self.path}. Allowed: "
                f"{', '.join(['auto', *self.models])}. Fix: use one of these names, or add an entry "
                "under `models:` in that file.",
            )
        return self.models[name]


# key -> (python types accepted, human name). bool is checked before int: YAML `true` is not a step count.
_MODEL_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str,), "a string (hub repo id)"),
    "type": ((str,), "a string (loader type)"),
    "requires_auth": ((bool,), "true or false"),
    "params": ((dict,), "a mapping"),
    "description": ((str,), "a string"),
}
# Optional entry keys (false when absent), checked against what the entry's type supports.
_OPTIONAL_MODEL_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "compile": ((bool,), "true or false"),
    "offload_text_encoder": ((bool,), "true or false"),
    "compile_mode": ((str,), "a torch.compile mode the type allows"),
    "compile_vae": ((bool,), "true or false"),
    "cache": ((str,), "a cache setting such as taylorseer@2 (fluxnb/models/step_cache.py)"),
    "attention": ((str,), f"an attention kernel: {', '.join(ATTENTION_SETTINGS)} (fluxnb/models/attention.py)"),
    "task": ((str,), f"a task: {', '.join(TASKS)} (fluxnb/models/tasks.py; text-to-image when absent)"),
    "controls": ((list,), f"a list of control types ({', '.join(CONTROL_TYPES)}) the control model was trained on"),
}
_PARAM_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "default_steps": ((int,), "an integer"),
    "max_steps": ((int,), "an integer"),
    "use_negative_prompt": ((bool,), "true or false"),
    "guidance_scale": ((int, float), "a number"),
    "supports_i2i": ((bool,), "true or false"),
    "max_tokens": ((int,), "an integer"),
    "default_size": ((list,), "a list [width, height]"),
    "max_size": ((list,), "a list [width, height]"),
}
_RUNTIME_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "primary_model": ((str,), "a model name"),
    "fallback_model": ((str,), "a model name"),
}
_OPTIONAL_RUNTIME_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "recommended": ((str,), "a model name (the recommended fast entry)"),
}
_TOP_KEYS = {"models", "runtime"}


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _check_keys(
    mapping: dict, schema: dict[str, tuple[tuple[type, ...], str]], where: str, problems: list[str],
    optional: dict[str, tuple[tuple[type, ...], str]] | None = None,
) -> None:
    optional = optional or {}
    for key in mapping:
        if key not in schema and key not in optional:
            problems.append(f"{where}.{key}: unknown key. Allowed keys: {', '.join([*schema, *optional])}")
    for key, (types, human) in schema.items():
        if key not in mapping:
            problems.append(f"{where}.{key}: missing (must be {human})")
        elif not _is_type(mapping[key], types):
            problems.append(f"{where}.{key}: must be {human}, got {mapping[key]!r}")
    for key, (types, human) in optional.items():
        if key in mapping and not _is_type(mapping[key], types):
            problems.append(f"{where}.{key}: must be {human}, got {mapping[key]!r}")


def _check_size(value: Any, where: str, problems: list[str]) -> tuple[int, int] | None:
    if not isinstance(value, list):
        return None  # already reported as a type problem
    if len(value) != 2 or not all(_is_type(v, (int,)) for v in value):
        problems.append(f"{where}: must be [width, height] with two integers, got {value!r}")
        return None
    width, height = value
    for axis, v in (("width", width), ("height", height)):
        if not is_image_side(v):
            problems.append(f"{where}: {axis} {v} must be a positive multiple of {SIZE_MULTIPLE}")
        elif v > MAX_SIDE:
            problems.append(f"{where}: {axis} {v} is above {MAX_SIDE} (FLUX.1 is made for 0.1 to 2 megapixels; "
                            f"{MAX_SIDE}x{MAX_SIDE} already needs more memory than one GPU has)")
    return (width, height)


def _model_params(raw: dict, where: str, problems: list[str]) -> ModelParams | None:
    before = len(problems)
    _check_keys(raw, _PARAM_KEYS, where, problems)
    default_size = _check_size(raw.get("default_size"), f"{where}.default_size", problems)
    max_size = _check_size(raw.get("max_size"), f"{where}.max_size", problems)
    steps, max_steps = raw.get("default_steps"), raw.get("max_steps")
    if _is_type(max_steps, (int,)) and not 1 <= max_steps <= MAX_STEPS:
        problems.append(f"{where}.max_steps: must be between 1 and {MAX_STEPS} (the flow-matching scheduler has "
                        f"{MAX_STEPS} training timesteps; more steps only repeat them), got {max_steps}")
    if _is_type(steps, (int,)) and _is_type(max_steps, (int,)) and not 1 <= steps <= max_steps:
        problems.append(f"{where}.default_steps: {steps} must be between 1 and max_steps ({max_steps})")
    if default_size and max_size and (default_size[0] > max_size[0] or default_size[1] > max_size[1]):
        problems.append(f"{where}.default_size: {list(default_size)} is above max_size {list(max_size)}")
    guidance = raw.get("guidance_scale")
    if _is_type(guidance, (int, float)) and not 0 < guidance < math.inf:
        problems.append(f"{where}.guidance_scale: must be a finite number > 0, got {guidance}")
    tokens = raw.get("max_tokens")
    if _is_type(tokens, (int,)) and not 1 <= tokens <= 512:
        problems.append(f"{where}.max_tokens: must be between 1 and 512 (T5 limit in FLUX), got {tokens}")
    if len(problems) != before:
        return None
    return ModelParams(
        default_steps=steps,
        max_steps=max_steps,
        use_negative_prompt=raw["use_negative_prompt"],
        guidance_scale=float(guidance),
        supports_i2i=raw["supports_i2i"],
        max_tokens=tokens,
        default_size=default_size,
        max_size=max_size,
    )


def _unsupported_options(raw: dict, mtype: Any, where: str, problems: list[str]) -> None:
    """Entry options (`compile`, `offload_text_encoder`) the entry's backend record does not allow."""
    if not isinstance(mtype, str) or mtype not in REGISTRY:
        return
    for key, flag in (("compile", "compilable"), ("offload_text_encoder", "offloadable_text_encoder")):
        if raw.get(key) is True and not getattr(REGISTRY[mtype], flag):
            problems.append(f"{where}.{key}: type {mtype!r} does not support it (types that do: "
                            f"{', '.join(types_where(flag))}). Fix: remove the key or set it to false")
    _speed_options(raw, REGISTRY[mtype], where, problems)


def _speed_options(raw: dict, backend, where: str, problems: list[str]) -> None:
    """`compile_mode` (one the record allows, with compile: true), `compile_vae` (with compile: true) and `cache` (a
    setting fluxnb.models.step_cache parses)."""
    mode = raw.get("compile_mode")
    if isinstance(mode, str):
        if mode not in backend.compile_modes:
            allowed = ", ".join(backend.compile_modes) or "none (the type has no compile modes)"
            problems.append(f"{where}.compile_mode: {mode!r} is not allowed for type {backend.type!r}; allowed: "
                            f"{allowed}. Fix: use one of them or remove the key")
        elif raw.get("compile") is not True:
            problems.append(f"{where}.compile_mode: set but the entry is not compiled. Fix: add `compile: true`")
    if raw.get("compile_vae") is True and raw.get("compile") is not True:
        problems.append(f"{where}.compile_vae: set but the entry is not compiled (the VAE decoder is compiled with "
                        "the transformer's blocks). Fix: add `compile: true`, or remove `compile_vae`")
    attention = raw.get("attention")
    if isinstance(attention, str) and attention not in ATTENTION_SETTINGS:
        problems.append(f"{where}.attention: {attention!r} is not an attention kernel; allowed: "
                        f"{', '.join(ATTENTION_SETTINGS)}. Fix: auto (the record's choice for the GPU), or remove the "
                        "key")
    if isinstance(raw.get("cache"), str):
        try:
            parse_cache(raw["cache"])
        except RequestError as exc:
            problems.append(f"{where}.cache: {exc}")


def _parse_model(name: Any, raw: Any, problems: list[str]) -> ModelSpec | None:
    """One entry under `models:`; None (with its problems added) when it is invalid."""
    where = f"models.{name}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping, got {raw!r}")
        return None
    before = len(problems)
    _check_keys(raw, _MODEL_KEYS, where, problems, _OPTIONAL_MODEL_KEYS)
    params = _model_params(raw["params"], f"{where}.params", problems) if isinstance(raw.get("params"), dict) else None
    mtype = raw.get("type")
    if isinstance(mtype, str) and mtype not in REGISTRY:
        problems.append(f"{where}.type: unknown type {mtype!r}. Allowed: {', '.join(REGISTRY)}")
    _unsupported_options(raw, mtype, where, problems)
    _task_keys(raw, params, where, problems)
    if len(problems) != before or params is None:
        return None
    return ModelSpec(name=str(name), id=raw["id"], type=mtype, requires_auth=raw["requires_auth"], params=params,
                     description=raw["description"], compile=raw.get("compile", False),
                     offload_text_encoder=raw.get("offload_text_encoder", False),
                     compile_mode=raw.get("compile_mode"), compile_vae=raw.get("compile_vae", False),
                     cache=raw.get("cache"),
                     attention=raw.get("attention", "auto"),
                     task=raw.get("task", TEXT_TO_IMAGE_TASK), controls=tuple(raw.get("controls", ())))


def _task_keys(raw: dict, params: ModelParams | None, where: str, problems: list[str]) -> None:
    """`task` (a known task), `controls` (a control model's, each a known type) and image-to-image (FLUX.1-dev's)."""
    task = raw.get("task", TEXT_TO_IMAGE_TASK)
    if isinstance(task, str) and task not in TASKS:
        problems.append(f"{where}.task: unknown task {task!r}. Allowed: {', '.join(TASKS)}")
        return
    controls = raw.get("controls")
    if task == "control" and not controls:
        problems.append(f"{where}.controls: a control model needs the control types it was trained on. Fix: "
                        f"controls: [canny] (or [depth])")
    elif controls is not None and task != "control":
        problems.append(f"{where}.controls: only a control model (task: control) takes controls. Fix: remove it")
    elif isinstance(controls, list) and not set(controls) <= set(CONTROL_TYPES):
        problems.append(f"{where}.controls: {controls!r}; allowed: {', '.join(CONTROL_TYPES)}")
    if params is not None and params.supports_i2i and task != TEXT_TO_IMAGE_TASK:
        problems.append(f"{where}.params.supports_i2i: image-to-image runs on text-to-image models only; a {task} "
                        "model edits through its own modes. Fix: supports_i2i: false")


def _parse_runtime(runtime: Any, model_names: list[str], problems: list[str]) -> None:
    if not isinstance(runtime, dict):
        problems.append("runtime: missing (must be a mapping with primary_model and fallback_model)")
        return
    _check_keys(runtime, _RUNTIME_KEYS, "runtime", problems, _OPTIONAL_RUNTIME_KEYS)
    for key in [*_RUNTIME_KEYS, *_OPTIONAL_RUNTIME_KEYS]:
        value = runtime.get(key)
        if isinstance(value, str) and value not in model_names:
            problems.append(f"runtime.{key}: {value!r} is not defined under models. Defined: {', '.join(model_names)}")


def parse_config(data: Any, path: str = "model_config.yaml") -> ModelConfig:
    """Validate an already-parsed YAML document; every problem is collected before raising."""
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ConfigError(path, [f"(top level): must be a mapping with keys models and runtime, got {found}"])
    problems = [f"{key}: unknown top-level key. Allowed: {', '.join(sorted(_TOP_KEYS))}"
                for key in data if key not in _TOP_KEYS]
    raw_models = data.get("models")
    if not isinstance(raw_models, dict) or not raw_models:
        problems.append("models: missing or empty (must map model names to entries)")
        raw_models = {}
    parsed = {str(name): _parse_model(name, raw, problems) for name, raw in raw_models.items()}
    _parse_runtime(data.get("runtime"), [str(n) for n in raw_models], problems)
    if problems:
        raise ConfigError(path, problems)
    runtime = data["runtime"]
    return ModelConfig(models=parsed, primary_model=runtime["primary_model"],
                       fallback_model=runtime["fallback_model"], path=path,
                       recommended=runtime.get("recommended"))


def config_location(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The model config file to read and how it was chosen: `path` (--config), else $FLUXNB_CONFIG, else
    ./model_config.yaml, else the packaged default."""
    if path is not None:
        return Path(path), "--config"
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    local = Path(CONFIG_NAME)
    if local.exists():
        return local.absolute(), f"./{CONFIG_NAME} in the current folder"
    return DEFAULT_CONFIG_PATH, "the default shipped with fluxnb"


def load_config(path: str | Path | None = None) -> ModelConfig:
    """Read and validate a model config, found by config_location, with the limits of fluxnb.core.userfiles.

    Args:
        path: a model config file (default: $FLUXNB_CONFIG, else ./model_config.yaml, else the packaged default).

    Returns:
        ModelConfig: the validated entries and the runtime choices (primary, fallback, recommended).

    Raises:
        ConfigError: the file is missing, not bounded UTF-8 YAML, or invalid; every problem is listed with its key path.
    """
    path, how = config_location(path)
    try:
        data = load_yaml(path, f"model config (from {how})", fix="pass the path of a UTF-8 model_config.yaml")
    except InputError as exc:
        raise ConfigError(str(path), [exc.message + (f" Fix: {exc.fix}" if exc.fix else "")]) from None
    return dataclasses.replace(parse_config(data, str(path)), source=how)
