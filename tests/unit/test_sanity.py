"""The image sanity check (fluxnb.core.sanity) on images made to fail and to pass, including real tiny-FLUX outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fluxnb.core.sanity import MOSAIC_RATIO, blockiness, check_image

pytestmark = pytest.mark.stack  # in both lanes: images from each line

RNG = np.random.default_rng(20251122)


def _kinds(report) -> set[str]:
    return {w.split(":")[0] for w in report.warnings}


def natural_image(size: int = 128) -> np.ndarray:
    """A smooth colour gradient with a little sensor noise: what a picture looks like to the check."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([x, y, 0.5 * (x + y)], axis=-1) + RNG.normal(0, 0.03, (size, size, 3))
    return np.clip(image, 0, 1)


def mosaic_image(block: int = 16, blocks: int = 8) -> np.ndarray:
    """Noise upscaled by nearest neighbour: squares of one colour, like the guide's attempt 5."""
    return np.kron(RNG.random((blocks, blocks, 3)), np.ones((block, block, 1)))


def test_all_black_is_flagged():
    report = check_image(np.zeros((64, 64, 3)))
    assert not report.ok and _kinds(report) == {"black image"}


def test_flat_gray_is_flagged_as_flat_not_mosaic():
    report = check_image(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert not report.ok and _kinds(report) == {"flat image"}


def test_nan_values_are_flagged_and_counted():
    image = natural_image(64)
    image[3, 4, 0] = np.nan
    image[10, 10, :] = np.inf
    report = check_image(image)
    assert "non-finite values" in _kinds(report)
    assert "4 of 12288" in report.warnings[0] and "(1 NaN)" in report.warnings[0]
    assert report.metrics["nonfinite_fraction"] == pytest.approx(4 / 12288, abs=1e-6)


def test_all_nan_decode_is_non_finite_and_black():
    assert _kinds(check_image(np.full((64, 64, 3), np.nan))) == {"non-finite values", "black image"}


@pytest.mark.parametrize("block", [8, 16])
def test_nearest_neighbour_upscaled_noise_is_a_mosaic(block):
    report = check_image(mosaic_image(block))
    assert _kinds(report) == {"pixel mosaic"}
    assert f"{block}x{block} squares" in report.warnings[0]
    assert report.metrics[f"blockiness_{block}"] > 10 * MOSAIC_RATIO


def test_mosaic_is_found_through_noise_and_8_bit_rounding():
    noisy = np.clip(mosaic_image(16) + RNG.normal(0, 0.02, (128, 128, 3)), 0, 1)
    report = check_image(Image.fromarray((noisy * 255).astype(np.uint8)))
    assert _kinds(report) == {"pixel mosaic"}


def test_natural_image_passes_in_every_input_form():
    image = natural_image()
    for form in (image, (image * 255).astype(np.uint8), Image.fromarray((image * 255).astype(np.uint8)),
                 torch.from_numpy(image).permute(2, 0, 1), image[None]):
        report = check_image(form)
        assert report.ok, report.warnings
        assert 0.8 < report.metrics["blockiness_16"] < 1.25


def test_blockiness_needs_two_blocks():
    assert blockiness(np.zeros((20, 20, 3)), 16) is None
    report = check_image(np.zeros((8, 8, 3)) + RNG.random((8, 8, 3)))
    assert report.ok and "blockiness_8" not in report.metrics


def test_real_tiny_flux_noise_images_pass(tiny_model):
    """Random weights give noise pictures: they must not read as black, flat or mosaic."""
    for seed, (width, height) in [(1, (64, 64)), (2, (128, 96)), (3, (160, 160))]:
        image = tiny_model.pipe(prompt="a red fox in the snow", num_inference_steps=2, width=width, height=height,
                                guidance_scale=3.5, max_sequence_length=32,
                                generator=torch.Generator().manual_seed(seed)).images[0]
        report = check_image(image)
        assert report.ok, (seed, report.warnings)
        assert max(report.metrics["blockiness_8"], report.metrics["blockiness_16"]) < MOSAIC_RATIO / 1.5


def test_every_generated_image_carries_its_sanity_report(tiny_model):
    import fluxnb

    request = fluxnb.make_request(tiny_model.spec, prompt="a lighthouse", steps=2, width=64, height=64, seed=5)
    run = fluxnb.RunFolder.create("sanity-hook")
    (image,) = fluxnb.generate(tiny_model, request, run, progress=False)
    assert image.metadata["sanity"]["ok"] is True and image.metadata["sanity"]["warnings"] == []
    assert fluxnb.read_png_metadata(image.path)["sanity"] == image.metadata["sanity"]
