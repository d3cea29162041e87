"""Facts about this machine that travel with every image: package versions, device, GPU.

Cheap to call (no model loaded); the doctor builds its checks on the same facts.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

TRACKED_PACKAGES = (
    "fluxnb",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "huggingface_hub",
    "torchao",
    "optimum-quanto",
    "safetensors",
    "tokenizers",
)


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Versions of the packages that decide whether FLUX runs (missing ones left out)."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        version = package_version(name)
        if version:
            versions[name] = version
    return versions


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@lru_cache(maxsize=1)
def device_info() -> dict:
    """The device generation runs on: CUDA GPU name, capability and memory, or the CPU."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "device": "cuda",
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_total_gib": round(props.total_memory / 2**30, 2),
            "torch_cuda": torch.version.cuda,
        }
    return {"device": "cpu", "gpu": None, "cpu": platform.processor() or platform.machine()}
