"""Error diagnosis: which known issues (knowledge.yaml) an exception, traceback or log text shows.

`diagnose(exc_or_text)` returns the matching entries with their cause and fix, best first; `fluxnb diagnose`
does the same for a traceback on stdin or in a file. In notebooks, `with fluxnb.explain_errors(): ...`
attaches the diagnosis to the real exception as a note (printed under its traceback) and re-raises it, so
the cell still fails and a headless run still exits non-zero.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..core.environment import installed_versions
from .base import Entry, KnowledgeBase, alternative_matches, load_knowledge


@dataclass(frozen=True)
class Diagnosis:
    entry: Entry
    matched: tuple[str, ...]  # the symptom texts found
    versions_note: str | None = None  # set when the installed versions also fall in the entry's rules

    @property
    def cause(self) -> str:
        return self.entry.cause

    @property
    def fix(self) -> str:
        return self.entry.fix

    def to_dict(self) -> dict:
        return {"id": self.entry.id, "title": self.entry.title, "matched": list(self.matched),
                "versions_note": self.versions_note, "cause": self.cause, "fix": self.fix,
                "source": self.entry.source}

    def __str__(self) -> str:
        lines = [f"[{self.entry.id}] {self.entry.title}",
                 f"  matched: {'; '.join(repr(m) for m in self.matched)}"]
        if self.versions_note:
            lines.append(f"  your versions: {self.versions_note}")
        lines += [f"  cause: {self.cause}", f"  fix: {self.fix}", f"  source: {self.entry.source}"]
        return "\n".join(lines)


def error_text(error: BaseException | str) -> str:
    """The full text to search: a string as is; an exception with its traceback, chained causes and notes."""
    if isinstance(error, BaseException):
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return str(error)


def diagnose(
    error: BaseException | str,
    *,
    versions: dict[str, str] | None = None,
    kb: KnowledgeBase | None = None,
) -> list[Diagnosis]:
    """Known issues whose symptom texts occur in `error`: errors before `info` entries, most matched symptoms first.

    When `versions` is given (default: the installed ones), each match says whether those versions fall in the
    entry's affected range.

    Args:
        error: an exception or the text of a traceback / log (only its tail is searched when it is large).
        kb: the knowledge base (default: fluxnb/knowledge.yaml).
        versions: the package versions to judge the entries' affected ranges against (default: the installed ones).

    Returns:
        list[Diagnosis]: the matching entries (cause, fix, source, whether these versions are affected); empty when
        nothing is known about this error.
    """
    kb = kb or load_knowledge()
    if versions is None:
        versions = installed_versions()
    text = error_text(error)
    found = []
    for index, entry in enumerate(kb.entries):
        matched = entry.matches_text(text)
        if not matched:
            continue
        note = next((n for alt in entry.when if (n := alternative_matches(alt, versions, None)) is not None), None)
        found.append((entry.severity == "info", -len(matched), index,
                      Diagnosis(entry, tuple(dict.fromkeys(matched)), note)))
    return [t[-1] for t in sorted(found, key=lambda t: t[:3])]


def format_diagnoses(diagnoses: list[Diagnosis]) -> str:
    if not diagnoses:
        return ("fluxnb diagnosis: no known issue matches this error. Run `fluxnb doctor` to check the environment; "
                "if the error persists, it is new: report it with its full traceback.")
    head = f"fluxnb diagnosis: {len(diagnoses)} known issue(s) match this error"
    return "\n".join([head, *(str(d) for d in diagnoses)])


@contextmanager
def explain_errors() -> Iterator[None]:
    """Re-raise any exception from the block with the matching known issues attached as a note.

    The note prints under the real traceback (Python and IPython show exception notes there); nothing is
    swallowed: the cell fails, papermill fails, the CLI exits non-zero.

    Raises:
        Whatever the block raised, unchanged (the cell still fails); the diagnosis is printed under it first.
    """
    try:
        yield
    except Exception as exc:
        diagnoses = diagnose(exc)
        if diagnoses:
            text = format_diagnoses(diagnoses)
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(text)
            else:  # pragma: no cover - Python 3.10
                print(text, file=sys.stderr)
        raise
