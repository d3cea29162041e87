"""fluxnb: FLUX.1-dev on one 22-24 GB GPU, as a tested notebook workflow.

The notebooks call these functions; the tests call the same ones. The package is a house of a few rooms, each
importing only from those below it (README "Architecture", enforced by lint-imports):

    cli                        the `fluxnb` command, one module per subcommand
    ui | doctor | bench | replay   the notebooks' forms and pictures; the doctor; the benchmark; the guide's replay
    runs                       making a batch: generation, the run folder, resume, data parallel, Ray, notebooks
    knowledge                  the known failures of the FLUX stack and their diagnosis
    models                     what is asked and what is loaded: config, requests, loading, backends, LoRA, caches
    core                       errors, files, user files, environment and memory facts, library internals (compat)

The names below are imported on first use (PEP 562), so `import fluxnb.core.units` loads what it needs only.
"""

from __future__ import annotations

import importlib
from typing import Any

from .core.quiet import silence_known_harmless  # noqa: F401 - importing fluxnb filters known-harmless log lines

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ModelConfig": "models.config", "ModelSpec": "models.config", "load_config": "models.config",
    "Diagnosis": "knowledge.diagnosis", "diagnose": "knowledge.diagnosis", "explain_errors": "knowledge.diagnosis",
    "DoctorReport": "doctor.checks", "check_environment": "doctor.checks",
    **dict.fromkeys(["ConfigError", "FluxnbError", "InputError", "LoadError", "ModelUnavailableError",
                     "QuantizationError", "RequestError", "RunFolderBusy"], "core.errors"),
    "GeneratedImage": "runs.generation", "generate": "runs.generation",
    "LoadedModel": "models.loading", "LoadReport": "models.loading", "load_model": "models.loading",
    "RunFolder": "runs.outputs", "read_manifest": "runs.outputs", "read_png_metadata": "runs.outputs",
    "SAMPLE_INIT_IMAGE": "core.packaged",
    **dict.fromkeys(["GenerationRequest", "make_request"], "models.params"),
    **dict.fromkeys(["IMAGE_TO_IMAGE", "TEXT_TO_IMAGE", "INPAINT", "OUTPAINT", "EDIT", "CONTROL"], "models.tasks"),
    "load_image_file": "models.images",
    "SanityReport": "core.sanity", "check_image": "core.sanity",
    "ModelChoice": "models.selection", "resolve_model": "models.selection",
}

__all__ = sorted([*_EXPORTS, "silence_known_harmless"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fluxnb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
