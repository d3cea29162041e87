"""`fluxnb doctor`: is this machine (or a version set) ready for a model? Exit 1 when something blocks it."""

from __future__ import annotations

import argparse

from ..doctor.checks import check_environment, report_json
from ..models.config import load_config


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("doctor", help="check this machine (or a version set) for a model; exit 1 when blocked")
    parser.add_argument("--model", default="auto", help="a name from model_config.yaml, or auto (default)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--versions", help="evaluate this version set instead of the machine: pkg=ver,... "
                        "(also driver=550.54.15, torch-cuda=13.0, capability=8.9|none)")
    return parser


def run(args: argparse.Namespace) -> int:
    report = check_environment(args.model, versions=args.versions, config=load_config(args.config))
    print(report_json(report) if args.json else report)
    return 0 if report.ok else 1
