"""Fidelity of a backend's output against the reference backend's: relative error of latents, PSNR of images,
and the speed ratios against the baseline backend, all within one bench run."""

from __future__ import annotations

import math
from typing import Any


def relative_error(x, ref) -> float:
    """||x - ref|| / ||ref|| (inf when ref is all zeros)."""
    import numpy as np

    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(x - ref)) / denom if denom else float("inf")


def psnr(image, ref) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    import numpy as np

    mse = float(np.mean((np.asarray(image, dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def add_comparisons(results: dict[str, Any], outputs: dict[tuple[str, str], dict]) -> None:
    """Fidelity against the reference and speed ratios against the baseline, size by size, within this run."""
    reference, baseline = results["settings"]["reference"], results["settings"]["baseline"]
    by_key = {(r["backend"], r["size"]): r for r in results["rows"]}
    for row in results["rows"]:
        if "error" in row:
            continue
        ref = outputs.get((reference, row["size"]))
        mine = outputs.get((row["backend"], row["size"]))
        if ref is not None and mine is not None:
            row["latent_rel_error"] = round(relative_error(mine["latents"], ref["latents"]), 6)
            value = psnr(mine["image"], ref["image"])
            row["psnr_db"] = None if math.isinf(value) else round(value, 3)
        base = by_key.get((baseline, row["size"]))
        if base and "seconds_per_image" in base:
            row["speedup_vs_baseline"] = round(base["seconds_per_image"] / row["seconds_per_image"], 3)
            row["step_speedup_vs_baseline"] = round(base["seconds_per_step"] / row["seconds_per_step"], 3)
