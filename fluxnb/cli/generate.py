"""`fluxnb generate`: the notebooks' generation without Jupyter: one run folder, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import load_config
from ..display import model_banner
from ..errors import FluxnbError, RequestError
from ..generation import generate
from ..loading import load_model
from ..outputs import RunFolder
from ..params import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, make_request, read_prompts_file, request_from_dict
from ..selection import resolve_model


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("generate", help="generate images without Jupyter (same functions as the notebooks)")
    parser.add_argument("--model", default="auto", help="a name from model_config.yaml, or auto (default)")
    parser.add_argument("--prompt", action="append", help="repeat for several prompts")
    parser.add_argument("--prompts", metavar="FILE", help="batch: one prompt per line, or a YAML list (.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="finish a killed/interrupted/failed run with its own "
                        "parameters: keeps every finished image, makes only the missing ones")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    parser.add_argument("--max-sequence-length", type=int)
    parser.add_argument("--init-image", help="image-to-image: the starting picture")
    parser.add_argument("--strength", type=float, help="image-to-image: how much to change it, in (0, 1]")
    parser.add_argument("--cache", help="cached mode for this run: taylorseer@N, first-block@T or off (default: the "
                        "model entry's `cache:`, off unless set)")
    parser.add_argument("--output-dir", help="base folder for run folders (default: outputs/)")
    parser.add_argument("--config", type=Path, help="model config file (default: the project's model_config.yaml)")
    return parser


def new_request(args: argparse.Namespace, spec):
    """The request the command line describes, validated against the model entry before anything loads."""
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += read_prompts_file(args.prompts)
    if not prompts:
        raise RequestError("prompt", "no prompt given", fix="--prompt TEXT (repeatable) or --prompts FILE.")
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
        cache=args.cache,
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.resume:  # the parameters are the run's own, from its manifest
        run_folder = RunFolder.open(args.resume)
        stored_model, stored = run_folder.manifest.get("model"), run_folder.manifest.get("parameters")
        if not stored_model or not stored:
            raise FluxnbError(f"{run_folder.path} holds no generate parameters to resume (not made by fluxnb "
                              "generate)", fix="resume a folder printed by `fluxnb generate`, or start a new run.")
        choice = resolve_model(stored_model["name"], config)
        request = request_from_dict(choice.spec, stored)
        print(f"resuming {run_folder.path}: {len(run_folder.manifest['images'])} image(s) already done", flush=True)
    else:
        choice = resolve_model(args.model, config)
        request = new_request(args, choice.spec)
        run_folder = RunFolder.create("generate", base=args.output_dir)
        run_folder.record(model={"name": choice.spec.name, "id": choice.spec.id, "reason": choice.reason},
                          parameters=request.to_dict())
    print(model_banner(choice), flush=True)
    interactive = sys.stderr.isatty()
    try:
        model = load_model(choice.spec, config=config, progress=interactive)
        print(model.report, flush=True)
        run_folder.record(load_report=model.report.to_dict())
        generate(model, request, run_folder, progress=interactive, model_reason=choice.reason,
                 on_image=lambda image: print(f"{image.path}  ({image.metadata['seconds']:.1f} s, "
                                              f"seed {image.metadata['seed']})", flush=True))
    except BaseException as exc:
        if run_folder.manifest["status"] == "running":  # generate() marks its own failures more precisely
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run_folder.record(status=status, error=f"{type(exc).__name__}: {exc}")
        print(f"run folder: {run_folder.path}", file=sys.stderr)
        raise
    run_folder.finish()
    print(f"run folder: {run_folder.path}")
    return 0
