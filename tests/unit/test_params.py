"""Request validation: every bad parameter is refused before loading, with the parameter named and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

import fluxnb
from fluxnb.models.params import IMAGE_TO_IMAGE, make_request


@pytest.fixture(scope="module")
def bnb8(config):
    return config.get("flux-dev-bnb-8bit")


def test_defaults_come_from_the_model_entry(bnb8):
    request = make_request(bnb8, prompt="a lighthouse")
    assert (request.steps, request.guidance_scale, request.width, request.height) == (28, 3.5, 1024, 1024)
    assert request.max_sequence_length == 512 and request.prompts == ("a lighthouse",)


def test_items_give_each_image_its_own_seed(bnb8):
    request = make_request(bnb8, prompt=["a", "b"], num_images=3, seed=10)
    assert request.items() == [(0, "a", 10), (1, "a", 11), (2, "a", 12), (3, "b", 10), (4, "b", 11), (5, "b", 12)]


@pytest.mark.parametrize(
    ("kwargs", "parameter", "text"),
    [
        ({"width": 1000}, "width", "1000 is not a multiple of 16"),
        ({"width": 1000}, "width", "Fix: use 992 or 1008"),
        ({"height": 4096}, "height", "must be between 16 and 2048"),
        ({"steps": 0}, "steps", "must be between 1 and 50"),
        ({"steps": 51}, "steps", "must be between 1 and 50"),
        ({"steps": 2.5}, "steps", "must be a whole number"),
        ({"negative_prompt": "blurry"}, "negative_prompt", "does not use a negative prompt"),
        ({"guidance_scale": 0}, "guidance_scale", "must be a finite number > 0"),
            ({"guidance_scale": float("nan")}, "guidance_scale", "must be a finite number > 0"),
            ({"guidance_scale": float("inf")}, "guidance_scale", "must be a finite number > 0"),
        ({"max_sequence_length": 513}, "max_sequence_length", "between 1 and 512"),
        ({"seed": -1}, "seed", "non-negative integer"),
        ({"num_images": 0}, "num_images", "1..64"),
        ({"prompt": ""}, "prompt", "is empty"),
        ({"prompt": ["a fox", "  "]}, "prompt", "is empty (item 1)"),
        ({"prompt": []}, "prompt", "non-empty string or a list"),
        ({"strength": 0.5}, "strength", "only applies to image-to-image"),
    ],
)
def test_bad_parameters_are_named(bnb8, kwargs, parameter, text):
    kwargs = {"prompt": "a fox", **kwargs}
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(bnb8, **kwargs)
    assert info.value.parameter == parameter
    assert str(info.value).startswith(f"parameter `{parameter}`: ")
    assert text in str(info.value)


def test_image_to_image_checks_the_file(bnb8, tmp_path: Path):
    with pytest.raises(fluxnb.RequestError, match="`init_image`: '.*missing.png' does not exist"):
        make_request(bnb8, prompt="x", init_image=tmp_path / "missing.png", mode=IMAGE_TO_IMAGE)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a PNG", encoding="utf-8")
    with pytest.raises(fluxnb.RequestError, match="`init_image`: file '.*notes.png' is not an image"):
        make_request(bnb8, prompt="x", init_image=not_image, mode=IMAGE_TO_IMAGE)
    with pytest.raises(fluxnb.RequestError, match="`init_image`: is required"):
        make_request(bnb8, prompt="x", mode=IMAGE_TO_IMAGE)


def test_image_to_image_strength(bnb8, tmp_path: Path):
    from PIL import Image

    picture = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (10, 120, 200)).save(picture)
    request = make_request(bnb8, prompt="x", init_image=picture, mode=IMAGE_TO_IMAGE)
    assert request.strength == 0.6 and request.init_image == str(picture)
    for strength in (0, 1.5, True):
        with pytest.raises(fluxnb.RequestError, match=r"`strength`: must be a number in \(0, 1\]"):
            make_request(bnb8, prompt="x", init_image=picture, strength=strength, mode=IMAGE_TO_IMAGE)
    # diffusers runs steps - int(steps * (1 - strength)) >= 1 steps for any strength > 0
    assert make_request(bnb8, prompt="x", init_image=picture, strength=0.1, steps=4, mode=IMAGE_TO_IMAGE).steps == 4


def test_compiled_int8_entry_needs_more_than_16_tokens(config, monkeypatch):
    """torch._int_mm under compile refuses 16 rows (seen on an H100): refused before loading, with the fix."""
    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    fast = config.get("flux-dev-torchao-int8dq")
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(fast, prompt="a cat", width=64, height=64)
    assert info.value.parameter == "width"
    assert "64x64 gives 16 image tokens" in str(info.value) and "at least 4352 pixels (e.g. 80x64)" in str(info.value)
    with pytest.raises(fluxnb.RequestError, match="16 T5 tokens is below the 17") as info:
        make_request(fast, prompt="a cat", max_sequence_length=16)
    assert info.value.parameter == "max_sequence_length"
    assert make_request(fast, prompt="a cat", width=80, height=64).width == 80
    monkeypatch.setenv("FLUXNB_COMPILE", "0")  # eager: torchao's own fallback handles small inputs
    assert make_request(fast, prompt="a cat", width=64, height=64).width == 64


def test_every_bad_value_is_reported_at_once(bnb8):
    """width 100 and steps 0 together: one error naming both, each with its own message and fix."""
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(bnb8, prompt="a fox", width=100, steps=0, seed=-1)
    error = info.value
    assert error.parameters == ["seed", "steps", "width"]
    text = str(error)
    assert text.startswith("3 parameters are not valid:\n")
    lines = text.splitlines()[1:]
    assert lines[0].startswith("  - parameter `seed`: ") and "non-negative integer" in lines[0]
    assert lines[1].startswith("  - parameter `steps`: must be between 1 and 50")
    assert lines[2].startswith("  - parameter `width`: 100 is not a multiple of 16")
    assert "Fix: use 96 or 112" in lines[2]


def test_both_sizes_and_both_image_to_image_values_are_reported_together(bnb8, tiny_spec):
    """The steps that check two values (width and height; init_image and strength) report both, not the first."""
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(bnb8, prompt="a fox", width=100, height=30)
    assert info.value.parameters == ["width", "height"]
    assert str(info.value).startswith("2 parameters are not valid:\n  - parameter `width`: 100 is not a multiple")
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(tiny_spec, prompt="a fox", mode="image-to-image", strength=1.5)
    assert info.value.parameters == ["init_image", "strength"]
    assert "is required for image-to-image" in str(info.value) and "must be a number in (0, 1], got 1.5" in str(
        info.value)


def test_one_bad_value_keeps_its_single_message(bnb8):
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(bnb8, prompt="a fox", steps=0)
    assert info.value.parameters == ["steps"] and str(info.value).startswith("parameter `steps`: ")


def test_a_missing_init_image_says_which_directory_was_searched(bnb8, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fluxnb.RequestError) as info:
        make_request(bnb8, prompt="x", init_image="photo.png", mode=IMAGE_TO_IMAGE)
    assert f"relative paths are read from the working directory {str(tmp_path)!r}" in str(info.value)
