"""`fluxnb bench`: backends x sizes on this card: s/step, s/image, peak memory, fidelity; JSON + chart."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..bench import (
    DEFAULT_BACKENDS,
    DEFAULT_PROMPT,
    DEFAULT_SIZES,
    VARIANTS,
    parse_backend,
    parse_size,
    results_table,
    run_bench,
    summarize,
    write_results,
)
from ..core.errors import RequestError
from ..models.config import load_config
from ..models.synthetic import DIMS_BY_NAME, WEIGHT_SETS
from ..models.tasks import TEXT_TO_IMAGE
from ..runs.outputs import new_run_dir


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("bench", help="benchmark backends x sizes: s/step, s/image, peak memory, fidelity")
    parser.add_argument("--backend", action="append", help=f"model name (any task, one task per run) or loader type "
                        f"(on FLUX.1-dev), repeatable (default: {', '.join(DEFAULT_BACKENDS)}); NAME@VARIANT changes "
                        f"one option: {', '.join(VARIANTS)}")
    parser.add_argument("--size", action="append", help="WIDTHxHEIGHT, repeatable (default 1024x1024)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed first call (default 2)")
    parser.add_argument("--cap-gb", type=float, default=22.0,
                        help="GPU memory cap in GB (1e9 bytes) for capped backends; 0 for none (default 22)")
    parser.add_argument("--uncapped", action="append", default=[],
                        help="backend run without the cap (default: those of type flux-bf16)")
    parser.add_argument("--reference", help="backend the fidelity is measured against (default: the bf16 one)")
    parser.add_argument("--baseline", help="backend the speed ratios are computed against (default: bnb 8-bit)")
    parser.add_argument("--synthetic", action="store_true",
                        help="full-size random weights with FLUX.1-dev's dimensions (built locally on first use)")
    parser.add_argument("--synthetic-root", help="where synthetic checkpoints live (default FLUXNB_SYNTHETIC)")
    parser.add_argument("--cleanup-quantized", action="store_true",
                        help="delete each quantized synthetic checkpoint after its backend ran (saves disk)")
    parser.add_argument("--weights", default="gaussian",
                        help=f"synthetic weight sets, comma-separated: {', '.join(WEIGHT_SETS)} (default gaussian); "
                        "outliers = the Gaussian weights with activation outliers "
                        "(fluxnb.models.synthetic.inject_outliers)")
    parser.add_argument("--outlier-backend", action="append", default=[],
                        help="backend also run on the non-Gaussian weight sets, repeatable (default: every backend)")
    parser.add_argument("--cleanup-outliers", action="store_true",
                        help="delete the outlier weight set's checkpoints once its backends ran (~34 GB bf16 + 8-bit)")
    parser.add_argument("--cleanup-weights", default="",
                        help="comma-separated weight sets whose checkpoints are deleted once their backends ran")
    parser.add_argument("--synthetic-dims", default=os.environ.get("FLUXNB_SYNTHETIC_DIMS", "full"),
                        choices=sorted(DIMS_BY_NAME), help="full: FLUX.1-dev's size; tiny: the tiny model's, for "
                        "CPU checks of the same code path (default: FLUXNB_SYNTHETIC_DIMS or full)")
    parser.add_argument("--warm-compile", action="store_true",
                        help="run in a fresh compile cache (cold first calls) and repeat each compiled backend's first "
                        "call in a new process sharing it (warm first call)")
    parser.add_argument("--warm-compile-backend", action="append", default=[],
                        help="only these compiled backends get the warm first call, repeatable (default: all)")
    parser.add_argument("--batch", type=int, default=0,
                        help="also time N prompts x 1 image (text encoding once per prompt): images/minute")
    parser.add_argument("--batch-backend", action="append", default=[],
                        help="only these backends are timed in the batch, repeatable (default: all)")
    parser.add_argument("--batch-offload-t5", action="store_true",
                        help="in the batch, text encoders on the CPU while denoising (types that allow it)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed images per backend and size; each row is the median one's, with every image's "
                        "seconds and their spread beside it (default 1; odd numbers give a true median)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--output", help="JSON path (default: outputs/bench-<time>/bench.json)")
    parser.add_argument("--chart", help="PNG path (default: beside the JSON)")
    return parser


def _check_counts(args: argparse.Namespace) -> None:
    """The numbers that must be positive (or zero for off), refused before anything loads."""
    if args.steps < 1 or args.warmup_steps < 1:
        raise RequestError("steps", "--steps and --warmup-steps must be at least 1", fix="pass 1 or more")
    if args.repeats < 1:
        raise RequestError("repeats", f"--repeats must be 1 or more, got {args.repeats}", fix="e.g. --repeats 3")
    if args.batch < 0:
        raise RequestError("batch", f"--batch must be 0 (off) or more, got {args.batch}", fix="e.g. --batch 4")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    uncapped = tuple(args.uncapped)
    backends = [parse_backend(b, config, uncapped) for b in (args.backend or DEFAULT_BACKENDS)]
    sizes = tuple(parse_size(s) for s in args.size) if args.size else DEFAULT_SIZES
    _check_counts(args)
    weight_sets = tuple(w.strip() for w in args.weights.split(",") if w.strip())
    if not set(weight_sets) <= set(WEIGHT_SETS) or not weight_sets:
        raise RequestError("weights", f"{args.weights!r}: allowed weight sets are {', '.join(WEIGHT_SETS)}",
                           fix="e.g. --weights gaussian,outliers")
    cleanup = tuple(w.strip() for w in args.cleanup_weights.split(",") if w.strip())
    cleanup += ("outliers",) if args.cleanup_outliers else ()
    if not set(cleanup) <= set(WEIGHT_SETS):
        raise RequestError("cleanup_weights", f"{args.cleanup_weights!r}: allowed weight sets are "
                           f"{', '.join(WEIGHT_SETS)}", fix="e.g. --cleanup-weights gaussian,outliers")
    if weight_sets != ("gaussian",) and not args.synthetic:
        raise RequestError("weights", "weight sets other than the hub's own need --synthetic",
                           fix="add --synthetic (random weights with FLUX.1-dev's dimensions)")
    json_path = Path(args.output) if args.output else new_run_dir("bench") / "bench.json"
    chart_path = Path(args.chart) if args.chart else json_path.with_suffix(".png")
    results = run_bench(
        backends,
        sizes,
        steps=args.steps,
        seed=args.seed,
        prompt=args.prompt,
        warmup_steps=args.warmup_steps,
        cap_bytes=int(args.cap_gb * 1e9) if args.cap_gb else None,
        synthetic=args.synthetic,
        synthetic_root=args.synthetic_root,
        cleanup_quantized=args.cleanup_quantized,
        reference=args.reference,
        baseline=args.baseline,
        device=args.device,
        command="fluxnb bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"]
        else None,
        log=lambda line: print(line, flush=True),
        on_backend_done=lambda partial: write_results(partial, json_path),
        weight_sets=weight_sets,
        outlier_backends=tuple(args.outlier_backend),
        cleanup_weight_sets=cleanup,
        synthetic_dims=DIMS_BY_NAME[args.synthetic_dims],
        warm_compile=args.warm_compile,
        warm_backends=tuple(args.warm_compile_backend),
        batch=args.batch,
        batch_backends=tuple(args.batch_backend),
        batch_offload_t5=args.batch_offload_t5,
        repeats=args.repeats,
        config_path=str(args.config) if args.config else None,
        inputs_folder=str(json_path.parent / "bench-inputs"),
    )
    write_results(results, json_path, chart_path)
    print(results_table(results))
    recommended = config.recommended if results["settings"]["task"] == TEXT_TO_IMAGE else None  # a FLUX.1-dev entry
    print("\n".join(summarize(results, recommended=recommended)["lines"]))
    print(f"results: {json_path}\nchart: {chart_path}")
    failed = [r for r in results["rows"] if "error" in r] + [b for b in results["backends"] if "error" in b]
    return 1 if failed else 0
