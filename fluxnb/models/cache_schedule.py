"""The schedule a cached mode actually ran: which denoising steps computed the transformer's blocks in full and which
were served from diffusers' step cache (recorded with each image: fluxnb.models.step_cache.recording).

`ScheduleObserver` is a diffusers ModelHook of fluxnb's own, registered as `OBSERVER` in the HookRegistry of the
transformer's `norm_out` (it runs once per forward, after every block): after each forward it reads the decision
diffusers' cache hook made for that step from the hook's own state (fluxnb/core/compat.py), so both the fixed
TaylorSeer schedule and FirstBlockCache's adaptive one are observed, not derived. It sits on `norm_out`, not on the
transformer: accelerate's model offload (the bf16 entry) and the CUDA graph stand-in (backends/cuda_graph.py)
replace `transformer.forward`, which would drop a hook registered there. step_cache.enable attaches it, and
step_cache.disable removes it. The record is report-only: a hook state diffusers moved makes it "unknown (why)",
never a failed image (fluxnb/core/facts.py). This module imports diffusers: import it only where a cache is on.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..core.compat import STEP_CACHE_HOOKS, step_cache_decision, step_cache_hook
from ..core.facts import report_only

OBSERVER = "fluxnb_cache_schedule"
MAIN_CALL = "cond"  # the pipeline's denoiser call (its cache_context); "uncond" only with true CFG, not FLUX.1-dev's


_find_hook = report_only("finding diffusers' step cache hook", fallback=lambda reason: None)(step_cache_hook)


@report_only("reading the step cache's decision")
def _decision(cache_hook: ModelHook | None) -> tuple[str, bool]:
    if cache_hook is None:
        raise LookupError(f"no diffusers step cache hook named {' or '.join(STEP_CACHE_HOOKS)} on the transformer")
    return step_cache_decision(cache_hook)


class ScheduleObserver(ModelHook):
    """Per denoiser call, whether each forward computed the blocks in full (True) or was served from the cache."""

    def __init__(self, cache_hook: ModelHook | None) -> None:
        super().__init__()
        self.cache_hook = cache_hook
        self.decisions: dict[str, list[bool]] = {}
        self.unknown: str | None = None  # why the decisions could not be read (then no more lookups this image)

    @torch.compiler.disable
    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        """After norm_out, i.e. after the step's blocks: note what the cache hook decided for this step."""
        if self.unknown is None:
            decision = _decision(self.cache_hook)
            if isinstance(decision, str):
                self.unknown = decision
            else:
                self.decisions.setdefault(decision[0], []).append(decision[1])
        return output

    def clear(self) -> None:
        self.decisions, self.unknown = {}, None

    def schedule(self) -> dict[str, Any]:
        """The steps (0-based, of those run) computed in full, their count, and the steps run."""
        if self.unknown is not None:
            return {"computed_steps": self.unknown, "computed": None, "steps": None}
        decisions = self.decisions.get(MAIN_CALL, [])
        computed = [step for step, full in enumerate(decisions) if full]
        return {"computed_steps": computed, "computed": len(computed), "steps": len(decisions)}


def _registry(transformer) -> HookRegistry:
    return HookRegistry.check_if_exists_or_initialize(transformer.norm_out)


def attach(transformer) -> None:
    """Observe the step cache just enabled on `transformer` (diffusers' enable_cache)."""
    _registry(transformer).register_hook(ScheduleObserver(_find_hook(transformer)), OBSERVER)


def detach(transformer) -> None:
    """Remove the observer (nothing happens when there is none)."""
    _registry(transformer).remove_hook(OBSERVER, recurse=False)


def observer(transformer) -> ScheduleObserver | None:
    """The observer attached to `transformer`, None when none is."""
    return _registry(transformer).get_hook(OBSERVER)
