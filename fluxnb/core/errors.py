"""The project's own exceptions: each names what was wrong, what is allowed and how to fix it.

Every error fluxnb raises on purpose is a `FluxnbError(message, fix=..., ref=...)`: the CLI, the notebooks and the
widget form all show it with `render_error` as one block (the message, the fix, the knowledge-base entry to read),
without the library's stack. In a notebook, IPython calls `_render_traceback_` and shows that block instead of the
traceback; papermill still records the exception's name and message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FluxnbError(Exception):
    """Base class: every error fluxnb raises on purpose.

    Args:
        message: what went wrong, naming the parameter or file.
        fix: what to do about it (shown on its own line); None where the message already says it.
        ref: the id of an entry of fluxnb/knowledge.yaml that explains the cause (`fluxnb diagnose` shows it).
    """

    def __init__(self, message: str, *, fix: str | None = None, ref: str | None = None):
        self.message = message
        self.fix = fix
        self.ref = ref
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.fix:
            text += f"\nFix: {self.fix}"
        if self.ref:
            text += f"\n(knowledge base: {self.ref}; `fluxnb diagnose` explains it)"
        return text

    def _render_traceback_(self) -> list[str]:
        """IPython's hook: a notebook cell that raises this shows the block, not 30 lines of library stack."""
        return render_error(self).splitlines()


def render_error(exc: FluxnbError) -> str:
    """The one way a project error is shown: `error: message`, then the fix and the knowledge-base reference, then
    any notes attached on the way up (fluxnb.knowledge.diagnosis.explain_errors adds the matching known issues as
    one)."""
    return "\n".join([f"error: {exc}", *getattr(exc, "__notes__", ())])


class InputError(FluxnbError):
    """The user's input (a file, a folder, an option value) cannot be used as given: the CLI exits 2."""


class ConfigError(InputError):
    """model_config.yaml (or another config file) is unreadable or invalid; lists every problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path} is not a valid fluxnb model config ({len(problems)} problem(s)):\n{lines}")


class KnowledgeError(FluxnbError):
    """knowledge.yaml (or replay.yaml) is malformed; lists every problem."""


class RequestError(InputError, ValueError):
    """A generation parameter is out of range for the chosen model; raised before any model loads."""

    def __init__(self, parameter: str, message: str, *, fix: str | None = None):
        self.parameter = parameter
        self.problems: list[RequestError] = [self]  # every bad value of the request (see `several`)
        super().__init__(f"parameter `{parameter}`: {message}", fix=fix)

    @classmethod
    def several(cls, problems: list[RequestError]) -> RequestError:
        """Every bad value of one request in one error (one line each, as config validation lists its problems),
        so that a person fixes them all in one go instead of meeting them one run at a time."""
        if len(problems) == 1:
            return problems[0]
        lines = "\n".join("  - " + str(p).replace("\n", "\n    ") for p in problems)
        error = cls(problems[0].parameter, "")
        error.problems = list(problems)
        FluxnbError.__init__(error, f"{len(problems)} parameters are not valid:\n{lines}")
        return error

    @property
    def parameters(self) -> list[str]:
        return [p.parameter for p in self.problems]

class RunFolderBusy(InputError):
    """Another process (named by pid and host) is writing this run folder: a run folder has one writer at a time."""

class ModelUnavailableError(FluxnbError):
    """The chosen model cannot run on this machine (no GPU, no hub access, no token...)."""


class LoadError(FluxnbError):
    """Loading a pipeline failed, or its result is not what the model entry promises."""


class QuantizationError(LoadError):
    """A component that must be quantized was loaded in full precision (quantization silently not applied)."""


class OutputWriteError(FluxnbError):
    """A file of the run could not be written (disk full, read-only folder...); finished files are kept."""

    def __init__(self, path: Path, exc: OSError):
        self.path = path
        reason = exc.strerror or str(exc)
        super().__init__(
            f"cannot write {path}: {reason} (errno {exc.errno}). Finished images and the manifest written "
            "before it are kept.",
            fix="free disk space or choose a writable output folder (--output-dir or FLUXNB_OUTPUTS), then resume "
            "the run.",
        )


class GenerationFailed(FluxnbError):
    """Some images of a batch failed (recorded in the manifest); the others were generated and kept."""

    def __init__(self, failures: list[dict[str, Any]], results: list[Any], total: int):
        self.failures = failures
        self.results = results
        first = failures[0]
        super().__init__(
            f"{len(failures)} of {total} image(s) failed; {len(results)} generated and kept. "
            f"First failure (image {first['index']}, seed {first['seed']}): {first['error']}"
            + (f"\n{first['advice']}" if first.get("advice") else ""),
            fix="rerun with resume to retry only the missing images (fluxnb generate --resume RUN_DIR, "
            "fluxnb run NOTEBOOK --resume RUN_DIR).",
        )


class ModelUnusable(FluxnbError):
    """The model keeps failing (or failed in a way that leaves it unusable): the batch stopped cleanly."""


class NotebookFailed(FluxnbError):
    """The notebook raised; carries the notebook's own exception name and message."""

    def __init__(self, notebook: Path, executed: Path, ename: str, evalue: str, cell: int | None):
        self.executed = executed
        self.ename = ename
        self.evalue = evalue
        where = f" in cell {cell}" if cell is not None else ""
        super().__init__(f"{notebook.name} failed{where}: {ename}: {evalue}\n(executed notebook kept at {executed})")


class UnknownAttemptError(FluxnbError, KeyError):
    """The troubleshooting replay has no attempt with that number (a KeyError too, for lookups)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return FluxnbError.__str__(self)
