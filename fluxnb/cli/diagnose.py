"""`fluxnb diagnose [FILE]`: name the known issues in a traceback or log; exit 1 when none matches."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..diagnosis import diagnose, format_diagnoses
from ..errors import RequestError


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("diagnose", help="name the known issues in a traceback or log (stdin or FILE); "
                            "exit 1 when none matches")
    parser.add_argument("file", nargs="?", metavar="FILE", help="file holding the traceback (default: stdin)")
    parser.add_argument("--json", action="store_true", help="print the matches as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.file in (None, "-"):
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise RequestError("FILE", f"cannot read {args.file}: {exc}",
                               fix="give a readable file, or pipe the traceback into `fluxnb diagnose`") from None
    diagnoses = diagnose(text)
    print(json.dumps([d.to_dict() for d in diagnoses], indent=2) if args.json else format_diagnoses(diagnoses))
    return 0 if diagnoses else 1
