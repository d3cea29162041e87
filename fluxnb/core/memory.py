"""Device memory as fluxnb measures it: peaks per image (GPU allocated/reserved, or the process's RSS on a CPU),
giving memory back after a failure or when a model is released, and the GPU memory limit a user sets.

The limit (FLUXNB_GPU_MEMORY_LIMIT) is counted the way the card's host counts it: NVML's figure for the process,
CUDA context and libraries included, not only PyTorch's allocator. `FLUXNB_GPU_MEMORY_LIMIT=l4` makes a bigger
card behave like a Workbench L4 (23034 MiB usable, context included): the allocator gets the limit minus what
the process already holds outside it, minus a headroom for the kernels and library handles loaded later, and is
capped there (torch.cuda.set_per_process_memory_fraction). It is measured again before every image, so the cap
follows what the process really holds.
"""

from __future__ import annotations

import gc
import os
import re
import resource
from dataclasses import asdict, dataclass
from typing import Any

from .errors import FluxnbError, InputError
from .facts import report_only
from .units import GIB, MIB, human_bytes

GPU_LIMIT_ENV = "FLUXNB_GPU_MEMORY_LIMIT"
# Named limits: a Vertex AI Workbench g2 instance's L4 reports 23034 MiB usable, the CUDA context included.
GPU_LIMIT_PRESETS = {"l4": 23034 * MIB}
# Room kept free under the limit for what the process adds outside torch's allocator after the cap is set: the
# kernels a first image loads (Triton/inductor modules, bitsandbytes, cuBLAS/cuDNN handles).
GPU_LIMIT_HEADROOM = 384 * MIB
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": MIB, "mb": 10**6, "mib": MIB, "g": GIB,
          "gb": 10**9, "gib": GIB}


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
    # ru_maxrss: KiB on Linux (fluxnb is POSIX-only: its locks are fcntl's); bytes on macOS
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {"kind": "cpu process peak RSS", "peak_rss_bytes": peak}


def free_memory(device: str) -> None:
    """Drop what a failed call left behind, so that the kernel can go on (gc, then the CUDA cache)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def parse_memory_limit(text: str) -> int:
    """FLUXNB_GPU_MEMORY_LIMIT's value in bytes: a preset ("l4") or a size ("23034MiB", "22.5GiB", "24GB")."""
    value = text.strip().lower()
    if value in GPU_LIMIT_PRESETS:
        return GPU_LIMIT_PRESETS[value]
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", value)
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"{GPU_LIMIT_ENV}={text!r} is not a memory size.",
                         fix=f"a size such as 23034MiB, 22.5GiB or 24GB, or a preset: {', '.join(GPU_LIMIT_PRESETS)} "
                         "(an L4 on a Workbench instance); unset it for no limit")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass
class GpuMemoryCap:
    """The limit in force: what the user asked (`limit_bytes`, as NVML counts the process), what the process held
    outside torch's allocator when it was set (`outside_bytes`: CUDA context, libraries), and the allocator's cap."""

    limit_bytes: int
    outside_bytes: int
    allocator_bytes: int
    measured_by: str  # "NVML (this process)" or "the whole GPU (no NVML)": where outside_bytes came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self) -> str:
        return (f"GPU memory limited to {human_bytes(self.limit_bytes)} ({GPU_LIMIT_ENV}): torch's allocator "
                f"{human_bytes(self.allocator_bytes)} + {human_bytes(self.outside_bytes)} held outside it (context, "
                f"libraries; measured by {self.measured_by}) + {human_bytes(GPU_LIMIT_HEADROOM)} headroom")


@report_only("reading this process's GPU memory from NVML", fallback=lambda reason: None)
def nvml_process_bytes() -> int | None:
    """This process's GPU memory as NVML (and so the host's tools) count it; None without nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return None
    import torch

    pynvml.nvmlInit()
    try:
        index = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            index = int(visible.split(",")[index])
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid():
                return int(process.usedGpuMemory)
        return None  # another PID namespace (a container): NVML cannot name this process
    finally:
        pynvml.nvmlShutdown()


def apply_gpu_memory_limit(device: str) -> GpuMemoryCap | None:
    """Cap torch's allocator so that the process, as NVML counts it, stays within FLUXNB_GPU_MEMORY_LIMIT.

    Called before a model loads and before every image (what the process holds outside the allocator grows as
    kernels load). None when the variable is unset or the device is not CUDA.

    Raises:
        InputError: the value is not a size or preset, or the limit is below what the process already holds.
    """
    text = os.environ.get(GPU_LIMIT_ENV, "").strip()
    if not text or device != "cuda":
        return None
    import torch

    limit = parse_memory_limit(text)
    torch.cuda.init()
    reserved = torch.cuda.memory_reserved()
    used, measured_by = nvml_process_bytes(), "NVML (this process)"
    if used is None:
        free, total = torch.cuda.mem_get_info()
        used, measured_by = total - free, "the whole GPU (no NVML for this process)"
    outside = max(used - reserved, 0)
    allocator = limit - outside - GPU_LIMIT_HEADROOM
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if allocator <= 0:
        raise FluxnbError(f"{GPU_LIMIT_ENV}={text} leaves no room for the model: this process already holds "
                          f"{human_bytes(used)} of GPU memory ({measured_by}).",
                          fix=f"raise the limit, or unset {GPU_LIMIT_ENV}")
    torch.cuda.set_per_process_memory_fraction(min(allocator / total, 1.0))
    return GpuMemoryCap(limit_bytes=limit, outside_bytes=outside, allocator_bytes=allocator, measured_by=measured_by)
