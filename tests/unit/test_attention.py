"""The attention kernel an entry runs: the record's choice per compute capability, refusals before loading, and
diffusers' dispatch reaching SageAttention (its kernels need a GPU: tests/gpu/test_gpu.py checks their numbers).
Only the `stack` test runs on the guide line (diffusers 0.34, no attention registry: the kernel is refused there)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata

import pytest
import torch
from packaging.version import Version

from fluxnb.core.errors import ModelUnavailableError
from fluxnb.models import attention
from fluxnb.models.attention import AttentionChoice, choose_attention, use_attention

REGISTRY_LINE = Version(importlib.metadata.version("diffusers")) >= Version("0.36")
CHOICES = (AttentionChoice((8, 9), "sage", "predicted for the L4"), AttentionChoice((9, 0), "sdpa", "measured"))


@pytest.fixture
def fp8(config):
    return config.get("flux-dev-torchao-fp8")


def _flux_transformer(head_dim: int):
    """A one-block FLUX transformer (diffusers' real class, random weights) with attention heads of `head_dim`."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    rope = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=head_dim, num_attention_heads=1, joint_attention_dim=16,
                                  pooled_projection_dim=16, axes_dims_rope=rope).eval()


def _forward(transformer):
    return transformer(hidden_states=torch.randn(1, 4, 4), encoder_hidden_states=torch.randn(1, 3, 16),
                       pooled_projections=torch.randn(1, 16), timestep=torch.tensor([0.5]), img_ids=torch.zeros(4, 3),
                       txt_ids=torch.zeros(3, 3), return_dict=False)[0]


def test_auto_takes_the_records_choice_for_this_capability(fp8):
    kernel, note, fallback = choose_attention(fp8, CHOICES, "cuda", (8, 9))
    assert kernel == "sage" and note == "attention: sage on 8.9 (predicted for the L4)" and fallback is None
    assert choose_attention(fp8, CHOICES, "cuda", (9, 0)) == ("sdpa", "attention: sdpa on 9.0 (measured)", None)
    assert choose_attention(fp8, CHOICES, "cuda", (8, 0)) == ("sdpa", None, None)  # no choice for 8.0: plain SDPA
    assert choose_attention(fp8, CHOICES, "cpu", None) == ("sdpa", None, None)


def test_auto_falls_back_to_sdpa_and_says_why(fp8, monkeypatch):
    monkeypatch.setattr(attention, "package_version",
                        lambda name: None if name == "sageattention" else importlib.metadata.version(name))
    kernel, note, fallback = choose_attention(fp8, CHOICES, "cuda", (8, 9))
    assert kernel == "sdpa"
    assert note.startswith("attention: sdpa, not sage (the choice for 8.9: predicted for the L4): ")
    assert "the sageattention package is not installed (pip install 'sageattention==1.0.6'" in note
    assert note.endswith(f": {fallback}") and fallback.startswith("the sageattention package is not installed")


@pytest.mark.stack
def test_named_kernel_is_refused_where_it_cannot_run(fp8):
    sage = dataclasses.replace(fp8, attention="sage")
    with pytest.raises(ModelUnavailableError) as cpu:
        choose_attention(sage, (), "cpu", None)
    assert "model 'flux-dev-torchao-fp8' asks for `attention: sage`, which cannot run here: its kernels need a " \
           "CUDA GPU (compute capability 8.0+); this is cpu" in str(cpu.value)
    assert "set `attention: auto`" in str(cpu.value) and "`attention: sdpa`" in str(cpu.value)
    with pytest.raises(ModelUnavailableError, match=r"it needs compute capability 8\.0\+, this GPU is 7\.5"):
        choose_attention(sage, (), "cuda", (7, 5))
    if REGISTRY_LINE:
        assert choose_attention(sage, (), "cuda", (9, 0)) == \
            ("sage", "attention: sage (the entry's `attention:` key)", None)
    else:
        with pytest.raises(ModelUnavailableError, match=r"diffusers' attention registry \(diffusers >= 0\.36\)"):
            choose_attention(sage, (), "cuda", (9, 0))
    assert choose_attention(dataclasses.replace(fp8, attention="sdpa"), CHOICES, "cuda", (8, 9)) == \
        ("sdpa", "attention: sdpa (the entry's `attention:` key)", None)


def test_load_refuses_a_named_kernel_before_reading_weights(config, tmp_path):
    import fluxnb

    tiny = dataclasses.replace(config.get("flux-tiny"), attention="sage")
    missing = tmp_path / "no-checkpoint-here"
    with pytest.raises(ModelUnavailableError, match="asks for `attention: sage`, which cannot run here"):
        fluxnb.load_model(tiny, checkpoint=str(missing), device="cpu")
    assert not missing.exists()


def test_head_sizes_the_kernel_does_not_take_are_refused():
    with pytest.raises(ModelUnavailableError) as refused:
        use_attention(_flux_transformer(16), "sage")
    assert "attention kernel 'sage' takes head sizes 64, 96, 128; this transformer's is 16" in str(refused.value)
    assert "set `attention: sdpa`" in str(refused.value)


def test_the_records_choice_falls_back_where_the_head_size_does_not_fit():
    """The tiny models' heads (16) fit neither float8 nor Sage kernels: the record's choice falls back to SDPA, said;
    a kernel named outright stays, for use_attention to refuse."""
    from fluxnb.models.attention import AttentionPlan, fit_to_heads

    chosen = AttentionPlan("cudnn-fp8", "attention: cudnn-fp8 on 9.0 (measured)")
    kernel, note, fallback = fit_to_heads(chosen, _flux_transformer(16), "auto")
    assert kernel == "sdpa" and fallback == "it takes head sizes 64, 128; this transformer's is 16"
    assert note == f"attention: sdpa, not cudnn-fp8 (the record's choice for this GPU): {fallback}"
    assert fit_to_heads(chosen, _flux_transformer(128), "auto") == chosen
    assert fit_to_heads(chosen, _flux_transformer(16), "cudnn-fp8") == chosen


def test_sage_is_what_diffusers_dispatch_calls():
    transformer = _flux_transformer(128)
    reference = _forward(transformer)  # SDPA on the CPU
    use_attention(transformer, "sage")
    assert attention.attention_backend(transformer).startswith("sage (sageattention 1.0.6, Triton")
    # the dispatch reaches sageattn itself, whose first check wants CUDA tensors: on the GPU it computes
    with pytest.raises(AssertionError, match="Input tensors must be on cuda"):
        _forward(transformer)
    use_attention(transformer, "sdpa")  # sdpa changes nothing: the processors keep their backend
    assert attention.attention_backend(transformer).startswith("sage")
    assert reference.shape == (1, 4, 4)


def test_config_lists_a_bad_attention_value(tmp_path):
    import yaml

    from fluxnb.core.errors import ConfigError
    from fluxnb.core.packaged import DEFAULT_CONFIG_PATH
    from fluxnb.models.config import load_config

    raw = yaml.safe_load(open(DEFAULT_CONFIG_PATH, encoding="utf-8"))
    raw["models"]["flux-dev-torchao-fp8"]["attention"] = "flash"
    path = tmp_path / "model_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as bad:
        load_config(str(path))
    assert "models.flux-dev-torchao-fp8.attention: 'flash' is not an attention kernel; allowed: auto, sdpa, sage, " \
        "cudnn-fp8" in str(bad.value)


def _with_cudnn_frontend(name: str):
    return "1.14.0" if name == "nvidia-cudnn-frontend" else importlib.metadata.version(name)


@pytest.mark.stack
def test_cudnn_fp8_named_outright_is_refused_below_hopper(fp8, monkeypatch):
    monkeypatch.setattr(attention, "package_version", _with_cudnn_frontend)
    named = dataclasses.replace(fp8, attention="cudnn-fp8")
    with pytest.raises(ModelUnavailableError) as ada:
        choose_attention(named, (), "cuda", (8, 9))
    assert "asks for `attention: cudnn-fp8`, which cannot run here: it needs compute capability 9.0+, this GPU is " \
           "8.9" in str(ada.value)
    with pytest.raises(ModelUnavailableError, match="its kernels need a CUDA GPU"):
        choose_attention(named, (), "cpu", None)
    monkeypatch.setattr(attention, "package_version",
                        lambda name: None if name == "nvidia-cudnn-frontend" else importlib.metadata.version(name))
    with pytest.raises(ModelUnavailableError) as hopper:
        choose_attention(named, (), "cuda", (9, 0))
    assert ("the nvidia-cudnn-frontend package is not installed (pip install 'fluxnb[cudnn-fp8]'"
            if REGISTRY_LINE else "diffusers' attention registry (diffusers >= 0.36)") in str(hopper.value)


@functools.cache  # registered once per process
def _emulate_cudnn_fp8_on_the_cpu():
    """What cuDNN's float8 kernel computes, in float32 on the CPU, registered as the op's CPU kernel: attention of
    the dequantized Q, K, V, and O requantized at V's scale (cuDNN also rounds P to float8, which this skips: the GPU
    lane compares the real kernel, tests/gpu/test_gpu.py). It tests fluxnb's code around the kernel: the scales,
    the layout, O's rescaling and the dispatch."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from fluxnb.models.cudnn_fp8_attention import FP8, FP8_MAX, sdpa_fp8

    @sdpa_fp8.register_kernel("cpu")
    def _(q8, k8, v8, descale_q, descale_k, descale_v, scale):
        q, k, v = (t.float().transpose(1, 2) * d for t, d in ((q8, descale_q), (k8, descale_k), (v8, descale_v)))
        out = sdpa(q, k, v, scale=scale).transpose(1, 2)
        return (out / descale_v).clamp(-FP8_MAX, FP8_MAX).to(FP8)


@pytest.mark.skipif(not REGISTRY_LINE, reason="diffusers' attention registry: 0.36+ (the guide line refuses the "
                                              "kernel: test_cudnn_fp8_named_outright_is_refused_below_hopper)")
def test_cudnn_fp8_is_what_diffusers_dispatch_calls_and_compiles_whole(monkeypatch):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    registry, name = _AttentionBackendRegistry, AttentionBackendName(attention.CUDNN_FP8_BACKEND)
    for table in (registry._backends, registry._supported_arg_names, registry._constraints):
        monkeypatch.setitem(table, name, table[name])  # diffusers' own _flash_3 entry comes back after the test
    _emulate_cudnn_fp8_on_the_cpu()
    transformer = _flux_transformer(128)

    def forward():  # the same random inputs each time
        torch.manual_seed(1)
        return _forward(transformer)

    with torch.inference_mode():
        reference = forward()
        use_attention(transformer, "cudnn-fp8")
        eager = forward()
        transformer.compile_repeated_blocks(fullgraph=True)
        compiled = forward()
    assert attention.attention_backend(transformer).startswith("cudnn-fp8 (nvidia-cudnn-frontend")
    # the name it borrows is not the one ring attention runs torch's bf16 cuDNN kernel under
    from fluxnb.core.compat import registered_attention_backend
    from fluxnb.runs.contextparallel import RING_ATTENTION_BACKEND

    assert registered_attention_backend(RING_ATTENTION_BACKEND).__module__ != "fluxnb.models.cudnn_fp8_attention"
    error = ((eager - reference).norm() / reference.norm()).item()
    assert 1e-4 < error < 0.03, error  # float8 rounding of Q, K, V and O: not SDPA's output, close to it
    assert torch.allclose(compiled, eager, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not REGISTRY_LINE, reason="diffusers' attention registry: 0.36+ (the guide line falls back to "
                                              "sdpa for every kernel)")
def test_kontext_takes_cudnn_fp8_on_hopper_unless_its_steps_skip_the_cuda_graph(config, monkeypatch):
    """The float8 record's choice on 9.0 is per task: Kontext, whose reference picture doubles the tokens, runs
    cuDNN's float8 attention; text-to-image keeps SDPA. An entry with a step cache keeps SDPA too, saying why."""
    from fluxnb.models.backends.torchao import FP8_ATTENTION

    monkeypatch.setattr(attention, "package_version", _with_cudnn_frontend)
    kontext = config.get("flux-kontext-torchao-fp8")
    kernel, note, _ = choose_attention(kontext, FP8_ATTENTION, "cuda", (9, 0))
    assert kernel == "cudnn-fp8" and note.startswith("attention: cudnn-fp8 on 9.0 (measured on an H100")
    assert choose_attention(config.get("flux-dev-torchao-fp8"), FP8_ATTENTION, "cuda", (9, 0))[0] == "sdpa"
    assert choose_attention(kontext, FP8_ATTENTION, "cuda", (8, 9))[0] == "sage"
    cached = dataclasses.replace(kontext, cache="taylorseer@2")
    kernel, note, fallback = choose_attention(cached, FP8_ATTENTION, "cuda", (9, 0))
    assert kernel == "sdpa" and note.startswith("attention: sdpa, not cudnn-fp8 (the choice for 9.0: ")
    assert fallback.startswith("the entry's step cache (taylorseer@2) keeps its steps out of a CUDA graph, and each "
                               "call costs cuDNN's Python graph execution on the CPU")


def test_a_step_cache_asked_of_a_cudnn_fp8_model_is_said():
    label = "cudnn-fp8 (nvidia-cudnn-frontend 1.14.0: float8 Q, K, V, O, one scale per tensor)"
    note = attention.cached_run_note(label, "taylorseer@2")
    assert note.startswith("note: this run's step cache (taylorseer@2) keeps the steps out of a CUDA graph, and the "
                           "model runs cudnn-fp8 attention: each call costs")
    assert note.endswith("Faster: load the entry with `cache: taylorseer@2` (its attention is then chosen for that) "
                         "or with `attention: sdpa`")
    assert attention.cached_run_note(label, None) is None
    assert attention.cached_run_note("sdpa", "taylorseer@2") is None


def test_cudnn_fp8_rounds_o_without_v_mean():
    """FLUX's attention output is mostly V's mean over the tokens, and the kernel writes O in float8 (3 mantissa
    bits): rounded whole, O carried almost all of the kernel's error. With V's mean taken out before the kernel and
    added back after, only the rest of O is rounded."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from fluxnb.models.cudnn_fp8_attention import diffusers_backend

    _emulate_cudnn_fp8_on_the_cpu()
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1024, 2, 128) for _ in range(3))
    v = v + torch.randn(1, 1, 2, 128)  # a mean per head and channel, as V has in FLUX's blocks
    reference = sdpa(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    error = ((diffusers_backend(q, k, v) - reference).norm() / reference.norm()).item()
    assert error < 0.01, error  # O rounded whole into float8: 0.028


def test_a_shape_cudnn_cannot_run_is_refused_with_the_fix(monkeypatch):
    """cuDNN refuses some shapes only when its graph is built, at the first picture of that size. A stand-in for the
    GPU-only `cudnn` module whose support check fails as cuDNN's does: the error names the shape and the fix."""
    import sys
    import types

    from fluxnb.models import cudnn_fp8_attention

    class Graph:
        def __getattr__(self, name):  # every graph-building call returns something that takes further calls
            return lambda *args, **kwargs: (Graph(),) * 4 if name == "sdpa_fp8" else Graph()

        def check_support(self):
            raise RuntimeError("cudnnGraphNotSupportedError: No valid engine configs for SDPA_FP8_FWD")

    fake = types.SimpleNamespace(data_type=types.SimpleNamespace(FP8_E4M3=0, FLOAT=1), heur_mode=Graph(),
                                 create_handle=lambda: None, pygraph=lambda **kwargs: Graph())
    monkeypatch.setitem(sys.modules, "cudnn", fake)
    with pytest.raises(ModelUnavailableError) as refused:
        cudnn_fp8_attention._plan((1, 4464, 24, 128), 128 ** -0.5, torch.device("cpu"))
    assert "cuDNN's float8 attention (attention: cudnn-fp8) cannot run attention over 4464 tokens, 24 heads of 128, " \
           "batch 1: RuntimeError: cudnnGraphNotSupportedError: No valid engine configs" in str(refused.value)
    assert "Fix: set `attention: sdpa` (or auto) in the model entry" in str(refused.value)
    assert not cudnn_fp8_attention._PLANS  # nothing half-built is kept for the next call
