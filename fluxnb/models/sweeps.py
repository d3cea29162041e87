"""Parameter sweeps: up to two axes (e.g. guidance_scale x steps) expanded into the images of one batch.

The "X/Y plot": the same prompt and seeds at several values of one or two parameters, so that a labelled grid shows
what each parameter does. Each value is validated like the plain parameter (the caller passes the validator), and
the expansion is a pure function of the request: a resumed batch expands to the same items in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from ..core.errors import RequestError

PARAMETER = "sweep"
AXES = ("guidance_scale", "steps", "strength", "width", "height", "lora_scale")  # and "lora:NAME"
MAX_AXES = 2
MAX_VALUES = 16  # per axis: a grid wider than this is unreadable
LORA_PREFIX = "lora:"

Sweep = tuple[tuple[str, tuple[Any, ...]], ...]  # ((axis, values), ...) in the order given


def parse_cli(texts: list[str] | None) -> dict[str, list[Any]]:
    """`--sweep NAME=V1,V2,...` (repeatable) as a dict; values stay text until check_sweep converts them."""
    sweep: dict[str, list[Any]] = {}
    for text in texts or []:
        name, sep, values = text.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise RequestError(PARAMETER, f"--sweep {text!r} is not NAME=V1,V2,...",
                               fix="e.g. --sweep guidance_scale=2,3.5,5 --sweep steps=20,28.")
        if name.strip() in sweep:  # a dict would keep only the last values, without a word
            raise RequestError(PARAMETER, f"axis {name.strip()!r} is given twice (--sweep {text!r}).",
                               fix=f"give all its values once: --sweep {name.strip()}=V1,V2,...")
        sweep[name.strip()] = [_number(v.strip()) for v in values.split(",") if v.strip()]
    return sweep


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text  # the validator says what is wrong with it


def lora_axis(axis: str, lora_names: list[str]) -> str | None:
    """The adapter name a LoRA-scale axis sweeps ("lora_scale" = the only adapter), or None for other axes."""
    if axis == "lora_scale":
        if len(lora_names) != 1:
            raise RequestError(PARAMETER, f"axis lora_scale needs exactly one adapter in `loras`, the request has "
                               f"{len(lora_names)}.", fix="add one adapter, or name the one to sweep: "
                               + (", ".join(f"lora:{n}" for n in lora_names) or "lora:NAME") + ".")
        return lora_names[0]
    if axis.startswith(LORA_PREFIX):
        name = axis[len(LORA_PREFIX):]
        if name not in lora_names:
            raise RequestError(PARAMETER, f"axis {axis!r} names no adapter of the request (adapters: "
                               f"{', '.join(lora_names) or 'none'}).", fix="use lora:<name of an adapter in loras>.")
        return name
    return None


def check_sweep(value: Any, validate: Callable[[str, Any], Any], lora_names: list[str], mode_axes: tuple[str, ...]
                ) -> Sweep:
    """The sweep as ((axis, values), ...), every value validated by `validate(axis, value)`.

    value: {axis: [values]} (or a list of (axis, values) pairs, as a manifest stores it).
    mode_axes: the axes this request's mode allows (strength only for image-to-image).
    """
    if value in (None, {}, [], ()):
        return ()
    pairs = list(value.items()) if isinstance(value, Mapping) else value
    if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise RequestError(PARAMETER, f"must be a dict of axis -> list of values, got {value!r}.",
                           fix="e.g. sweep={'guidance_scale': [2, 3.5, 5], 'steps': [20, 28]}.")
    if len(pairs) > MAX_AXES:
        raise RequestError(PARAMETER, f"has {len(pairs)} axes ({', '.join(str(a) for a, _ in pairs)}); a grid "
                           f"shows at most {MAX_AXES} (seeds are the third: num_images).",
                           fix="keep two axes and run another sweep for the rest.")
    checked: list[tuple[str, tuple[Any, ...]]] = []
    for axis, values in pairs:
        if not isinstance(axis, str) or (axis not in mode_axes and not axis.startswith(LORA_PREFIX)):
            raise RequestError(PARAMETER, f"cannot sweep {axis!r}; allowed: {', '.join(mode_axes)} or "
                               "lora:<adapter name>.", fix="choose one of those parameters.")
        if any(axis == a for a, _ in checked):
            raise RequestError(PARAMETER, f"axis {axis!r} is given twice.", fix="give each axis once.")
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            raise RequestError(PARAMETER, f"axis {axis!r} needs a non-empty list of values, got {values!r}.",
                               fix=f"e.g. sweep={{'{axis}': [value1, value2]}}.")
        if len(values) > MAX_VALUES:
            raise RequestError(PARAMETER, f"axis {axis!r} has {len(values)} values; at most {MAX_VALUES}.",
                               fix="sweep fewer values.")
        lora_axis(axis, lora_names)
        try:
            clean = tuple(validate(axis, v) for v in values)
        except RequestError as exc:
            raise RequestError(PARAMETER, f"axis {axis!r}: {exc.message}", fix=exc.fix) from None
        if len(set(clean)) != len(clean):
            raise RequestError(PARAMETER, f"axis {axis!r} repeats a value ({list(values)}).",
                               fix="give each value once.")
        checked.append((axis, clean))
    return tuple(checked)


def to_dict(sweep: Sweep) -> dict[str, list[Any]]:
    return {axis: list(values) for axis, values in sweep}


def expand(prompts: tuple[str, ...], seed: int, num_images: int, sweep: Sweep) -> list[dict[str, Any]]:
    """Every image of a request: prompt, then seed (seed + k), then the second axis, then the first.

    Each item: {"index", "prompt", "seed", "sweep": {axis: value} (empty without a sweep)}. The order puts one grid
    row (the first axis) next to each other, so a killed sweep leaves whole rows behind.
    """
    axes = [axis for axis, _ in sweep]
    grids = list(itertools.product(*(values for _, values in reversed(sweep)))) if sweep else [()]
    items: list[dict[str, Any]] = []
    for prompt in prompts:
        for k in range(num_images):
            for values in grids:
                coordinates = dict(zip(reversed(axes), values, strict=True))
                items.append({"index": len(items), "prompt": prompt, "seed": seed + k,
                              "sweep": {axis: coordinates[axis] for axis in axes}})
    return items
