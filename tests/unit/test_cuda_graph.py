"""When the compiled forward's CUDA graph stand-in (fluxnb/models/backends/cuda_graph.py) must not replay, and that it
passes calls through unchanged: the real tiny FLUX transformer on the CPU. Capture and replay themselves need a
GPU: tests/gpu/test_gpu.py runs them (same latents as without the graph, a new capture per size)."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import re
import sys
import types
from dataclasses import replace

import pytest
import torch

from .test_generation import transformer_inputs
from .test_step_cache import needs_hooks

pytestmark = pytest.mark.stack  # in both lanes: the pipeline's own calls into the transformer differ between the lines


@pytest.fixture
def graphed(tiny_model):
    from fluxnb.models.backends.cuda_graph import graph_forward

    transformer = copy.deepcopy(tiny_model.pipe.transformer)
    inputs = transformer_inputs(transformer.config, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = transformer(**inputs)[0]
    assert graph_forward(transformer) is graph_forward(transformer)  # installed once
    return transformer, inputs, expected


def test_first_call_at_a_size_runs_the_forward_and_keys_the_graph(graphed):
    transformer, inputs, expected = graphed
    with torch.inference_mode():
        out = transformer(**inputs)[0]
    assert torch.equal(out, expected)
    stand_in = transformer.forward
    assert stand_in.key is not None and stand_in.graph is None  # the next call at this size would capture
    assert stand_in.status() == {"captures": 0, "replays": 0, "bypassed": None, "failed": None}


@pytest.mark.parametrize("case, reason", [
    pytest.param("step cache", "a step cache is on", marks=needs_hooks),
    ("return_dict", "called with return_dict or joint_attention_kwargs"),
    ("attention kwargs", "called with return_dict or joint_attention_kwargs"),
    ("gradients", "gradients are on"),
])
def test_calls_the_graph_cannot_serve_run_the_forward_as_it_is(graphed, case, reason):
    from fluxnb.models.step_cache import disable, enable, parse_cache

    transformer, inputs, expected = graphed
    stand_in = transformer.forward
    with torch.inference_mode():
        transformer(**inputs)  # keyed
    kwargs = dict(inputs)
    if case == "step cache":
        enable(transformer, parse_cache("taylorseer@2"))
    elif case == "return_dict":
        kwargs["return_dict"] = True
    elif case == "attention kwargs":
        kwargs["joint_attention_kwargs"] = {"scale": 1.0}
    context = torch.enable_grad() if case == "gradients" else torch.inference_mode()
    with context, (transformer.cache_context("cond") if case == "step cache" else contextlib.nullcontext()):
        out = transformer(**kwargs)
    out = out.sample if case == "return_dict" else out[0]
    if case == "step cache":
        disable(transformer)
    assert torch.allclose(out, expected, atol=1e-5) and stand_in.key is None and stand_in.graph is None
    assert reason in stand_in.status()["bypassed"]


def test_the_pipelines_own_calls_are_graphable(tiny_model):
    """FluxPipeline calls the transformer with return_dict=False and joint_attention_kwargs={}: a call the graph
    serves (bench run 24 on an H100 never replayed because `{}` was refused)."""
    from fluxnb.models.backends.cuda_graph import graph_forward

    pipe = copy.copy(tiny_model.pipe)
    pipe.transformer = copy.deepcopy(tiny_model.pipe.transformer)
    stand_in = graph_forward(pipe.transformer)
    with torch.inference_mode():  # one step: the call that keys the graph (capturing needs a GPU)
        pipe("a cat", num_inference_steps=1, width=64, height=64, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    assert stand_in.status()["bypassed"] is None and stand_in.key is not None


CAPTURE_ERROR = "CUDA error: operation not permitted when stream is capturing"


def test_a_failed_capture_is_fatal_and_the_next_load_skips_the_graph(tiny_model, tiny_spec, tmp_path, monkeypatch):
    """A capture that fails (on a GPU it left every later step failing) raises ModelUnusable naming the model and
    the failure, records the model in this machine's compile cache folder, and the next load of that model does
    not graph its forward (another model still does). The CUDA calls are replaced at their seam: the side-stream
    warm-up runs the forward plainly, the recording raises what torch.cuda.graph raised on the GPU."""
    from fluxnb.core.errors import ModelUnusable
    from fluxnb.models.backends import cuda_graph
    from fluxnb.models.backends.base import LoadContext, compile_if_wanted
    from fluxnb.models.backends.bf16 import BACKENDS

    monkeypatch.setenv("FLUXNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLUXNB_COMPILE", "1")
    if importlib.util.find_spec("triton") is None:  # the guide lane: a CUDA load only checks that triton imports
        monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))  # (nothing compiles in this test)

    def refuse(forward, static, stream):
        raise RuntimeError(CAPTURE_ERROR + "\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(cuda_graph, "run_aside", lambda forward, kwargs: (forward(**kwargs), None))
    monkeypatch.setattr(cuda_graph, "record_graph", refuse)
    backend = next(b for b in BACKENDS if b.type == "flux-bf16")  # a type whose compiled forward is graphed
    assert backend.cuda_graph

    def load(name: str):
        """What a CUDA load of `name` does after loading: compile (lazily) and maybe the graph stand-in."""
        pipe = copy.copy(tiny_model.pipe)
        pipe.transformer = copy.deepcopy(tiny_model.pipe.transformer)
        ctx = LoadContext(checkpoint="unused", device="cuda", torch_dtype=torch.float32)
        assert compile_if_wanted(pipe, replace(tiny_spec, name=name), backend, ctx)
        return pipe.transformer, ctx.notes

    first, _ = load("flux-dev-bf16")
    assert isinstance(first.forward, cuda_graph.GraphedForward) and first.forward.model == "flux-dev-bf16"
    # its stand-in, on an eager copy of the transformer (so that this CPU test does not compile the blocks)
    transformer = copy.deepcopy(tiny_model.pipe.transformer)
    stand_in = cuda_graph.graph_forward(transformer, first.forward.model, first.forward.marker)
    inputs = transformer_inputs(transformer.config, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        transformer(**inputs)  # keys the graph
        with pytest.raises(ModelUnusable) as caught:
            transformer(**inputs)  # captures: refused
    message = str(caught.value)
    assert "flux-dev-bf16" in message and CAPTURE_ERROR in message and "CUDA context unusable" in message
    marker = tmp_path / "cache" / "compile" / compile_cache_key() / "fluxnb_cuda_graph_failed.json"
    assert str(marker) in caught.value.fix and "restart" in caught.value.fix
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    failure = f"RuntimeError: {CAPTURE_ERROR}"  # the exception's first line
    assert list(recorded) == ["flux-dev-bf16"] and recorded["flux-dev-bf16"]["error"] == failure
    assert stand_in.status()["failed"] == failure and stand_in.graph is None

    again, notes = load("flux-dev-bf16")
    assert not isinstance(again.forward, cuda_graph.GraphedForward)
    assert any("CUDA graph off for flux-dev-bf16" in note and str(marker) in note for note in notes)
    other, _ = load("flux-dev-bf16-other")
    assert isinstance(other.forward, cuda_graph.GraphedForward)


def compile_cache_key() -> str:
    """This CPU machine's compile cache key, spelled out: torch and triton versions, no GPU."""
    from importlib.metadata import PackageNotFoundError, version

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", text).lower()

    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = "none"
    return slug(f"torch{version('torch')}-triton{triton}-cpu")
