"""The project's own exceptions: each names what was wrong, what is allowed and how to fix it.

Notebooks and the CLI let these propagate: a cell fails, `fluxnb` exits non-zero, and the message is
written so that it is the only thing a user needs to read.
"""

from __future__ import annotations


class FluxnbError(Exception):
    """Base class: every error fluxnb raises on purpose."""


class ConfigError(FluxnbError):
    """model_config.yaml (or another config file) is unreadable or invalid; lists every problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path} is not a valid fluxnb model config ({len(problems)} problem(s)):\n{lines}")


class RequestError(FluxnbError, ValueError):
    """A generation parameter is out of range for the chosen model; raised before any model loads."""

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        super().__init__(f"parameter `{parameter}`: {message}")


class ModelUnavailableError(FluxnbError):
    """The chosen model cannot run on this machine (no GPU, no hub access, no token...)."""


class LoadError(FluxnbError):
    """Loading a pipeline failed, or its result is not what the model entry promises."""


class QuantizationError(LoadError):
    """A component that must be quantized was loaded in full precision (quantization silently not applied)."""
