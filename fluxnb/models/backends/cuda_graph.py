"""The compiled transformer's whole forward replayed as one CUDA graph: no per-kernel launch cost in the steps.

A compiled float8 step launches about a thousand kernels through 57 compiled block calls; the GPU waits on the CPU
in the gaps. Captured once and replayed, the same step took 3-4% less on an H100 (results/README.md, runs 17, 22).
torch.compile's own CUDA graphs (mode "reduce-overhead") fail with regional compile, because the 19 (38) blocks
share one compiled function and overwrite each other's outputs (run 15); a graph around the whole forward does not.

The graph is only right while everything it captured stays the same, so it is keyed on what can change:
- the call: each tensor argument's shape, dtype and strides (an image size), the other arguments' values;
- the model: PEFT adapter names (the first LoRA adds layers; a hotswap after that copies weights and scales in
  place, which the graph sees), and inference/grad mode.
A new key drops the old graph (one graph, one memory pool at a time); its first call runs normally (and compiles),
the second runs on a side stream and is captured there, the later ones replay. Never captured: a step cache is on
(its hooks decide per step in Python), extra attention arguments (a non-empty joint_attention_kwargs),
return_dict=True, gradients. FLUXNB_CUDA_GRAPH=0 turns it off.

A failed capture is fatal: on a GPU, every later step of that process failed after one (the CUDA context is left
unusable), so the stand-in raises ModelUnusable instead of carrying on, after recording the model in the compile
cache folder of this machine (`FAILED_INDEX`); the next load of that model skips the graph (`recorded_failures`), and
`fluxnb cache --clear` forgets it.

Why `transformer.forward` is replaced rather than a diffusers hook (`diffusers.hooks.HookRegistry` / `ModelHook`):
the registry is where diffusers' step caches put their hooks on the same transformer, and `enable_cache`,
`disable_cache` and `cache_context` rewire and walk that chain (diffusers issue #14037: its child list went stale),
so the graph's bypass would depend on the order of hooks registered by others; the registry is also an internal
fluxnb has no version bound for. One instance attribute, removed by `del transformer.forward`, keeps it separate.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from ...core.errors import ModelUnusable
from ...core.files import atomic_write_json, exclusive_lock, own_folder
from .. import compile_cache

# In a compile cache key's folder: model name -> when and why its capture failed (the next load skips the graph).
FAILED_INDEX = "fluxnb_cuda_graph_failed.json"


def wanted() -> bool:
    """FLUXNB_CUDA_GRAPH=0 keeps the compiled steps without the graph (debugging, or to compare)."""
    return os.environ.get("FLUXNB_CUDA_GRAPH", "1") != "0"


class GraphedForward:
    """Stands in for `transformer.forward`; `status()` says what it did (image metadata)."""

    def __init__(self, transformer, model: str | None = None, marker: Path | None = None):
        self.transformer = transformer
        self.model = model  # the model entry's name, recorded in `marker` when a capture fails
        self.marker = marker
        self.eager_forward = transformer.forward
        self.key: tuple | None = None
        self.graph = None  # torch.cuda.CUDAGraph
        self.static: dict[str, Any] = {}
        self.output: tuple = ()
        self.captures = self.replays = 0
        self.bypass_reason: str | None = None
        self.failure: str | None = None
        functools.update_wrapper(self, self.eager_forward)

    def __call__(self, *args, **kwargs):
        import torch

        key = None if args or self.failure else self._key(kwargs)
        if key is None:
            self.drop()
            return self.eager_forward(*args, **kwargs)
        if key != self.key:  # a new size or model state: run it once as it is (it compiles), capture next time
            self.drop()
            self.key = key
            return self.eager_forward(**kwargs)
        if self.graph is None:
            return self._capture(kwargs)
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                self.static[name].copy_(value)
        self.graph.replay()
        self.replays += 1
        return tuple(t.clone() for t in self.output)  # the graph's own output is overwritten by the next replay

    def _key(self, kwargs: dict) -> tuple | None:
        """What the captured graph depends on; None (with `bypass_reason` set) where it must not be used."""
        import torch

        reason = None
        if getattr(self.transformer, "is_cache_enabled", False):
            reason = "a step cache is on (its hooks choose per step)"
        elif kwargs.get("return_dict", True) or kwargs.get("joint_attention_kwargs"):  # FluxPipeline passes {}
            reason = "called with return_dict or joint_attention_kwargs"
        elif torch.is_grad_enabled():
            reason = "gradients are on"
        self.bypass_reason = reason
        if reason:
            return None
        parts: list = [torch.is_inference_mode_enabled(), tuple(getattr(self.transformer, "peft_config", None) or ())]
        for name, value in sorted(kwargs.items()):
            if isinstance(value, torch.Tensor):
                parts.append((name, tuple(value.shape), value.stride(), value.dtype, value.device))
            elif value is None or isinstance(value, (bool, int, float, str)):
                parts.append((name, value))
            elif value == {}:
                parts.append((name, "{}"))
            else:
                self.bypass_reason = f"argument {name} is a {type(value).__name__}"
                return None
        return tuple(parts)

    def _capture(self, kwargs: dict):
        """This call, run on a side stream (where anything it still compiles or tunes runs outside the capture: the
        recipe of torch.cuda.graph's documentation), then the same work captured on that stream for the next calls.
        Returns this call's result; a refused capture raises ModelUnusable (see `_failed`)."""
        import torch

        result, stream = run_aside(self.eager_forward, kwargs)
        result = tuple(t.clone() for t in result)
        self.static = {name: value.clone() if isinstance(value, torch.Tensor) else value
                       for name, value in kwargs.items()}
        try:
            graph, output = record_graph(self.eager_forward, self.static, stream)
        except Exception as exc:  # anything the capture refuses leaves the process's CUDA context unusable
            raise self._failed(exc) from exc
        self.graph, self.output = graph, tuple(output)
        self.captures += 1
        return result

    def _failed(self, exc: Exception) -> ModelUnusable:
        """Record the failure (status, and the marker the next load reads), drop the graph; the error to raise."""
        self.failure = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        self.drop()
        model = self.model or "this model"
        if self.model is not None and self.marker is not None:
            record_failure(self.marker, self.model, self.failure)
            later = (f"load {model} again in a new process: that load runs the compiled steps without the CUDA graph "
                     f"(recorded in {self.marker}; `fluxnb cache --clear` or deleting that file tries the graph again)")
        else:
            later = "load the model again in a new process with FLUXNB_CUDA_GRAPH=0 (the compiled steps, no graph)"
        return ModelUnusable(
            f"the CUDA graph capture of {model}'s compiled transformer forward failed ({self.failure}); a failed "
            "capture leaves this process's CUDA context unusable, so the process cannot generate any more.",
            fix=f"restart the kernel (or the command), then {later}.",
        )

    def drop(self) -> None:
        """Forget the captured graph (its memory pool goes back to the allocator)."""
        self.key, self.graph, self.static, self.output = None, None, {}, ()

    def status(self) -> dict:
        return {"captures": self.captures, "replays": self.replays, "bypassed": self.bypass_reason,
                "failed": self.failure}


def run_aside(forward, kwargs: dict) -> tuple[Any, Any]:
    """One call of `forward` on a new side stream (the warm-up before a capture); (its result, the stream)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        result = forward(**kwargs)
    torch.cuda.current_stream().wait_stream(stream)
    return result, stream


def record_graph(forward, static: dict, stream) -> tuple[Any, Any]:
    """The call `forward(**static)` captured on `stream`: (the torch.cuda.CUDAGraph, its static output). The CUDA
    calls of a capture are here and in `run_aside`, so that CPU tests can make the capture fail."""
    import torch

    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            output = forward(**static)
        return graph, output
    finally:
        torch.cuda.empty_cache()  # the side stream's cached blocks (the graph keeps its own pool)


def failure_marker(root: str | Path | None = None, key: str | None = None) -> Path:
    """Where failed captures are recorded: the compile cache folder of this machine's torch, triton and GPU (a new
    line of any of them may capture where this one failed)."""
    return compile_cache.cache_dir(root, key) / FAILED_INDEX


def recorded_failures(marker: Path) -> dict[str, dict]:
    """model -> {"when", "error"} ({} when none was recorded or the file is unreadable)."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_failure(marker: Path, model: str, error: str) -> None:
    """Add `model` to the marker file (<fluxnb cache>/compile/<key>/: fluxnb's own folders, made when missing, a
    symbolic link refused), under its lock."""
    compile_root = marker.parent.parent
    compile_root.parent.mkdir(parents=True, exist_ok=True)
    folder = own_folder(own_folder(compile_root.parent, compile_root.name, "the compile cache folder"),
                        marker.parent.name, "the compile cache folder")
    with exclusive_lock(str(folder / FAILED_INDEX) + ".lock", "the CUDA graph failures' lock file"):
        failures = recorded_failures(folder / FAILED_INDEX)
        failures[model] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "error": error}
        atomic_write_json(folder / FAILED_INDEX, failures)


def graph_forward(transformer, model: str | None = None, marker: Path | None = None) -> GraphedForward:
    """Replace the transformer's forward with its graphed stand-in (idempotent); returns it. With `model` and
    `marker`, a failed capture is recorded there for the next load (`recorded_failures`)."""
    if isinstance(transformer.forward, GraphedForward):
        return transformer.forward
    transformer.forward = GraphedForward(transformer, model, marker)
    return transformer.forward


def graph_status(transformer) -> dict | None:
    """The stand-in's status, None when the transformer runs without it."""
    forward = getattr(transformer, "forward", None)
    return forward.status() if isinstance(forward, GraphedForward) else None
