"""`fluxnb run NOTEBOOK`: execute a notebook headlessly (papermill) into a new run folder, or resume one."""

from __future__ import annotations

import argparse
import ast
import os
import sys

from ..models.selection import resolve_model
from ..runs.runner import (
    find_notebook,
    notebook_parameters,
    parse_cli_value,
    parse_yaml_value,
    read_parameters_file,
    resume_notebook,
    run_notebook,
)
from ..ui.display import model_banner


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("run", help="execute a notebook headlessly (papermill) into a new run folder")
    parser.add_argument("notebook", help="path, or a name in notebooks/ such as 01_text_to_image")
    parser.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="set a parameter: VALUE as typed (a prompt keeps its # and &), except numbers, "
                        "True/False and None")
    parser.add_argument("-y", "--yaml", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="set a parameter to VALUE read as YAML: lists and mappings, e.g. -y sweep "
                        "'{guidance_scale: [2, 3.5, 5]}'")
    parser.add_argument("-f", "--file", action="append", help="YAML file of parameters (applied before -p)")
    parser.add_argument("--output-dir", help="base folder for run folders (default: ./outputs)")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's, i.e. this Python)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="re-execute into this run folder with its parameters "
                        "(plus any -p/-f), making only the images it does not hold yet")
    parser.add_argument("--gpus", metavar="N|all", help="the same as `-p gpus N`: notebooks that declare `gpus` "
                        "(05_multi_gpu) make their batch with the data-parallel engine (fluxnb generate --gpus)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="print the notebook's lines (one per image) as they come; default: on in a terminal, "
                        "off when output is redirected or CI is set (--no-progress: quiet)")
    return parser


def wants_progress(args: argparse.Namespace) -> bool:
    """--progress / --no-progress, else on for a person at a terminal and off in CI and logs."""
    if args.progress is not None:
        return args.progress
    return sys.stdout.isatty() and not os.environ.get("CI")


def run(args: argparse.Namespace) -> int:
    parameters = {}
    for file in args.file or []:
        parameters.update(read_parameters_file(file))
    for name, value in args.param or []:
        parameters[name] = parse_cli_value(value)
    for name, value in args.yaml or []:
        parameters[name] = parse_yaml_value(value)
    if args.gpus is not None:
        parameters["gpus"] = parse_cli_value(args.gpus)
    stream = sys.stdout if wants_progress(args) else None
    if args.resume:
        run_dir = resume_notebook(args.notebook, args.resume, parameters, kernel_name=args.kernel, stream=stream)
    else:
        announce_model(args.notebook, parameters)
        run_dir = run_notebook(args.notebook, parameters, outputs_dir=args.output_dir, kernel_name=args.kernel,
                               stream=stream)
    print(f"run folder: {run_dir}")
    return 0


def announce_model(notebook: str, parameters: dict) -> None:
    """First lines of a headless run: which model the notebook will run and why (plainly, for the tiny model)."""
    declared = notebook_parameters(find_notebook(notebook))
    if "model" not in declared:
        return
    model = parameters.get("model", ast.literal_eval(declared["model"]["default"]))
    print(model_banner(resolve_model(model)), flush=True)
