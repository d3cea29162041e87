"""Shared fixtures: the real tiny FLUX (built once per session into a temporary cache) and isolated outputs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

# Quiet, offline, and never touching the user's real caches or outputs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


_FOLDER_MARKERS = {"notebooks": "notebook", "gpu": "gpu", "faults": "faults", "browser": "browser",
                   "installed": "installed"}


def selects_gpu_tests(markexpr: str) -> bool:
    """Whether a -m expression selects the GPU lane (`gpu`, `gpu and not slow`), not only excludes it (`not gpu`)."""
    return re.search(r"(?<!not )\bgpu\b", markexpr) is not None


def pytest_configure(config: pytest.Config) -> None:
    """The CPU lanes run on the CPU on every machine, a user's L4 included: CUDA is hidden from this process and
    every process it starts (papermill kernels, CLI runs, ranks), so that `auto` picks the tiny model and pixels are
    the same everywhere. Only a session that selects the GPU lane (`-m gpu`, scripts/gpu_lane.sh) sees the GPU."""
    if not selects_gpu_tests(config.getoption("markexpr") or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests are organised by kind: a test under tests/notebooks is a `notebook` test, and so on."""
    for item in items:
        folder = Path(item.fspath).parent.name
        if folder in _FOLDER_MARKERS:
            item.add_marker(_FOLDER_MARKERS[folder])


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUXNB_CACHE for the whole session (also inherited by papermill kernels started by the tests)."""
    cache = Path(os.environ.get("FLUXNB_TEST_CACHE") or tmp_path_factory.mktemp("fluxnb-cache"))
    os.environ["FLUXNB_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def outputs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its run folders into its own temporary outputs/ (FLUXNB_OUTPUTS)."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("FLUXNB_OUTPUTS", str(out))
    return out


@pytest.fixture(scope="session")
def config():
    import fluxnb

    return fluxnb.load_config()


@pytest.fixture(scope="session")
def tiny_spec(config):
    return config.get("flux-tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_cache, tiny_spec):
    """The embedded tiny FLUX loaded on the CPU through fluxnb's real loader (shared: do not mutate)."""
    import fluxnb

    return fluxnb.load_model(tiny_spec, device="cpu", progress=False)
