"""`fluxnb generate`: the notebooks' generation without Jupyter: one run folder, resumable."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..core.errors import InputError, RequestError
from ..models.backends import get_backend
from ..models.config import load_config
from ..models.loading import check_checkpoint, embedded_checkpoint, load_model
from ..models.params import (
    IMAGE_TO_IMAGE,
    TEXT_TO_IMAGE,
    make_request,
    read_prompts_file,
    refuse_changed_inputs,
    request_from_dict,
)
from ..models.selection import resolve_model
from ..models.sweeps import parse_cli
from ..models.tasks import CONTROL_TYPES, EDITING_MODES, task_for
from ..runs.contextparallel import MODES as CONTEXT_MODES
from ..runs.contextparallel import check_context_parallel
from ..runs.dataparallel import DATA, plan_processes, run_data_parallel
from ..runs.generation import generate
from ..runs.outputs import RunFolder, check_run_folder, read_manifest
from ..runs.raybatch import check_keep_warm, run_on_ray
from ..runs.shards import merge_parts
from ..ui.display import model_banner
from ..ui.sweep_grid import save_sweep_grid


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("generate", help="generate images without Jupyter (same functions as the notebooks)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="finish a killed/interrupted/failed run with its own "
                        "request: keeps every finished image, makes only the missing ones (the request options "
                        "below are refused with it)")
    # Everything that describes the images (what, where, from which weights) is a request option: one rule, a
    # --resume takes the run's own request, so any of them given with --resume is refused (check_resumable).
    request = parser.add_argument_group("the request (refused with --resume, which takes the run's own)")
    options = [
        request.add_argument("--model", default="auto", help="a name from model_config.yaml, or auto (default)"),
        request.add_argument("--prompt", action="append", help="repeat for several prompts"),
        request.add_argument("--prompts", metavar="FILE", help="batch: one prompt per line, or a YAML list (.yaml)"),
        request.add_argument("--negative-prompt"),
        request.add_argument("--seed", type=int, help="seed of the first image of each prompt (default 0)"),
        request.add_argument("--steps", type=int),
        request.add_argument("--guidance-scale", type=float),
        request.add_argument("--width", type=int),
        request.add_argument("--height", type=int),
        request.add_argument("--num-images", type=int, help="images per prompt (seeds seed, seed+1, ...; default 1)"),
        request.add_argument("--max-sequence-length", type=int),
        request.add_argument("--mode", choices=EDITING_MODES, help="edit a picture (--init-image) with an editing "
                             "model: inpaint (--mask), outpaint (--expand), edit (the prompt is the instruction), "
                             "control (--control; default: text-to-image, image-to-image with --init-image)"),
        request.add_argument("--init-image", help="image-to-image, or an editing mode's picture"),
        request.add_argument("--strength", type=float, help="image-to-image: how much to change it, in (0, 1]"),
        request.add_argument("--mask", help="inpaint: the mask image, the picture's size (white = repaint)"),
        request.add_argument("--expand", type=_margins, metavar="LEFT,TOP,RIGHT,BOTTOM",
                             help="outpaint: pixels added on each side (multiples of 16), e.g. 0,0,256,0"),
        request.add_argument("--control", choices=CONTROL_TYPES, help="control: the kind of map (the model's own "
                             "by default); canny is computed from --init-image unless --control-image gives it"),
        request.add_argument("--control-image", help="control: the edge or depth map itself, the result's size"),
        request.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                             help="a LoRA adapter (.safetensors file or hub id), scale 1 unless given; repeatable"),
        request.add_argument("--fuse-loras", action="store_true",
                             help="fuse the adapters into the weights (faster steps; where the model type allows)"),
        request.add_argument("--sweep", action="append", metavar="NAME=V1,V2,...",
                             help="sweep a parameter (guidance_scale, steps, strength, width, height, lora_scale, "
                             "lora:NAME); at most two, repeatable; a labelled grid goes into the run folder"),
        request.add_argument("--cache", help="cached mode for this run: taylorseer@N (forecast window: "
                             "taylorseer@N:from=W:until=E), first-block@T or off (default: the model entry's "
                             "`cache:`, off unless set)"),
        request.add_argument("--output-dir", help="base folder for run folders (default: ./outputs)"),
        request.add_argument("--checkpoint", help="load the weights from this local folder (hub layout) instead of "
                             "the entry's id, e.g. a synthetic checkpoint (fluxnb.models.synthetic)"),
    ]
    parser.set_defaults(request_options={o.dest: (o.option_strings[0], o.default) for o in options})
    parser.add_argument("--gpus", metavar="N|all", help="data parallel: one pipeline per GPU of this host, launched "
                        "through torchrun (with --resume: any N finishes the missing images)")
    parser.add_argument("--parallel", choices=CONTEXT_MODES, help="with --gpus N: each image on all N GPUs "
                        "(diffusers context parallelism: lower latency per image) instead of one image per GPU")
    parser.add_argument("--ray", metavar="ADDRESS", help="many hosts: run the batch on a Ray cluster, one actor "
                        "per GPU (--gpus N actors; `local` starts a cluster on this machine, `auto` joins the one "
                        "this node belongs to); the actors share no disk with this command: files and images "
                        "travel through Ray's object store")
    parser.add_argument("--keep-warm", type=float, metavar="SECONDS", help="with --ray ADDRESS of a running cluster: "
                        "keep the loaded actors after the batch, so the next batch of this model skips the load; "
                        "each ends after SECONDS without work (`fluxnb workers --stop` ends them at once)")
    return parser


def _margins(text: str) -> tuple[int, ...]:
    """--expand LEFT,TOP,RIGHT,BOTTOM as four whole numbers (make_request checks the rest)."""
    try:
        margins = tuple(int(part) for part in text.split(","))
    except ValueError:
        margins = ()
    if len(margins) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not four whole numbers LEFT,TOP,RIGHT,BOTTOM, e.g. 0,0,256,0")
    return margins


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
        seed=0 if args.seed is None else args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        width=args.width,
        height=args.height,
        num_images=1 if args.num_images is None else args.num_images,
        max_sequence_length=args.max_sequence_length,
        init_image=args.init_image,
        strength=args.strength,
        mode=args.mode or (IMAGE_TO_IMAGE if args.init_image else TEXT_TO_IMAGE),
        mask=args.mask,
        expand=args.expand,
        control=args.control,
        control_image=args.control_image,
        loras=args.lora,
        fuse_loras=args.fuse_loras,
        sweep=parse_cli(args.sweep),
        cache=args.cache,
    )


def check_resumable(args: argparse.Namespace) -> None:
    """--resume finishes the original request exactly: no request option (one rule: the parser's request group);
    a folder made by generate."""
    given = [flag for dest, (flag, default) in args.request_options.items() if getattr(args, dest) != default]
    if given:
        raise RequestError(given[0].lstrip("-").replace("-", "_"), f"--resume finishes the run's original request "
                           f"exactly; {', '.join(given)} would change it, so it is refused.",
                           fix=f"fluxnb generate --resume {args.resume} (engine options such as --gpus may stay), or "
                           "start a new run without --resume for the new request")
    manifest = read_manifest(check_run_folder(args.resume))
    job = manifest.get("job")
    if not isinstance(job, str) or not job:
        raise InputError(f"{args.resume}'s manifest names no job (`job` is missing or not a name): it was not written "
                         "by fluxnb generate, or was edited.", fix="start a new run (the images there keep their own "
                         "metadata: fluxnb.read_png_metadata)")
    if job != "generate":
        raise InputError(f"{args.resume} was made by `fluxnb run {job}`, not by fluxnb generate; a resume "
                         "finishes the run that made the folder.", fix=f"fluxnb run {job} --resume {args.resume}")
    if not isinstance(manifest.get("model"), dict) or not isinstance(manifest["model"].get("name"), str) or \
            not isinstance(manifest.get("parameters"), dict):
        raise InputError(f"{args.resume} holds no generate parameters to resume (its manifest has no model or "
                         "parameters: the run stopped before it recorded them).",
                         fix="start a new run with the same options")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.resume:  # the parameters are the run's own, from its manifest
        check_resumable(args)
        run_folder = RunFolder.open(args.resume)
        stored_model, stored = run_folder.manifest["model"], run_folder.manifest["parameters"]
        refuse_changed_inputs(stored, run_folder.path)  # here for every engine (ranks and actors do not check)
        run_folder.resumed_parameters = None  # checked: generate() need not hash the files again
        choice = resolve_model(stored_model["name"], config)
        request = request_from_dict(choice.spec, stored)
        check_parallel_options(args, choice.spec)
        merge_parts(run_folder, delete=True)  # a data-parallel launch's leftover parts
        print(f"resuming {run_folder.path}: {len(run_folder.manifest['images'])} image(s) already done", flush=True)
    else:
        mode = args.mode or (IMAGE_TO_IMAGE if args.init_image else TEXT_TO_IMAGE)
        choice = resolve_model(args.model, config, task=task_for(mode).name)
        request = new_request(args, choice.spec)
        check_parallel_options(args, choice.spec)
        checkpoint = str(check_checkpoint(args.checkpoint).resolve()) if args.checkpoint else None
        run_folder = RunFolder.create("generate", base=args.output_dir)
        run_folder.record(model={"name": choice.spec.name, "id": choice.spec.id, "reason": choice.reason,
                                 "checkpoint": checkpoint}, parameters=request.to_dict())
    print(model_banner(choice), flush=True)
    if (args.ray is not None or args.gpus is not None) and get_backend(choice.spec.type).embedded:
        embedded_checkpoint(choice.spec.task)  # built once here: N processes building it at the same moment race
    if args.ray is not None:
        return run_ray(args, run_folder, len(request.points()))
    if args.gpus is not None:
        return run_parallel(args, run_folder, len(request.points()))
    interactive = sys.stderr.isatty()
    try:
        model = load_model(choice.spec, checkpoint=run_folder.manifest["model"].get("checkpoint"), config=config,
                           progress=interactive)
        print(model.report, flush=True)
        run_folder.record(load_report=model.report.to_dict())
        images = generate(model, request, run_folder, progress=interactive, model_reason=choice.reason,
                 on_image=lambda image: print(f"{image.path}  ({image.metadata['seconds']:.1f} s, "
                                              f"seed {image.metadata['seed']})", flush=True))
    except BaseException as exc:
        if run_folder.manifest["status"] == "running":  # generate() marks its own failures more precisely
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run_folder.record(status=status, error=f"{type(exc).__name__}: {exc}")
        print(f"run folder: {run_folder.path}", file=sys.stderr)
        raise
    if request.sweep:
        print(f"sweep grid: {save_sweep_grid(request, images, run_folder.path)}", flush=True)
    run_folder.finish()
    print(f"run folder: {run_folder.path}")
    return 0


def run_ray(args: argparse.Namespace, run_folder: RunFolder, total: int) -> int:
    """--ray: this process owns the run folder; Ray actors make the images (fluxnb.runs.raybatch)."""
    return report_launch(run_folder, "Ray worker(s)", lambda: run_on_ray(
        run_folder, address=args.ray, asked=args.gpus, total=total, config=args.config, keep_warm=args.keep_warm))


def report_launch(run_folder: RunFolder, workers: str, launch: Callable[[], dict]) -> int:
    """Run a multi-process launch and say what it made; on any failure name the run folder (its finished images
    stay there) before the error goes up."""
    try:
        result = launch()
    except BaseException:
        print(f"run folder: {run_folder.path}", file=sys.stderr)
        raise
    print(f"{result['world_size']} {workers}, {result['pending']} image(s) made in {result['wall_seconds']:.1f} s")
    print(f"run folder: {run_folder.path}")
    return 0


def check_parallel_options(args: argparse.Namespace, spec) -> None:
    """--parallel needs --gpus, and a stack, device and model that context parallelism supports: refused before
    anything loads."""
    check_keep_warm(args.ray, args.keep_warm)
    if args.parallel is not None and args.ray is not None:
        raise RequestError("parallel", "--parallel runs under torchrun on one host; it cannot be combined with --ray.",
                           fix="--ray ADDRESS for a batch over many hosts, or --gpus N --parallel ulysses on one host")
    if args.parallel is None:
        return
    if args.gpus is None:
        raise RequestError("parallel", f"--parallel {args.parallel} splits each image over several GPUs; it needs "
                           "--gpus.", fix=f"--gpus 2 --parallel {args.parallel}")
    import torch

    processes, device, _note = plan_processes(args.gpus, torch.cuda.device_count())
    check_context_parallel(args.parallel, processes, device, get_backend(spec.type), bool(spec.compile))


def run_parallel(args: argparse.Namespace, run_folder: RunFolder, total: int) -> int:
    """--gpus: this process owns the run folder; torchrun's ranks make the images (fluxnb.runs.dataparallel)."""
    import torch

    processes, device, note = plan_processes(args.gpus, torch.cuda.device_count())
    if note:
        print(f"note: {note}", flush=True)
    return report_launch(run_folder, "rank(s)", lambda: run_data_parallel(
        run_folder, processes=processes, device=device, total=total, config=args.config, mode=args.parallel or DATA))
