"""Waiting on real processes in the fault tests: poll a condition while the process is still alive."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(condition: Callable[[], Any], process: subprocess.Popen, seconds: float = 240) -> Any:
    """The first truthy value of `condition()`; fails at once (with the process's output) if the process ends."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds:.0f} s")


def wait_for_images(outputs: Path, count: int, process: subprocess.Popen, seconds: float = 240,
                    job: str = "generate") -> Path:
    """The run folder of `job` under `outputs` once it holds at least `count` PNGs."""

    def run_with_images() -> Path | None:
        runs = list(outputs.glob(f"*-{job}"))
        return runs[0] if runs and len(list(runs[0].glob("*.png"))) >= count else None

    return wait_for(run_with_images, process, seconds)
