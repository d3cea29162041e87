"""When the compiled forward's CUDA graph stand-in (fluxnb/backends/cuda_graph.py) must not replay, and that it
passes calls through unchanged: the real tiny FLUX transformer on the CPU. Capture and replay themselves need a
GPU: tests/gpu/test_gpu.py runs them (same latents as without the graph, a new capture per size)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from .test_generation import transformer_inputs
from .test_step_cache import needs_hooks

pytestmark = pytest.mark.stack  # in both lanes: the pipeline's own calls into the transformer differ between the lines


@pytest.fixture
def graphed(tiny_model):
    from fluxnb.backends.cuda_graph import graph_forward

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
    from fluxnb.step_cache import disable, enable, parse_cache

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
    from fluxnb.backends.cuda_graph import graph_forward

    pipe = copy.copy(tiny_model.pipe)
    pipe.transformer = copy.deepcopy(tiny_model.pipe.transformer)
    stand_in = graph_forward(pipe.transformer)
    with torch.inference_mode():  # one step: the call that keys the graph (capturing needs a GPU)
        pipe("a cat", num_inference_steps=1, width=64, height=64, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    assert stand_in.status()["bypassed"] is None and stand_in.key is not None
