"""The `fluxnb` command: run notebooks headlessly, or generate without Jupyter.

Errors fluxnb raises on purpose are printed as one clear message (exit 2 for bad input, 1 when a run
failed); anything else keeps its traceback, because that is a bug to report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import FluxnbError, RequestError


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import parse_cli_value, read_parameters_file, resume_notebook, run_notebook

    parameters = {}
    for file in args.file or []:
        parameters.update(read_parameters_file(file))
    for name, value in args.param or []:
        parameters[name] = parse_cli_value(value)
    if args.resume:
        run_dir = resume_notebook(args.notebook, args.resume, parameters, kernel_name=args.kernel)
    else:
        _announce_model(args.notebook, parameters)
        run_dir = run_notebook(args.notebook, parameters, outputs_dir=args.output_dir, kernel_name=args.kernel)
    print(f"run folder: {run_dir}")
    return 0


def _announce_model(notebook: str, parameters: dict) -> None:
    """First lines of a headless run: which model the notebook will run and why (plainly, for the tiny model)."""
    import ast

    from .display import model_banner
    from .runner import find_notebook, notebook_parameters
    from .selection import resolve_model

    declared = notebook_parameters(find_notebook(notebook))
    if "model" not in declared:
        return
    model = parameters.get("model", ast.literal_eval(declared["model"]["default"]))
    print(model_banner(resolve_model(model)), flush=True)


def _new_request(args: argparse.Namespace, spec):
    from .requests import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, make_request, read_prompts_file

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += read_prompts_file(args.prompts)
    if not prompts:
        raise RequestError("prompt", "no prompt given. Fix: --prompt TEXT (repeatable) or --prompts FILE.")
    return make_request(
        spec,
        prompt=prompts,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        width=args.width,
        height=args.height,
        num_images=args.num_images,
        max_sequence_length=args.max_sequence_length,
        init_image=args.init_image,
        strength=args.strength,
        mode=IMAGE_TO_IMAGE if args.init_image else TEXT_TO_IMAGE,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .display import model_banner
    from .generation import generate
    from .loading import load_model
    from .outputs import RunFolder
    from .requests import request_from_dict
    from .selection import resolve_model

    config = load_config(args.config)
    if args.resume:  # the parameters are the run's own, from its manifest
        run = RunFolder.open(args.resume)
        stored_model, stored = run.manifest.get("model"), run.manifest.get("parameters")
        if not stored_model or not stored:
            raise FluxnbError(f"{run.path} holds no generate parameters to resume (not made by fluxnb generate)")
        choice = resolve_model(stored_model["name"], config)
        request = request_from_dict(choice.spec, stored)
        print(f"resuming {run.path}: {len(run.manifest['images'])} image(s) already done", flush=True)
    else:
        choice = resolve_model(args.model, config)
        request = _new_request(args, choice.spec)
        run = RunFolder.create("generate", base=args.output_dir)
        run.record(model={"name": choice.spec.name, "id": choice.spec.id, "reason": choice.reason},
                   parameters=request.to_dict())
    print(model_banner(choice), flush=True)
    interactive = sys.stderr.isatty()
    try:
        model = load_model(choice.spec, config=config, progress=interactive)
        print(model.report, flush=True)
        run.record(load_report=model.report.to_dict())
        generate(model, request, run, progress=interactive, model_reason=choice.reason,
                 on_image=lambda image: print(f"{image.path}  ({image.metadata['seconds']:.1f} s, "
                                              f"seed {image.metadata['seed']})", flush=True))
    except BaseException as exc:
        if run.manifest["status"] == "running":  # generate() marks its own failures more precisely
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.record(status=status, error=f"{type(exc).__name__}: {exc}")
        print(f"run folder: {run.path}", file=sys.stderr)
        raise
    run.finish()
    print(f"run folder: {run.path}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .config import load_config
    from .doctor import check_environment, report_json

    report = check_environment(args.model, versions=args.versions, config=load_config(args.config))
    print(report_json(report) if args.json else report)
    return 0 if report.ok else 1


def _cmd_diagnose(args: argparse.Namespace) -> int:
    import json

    from .diagnosis import diagnose, format_diagnoses

    if args.file in (None, "-"):
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise RequestError("FILE", f"cannot read {args.file}: {exc}. Fix: give a readable file, or pipe the "
                               "traceback into `fluxnb diagnose`") from None
    diagnoses = diagnose(text)
    print(json.dumps([d.to_dict() for d in diagnoses], indent=2) if args.json else format_diagnoses(diagnoses))
    return 0 if diagnoses else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxnb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute a notebook headlessly (papermill) into a new run folder")
    run.add_argument("notebook", help="path, or a name in notebooks/ such as 01_text_to_image")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="set a parameter (VALUE read as YAML: 28, 3.5, null, [a, b], text)")
    run.add_argument("-f", "--file", action="append", help="YAML file of parameters (applied before -p)")
    run.add_argument("--output-dir", help="base folder for run folders (default: outputs/)")
    run.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's, i.e. this Python)")
    run.add_argument("--resume", metavar="RUN_DIR", help="re-execute into this run folder with its parameters "
                     "(plus any -p/-f), making only the images it does not hold yet")
    run.set_defaults(func=_cmd_run)

    gen = sub.add_parser("generate", help="generate images without Jupyter (same functions as the notebooks)")
    gen.add_argument("--model", default="auto", help="a name from model_config.yaml, or auto (default)")
    gen.add_argument("--prompt", action="append", help="repeat for several prompts")
    gen.add_argument("--prompts", metavar="FILE", help="batch: one prompt per line, or a YAML list (.yaml)")
    gen.add_argument("--resume", metavar="RUN_DIR", help="finish a killed/interrupted/failed run with its own "
                     "parameters: keeps every finished image, makes only the missing ones")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance-scale", type=float)
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    gen.add_argument("--max-sequence-length", type=int)
    gen.add_argument("--init-image", help="image-to-image: the starting picture")
    gen.add_argument("--strength", type=float, help="image-to-image: how much to change it, in (0, 1]")
    gen.add_argument("--output-dir", help="base folder for run folders (default: outputs/)")
    gen.add_argument("--config", type=Path, help="model config file (default: the project's model_config.yaml)")
    gen.set_defaults(func=_cmd_generate)

    doc = sub.add_parser("doctor", help="check this machine (or a version set) for a model; exit 1 when blocked")
    doc.add_argument("--model", default="auto", help="a name from model_config.yaml, or auto (default)")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--versions", help="evaluate this version set instead of the machine: pkg=ver,... "
                     "(also driver=550.54.15, torch-cuda=13.0, capability=8.9|none)")
    doc.add_argument("--config", type=Path, help="model config file (default: the project's model_config.yaml)")
    doc.set_defaults(func=_cmd_doctor)

    dia = sub.add_parser("diagnose", help="name the known issues in a traceback or log (stdin or FILE); "
                         "exit 1 when none matches")
    dia.add_argument("file", nargs="?", metavar="FILE", help="file holding the traceback (default: stdin)")
    dia.add_argument("--json", action="store_true", help="print the matches as JSON")
    dia.set_defaults(func=_cmd_diagnose)

    from .bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RequestError as exc:
        print(f"fluxnb: error: {exc}", file=sys.stderr)
        return 2
    except FluxnbError as exc:
        print(f"fluxnb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fluxnb: interrupted; finished images and the manifest are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
