"""Cached mode on the tiny model (real diffusers hooks): settings, schedule, regional compile, load report,
image metadata, and the refusal on a diffusers without the hooks (the guide's lane)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fluxnb
import fluxnb.models.attention
from fluxnb.core.errors import RequestError
from fluxnb.models import step_cache
from fluxnb.models.step_cache import parse_cache

pytestmark = pytest.mark.stack  # in both lanes: the cache hooks exist from diffusers 0.36 on (the guide line refuses)

HOOKS = step_cache.unavailable_reason(parse_cache("taylorseer@2")) is None
needs_hooks = pytest.mark.skipif(not HOOKS, reason="this lane's diffusers has no cache hooks (refusal tested below)")


@pytest.mark.parametrize(("text", "fix"), [
    ("taylorseer", "taylorseer@2"), ("taylorseer@1", "taylorseer@2"), ("taylorseer@2.5", "taylorseer@2"),
    ("first-block@2", "first-block@0.08"), ("teacache@0.1", "taylorseer@2"), ("first-block@x", "taylorseer@2"),
    ("taylorseer@2:warmup=6", "taylorseer@2:until=22"), ("taylorseer@2:from=0", "from=6"),
    ("taylorseer@2:from=6:until=6", "until=22"), ("taylorseer@2:from=3:from=4", "from=6"),
    ("first-block@0.08:from=6", "first-block@0.08"),
])
def test_bad_settings_are_refused_with_the_allowed_forms(text, fix):
    with pytest.raises(RequestError) as info:
        parse_cache(text)
    assert "parameter `cache`" in str(info.value) and fix in info.value.fix


def test_settings_and_their_schedule():
    assert parse_cache(None) is None and parse_cache("off") is None and parse_cache(" none ") is None
    ts = parse_cache("taylorseer@2")
    assert ts.fixed_schedule and ts.to_dict()["hook"] == "TaylorSeerCacheConfig"
    # steps 0, 1, 2 full, then one in two from step 4: 0 1 2 4 6 ... 26 -> 15 of 28
    assert ts.computed_steps(28) == 15 and parse_cache("taylorseer@3").computed_steps(28) == 11
    # a forecast window: 0-5 computed, then 7, 9, ..., 23 (one in two), then 25-27 computed: 6 + 9 + 3
    window = parse_cache(" taylorseer@2:until=25:from=6 ")
    assert window.text == "taylorseer@2:from=6:until=25" and window.computed_steps(28) == 18
    assert (window.to_dict()["forecast_from"], window.to_dict()["forecast_until"]) == (6, 25)
    assert parse_cache("taylorseer@2:from=3").text == "taylorseer@2"  # the default window is not spelled out
    fb = parse_cache("first-block@0.08")
    assert not fb.fixed_schedule and fb.computed_steps(28) is None and "depends on the weights" in fb.describe()


def _full_forwards(pipe, run) -> tuple[int, torch.Tensor]:
    """How many steps ran the blocks for real (the first block's attention only runs then), and the latents."""
    calls = []
    handle = pipe.transformer.transformer_blocks[0].attn.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        latents = run()
    finally:
        handle.remove()
    return len(calls), latents


def _generate(pipe, steps=8):
    return lambda: pipe("a cat", num_inference_steps=steps, width=32, height=32, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).images


@needs_hooks
def test_taylorseer_skips_on_its_fixed_schedule_eager_and_compiled(tiny_spec):
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)  # own copy: hooks and compile change it
    pipe = model.pipe
    pipe.set_progress_bar_config(disable=True)
    full, plain = _full_forwards(pipe, _generate(pipe))
    assert full == 8
    setting = parse_cache("taylorseer@2")
    step_cache.enable(pipe.transformer, setting)
    full, cached = _full_forwards(pipe, _generate(pipe))
    assert full == setting.computed_steps(8) == 5
    again = _full_forwards(pipe, _generate(pipe))[1]
    assert torch.equal(cached, again)  # the hook's state resets between images
    assert not torch.equal(cached, plain)
    pipe.transformer.compile_repeated_blocks()  # regional compile under the hooks
    full, compiled = _full_forwards(pipe, _generate(pipe))
    assert full == 5
    assert float((compiled - cached).norm() / cached.norm()) < 1e-4
    step_cache.disable(pipe.transformer)
    assert not pipe.transformer.is_cache_enabled


@needs_hooks
def test_first_block_cache_runs_compiled_and_is_labelled_adaptive(tiny_spec):
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    pipe = model.pipe
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.compile_repeated_blocks()
    step_cache.enable(pipe.transformer, parse_cache("first-block@0.08"))
    full, latents = _full_forwards(pipe, _generate(pipe, steps=4))
    assert 1 <= full <= 4 and torch.isfinite(latents).all()
    assert parse_cache("first-block@0.08").to_dict()["depends_on_weights"] is True


def test_entry_cache_reaches_the_load_report_and_image_metadata(tiny_spec):
    spec = dataclasses.replace(tiny_spec, cache="taylorseer@2")
    if not HOOKS:
        with pytest.raises(RequestError) as info:
            fluxnb.load_model(spec, device="cpu", progress=False)
        assert "has no TaylorSeerCacheConfig" in str(info.value) and "diffusers 0.42" in info.value.fix
        return
    model = fluxnb.load_model(spec, device="cpu", progress=False)
    assert model.report.cache == {"setting": "taylorseer@2", "hook": "TaylorSeerCacheConfig",
                                  "fixed_schedule": True, "depends_on_weights": False, "forecast_from": 3,
                                  "forecast_until": None}
    assert model.report.to_dict()["cache"]["setting"] == "taylorseer@2"
    assert any("cached mode taylorseer@2" in note for note in model.report.notes)
    request = fluxnb.make_request(spec, prompt="a cat", steps=4, width=32, height=32)
    image = fluxnb.generate(model, request, progress=False)[0]
    assert image.metadata["speed"]["cache"]["setting"] == "taylorseer@2"
    # the entry's cache, on since the load: of 4 steps, the 3 warm-up ones computed and step 3 forecast
    assert image.metadata["speed"]["cache"]["computed_steps"] == [0, 1, 2]
    assert image.metadata["speed"]["compile_cache"] is None  # the tiny model is not compiled
    assert image.metadata["speed"]["attention"] == model.report.attention == fluxnb.models.attention.SDPA


def test_model_config_checks_cache_and_compile_mode(config):
    import copy

    import yaml

    from fluxnb.core.errors import ConfigError
    from fluxnb.models.config import DEFAULT_CONFIG_PATH, parse_config

    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    bad = copy.deepcopy(raw)
    bad["models"]["flux-tiny"]["cache"] = "teacache@1"
    bad["models"]["flux-tiny"]["compile_mode"] = "max-autotune-no-cudagraphs"
    bad["models"]["flux-dev-torchao-fp8"]["compile_mode"] = "reduce-overhead"
    bad["models"]["flux-dev-bnb-8bit"]["compile_vae"] = True
    bad["runtime"]["recommended"] = "flux-nope"
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert "models.flux-tiny.cache: parameter `cache`: 'teacache@1' is not a cache setting" in text
    assert "models.flux-tiny.compile_mode: 'max-autotune-no-cudagraphs' is not allowed for type 'flux-tiny'" in text
    assert "models.flux-dev-torchao-fp8.compile_mode: 'reduce-overhead' is not allowed" in text
    assert ("models.flux-dev-bnb-8bit.compile_vae: set but the entry is not compiled (the VAE decoder is compiled "
            "with the transformer's blocks). Fix: add `compile: true`, or remove `compile_vae`") in text
    assert "runtime.recommended: 'flux-nope' is not defined under models" in text
    good = copy.deepcopy(raw)
    good["models"]["flux-tiny"]["cache"] = "first-block@0.08"
    assert parse_config(good).get("flux-tiny").cache == "first-block@0.08"


def test_request_cache_overrides_the_entry_for_that_request_only(tiny_spec):
    assert fluxnb.make_request(tiny_spec, prompt="a cat").cache is None  # the entry's (off for flux-tiny)
    assert fluxnb.make_request(tiny_spec, prompt="a cat", cache="none").cache == "off"
    with pytest.raises(RequestError, match="parameter `cache`: 'taylor@2' is not a cache setting"):
        fluxnb.make_request(tiny_spec, prompt="a cat", cache="taylor@2")
    if not HOOKS:
        with pytest.raises(RequestError, match="cannot run here"):
            fluxnb.make_request(tiny_spec, prompt="a cat", cache="taylorseer@2")
        return
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    cached = fluxnb.make_request(tiny_spec, prompt="a cat", steps=6, width=32, height=32, cache="taylorseer@2")
    assert fluxnb.models.params.request_from_dict(tiny_spec, cached.to_dict()) == cached
    image = fluxnb.generate(model, cached, progress=False)[0]
    assert image.metadata["cache"] == "taylorseer@2" and image.metadata["speed"]["cache"]["fixed_schedule"]
    assert not model.pipe.transformer.is_cache_enabled  # back to the entry's setting (off) after the request
    plain = fluxnb.generate(model, fluxnb.make_request(tiny_spec, prompt="a cat", steps=6, width=32, height=32),
                            progress=False)[0]
    assert plain.metadata["cache"] is None and plain.metadata["speed"]["cache"] is None
    assert list(image.image.getdata()) != list(plain.image.getdata())
