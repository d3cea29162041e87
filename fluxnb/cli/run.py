"""`fluxnb run NOTEBOOK`: execute a notebook headlessly (papermill) into a new run folder, or resume one."""

from __future__ import annotations

import argparse
import ast

from ..display import model_banner
from ..runner import (
    find_notebook,
    notebook_parameters,
    parse_cli_value,
    read_parameters_file,
    resume_notebook,
    run_notebook,
)
from ..selection import resolve_model


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("run", help="execute a notebook headlessly (papermill) into a new run folder")
    parser.add_argument("notebook", help="path, or a name in notebooks/ such as 01_text_to_image")
    parser.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="set a parameter (VALUE read as YAML: 28, 3.5, null, [a, b], text)")
    parser.add_argument("-f", "--file", action="append", help="YAML file of parameters (applied before -p)")
    parser.add_argument("--output-dir", help="base folder for run folders (default: outputs/)")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's, i.e. this Python)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="re-execute into this run folder with its parameters "
                        "(plus any -p/-f), making only the images it does not hold yet")
    parser.add_argument("--gpus", metavar="N|all", help="the same as `-p gpus N`: notebooks that declare `gpus` "
                        "(05_multi_gpu) make their batch with the data-parallel engine (fluxnb generate --gpus)")
    return parser


def run(args: argparse.Namespace) -> int:
    parameters = {}
    for file in args.file or []:
        parameters.update(read_parameters_file(file))
    for name, value in args.param or []:
        parameters[name] = parse_cli_value(value)
    if args.gpus is not None:
        parameters["gpus"] = parse_cli_value(args.gpus)
    if args.resume:
        run_dir = resume_notebook(args.notebook, args.resume, parameters, kernel_name=args.kernel)
    else:
        announce_model(args.notebook, parameters)
        run_dir = run_notebook(args.notebook, parameters, outputs_dir=args.output_dir, kernel_name=args.kernel)
    print(f"run folder: {run_dir}")
    return 0


def announce_model(notebook: str, parameters: dict) -> None:
    """First lines of a headless run: which model the notebook will run and why (plainly, for the tiny model)."""
    declared = notebook_parameters(find_notebook(notebook))
    if "model" not in declared:
        return
    model = parameters.get("model", ast.literal_eval(declared["model"]["default"]))
    print(model_banner(resolve_model(model)), flush=True)
