"""Cached mode: diffusers' own step-caching hooks on the FLUX transformer, opt-in, off by default.

A cache setting is a short text (model entry key `cache:`, bench variant `NAME@cache=...`):

- `taylorseer@N`: TaylorSeer (arXiv 2503.06923) in diffusers' lite mode: the transformer's blocks are skipped and
  its output forecast by a first-order Taylor expansion on every step but one in N, after `TAYLORSEER_WARMUP`
  full steps. The skipping follows a fixed schedule, so the speed-up holds for any weights (the headline setting).
  `taylorseer@N:from=W:until=E` bounds the forecasting: steps before W and from E on are all computed (diffusers'
  disable_cache_before_step / disable_cache_after_step): fidelity bought back at a known price in speed. Computing
  the last steps bought the most (scripts/taylorseer_window_probe.py, then H100 runs 35-36: `taylorseer@2:until=22`,
  18 of 28 steps, halves the cached part of `taylorseer@2`'s error; run 50: `until=24`, 17 steps, the shipped
  cached entry's, 2.8x bnb 8-bit's error, inside the 3x rule, and 8.0x bnb 8-bit's speed in run 53; results/README.md).
- `first-block@T`: FirstBlockCache (ParaAttention): all blocks after the first are skipped while the first block's
  residual changes by less than T. Adaptive: how many steps it skips depends on the weights, so a speed-up
  measured on random weights says little about real FLUX (labelled "depends on the weights").

Either way, each image and bench row records the schedule that really ran, observed on diffusers' hooks
(`recording`, fluxnb.models.cache_schedule): the steps computed in full; the others were served from the cache.

The hooks are in the default line's diffusers (0.42); the guide's diffusers 0.34 has neither, so a setting is refused
there with the fix. Both combine with regional torch.compile (tests/unit/test_step_cache.py runs them on the
tiny model's compiled blocks: the hooks' step bookkeeping runs outside the compiled graphs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..core.environment import package_version
from ..core.errors import RequestError

TAYLORSEER_WARMUP = 3  # full steps before the first forecast (diffusers' default disable_cache_before_step)
KINDS = {
    "taylorseer": "TaylorSeer lite (fixed schedule: one full step in N, the others forecast)",
    "first-block": "FirstBlockCache (adaptive: skips while the first block's residual changes less than T; "
                   "depends on the weights)",
}
HOOK_CLASSES = {"taylorseer": "TaylorSeerCacheConfig", "first-block": "FirstBlockCacheConfig"}
EXAMPLES = "taylorseer@2, taylorseer@2:until=22, first-block@0.08"
WINDOW_FIX = "e.g. taylorseer@2:until=22 or taylorseer@2:from=6:until=22"
TAYLORSEER_OPTIONS = {"from": "the first step forecast; the steps before it are computed",
                      "until": "the first of the last steps computed again; none: forecast to the end"}


@dataclass(frozen=True)
class CacheSetting:
    """A parsed cache setting: which hook and its number (interval N or threshold T); TaylorSeer's forecast window."""

    kind: str
    value: float
    text: str
    start: int = TAYLORSEER_WARMUP  # TaylorSeer: the first step it may forecast
    until: int | None = None  # TaylorSeer: from this step on every step is computed

    @property
    def fixed_schedule(self) -> bool:
        """The skipped steps do not depend on the weights (so random-weight speed-ups carry over)."""
        return self.kind == "taylorseer"

    def computed_steps(self, steps: int) -> int | None:
        """Full transformer forwards in `steps` steps (None for an adaptive cache: it depends on the weights)."""
        if not self.fixed_schedule:
            return None
        interval, until = int(self.value), steps if self.until is None else self.until
        return sum(1 for step in range(steps)
                   if step < self.start or step >= until or (step - self.start - 1) % interval == 0)

    def describe(self) -> str:
        schedule = "fixed schedule" if self.fixed_schedule else "adaptive: depends on the weights"
        return f"{self.text}: {KINDS[self.kind].split(' (')[0]} ({schedule})"

    def to_dict(self) -> dict:
        window = {"forecast_from": self.start, "forecast_until": self.until} if self.fixed_schedule else {}
        return {"setting": self.text, "hook": HOOK_CLASSES[self.kind], "fixed_schedule": self.fixed_schedule,
                "depends_on_weights": not self.fixed_schedule, **window}


def _taylorseer_window(text: str, options: list[str], parameter: str) -> dict[str, int]:
    """`from=W`, `until=E` (whole steps, W >= 1, E > W) from a TaylorSeer setting's options."""
    window: dict[str, int] = {}
    allowed = "; ".join(f"{k}=<step> ({v})" for k, v in TAYLORSEER_OPTIONS.items())
    for option in options:
        key, sep, number = option.partition("=")
        if key not in TAYLORSEER_OPTIONS or not sep or not number.isdigit() or key in window:
            raise RequestError(parameter, f"{text!r}: {option!r} is not a TaylorSeer option; allowed, once each: "
                                          f"{allowed}", fix=WINDOW_FIX)
        window[key] = int(number)
    start, until = window.get("from", TAYLORSEER_WARMUP), window.get("until")
    if start < 1 or (until is not None and until <= start):
        raise RequestError(parameter, f"{text!r}: the forecast window must start at step 1 or later and end after it "
                                      f"(from={start}, until={until})", fix=WINDOW_FIX)
    return {"start": start, "until": until}


def parse_cache(text: str | None, parameter: str = "cache") -> CacheSetting | None:
    """'taylorseer@2' -> CacheSetting; None/''/'none'/'off' -> None; anything else: a RequestError with the fix."""
    if text is None or str(text).strip().lower() in ("", "none", "off"):
        return None
    text = str(text).strip()
    kind, sep, rest = text.partition("@")
    number, *options = rest.split(":")
    allowed = f"allowed: {', '.join(f'{k}@<number> ({v})' for k, v in KINDS.items())}; none to turn it off"
    if kind not in KINDS or not sep:
        raise RequestError(parameter, f"{text!r} is not a cache setting; {allowed}", fix=f"e.g. {EXAMPLES}")
    try:
        value = float(number)
    except ValueError:
        raise RequestError(parameter, f"{text!r}: {number!r} is not a number; {allowed}",
                           fix=f"e.g. {EXAMPLES}") from None
    if kind == "taylorseer" and (value != int(value) or not 2 <= value <= 10):
        raise RequestError(parameter, f"{text!r}: the TaylorSeer interval must be a whole number from 2 to 10 (one "
                                      "full step in N)", fix="e.g. taylorseer@2 or taylorseer@3")
    if kind == "first-block" and not 0 < value < 1:
        raise RequestError(parameter, f"{text!r}: the FirstBlockCache threshold must be between 0 and 1",
                           fix="e.g. first-block@0.08 (ParaAttention's FLUX setting)")
    if kind == "first-block":
        if options:
            raise RequestError(parameter, f"{text!r}: FirstBlockCache takes no options after its threshold",
                               fix="e.g. first-block@0.08")
        return CacheSetting(kind=kind, value=value, text=f"{kind}@{value}")
    window = _taylorseer_window(text, options, parameter)
    bounds = (f":from={window['start']}" if window["start"] != TAYLORSEER_WARMUP else "") + (
        f":until={window['until']}" if window["until"] is not None else "")
    return CacheSetting(kind=kind, value=value, text=f"{kind}@{int(value)}{bounds}", **window)


def unavailable_reason(setting: CacheSetting) -> str | None:
    """Why this diffusers cannot run the setting's hook (None when it can)."""
    try:
        import diffusers
    except ImportError:
        return "diffusers is not installed"
    if not hasattr(diffusers, HOOK_CLASSES[setting.kind]):
        return (f"diffusers {package_version('diffusers')} has no {HOOK_CLASSES[setting.kind]} (the guide's line "
                "predates diffusers' cache hooks)")
    return None


def require_available(setting: CacheSetting, parameter: str = "cache") -> None:
    """Refuse a setting this diffusers cannot run, with the fix."""
    why = unavailable_reason(setting)
    if why:
        raise RequestError(parameter, f"cache {setting.text!r} cannot run here: {why}",
                           fix="use the default dependency line (diffusers 0.42, requirements/default.txt), or "
                           "leave the cache off")


def hook_config(setting: CacheSetting):
    """The diffusers config object of a setting."""
    import torch
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if setting.kind == "taylorseer":
        # lite mode: whole blocks skipped, only the transformer's output forecast (float32 Taylor factors: the
        # differences of bf16 outputs lose their low bits otherwise)
        return TaylorSeerCacheConfig(cache_interval=int(setting.value), disable_cache_before_step=setting.start,
                                     disable_cache_after_step=setting.until, max_order=1, use_lite_mode=True,
                                     taylor_factors_dtype=torch.float32)
    return FirstBlockCacheConfig(threshold=setting.value)


def enable(transformer, setting: CacheSetting) -> None:
    """Turn the hook on (after any regional compile: the hooks wrap the compiled blocks' forward), with the observer
    that records the steps it computes (fluxnb.models.cache_schedule)."""
    require_available(setting)
    from . import cache_schedule  # imports diffusers

    disable(transformer)
    transformer.enable_cache(hook_config(setting))
    cache_schedule.attach(transformer)


def disable(transformer) -> None:
    """Turn any cache hook off, and its observer."""
    if getattr(transformer, "is_cache_enabled", False):
        from . import cache_schedule  # imports diffusers

        cache_schedule.detach(transformer)
        transformer.disable_cache()


@contextmanager
def recording(transformer) -> Iterator[dict[str, Any]]:
    """Around one pipeline call: afterwards the dict holds the schedule its step cache ran ("computed_steps": the
    steps computed in full, "computed": how many, "steps": how many ran; the others were served from the cache), as
    observed on diffusers' hooks; it stays empty when no cache of fluxnb's is on."""
    record: dict[str, Any] = {}
    watcher = None
    if getattr(transformer, "is_cache_enabled", False):
        from . import cache_schedule  # imports diffusers

        watcher = cache_schedule.observer(transformer)
    if watcher is not None:
        watcher.clear()
    yield record
    if watcher is not None:
        record.update(watcher.schedule())


def request_cache(value: str | None) -> str | None:
    """A request's `cache`: None keeps the model entry's setting, "off" turns it off for the request, else a setting
    (checked, and refused where this diffusers has no hook for it). Returns the normalized text."""
    if value is None:
        return None
    setting = parse_cache(value)
    if setting is None:
        return "off"
    require_available(setting)
    return setting.text


def effective(request_value: str | None, entry_value: str | None) -> CacheSetting | None:
    """The setting an image runs with: the request's when it names one ("off" included), else the entry's."""
    return parse_cache(entry_value if request_value is None else request_value)


@contextmanager
def switched(transformer, wanted: CacheSetting | None, loaded: CacheSetting | None) -> Iterator[None]:
    """Run with `wanted` on the transformer, then put back the setting the model was loaded with."""
    if wanted == loaded:
        yield
        return
    if wanted is None:
        disable(transformer)
    else:
        enable(transformer, wanted)
    try:
        yield
    finally:
        if loaded is None:
            disable(transformer)
        else:
            enable(transformer, loaded)
