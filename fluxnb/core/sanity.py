"""Image sanity check: does a generated image look like a picture, or like one of the known failure modes?

Run on every generated image (fluxnb.runs.generation puts the result in the image's metadata under "sanity") and by
the troubleshooting replay. It flags:

- non-finite values (NaN / inf) in a decoded float array (a PIL image can no longer carry them: NaN is cast to 0);
- black images (a NaN-poisoned decode usually ends up black once converted to 8-bit);
- flat images (one colour everywhere: almost no variation between pixels);
- "pixel mosaic" (the guide's attempt 5, optimum-quanto qfloat8 on the Marlin FP8 kernel): the picture is made of
  8 or 16 pixel squares. Measured as the blockiness ratio: the mean absolute difference between neighbouring
  pixels across block boundaries divided by the same mean inside the blocks. A natural image (and the tiny
  model's noise) scores about 1; an image of flat 16x16 squares scores far above (inside differences are ~0).

Metrics are computed on values scaled to [0, 1]. Thresholds were chosen on synthetic failures and real tiny-FLUX
outputs (tests/test_sanity.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BLACK_MAX = 8 / 255  # every channel of every pixel at most this -> black
FLAT_STD = 2 / 255  # standard deviation of all values below this -> flat (one colour)
MOSAIC_RATIO = 2.5  # boundary/inside gradient energy above this -> pixel mosaic
BLOCK_SIZES = (8, 16)  # the VAE's x8 upsampling; x8 times FLUX's 2x2 latent patches = 16
_EPS = 1e-6


@dataclass
class SanityReport:
    ok: bool
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "warnings": list(self.warnings), "metrics": dict(self.metrics)}

    def __str__(self) -> str:
        if self.ok:
            return "image sanity: ok (" + ", ".join(f"{k} {v}" for k, v in self.metrics.items()) + ")"
        return "image sanity: " + "; ".join(self.warnings)


def _as_array(image):
    """A float64 array HxWxC in [0, 1] (NaN/inf kept) from a PIL image or a numpy/torch array."""
    import numpy as np

    if hasattr(image, "detach"):  # torch tensor: CHW or BCHW in [-1, 1] or [0, 1] is the caller's business
        image = image.detach().float().cpu().numpy()
    if hasattr(image, "mode") and hasattr(image, "size"):  # PIL
        array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    else:
        array = np.asarray(image)
        if array.dtype == np.uint8:
            array = array.astype(np.float64) / 255.0
        else:
            array = array.astype(np.float64)
    if array.ndim == 4:  # a batch of one
        if array.shape[0] != 1:
            raise ValueError(f"check_image takes one image, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"check_image needs an HxW or HxWxC image, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):  # CHW -> HWC
        array = array.transpose(1, 2, 0)
    return array


def blockiness(array, block: int) -> float | None:
    """Boundary/inside ratio of neighbour differences for `block`-pixel squares (None if the image is too small)."""
    import numpy as np

    gray = array.mean(axis=2)
    h, w = gray.shape
    if h < 2 * block or w < 2 * block:
        return None
    dx = np.abs(np.diff(gray, axis=1))  # dx[:, i] = |x[i+1] - x[i]|: a boundary when (i + 1) % block == 0
    dy = np.abs(np.diff(gray, axis=0))
    cols = (np.arange(w - 1) + 1) % block == 0
    rows = (np.arange(h - 1) + 1) % block == 0
    boundary = (dx[:, cols].sum() + dy[rows, :].sum()) / (dx[:, cols].size + dy[rows, :].size)
    inside = (dx[:, ~cols].sum() + dy[~rows, :].sum()) / (dx[:, ~cols].size + dy[~rows, :].size)
    return float((boundary + _EPS) / (inside + _EPS))


def check_image(image) -> SanityReport:
    """Check one image (PIL image, HxWxC / CHW array in [0, 1], or uint8 array); never raises on a bad image.

    Args:
        image: a PIL image or an array (H, W, 3), values 0-255 or 0-1.

    Returns:
        SanityReport: NaN, black, flat and "pixel mosaic" flags with their measures and warnings.
    """
    import numpy as np

    array = _as_array(image)
    warnings: list[str] = []
    finite = np.isfinite(array)
    nonfinite = float(1.0 - finite.mean())
    metrics: dict[str, Any] = {"height": int(array.shape[0]), "width": int(array.shape[1])}
    if nonfinite > 0:
        nan = int(np.isnan(array).sum())
        warnings.append(
            f"non-finite values: {int((~finite).sum())} of {finite.size} decoded values are NaN or inf ({nan} NaN); "
            "the pipeline "
            "overflowed (fp16 VAE, a broken quantized kernel) and the 8-bit image will be black or garbage"
        )
        array = np.where(finite, array, 0.0)
    metrics["nonfinite_fraction"] = round(nonfinite, 6)
    array = np.clip(array, 0.0, 1.0)
    peak, mean, std = float(array.max()), float(array.mean()), float(array.std())
    metrics.update(max=round(peak, 4), mean=round(mean, 4), std=round(std, 4))
    if peak <= BLACK_MAX:
        warnings.append(f"black image: no value above {peak * 255:.0f}/255 (often NaN latents cast to 0)")
    elif std < FLAT_STD:
        warnings.append(f"flat image: one colour everywhere (std {std * 255:.2f}/255 around mean {mean * 255:.0f}/255)")
    scores = {b: s for b in BLOCK_SIZES if (s := blockiness(array, b)) is not None}
    for b, s in scores.items():
        metrics[f"blockiness_{b}"] = round(s, 3)
    if scores and std >= FLAT_STD:
        block, score = max(scores.items(), key=lambda kv: kv[1])
        if score > MOSAIC_RATIO:
            warnings.append(
                f"pixel mosaic: the image is made of {block}x{block} squares (blockiness {score:.1f}, a picture "
                f"scores about 1; above {MOSAIC_RATIO} is flagged). Known cause: optimum-quanto qfloat8 on a CUDA GPU "
                "(diagnosis quanto-qfloat8-marlin)"
            )
    return SanityReport(ok=not warnings, warnings=warnings, metrics=metrics)
