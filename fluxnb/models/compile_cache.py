"""The persistent torch.compile cache: compile paid once per machine, not once per process.

torch.compile's inductor keeps its compiled graphs (FX graph cache), autotuning results and Triton kernels on disk
under TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR; by default in a temporary folder that does not outlive the
machine's /tmp and is shared by every torch/GPU combination. fluxnb points both at
`<fluxnb cache>/compile/<key>`, the key naming the torch and triton versions and the GPU (name and compute
capability), so a new process on the same machine finds the compiled blocks of an earlier one and its first image
pays seconds instead of tens of seconds of compile (results/README.md). Inductor writes its entries atomically
(write to a temporary file, then rename), so processes can share a folder; `clear` removes a folder under a file
lock that `activate` also takes, so a clear never runs halfway through the set-up of a load. `clear` removes only
folders that `describe` lists (real folders directly under the compile root): a key that is a path, `..` or a
symbolic link is refused with the valid keys.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.compat import enable_inductor_local_caches, inductor_default_cache_dir
from ..core.environment import package_version
from ..core.files import atomic_write_json, exclusive_lock, own_folder, real_subfolders, remove_own_folder
from .tiny import cache_root

COMPILE_FOLDER = "compile"
ENV_INDUCTOR = "TORCHINDUCTOR_CACHE_DIR"
ENV_TRITON = "TRITON_CACHE_DIR"
# Inductor's sub-folders that hold reusable work (compiled FX graphs, AOT autograd entries, Triton kernels);
# a folder with any file under them is "warm".
ENTRY_FOLDERS = ("fxgraph", "aotautograd", "triton")


@dataclass
class CompileCacheState:
    """Where the compile cache of this process is and whether it held entries before the load.

    Attributes:
        path: the folder TORCHINDUCTOR_CACHE_DIR points at.
        key: the folder's key (torch, triton, GPU), or "user" when TORCHINDUCTOR_CACHE_DIR was set by the user.
        warm: it held compiled entries before this load (a later first image should compile in seconds).
        entries: how many entry files it held then.
        managed: fluxnb chose the folder (False: the user's TORCHINDUCTOR_CACHE_DIR was kept).
    """

    path: str
    key: str
    warm: bool
    entries: int
    managed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self) -> str:
        """One line for the load report."""
        if self.warm:
            return (f"compile cache warm ({self.entries} entries in {self.path}): the first image should compile in "
                    "seconds, not tens of seconds")
        return (f"compile cache cold ({self.path}): the first image pays the full compile, later processes on this "
                "machine reuse it (`fluxnb cache` shows it)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def gpu_identity() -> tuple[str, tuple[int, int] | None]:
    """The GPU the compiled kernels are for (name, compute capability); ("cpu", None) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    props = torch.cuda.get_device_properties(0)
    return props.name, (props.major, props.minor)


def cache_key(gpu: str | None = None, capability: tuple[int, int] | None = None) -> str:
    """torch<version>-triton<version>-<gpu>[-sm<major><minor>]: kernels compiled for one of these are not reused
    by another (a new torch or triton line, another GPU), so each combination gets its own folder."""
    if gpu is None:
        gpu, capability = gpu_identity()
    torch_version = package_version("torch") or "none"
    triton_version = package_version("triton") or package_version("pytorch-triton") or "none"
    key = f"torch{torch_version}-triton{triton_version}-{gpu}"
    if capability is not None:
        key += f"-sm{capability[0]}{capability[1]}"
    return _slug(key)


def compile_root(root: str | Path | None = None) -> Path:
    """<fluxnb cache>/compile: every key's folder lives under it."""
    return cache_root(root) / COMPILE_FOLDER


def cache_dir(root: str | Path | None = None, key: str | None = None) -> Path:
    """The folder of one key (default: this machine's)."""
    return compile_root(root) / (key or cache_key())


def count_entries(path: str | Path) -> int:
    """Files under inductor's entry folders (0 for a missing folder)."""
    path = Path(path)
    return sum(1 for sub in ENTRY_FOLDERS if (path / sub).is_dir() for f in (path / sub).rglob("*") if f.is_file())


def folder_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _lock(root: str | Path | None = None):
    """The compile root's lock (made with the root when missing; a symbolic link as the root is refused)."""
    base = cache_root(root)
    base.mkdir(parents=True, exist_ok=True)
    folder = own_folder(base, COMPILE_FOLDER, "the compile cache folder")
    return exclusive_lock(folder / ".lock", "the compile cache's lock file")


def activate(root: str | Path | None = None, key: str | None = None) -> CompileCacheState:
    """Point inductor and Triton at the persistent folder before anything compiles; say whether it is warm.

    A TORCHINDUCTOR_CACHE_DIR set by the user wins (they chose where compiled code goes); fluxnb then only reports
    on it. Call it before the first torch.compile of the process: inductor reads the variable when it first writes.
    """
    user = os.environ.get(ENV_INDUCTOR)
    if user and user != os.environ.get("FLUXNB_COMPILE_CACHE_SET") and not _is_torch_default(user):
        return CompileCacheState(path=user, key="user", warm=count_entries(user) > 0, entries=count_entries(user),
                                 managed=False)
    with _lock(root):
        folder = own_folder(compile_root(root), key or cache_key(), "the compile cache folder")
        entries = count_entries(folder)
        os.environ[ENV_INDUCTOR] = str(folder)
        os.environ[ENV_TRITON] = str(folder / "triton")
        os.environ["FLUXNB_COMPILE_CACHE_SET"] = str(folder)  # ours: a later activate may move it
    _enable_local_caches()
    return CompileCacheState(path=str(folder), key=folder.name, warm=entries > 0, entries=entries)


def _is_torch_default(path: str) -> bool:
    """Inductor writes its default folder into TORCHINDUCTOR_CACHE_DIR when it first looks (at import of some
    libraries): that value is torch's choice, not the user's."""
    return os.path.abspath(path) == os.path.abspath(inductor_default_cache_dir())


def _enable_local_caches() -> None:
    """Inductor's on-disk FX graph and autotune caches on (their defaults, stated so a changed default shows)."""
    enable_inductor_local_caches()


def describe(root: str | Path | None = None) -> dict[str, Any]:
    """Every key's folder with its size and entry count, and which one this machine uses (for `fluxnb cache`)."""
    base = compile_root(root)
    mine = cache_key()
    folders = [{"key": folder.name, "path": str(folder), "bytes": folder_bytes(folder),
                "entries": count_entries(folder), "this_machine": folder.name == mine,
                "warm_for": sorted(warm_index(folder))} for folder in real_subfolders(base)]
    here = next((f for f in folders if f["this_machine"]), None)
    return {"root": str(base), "this_machine_key": mine, "warm_here": bool(here and here["entries"]),
            "folders": folders}


def clear(root: str | Path | None = None, key: str | None = None) -> list[str]:
    """Delete one key's folder (or every key's with key=None); returns what was removed.

    Only folders that describe() lists are removed: a key that is not one of them (a path, `..`, a symbolic link
    out of the cache, a typo) is refused (InputError) with the valid keys. Processes that already loaded compiled
    code keep running; the next process compiles again.
    """
    base = compile_root(root)
    if not base.is_dir():
        if key:
            remove_own_folder(base, key, "compile cache key")  # refused: there is nothing to list
        return []
    with _lock(root):
        keys = [key] if key else [folder.name for folder in real_subfolders(base)]
        return [str(remove_own_folder(base, name, "compile cache key")) for name in keys]


# which model entries and sizes have compiled into a folder (inductor's own keys are opaque hashes)
WARM_INDEX = "fluxnb_warm.json"


def record_warm(path: str | Path, model: str, compile_mode: str | None, width: int, height: int) -> None:
    """Note in the folder that `model` compiled at this size (read by the doctor and `fluxnb cache`)."""
    index_path = Path(path) / WARM_INDEX
    with exclusive_lock(str(index_path) + ".lock", "the compile cache's index lock"):
        index = warm_index(path)
        index[warm_label(model, compile_mode, width, height)] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_json(index_path, index)


def warm_label(model: str, compile_mode: str | None, width: int, height: int) -> str:
    return f"{model}{'@' + compile_mode if compile_mode else ''} {width}x{height}"


def warm_index(path: str | Path) -> dict[str, str]:
    """label -> when it compiled into this folder ({} when nothing was recorded or the file is unreadable)."""
    try:
        data = json.loads((Path(path) / WARM_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
