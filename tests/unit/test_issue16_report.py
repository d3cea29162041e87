"""scripts/issue16_report.py on hand-made run folders: throughput, efficiency, latency and the fidelity of the
context-parallel images against the 1-GPU images of the same prompt and seed (the GPU script's arithmetic)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from tests.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("issue16_report", REPO_ROOT / "scripts" / "issue16_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def run_folder(parent: Path, world: int, wall: float, images: list[tuple[int, int, float, np.ndarray]]) -> None:
    """images: (index, seed, seconds, pixels); image i made by rank i % world; each rank generated for 10 s."""
    folder = parent / "20260101-000000-generate"
    folder.mkdir(parents=True)
    entries = []
    for index, seed, seconds, pixels in images:
        name = f"{index:04d}.png"
        Image.fromarray(pixels).save(folder / name)
        entries.append({"file": name, "index": index, "prompt": "p", "seed": seed, "seconds": seconds,
                        "parallel": {"rank": index % world}})
    ranks = [{"launch": 0, "rank": r, "images_made": sum(1 for i, *_ in images if i % world == r),
              "generate_started": 100.0, "generate_finished": 110.0, "load_seconds": 5.0} for r in range(world)]
    manifest = {"status": "complete", "images": entries, "model": {"name": "flux-tiny"},
                "parameters": {"width": 8, "height": 8, "steps": 2, "num_images": 2, "prompts": ["p"]},
                "parallel": {"launches": [{"launch": 0, "world_size": world, "wall_seconds": wall}], "ranks": ranks}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_report_computes_throughput_efficiency_latency_and_fidelity(tmp_path):
    black = np.zeros((8, 8, 3), np.uint8)
    grey = np.full((8, 8, 3), 10, np.uint8)
    run_folder(tmp_path / "runs" / "dp1", 1, 20.0, [(0, 0, 9.0, black), (1, 1, 1.0, black), (2, 2, 3.0, black)])
    run_folder(tmp_path / "runs" / "dp2", 2, 15.0, [(i, i, 1.0, black) for i in range(4)])
    run_folder(tmp_path / "runs" / "cp2", 2, 9.0, [(0, 0, 5.0, black), (1, 1, 0.5, grey), (2, 2, 0.5, black)])
    results = report.collect(tmp_path)
    one, two = results["batch"]["1"], results["batch"]["2"]
    assert one["images_per_minute_with_load"] == 9.0 and one["images_per_minute_without_load"] == 18.0
    assert two["images_per_minute_with_load"] == 16.0 and two["images_per_minute_without_load"] == 24.0
    assert two["efficiency_with_load"] == round(16 / 18, 3) and two["efficiency_without_load"] == round(24 / 36, 3)
    assert one["latency_seconds"] == 2.0  # the first image of the rank is left out: median of 1.0 and 3.0
    latency = results["latency"]["2"]
    assert latency["latency_seconds"] == 0.5 and latency["speedup_vs_1gpu"] == 4.0
    fidelity = {row["seed"]: row for row in latency["fidelity_vs_1gpu"]}
    assert fidelity[0]["psnr_db"] is None and fidelity[0]["identical"] and fidelity[0]["max_abs_diff"] == 0
    assert fidelity[1]["max_abs_diff"] == 10 and round(fidelity[1]["psnr_db"], 2) == round(20 * math.log10(25.5), 2)
    json.dumps(results, allow_nan=False)  # valid JSON: no inf
    text = report.table(results)
    assert text.splitlines()[2].split("|")[1].strip() == "9.0"
    report.chart(results, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000
