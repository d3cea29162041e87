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
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def wanted() -> bool:
    """FLUXNB_CUDA_GRAPH=0 keeps the compiled steps without the graph (debugging, or to compare)."""
    return os.environ.get("FLUXNB_CUDA_GRAPH", "1") != "0"


class GraphedForward:
    """Stands in for `transformer.forward`; `status()` says what it did (image metadata)."""

    def __init__(self, transformer):
        self.transformer = transformer
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
        Returns this call's result; a refused capture leaves the compiled forward running without the graph."""
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            result = self.eager_forward(**kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        result = tuple(t.clone() for t in result)
        self.static = {name: value.clone() if isinstance(value, torch.Tensor) else value
                       for name, value in kwargs.items()}
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                output = self.eager_forward(**self.static)
        except Exception as exc:  # noqa: BLE001 (anything the capture refuses: keep the plain compiled forward)
            self.failure = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            logger.warning("CUDA graph capture failed; the compiled steps run without it: %s", self.failure)
            self.drop()
            return result
        finally:
            torch.cuda.empty_cache()  # the side stream's cached blocks (the graph keeps its own pool)
        self.graph, self.output = graph, tuple(output)
        self.captures += 1
        return result

    def drop(self) -> None:
        """Forget the captured graph (its memory pool goes back to the allocator)."""
        self.key, self.graph, self.static, self.output = None, None, {}, ()

    def status(self) -> dict:
        return {"captures": self.captures, "replays": self.replays, "bypassed": self.bypass_reason,
                "failed": self.failure}


def graph_forward(transformer) -> GraphedForward:
    """Replace the transformer's forward with its graphed stand-in (idempotent); returns it."""
    if isinstance(transformer.forward, GraphedForward):
        return transformer.forward
    transformer.forward = GraphedForward(transformer)
    return transformer.forward


def graph_status(transformer) -> dict | None:
    """The stand-in's status, None when the transformer runs without it."""
    forward = getattr(transformer, "forward", None)
    return forward.status() if isinstance(forward, GraphedForward) else None
