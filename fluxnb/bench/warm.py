"""Warm first-call compile: the first call of a compiled backend again, in a fresh process sharing the compile cache.

The bench's own first call of a compiled backend pays the cold compile (or whatever the compile cache already
held: its `compile_cache` record says); this module re-runs that first call in a new Python process with the same
TORCHINDUCTOR_CACHE_DIR, as a user's next notebook kernel would, and reports its seconds, the compile seconds
torch._dynamo counted and inductor's FX graph cache hits and misses (the child: fluxnb.bench.warm_child).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any


def first_call_in_new_process(job: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run `job` (see child) in a fresh interpreter; its JSON result, or {"error": ...} when it failed."""
    start = time.perf_counter()
    try:  # the child imports the installed fluxnb, as a user's next kernel would
        out = subprocess.run([sys.executable, "-m", "fluxnb.bench.warm_child", json.dumps(job)],
                             capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return {"error": f"exit {out.returncode}: {(out.stderr or out.stdout)[-600:]}"}
    result = json.loads(lines[-1])
    result["process_seconds"] = round(time.perf_counter() - start, 2)
    return result
