"""Replaying an attempt: live on this machine when it can, else the guide's recording (and why not live)."""

from __future__ import annotations

import importlib.util
import time

from ..core.environment import device_info
from ..knowledge.base import load_knowledge
from ..knowledge.diagnosis import diagnose
from .attempts import RUNNERS
from .context import LiveOutcome, NotLiveHere, ReplayContext, quiet
from .record import ATTEMPTS, LIVE, OPTIONAL, RECORDED, Attempt, get_attempt
from .render import AttemptResult

INSTALL_HINT = 'pip install -e ".[replay]"  (torchao and optimum-quanto, pinned in pyproject.toml)'


def _diagnose(text: str, expected: str) -> tuple[bool, list[str]]:
    ids = [d.entry.id for d in diagnose(text)]
    return expected in ids, ids


def _why_not_live(attempt: Attempt, ctx: ReplayContext | None, live: bool) -> str | None:
    if not live:
        return "live runs turned off (live=False)"
    missing = [OPTIONAL[name] for name in attempt.requires if importlib.util.find_spec(name.split(".")[0]) is None
               or importlib.util.find_spec(name) is None]
    if missing:
        return (f"{', '.join(missing)} is not installed (an optional extra). To run this attempt live: "
                f"{INSTALL_HINT}")
    device = ctx.device if ctx is not None else device_info()["device"]
    if attempt.needs_cuda and device != "cuda":
        return "needs a CUDA GPU (this machine has none); the guide's recording is shown"
    return None


def _recorded(attempt: Attempt, cause: str, seconds: float, device: str, note: str | None) -> AttemptResult:
    """The guide's recording, diagnosed from its own words."""
    g = attempt.guide
    observed = g.error + (f" ({g.time})" if g.time else "")
    confirmed, ids = _diagnose(g.error, attempt.diagnosis_id)
    return AttemptResult(attempt.number, attempt.title, RECORDED, g.result, observed, False, "",
                         attempt.diagnosis_id, confirmed, ids, confirmed, cause, attempt.fix, round(seconds, 3),
                         device, note=note)


def _live(attempt: Attempt, outcome: LiveOutcome, cause: str, seconds: float, device: str) -> AttemptResult:
    """A live run's outcome, diagnosed from what was observed here only (a run that did not fail confirms nothing;
    the guide's recorded error is diagnosed beside it, and shown as such)."""
    confirmed, ids = _diagnose(outcome.observed, attempt.diagnosis_id)
    guide_matches, _ = _diagnose(attempt.guide.error, attempt.diagnosis_id)
    return AttemptResult(attempt.number, attempt.title, LIVE, outcome.outcome, outcome.observed, outcome.differs,
                         outcome.difference, attempt.diagnosis_id, confirmed, ids, guide_matches, cause, attempt.fix,
                         round(seconds, 3), device, ran=outcome.ran, details=outcome.details, images=outcome.images)


def run_attempt(number: int, ctx: ReplayContext | None = None, *, live: bool = True) -> AttemptResult:
    """Replay one attempt: live on this machine when it can, else the guide's recording (and why)."""
    attempt = get_attempt(number)
    entry = load_knowledge().get(attempt.diagnosis_id)  # KeyError names the known ids if the data file lacks it
    start = time.perf_counter()
    note = _why_not_live(attempt, ctx, live)
    outcome = None
    if note is None:
        if ctx is None:
            ctx = ReplayContext.create()
        try:
            with quiet():
                outcome = RUNNERS[number](ctx)
        except NotLiveHere as exc:
            note = f"{exc}; the guide's recording is shown"
    seconds = time.perf_counter() - start
    device = ctx.device if ctx is not None else device_info()["device"]
    if outcome is None:
        return _recorded(attempt, entry.cause, seconds, device, note)
    return _live(attempt, outcome, entry.cause, seconds, device)


def run_all(ctx: ReplayContext | None = None, *, live: bool = True,
            numbers: list[int] | None = None) -> list[AttemptResult]:
    """Replay several attempts (all six by default) in one context."""
    ctx = ctx if ctx is not None or not live else ReplayContext.create()
    return [run_attempt(n, ctx, live=live) for n in (numbers or [a.number for a in ATTEMPTS])]
