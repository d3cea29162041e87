"""`fluxnb bench`: backends x sizes on this card: s/step, s/image, peak memory, fidelity; JSON + chart."""

from __future__ import annotations

import argparse
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
    write_results,
)
from ..config import load_config
from ..errors import RequestError
from ..outputs import new_run_dir


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("bench", help="benchmark backends x sizes: s/step, s/image, peak memory, fidelity")
    parser.add_argument("--backend", action="append", help=f"model name or loader type, repeatable (default: "
                        f"{', '.join(DEFAULT_BACKENDS)}); NAME@VARIANT changes one option: {', '.join(VARIANTS)}")
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
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--output", help="JSON path (default: outputs/bench-<time>/bench.json)")
    parser.add_argument("--chart", help="PNG path (default: beside the JSON)")
    parser.add_argument("--config", type=Path, help="model config file (default: the project's model_config.yaml)")
    return parser


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    uncapped = tuple(args.uncapped)
    backends = [parse_backend(b, config, uncapped) for b in (args.backend or DEFAULT_BACKENDS)]
    sizes = tuple(parse_size(s) for s in args.size) if args.size else DEFAULT_SIZES
    if args.steps < 1 or args.warmup_steps < 1:
        raise RequestError("steps", "--steps and --warmup-steps must be at least 1", fix="pass 1 or more")
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
    )
    write_results(results, json_path, chart_path)
    print(results_table(results))
    print(f"results: {json_path}\nchart: {chart_path}")
    failed = [r for r in results["rows"] if "error" in r] + [b for b in results["backends"] if "error" in b]
    return 1 if failed else 0
