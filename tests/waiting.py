"""Waiting in tests: poll a condition (never a fixed sleep), failing at once when the process it depends on ends.
One helper for the whole suite (unit and fault tests alike)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(condition: Callable[[], Any], process: subprocess.Popen | None = None, seconds: float = 240,
             what: str = "the condition") -> Any:
    """The first truthy value of `condition()`; fails at once (with the process's output) if `process` ends first,
    and after `seconds` (a hang, never a pacing: the test goes on the moment the condition holds)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None:
            assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def wait_for_images(outputs: Path, count: int, process: subprocess.Popen, seconds: float = 240,
                    job: str = "generate") -> Path:
    """The run folder of `job` under `outputs` once it holds at least `count` PNGs."""

    def run_with_images() -> Path | None:
        runs = list(outputs.glob(f"*-{job}"))
        return runs[0] if runs and len(list(runs[0].glob("*.png"))) >= count else None

    return wait_for(run_with_images, process, seconds, what=f"{count} images of a {job} run")
