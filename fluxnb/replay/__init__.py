"""The troubleshooting replay: the guide's six attempts at running FLUX.1-dev on an L4, replayed on this machine.

Each attempt is an entry of fluxnb/replay.yaml: the code the guide's authors ran, what the guide recorded (error,
time, symptom, its explanation), the diagnosis from the knowledge base (a fluxnb/knowledge.yaml id; the research
corrects the guide on attempt 4 and on the AutoImageProcessor trap), and the fix. Each has a live runner that
executes the same calls with the installed versions on the embedded tiny FLUX (hub checkpoints are replaced by tiny
ones made here the same way), and says whether today's behaviour differs from the guide's. Where the machine cannot
run an attempt (no CUDA GPU, optional package missing), the result falls back to the guide's recording and says why
and how to install what is missing. Every result is labelled LIVE ("live here") or RECORDED ("recorded in the
guide").

Modules: record (the data file), context (where live runs happen), attempts (the six runners), play (live or
recorded), render (cards, tables, replay.json), lessons (the AutoImageProcessor trap, the working configuration).

    fluxnb replay --json replay.json          # every attempt, live where possible
"""

from .attempts import (
    FLUX_WIDTH,
    RUNNERS,
    make_bnb_8bit_checkpoint,
    make_torchao_checkpoint,
    measure_torchao_footprint,
    quanto_layer_error,
    run_attempt_1,
    run_attempt_2,
    run_attempt_3,
    run_attempt_4,
    run_attempt_5,
    run_attempt_6,
)
from .context import EXPECTED_ERRORS, LiveOutcome, ReplayContext
from .lessons import autoimageprocessor_trap, working_configuration
from .play import INSTALL_HINT, run_all, run_attempt
from .record import (
    ATTEMPTS,
    LIVE,
    OPTIONAL,
    RECORDED,
    REPLAY_FILE,
    Attempt,
    GuideRecord,
    ReplayRecord,
    get_attempt,
    load_replay,
    parse_replay,
)
from .render import AttemptResult, Table, results_record, summary, timeline

__all__ = [
    "ATTEMPTS", "EXPECTED_ERRORS", "FLUX_WIDTH", "INSTALL_HINT", "LIVE", "OPTIONAL", "RECORDED", "REPLAY_FILE",
    "RUNNERS", "Attempt", "AttemptResult", "GuideRecord", "LiveOutcome", "ReplayContext", "ReplayRecord", "Table",
    "autoimageprocessor_trap", "get_attempt", "load_replay", "make_bnb_8bit_checkpoint", "make_torchao_checkpoint",
    "measure_torchao_footprint", "parse_replay", "quanto_layer_error", "results_record", "run_all", "run_attempt",
    "run_attempt_1", "run_attempt_2", "run_attempt_3", "run_attempt_4", "run_attempt_5", "run_attempt_6", "summary",
    "timeline", "working_configuration",
]
