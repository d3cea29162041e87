"""Where the replay's live runs happen, and what one run yields: the context, the outcome and small helpers."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from ..core.environment import device_info, package_versions
from ..models.tiny import ensure_tiny_checkpoint

# Exceptions the attempts are expected to raise (or that a live run on an unforeseen version may raise):
# recorded as the observed outcome, never swallowed silently.
EXPECTED_ERRORS = (NotImplementedError, ValueError, RuntimeError, TypeError, AssertionError, ImportError, OSError)


class NotLiveHere(Exception):
    """Raised by a runner before doing anything when this machine's versions cannot run it live."""


@dataclass
class LiveOutcome:
    """What one live run observed, and how it compares with the guide's record."""

    outcome: str
    observed: str
    differs: bool
    difference: str
    ran: str  # the code that ran here (tiny checkpoint in place of the hub one)
    details: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)


@dataclass
class ReplayContext:
    """Where the live runs happen: device, a scratch folder, the tiny checkpoint, a small generation request."""

    device: str
    workdir: Path
    checkpoint: Path
    prompt: str = "a red fox in the snow, watercolor"
    size: int = 64
    steps: int = 4
    seed: int = 20251122
    shared: dict[str, Any] = field(default_factory=dict)  # made by one attempt, reused by a later one

    @classmethod
    def create(cls, workdir: str | Path | None = None, device: str | None = None) -> ReplayContext:
        import torch

        path = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fluxnb-replay-"))
        path.mkdir(parents=True, exist_ok=True)
        return cls(device=device or ("cuda" if torch.cuda.is_available() else "cpu"), workdir=path,
                   checkpoint=ensure_tiny_checkpoint())

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def generate(self, pipe):
        """One small image with a fixed seed (the same for every attempt, so images can be compared)."""
        import torch

        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt=self.prompt, num_inference_steps=self.steps, guidance_scale=3.5, width=self.size,
                    height=self.size, max_sequence_length=32,
                    generator=torch.Generator(device="cpu").manual_seed(self.seed)).images[0]


@contextmanager
def quiet() -> Iterator[None]:
    """Keep diffusers/transformers' own warnings and loading bars out of the lesson (the results carry what
    matters); restores their settings afterwards."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    modules = (diffusers_logging, transformers_logging)
    saved = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in modules]
    for m in modules:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*[Dd]eprecat", category=UserWarning)
            yield
    finally:
        for m, (verbosity, bars) in zip(modules, saved, strict=True):
            m.set_verbosity(verbosity)
            (m.enable_progress_bar if bars else m.disable_progress_bar)()


def error_text(exc: BaseException) -> str:
    """`TypeName: message`, as the guide recorded its errors."""
    return f"{type(exc).__name__}: {exc}"


def version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    return package_versions().get(name, "not installed")


def gpu_name() -> str:
    """This machine's GPU and its compute capability, for the results' prose."""
    info = device_info()
    return f"{info['gpu']}, capability {info['compute_capability']}" if info.get("gpu") else "no GPU"


def diffusers_at_least(minimum: str) -> bool:
    return Version(version("diffusers")) >= Version(minimum)


def attempt_call(call: Callable[[], Any]) -> tuple[bool, str]:
    """Run one loading call; (True, "loads") or (False, "fails: <error>")."""
    try:
        call()
    except EXPECTED_ERRORS as exc:
        return False, f"fails: {error_text(exc)[:300]}"
    return True, "loads"
