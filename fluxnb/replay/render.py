"""How the replay's results are shown and kept: one card per attempt, small tables, the replay.json record."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..core.environment import device_info, package_versions
from ..knowledge.base import load_knowledge
from .record import ATTEMPTS, LIVE, load_replay


@dataclass
class AttemptResult:
    """One replayed attempt: live or recorded, what was observed, the diagnosis and the fix (a card in Jupyter)."""

    attempt: int
    title: str
    mode: str  # LIVE or RECORDED
    outcome: str
    observed: str
    differs_from_guide: bool
    difference: str
    diagnosis_id: str
    # fluxnb.knowledge.diagnosis.diagnose() on the observed (or recorded) text found diagnosis_id
    diagnosis_confirmed: bool
    diagnosis_ids: list[str]
    guide_error_matches: bool  # the same, on the guide's recorded error (what a live run that did not fail lacks)
    cause: str
    fix: str
    seconds: float
    device: str
    ran: str | None = None
    note: str | None = None  # why recorded, and how to make it live
    details: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list, repr=False)

    @property
    def _diagnosis_status(self) -> str:
        """How the diagnosis stands: matched on what was observed, or why not (a live run that did not fail has
        no error to match: the guide's recorded error is then diagnosed, and said to be)."""
        if self.diagnosis_confirmed:
            return "confirmed by fluxnb.knowledge.diagnosis"
        if self.mode == LIVE and not self.outcome.startswith("failed"):
            return ("the error did not occur here; the guide's recorded error "
                    + ("is matched by fluxnb.knowledge.diagnosis" if self.guide_error_matches
                       else "is not matched either"))
        return "not matched by the text"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("images")
        data["images"] = len(self.images)
        return data

    def __str__(self) -> str:
        lines = [
            f"attempt {self.attempt}: {self.title}  [{self._where()}]",
            f"  outcome: {self.outcome}",
            f"  observed: {self.observed}",
            f"  differs from the guide: {'yes: ' + self.difference if self.differs_from_guide else 'no'}",
            f"  diagnosis: {self.diagnosis_id} ({self._diagnosis_status})",
            f"  cause: {self.cause}",
            f"  fix: {self.fix}",
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        colour = "#1a7f37" if self.mode == LIVE else "#6e7781"
        rows = [
            ("outcome", e(self.outcome)),
            ("observed", f"<code>{e(self.observed)}</code>"),
            ("differs from the guide", e("yes: " + self.difference if self.differs_from_guide else "no")),
            ("diagnosis", f"<code>{e(self.diagnosis_id)}</code> ({e(self._diagnosis_status)})"),
            ("cause", e(self.cause)),
            ("fix", e(self.fix)),
        ]
        if self.note:
            rows.append(("note", e(self.note)))
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in rows)
        return (f"<p><b>Attempt {self.attempt}: {e(self.title)}</b> "
                f"<span style='color:white;background:{colour};padding:1px 6px'>{e(self.mode)}</span> "
                f"({e(self._where(with_mode=False))})</p><table>{body}</table>")

    def _where(self, with_mode: bool = True) -> str:
        """Where and how long it ran; a recording ran nowhere here, so it gets no device or seconds."""
        if self.mode != LIVE:
            return f"{self.mode}, not run here" if with_mode else "not run here"
        return (f"{self.mode}, " if with_mode else "") + f"{self.device}, {self.seconds:.2f} s"


class Table:
    """A small table that renders as HTML in Jupyter and as Markdown elsewhere."""

    def __init__(self, header: list[str], rows: list[list[str]]):
        self.header, self.rows = header, rows

    def __str__(self) -> str:
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row)
                       + "</tr>" for row in self.rows)
        return f"<table><tr>{head}</tr>{body}</table>"


def timeline() -> Table:
    """The guide's six attempts as it recorded them, in order."""
    rows = [[str(a.number), a.title, a.guide.result, a.guide.error + (f" ({a.guide.time})" if a.guide.time else ""),
             a.guide.explanation or "-"] for a in ATTEMPTS]
    return Table(list(load_replay().timeline_header), rows)


def summary(results: list[AttemptResult]) -> Table:
    """Attempt, live/recorded, outcome, cause, fix: the lesson in one table."""
    kb = load_knowledge()
    rows = [[str(r.attempt), r.title, r.mode, r.outcome, f"{r.diagnosis_id}: {kb.get(r.diagnosis_id).title}", r.fix]
            for r in results]
    return Table(list(load_replay().summary_header), rows)


def results_record(results: list[AttemptResult]) -> dict[str, Any]:
    """What replay.json holds: the machine, the versions and every attempt's result."""
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_info(),
            "versions": package_versions(), "attempts": [r.to_dict() for r in results]}
