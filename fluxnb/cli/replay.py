"""`fluxnb replay`: the guide's six attempts, live where this machine allows, else from the guide's record."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import RequestError
from ..core.files import atomic_write_json
from ..replay import ReplayContext, results_record, run_all, summary


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("replay", help="replay the guide's six attempts (live where possible) with diagnoses")
    parser.add_argument("--attempts", default="1,2,3,4,5,6", help="comma-separated attempt numbers")
    parser.add_argument("--json", help="write the results here (JSON)")
    parser.add_argument("--workdir", help="scratch folder for the tiny checkpoints made by the attempts")
    parser.add_argument("--recorded", action="store_true", help="show the guide's recordings only (no live runs)")
    return parser


def run(args: argparse.Namespace) -> int:
    numbers = parse_attempts(args.attempts)
    ctx = None if args.recorded else ReplayContext.create(args.workdir)
    results = run_all(ctx, live=not args.recorded, numbers=numbers)
    for result in results:
        print(result, end="\n\n")
    print(summary(results))
    if args.json:
        atomic_write_json(Path(args.json), results_record(results))
    return 0


def parse_attempts(text: str) -> list[int]:
    """`1,3,6` -> [1, 3, 6]; anything else is refused with the allowed numbers."""
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        numbers = []
    if not numbers or not all(1 <= n <= 6 for n in numbers):
        raise RequestError("--attempts", f"{text!r} is not a comma-separated list of attempt numbers",
                           fix="use numbers from 1 to 6, e.g. --attempts 1,3,6")
    return numbers
