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
    from .runner import parse_cli_value, read_parameters_file, run_notebook

    parameters = {}
    for file in args.file or []:
        parameters.update(read_parameters_file(file))
    for name, value in args.param or []:
        parameters[name] = parse_cli_value(value)
    run_dir = run_notebook(args.notebook, parameters, outputs_dir=args.output_dir, kernel_name=args.kernel)
    print(f"run folder: {run_dir}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .generation import generate
    from .loading import load_model
    from .outputs import RunFolder
    from .requests import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, make_request
    from .selection import resolve_model

    config = load_config(args.config)
    choice = resolve_model(args.model, config)
    print(choice, flush=True)
    mode = IMAGE_TO_IMAGE if args.init_image else TEXT_TO_IMAGE
    request = make_request(
        choice.spec,
        prompt=args.prompt,
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
        mode=mode,
    )
    run = RunFolder.create("generate", base=args.output_dir)
    run.record(model={"name": choice.spec.name, "id": choice.spec.id, "reason": choice.reason},
               parameters=request.to_dict())
    try:
        model = load_model(choice.spec, config=config, progress=sys.stderr.isatty())
        print(model.report, flush=True)
        run.record(load_report=model.report.to_dict())
        for image in generate(model, request, run, progress=sys.stderr.isatty(), model_reason=choice.reason):
            print(f"{image.path}  ({image.metadata['seconds']:.1f} s, seed {image.metadata['seed']})", flush=True)
    except BaseException as exc:
        run.record(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    run.finish()
    print(f"run folder: {run.path}")
    return 0


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
    run.set_defaults(func=_cmd_run)

    gen = sub.add_parser("generate", help="generate images without Jupyter (same functions as the notebooks)")
    gen.add_argument("--model", default="auto", help="a name from model_config.yaml, or auto (default)")
    gen.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
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
