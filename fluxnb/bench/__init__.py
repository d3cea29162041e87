"""`fluxnb bench`: backends x image sizes, timed phase by phase, with fidelity against a reference, in one run.

engine: the measuring (BenchEntry, parse_backend, parse_size, run_phases, run_bench); fidelity: latents' relative
error, PSNR and speed ratios; inputs: an editing task's fixed pictures and request (one task per run); report: the
verdict, the table, the chart and the JSON file. Results are JSON plus a matplotlib chart; every output says which
weights ran.
"""

from .engine import (
    BASE_ENTRY_FOR_TYPES,
    DEFAULT_BACKENDS,
    DEFAULT_PROMPT,
    DEFAULT_SIZES,
    FORMAT_VERSION,
    PHASES,
    VARIANTS,
    BenchEntry,
    BenchSettings,
    parse_backend,
    parse_size,
    run_bench,
    run_phases,
)
from .fidelity import add_comparisons, psnr, relative_error
from .report import (
    CACHED_FIDELITY_FACTOR,
    CACHED_GOAL_SPEEDUP,
    FIDELITY_FACTOR,
    GOAL_SPEEDUP,
    default_results_path,
    load_results,
    plot_results,
    results_table,
    summarize,
    write_results,
)

__all__ = [
    "BASE_ENTRY_FOR_TYPES", "DEFAULT_BACKENDS", "DEFAULT_PROMPT", "DEFAULT_SIZES", "FORMAT_VERSION", "GOAL_SPEEDUP",
    "CACHED_FIDELITY_FACTOR", "CACHED_GOAL_SPEEDUP", "FIDELITY_FACTOR",
    "PHASES", "VARIANTS", "BenchEntry", "BenchSettings", "add_comparisons", "default_results_path", "load_results",
    "parse_backend", "parse_size", "plot_results", "psnr", "relative_error", "results_table", "run_bench",
    "run_phases", "summarize", "write_results",
]
