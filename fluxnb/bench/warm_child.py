"""The child process of fluxnb.bench.warm: load one bench backend and time its first call with the shared compile
cache. Run as `python -m fluxnb.bench.warm_child 'JOB-JSON'`; prints one JSON line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ..core.compat import fx_graph_cache_counts
from ..models.config import load_config
from ..models.loading import load_model
from ..runs.generation import compile_counters, compile_record
from .engine import parse_backend, run_phases
from .inputs import editing_arguments


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Load the backend as the bench did and time its first (warm-up length) call with the shared cache."""
    import torch

    config = load_config(job.get("config"))
    backend = parse_backend(job["label"], config, tuple(job.get("uncapped", ())))
    if job["device"] == "cuda" and job.get("memory_fraction"):
        torch.cuda.set_per_process_memory_fraction(job["memory_fraction"])
    model = load_model(backend.spec, checkpoint=job.get("checkpoint"), device=job["device"], progress=False)
    if backend.cast:
        model.pipe.to(torch.bfloat16 if backend.cast == "bf16" else torch.float32)
    model.pipe.set_progress_bar_config(disable=True)
    generation = job["generation"]
    if job.get("pictures"):  # an editing entry: the same request and pipeline inputs as the bench's first call
        generation = editing_arguments(backend.spec, job["pictures"], generation, job["warmup_steps"])
    before = compile_counters()
    start = time.perf_counter()
    run_phases(model.pipe, steps=job["warmup_steps"], **generation)
    seconds = time.perf_counter() - start
    compiled = compile_record(before, compile_counters())
    hits, misses = fx_graph_cache_counts()
    return {"first_call_seconds": round(seconds, 3), "new_graphs": compiled.get("new_graphs"),
            "compile_seconds": compiled.get("seconds", compiled.get("unknown")),
            "fxgraph_cache_hits": hits, "fxgraph_cache_misses": misses,
            "compile_cache": model.report.compile_cache}


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
