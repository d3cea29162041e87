"""The guide's record of its six attempts (fluxnb/replay.yaml), loaded into dataclasses and checked.

The prose lives in the data file so that it can be read and corrected without touching the runners; this module
checks every field at once and raises one KnowledgeError that lists all the problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import KnowledgeError, UnknownAttemptError

REPLAY_FILE = "replay.yaml"
LIVE = "live here"
RECORDED = "recorded in the guide"
# Optional packages by import name -> the distribution to install.
OPTIONAL = {"torchao": "torchao", "optimum.quanto": "optimum-quanto", "bitsandbytes": "bitsandbytes"}
ATTEMPT_KEYS = {"number", "title", "code", "guide", "diagnosis_id", "correction", "fix", "requires", "needs_cuda",
                "live_texts"}
GUIDE_KEYS = {"result", "error", "time", "explanation"}
TOP_KEYS = {"attempts", "timeline_header", "summary_header", "working_model", "autoimageprocessor_trap"}
TRAP_KEYS = {"guide_says", "error"}


@dataclass(frozen=True)
class GuideRecord:
    """What the guide recorded for one attempt: its result, the error or symptom, the time, its explanation."""

    result: str
    error: str
    time: str | None
    explanation: str


@dataclass(frozen=True)
class Attempt:
    """One of the guide's attempts: the code its authors ran, the guide's record, the diagnosis and the fix."""

    number: int
    title: str
    code: str  # what the guide's authors ran
    guide: GuideRecord
    diagnosis_id: str  # knowledge.yaml entry
    correction: str | None  # where the research corrects the guide
    fix: str
    requires: tuple[str, ...]  # optional packages (import names) the live run needs
    needs_cuda: bool  # live only on a CUDA GPU
    live_texts: dict[str, str]  # prose the live runner uses in its result

    def text(self, key: str) -> str:
        """One of the live runner's texts; a missing one is a data-file error that names the file and the key."""
        if key not in self.live_texts:
            raise KnowledgeError(f"{REPLAY_FILE}: attempt {self.number} has no live_texts.{key}",
                                 fix=f"add live_texts.{key} to attempt {self.number} in fluxnb/{REPLAY_FILE}")
        return self.live_texts[key]


@dataclass(frozen=True)
class ReplayRecord:
    """The whole data file: the attempts in order and the texts of the lessons around them."""

    attempts: tuple[Attempt, ...]
    timeline_header: tuple[str, ...]
    summary_header: tuple[str, ...]
    working_model: str
    trap_guide_says: str
    trap_error: str


def _check_keys(where: str, data: Any, required: set[str], problems: list[str]) -> bool:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return False
    problems += [f"{where}: missing key {k!r}" for k in sorted(required - set(data))]
    problems += [f"{where}: unknown key {k!r} (allowed: {', '.join(sorted(required))})"
                 for k in sorted(set(data) - required)]
    return required <= set(data)


def _check_text(where: str, value: Any, problems: list[str], *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or (not value.strip() and not optional):
        problems.append(f"{where}: expected {'text or null' if optional else 'non-empty text'}, got {value!r}")


def _check_guide(where: str, guide: Any, problems: list[str]) -> None:
    if not _check_keys(where, guide, GUIDE_KEYS, problems):
        return
    _check_text(f"{where}.result", guide["result"], problems)
    _check_text(f"{where}.error", guide["error"], problems)
    _check_text(f"{where}.time", guide["time"], problems, optional=True)
    if not isinstance(guide["explanation"], str):
        problems.append(f"{where}.explanation: expected text (may be empty), got {guide['explanation']!r}")


def _check_attempt(index: int, data: Any, problems: list[str]) -> None:
    where = f"attempts[{index}]"
    if not _check_keys(where, data, ATTEMPT_KEYS, problems):
        return
    if data["number"] != index + 1:
        problems.append(f"{where}.number: expected {index + 1} (attempts in order from 1), got {data['number']!r}")
    for key in ("title", "code", "diagnosis_id", "fix"):
        _check_text(f"{where}.{key}", data[key], problems)
    _check_text(f"{where}.correction", data["correction"], problems, optional=True)
    _check_guide(f"{where}.guide", data["guide"], problems)
    requires = data["requires"]
    if not isinstance(requires, list) or any(r not in OPTIONAL for r in requires):
        problems.append(f"{where}.requires: expected a list of {', '.join(OPTIONAL)}, got {requires!r}")
    if not isinstance(data["needs_cuda"], bool):
        problems.append(f"{where}.needs_cuda: expected true or false, got {data['needs_cuda']!r}")
    texts = data["live_texts"]
    if not isinstance(texts, dict) or not all(isinstance(v, str) and v for v in texts.values()):
        problems.append(f"{where}.live_texts: expected a mapping of names to non-empty texts, got {texts!r}")


def _check_lessons(data: dict[str, Any], problems: list[str]) -> None:
    for key in ("timeline_header", "summary_header"):
        value = data[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            problems.append(f"{key}: expected a list of column titles, got {value!r}")
    _check_text("working_model", data["working_model"], problems)
    trap = data["autoimageprocessor_trap"]
    if _check_keys("autoimageprocessor_trap", trap, TRAP_KEYS, problems):
        for key in sorted(TRAP_KEYS):
            _check_text(f"autoimageprocessor_trap.{key}", trap[key], problems)


def validate(data: Any) -> list[str]:
    """Every problem of the parsed data file (empty when it is valid)."""
    problems: list[str] = []
    if not _check_keys("top level", data, TOP_KEYS, problems):
        return problems
    attempts = data["attempts"]
    if not isinstance(attempts, list) or not attempts:
        problems.append(f"attempts: expected a list of attempts, got {attempts!r}")
    else:
        for index, attempt in enumerate(attempts):
            _check_attempt(index, attempt, problems)
    _check_lessons(data, problems)
    return problems


def _attempt(data: dict[str, Any]) -> Attempt:
    return Attempt(number=data["number"], title=data["title"], code=data["code"], guide=GuideRecord(**data["guide"]),
                   diagnosis_id=data["diagnosis_id"], correction=data["correction"], fix=data["fix"],
                   requires=tuple(data["requires"]), needs_cuda=data["needs_cuda"],
                   live_texts=dict(data["live_texts"]))


def parse_replay(text: str, origin: str = REPLAY_FILE) -> ReplayRecord:
    """The data file's text, checked and turned into a ReplayRecord; KnowledgeError lists every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{origin} is not valid YAML: {exc}", fix=f"correct the YAML syntax of {origin}") from exc
    problems = validate(data)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise KnowledgeError(f"{origin} is not a valid replay record ({len(problems)} problem(s)):\n{lines}",
                             fix=f"correct the listed fields of {origin}")
    trap = data["autoimageprocessor_trap"]
    return ReplayRecord(attempts=tuple(_attempt(a) for a in data["attempts"]),
                        timeline_header=tuple(data["timeline_header"]), summary_header=tuple(data["summary_header"]),
                        working_model=data["working_model"], trap_guide_says=trap["guide_says"],
                        trap_error=trap["error"])


@lru_cache(maxsize=4)
def load_replay(path: str | Path | None = None) -> ReplayRecord:
    """The package's replay.yaml (or another file), parsed and validated."""
    if path is None:
        return parse_replay(resources.files("fluxnb").joinpath(REPLAY_FILE).read_text(encoding="utf-8"))
    return parse_replay(Path(path).read_text(encoding="utf-8"), str(path))


ATTEMPTS: tuple[Attempt, ...] = load_replay().attempts


def get_attempt(number: int) -> Attempt:
    """The attempt with this number (1-6)."""
    for attempt in ATTEMPTS:
        if attempt.number == number:
            return attempt
    raise UnknownAttemptError(f"no attempt {number}; the guide has attempts 1-{len(ATTEMPTS)}",
                              fix=f"use a number from 1 to {len(ATTEMPTS)}")
