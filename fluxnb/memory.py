"""Device memory as fluxnb measures it: peaks per image (GPU allocated/reserved, or the process's RSS on a CPU)
and giving memory back after a failure or when a model is released."""

from __future__ import annotations

import gc
import sys
from typing import Any


def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> dict[str, Any]:
    """Peak GPU memory of this image (allocated and reserved), or the process's peak RSS on a CPU."""
    import torch

    if device == "cuda":
        return {
            "kind": "cuda",
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        }
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"kind": "cpu process peak RSS", "peak_rss_bytes": peak}
    except ImportError:  # Windows
        import psutil

        return {"kind": "cpu process RSS", "peak_rss_bytes": psutil.Process().memory_info().rss}


def free_memory(device: str) -> None:
    """Drop what a failed call left behind, so that the kernel can go on (gc, then the CUDA cache)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
