"""Facts about this machine that travel with every image: package versions, device, GPU, NVIDIA driver.

Cheap to call (no model loaded); the doctor builds its checks on the same facts. The one list of packages fluxnb
tracks lives here, with the role each package plays.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from .facts import report_only

RECORD, RULES, GENERATION = "record", "rules", "generation"
# The packages fluxnb tracks, by distribution name, with their roles: RECORD - its version travels with every image;
# RULES - the rules of fluxnb/knowledge.yaml may name it; GENERATION - no image can be generated without it (the
# doctor fails on it; fluxnb's other requirements serve notebooks and tooling).
PACKAGES: dict[str, frozenset[str]] = {
    "fluxnb": frozenset({RECORD}),
    "torch": frozenset({RECORD, RULES, GENERATION}),
    "torchvision": frozenset({RECORD, RULES}),
    "diffusers": frozenset({RECORD, RULES, GENERATION}),
    "transformers": frozenset({RECORD, RULES, GENERATION}),
    "accelerate": frozenset({RECORD, RULES, GENERATION}),
    "bitsandbytes": frozenset({RECORD, RULES, GENERATION}),
    "huggingface_hub": frozenset({RECORD, RULES, GENERATION}),
    "torchao": frozenset({RECORD, RULES}),
    "optimum-quanto": frozenset({RECORD, RULES}),
    "peft": frozenset({RECORD}),  # LoRA adapters run on it (fluxnb/models/lora.py)
    "safetensors": frozenset({RECORD, GENERATION}),
    "tokenizers": frozenset({RECORD}),
    "triton": frozenset({RULES}),
    "sentencepiece": frozenset({GENERATION}),
    "protobuf": frozenset({GENERATION}),
    "pillow": frozenset({GENERATION}),
    "numpy": frozenset({GENERATION}),
    "pyyaml": frozenset({GENERATION}),
}
TRACKED_PACKAGES = tuple(name for name, roles in PACKAGES.items() if RECORD in roles)
# Canonical names (packaging.utils.canonicalize_name), as the knowledge base and requirement checks compare them.
RULE_PACKAGES = tuple(canonicalize_name(name) for name, roles in PACKAGES.items() if RULES in roles)
GENERATION_PACKAGES = frozenset(canonicalize_name(name) for name, roles in PACKAGES.items() if GENERATION in roles)


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


def installed_versions() -> dict[str, str]:
    """Installed versions of the packages the knowledge rules name (canonical names; missing ones left out)."""
    out = {}
    for name in RULE_PACKAGES:
        version = package_version(name)
        if version:
            out[canonicalize_name(name)] = version
    return out


@report_only("reading the driver version from NVML")
def _driver_from_nvml() -> str | None:
    """The driver version from NVML (the nvidia-ml-py package), where it is installed and a driver answers."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver, or no GPU
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
    return version.decode() if isinstance(version, bytes) else str(version)


@report_only("reading the driver version from nvidia-smi")
def _driver_from_nvidia_smi() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip().splitlines()[0].strip()
    return None


@report_only("reading /proc/driver/nvidia/version")
def _driver_from_proc() -> str | None:
    proc = Path("/proc/driver/nvidia/version")
    if proc.exists():
        match = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9]+\.[0-9.]+)", proc.read_text(errors="replace"))
        if match:
            return match.group(1)
    return None


def nvidia_driver_version(problems: list[str] | None = None) -> str | None:
    """The NVIDIA kernel driver version: NVML (nvidia-ml-py), else nvidia-smi, else /proc/driver/nvidia/version;
    None where there is no NVIDIA driver. A source that fails unexpectedly is skipped, its "unknown (...)" reason
    added to `problems` (a report-only fact: fluxnb.core.facts)."""
    for source in (_driver_from_nvml, _driver_from_nvidia_smi, _driver_from_proc):
        found = source()
        if found and found.startswith("unknown ("):
            if problems is not None:
                problems.append(found)
        elif found:
            return found
    return None


@report_only("reading the GPU interconnect from NVML",
             fallback=lambda reason: {"kind": reason, "nvlink_active_links": [], "pairs": []})
def gpu_links(count: int) -> dict[str, Any] | None:
    """How the GPUs are connected, from NVML (nvidia-ml-py, optional): per pair the active NVLink links and the
    topology level (the closest common ancestor: NVML's TOPOLOGY_* names); None without NVML or a driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    levels = {getattr(pynvml, name): name.removeprefix("NVML_TOPOLOGY_").lower() for name in dir(pynvml)
              if name.startswith("NVML_TOPOLOGY_") and isinstance(getattr(pynvml, name), int)}
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        nvlinks = []
        for handle in handles:
            active = 0
            for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    active += int(pynvml.nvmlDeviceGetNvLinkState(handle, link) == pynvml.NVML_FEATURE_ENABLED)
                except pynvml.NVMLError:
                    break
            nvlinks.append(active)
        pairs = []
        for i in range(count):
            for j in range(i + 1, count):
                try:
                    level = levels.get(pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j]), "unknown")
                except pynvml.NVMLError:
                    level = "unknown"
                pairs.append({"gpus": [i, j], "level": level})
        return {"nvlink_active_links": nvlinks, "pairs": pairs,
                "kind": "NVLink" if nvlinks and min(nvlinks) > 0 else "PCIe"}
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def gpu_facts(*, driver: bool = True) -> dict[str, Any]:
    """The GPU as torch sees it, read now (free memory changes): torch and its CUDA build, whether CUDA works, the
    NVIDIA driver, and on CUDA the first GPU's name, compute capability, total and free bytes and the GPU count,
    every GPU's name and memory (`gpus`) and, with NVML, how they are connected (`links`, see gpu_links)."""
    import torch

    cuda = torch.cuda.is_available()
    problems: list[str] = []
    facts: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda": cuda,
                             "driver": nvidia_driver_version(problems) if driver else None,
                             "driver_unknown": "; ".join(problems) or None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        count = torch.cuda.device_count()
        facts.update(gpu=props.name, capability=f"{props.major}.{props.minor}", free=free, total=total,
                     total_memory=props.total_memory, count=count,
                     gpus=[{"index": i, "name": torch.cuda.get_device_properties(i).name,
                            "total_memory": torch.cuda.get_device_properties(i).total_memory} for i in range(count)],
                     links=gpu_links(count) if count > 1 else None)
    return facts


@lru_cache(maxsize=1)
def device_info() -> dict:
    """The device generation runs on: CUDA GPU name, capability and memory, or the CPU."""
    facts = gpu_facts(driver=False)
    if facts["cuda"]:
        return {
            "device": "cuda",
            "gpu": facts["gpu"],
            "compute_capability": facts["capability"],
            "gpu_total_gib": round(facts["total_memory"] / 2**30, 2),
            "torch_cuda": facts["torch_cuda"],
        }
    return {"device": "cpu", "gpu": None, "cpu": platform.processor() or platform.machine()}
