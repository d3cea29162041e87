"""model_config.yaml validation: the project file is valid; every mistake is reported with its key path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import fluxnb
from fluxnb.models.config import DEFAULT_CONFIG_PATH, load_config, parse_config


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))


def test_project_config_keeps_the_guides_entry_as_primary(config):
    assert config.primary_model == "flux-dev-bnb-8bit"
    spec = config.get("flux-dev-bnb-8bit")
    assert spec.id == "diffusers/FLUX.1-dev-bnb-8bit"
    assert spec.type == "flux-bnb-8bit"
    assert spec.requires_auth is False
    p = spec.params
    assert (p.default_steps, p.max_steps, p.guidance_scale, p.max_tokens) == (28, 50, 3.5, 512)
    assert (p.use_negative_prompt, p.supports_i2i) == (False, True)
    assert p.default_size == (1024, 1024) and p.max_size == (2048, 2048)
    assert {"flux-dev-bnb-4bit", "flux-dev", "flux-tiny"} <= set(config.models)
    assert config.get("flux-dev").requires_auth is True
    assert config.fallback_model == "flux-tiny"


def test_every_problem_is_listed_at_once_with_its_key_path(raw):
    bad = copy.deepcopy(raw)
    entry = bad["models"]["flux-dev-bnb-8bit"]
    entry["params"]["default_steps"] = 60  # above max_steps
    entry["params"]["default_size"] = [1000, 1024]  # not a multiple of 16
    entry["params"]["steps"] = 3  # unknown key
    del entry["description"]  # missing key
    entry["requires_auth"] = "no"  # wrong type
    bad["models"]["flux-tiny"]["type"] = "flux-bnb-16bit"  # unknown loader type
    bad["runtime"]["primary_model"] = "flux-dev-8bit"  # not defined
    with pytest.raises(fluxnb.ConfigError) as info:
        parse_config(bad, "model_config.yaml")
    message = str(info.value)
    expected = [
        "models.flux-dev-bnb-8bit.params.default_steps: 60 must be between 1 and max_steps (50)",
        "models.flux-dev-bnb-8bit.params.default_size: width 1000 must be a positive multiple of 16",
        "models.flux-dev-bnb-8bit.params.steps: unknown key",
        "models.flux-dev-bnb-8bit.description: missing",
        "models.flux-dev-bnb-8bit.requires_auth: must be true or false, got 'no'",
        "models.flux-tiny.type: unknown type 'flux-bnb-16bit'. Allowed: flux-bnb-8bit",
        "runtime.primary_model: 'flux-dev-8bit' is not defined under models",
    ]
    for line in expected:
        assert line in message
    assert len(info.value.problems) == len(expected)


def test_default_size_above_max_size_and_bool_for_int(raw):
    bad = copy.deepcopy(raw)
    params = bad["models"]["flux-tiny"]["params"]
    params["default_size"] = [1024, 1024]
    params["max_steps"] = True
    with pytest.raises(fluxnb.ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert "models.flux-tiny.params.default_size: [1024, 1024] is above max_size [512, 512]" in text
    assert "models.flux-tiny.params.max_steps: must be an integer, got True" in text


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path):
    broken = tmp_path / "model_config.yaml"
    broken.write_text("models:\n  flux-tiny:\n    id: [unclosed\n    type: flux-tiny\n", encoding="utf-8")
    with pytest.raises(fluxnb.ConfigError) as info:
        load_config(broken)
    message = str(info.value)
    assert str(broken) in message
    assert "YAML syntax error at line 4" in message


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(fluxnb.ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_model_name_lists_the_allowed_names(config):
    with pytest.raises(fluxnb.RequestError) as info:
        config.get("flux-dev-8bit")
    message = str(info.value)
    assert message.startswith("parameter `model`: 'flux-dev-8bit' is not defined")
    assert "auto, flux-dev-bnb-8bit, flux-dev-bnb-4bit, flux-dev, flux-tiny" in message


def test_optional_compile_and_offload_keys_are_checked_against_the_type(raw):
    assert load_config().get("flux-dev-torchao-int8dq").compile is True
    assert load_config().get("flux-dev-bnb-8bit").compile is False  # absent: false
    bad = copy.deepcopy(raw)
    bad["models"]["flux-dev-bnb-8bit"]["compile"] = True
    bad["models"]["flux-dev-torchao-int8"]["compile"] = True  # weight-only: measured slower compiled
    bad["models"]["flux-dev-torchao-int8dq"]["offload_text_encoder"] = "yes"
    bad["models"]["flux-dev"]["compiled"] = True
    with pytest.raises(fluxnb.ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert ("models.flux-dev-bnb-8bit.compile: type 'flux-bnb-8bit' does not support it (types that do: "
            "flux-bf16, flux-tiny, flux-torchao-fp8dq, flux-torchao-int8dq). Fix: remove the key or set it to "
            "false") in text
    assert "models.flux-dev-torchao-int8.compile: type 'flux-torchao-int8wo' does not support it" in text
    assert "models.flux-dev-torchao-int8dq.offload_text_encoder: must be true or false, got 'yes'" in text
    assert "models.flux-dev.compiled: unknown key. Allowed keys: id, type, requires_auth, params, description, " \
           "compile, offload_text_encoder" in text
    assert len(info.value.problems) == 4
