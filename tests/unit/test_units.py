"""The units every layer shares (fluxnb.core.units) and the one package list (fluxnb.core.environment)."""

from __future__ import annotations

import pytest

from fluxnb.bench import parse_size
from fluxnb.core import environment
from fluxnb.core.errors import ConfigError, RequestError
from fluxnb.core.units import GIB, byte_unit, human_bytes, is_image_side
from fluxnb.knowledge import base as knowledge


def test_one_byte_formatter_for_tiny_and_full_size_models():
    assert human_bytes(12) == "12 B"
    assert human_bytes(789 * 1024) == "789.00 KiB"
    assert human_bytes(45.6 * 2**20) == "45.60 MiB"
    assert human_bytes(int(1.23 * GIB)) == "1.23 GiB"
    assert human_bytes(3 * GIB, "GiB", with_unit=False) == "3.00"
    assert byte_unit(3 * 2**20) == ("MiB", 2**20)
    assert byte_unit(3 * 2**10, smallest="MiB") == ("MiB", 2**20)  # charts never go below MiB
    assert byte_unit(0) == ("B", 1)


def test_one_image_side_rule_for_requests_config_and_bench(tiny_spec):
    assert [v for v in (0, 8, 16, 100, 1024, -16) if is_image_side(v)] == [16, 1024]
    with pytest.raises(RequestError, match="must be a positive multiple of 16"):
        parse_size("1000x1024")
    from fluxnb.models.params import make_request

    with pytest.raises(RequestError, match="is not a multiple of 16"):
        make_request(tiny_spec, prompt="x", width=72, height=64)
    from fluxnb.models.config import parse_config

    with pytest.raises(ConfigError, match="width 100 must be a positive multiple of 16"):
        parse_config({"models": {"m": {"id": "x/y", "type": "flux-tiny", "params": {"default_size": [100, 64]}}}},
                     "inline.yaml")


def test_one_package_list_with_roles():
    assert environment.TRACKED_PACKAGES[:2] == ("fluxnb", "torch") and "tokenizers" in environment.TRACKED_PACKAGES
    assert knowledge.RULE_PACKAGES is environment.RULE_PACKAGES
    assert {"huggingface-hub", "optimum-quanto", "triton"} <= set(environment.RULE_PACKAGES)
    assert "fluxnb" not in environment.RULE_PACKAGES
    assert {"torch", "diffusers", "pyyaml"} <= environment.GENERATION_PACKAGES
    assert "torchao" not in environment.GENERATION_PACKAGES
    assert not hasattr(environment, "cuda_available")
