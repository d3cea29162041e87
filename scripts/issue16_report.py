"""Multi-GPU figures from the run folders that scripts/issue16_gpu.sh made: JSON, chart, table.

    python scripts/issue16_report.py OUT_DIR

Reads OUT_DIR/runs/dp<N>/<run>/manifest.json (data-parallel batches on N GPUs) and OUT_DIR/runs/cp<N>/<run>/
(one image at a time on N GPUs, Ulysses context parallelism) and writes OUT_DIR/issue16.json, OUT_DIR/issue16.png;
prints the table last. Definitions:
- images/minute with load: images / the launch's wall time (torchrun start to exit: process start, model load,
  generation); without load: images / (last rank's end - first rank's start of generation, after every rank loaded);
- scaling efficiency(N) = throughput(N) / (N x throughput(1));
- latency: median seconds per image (metadata `seconds`), the first image of each rank left out (warm-up);
- fidelity: the context-parallel image against the 1-GPU image of the same prompt and seed (PSNR, max/mean |diff|).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fluxnb.bench.fidelity import psnr
from fluxnb.core.environment import gpu_facts, package_versions


def run_folder(parent: Path) -> Path | None:
    folders = sorted(p.parent for p in parent.glob("*/manifest.json"))
    return folders[-1] if folders else None


def throughput(manifest: dict[str, Any]) -> dict[str, Any]:
    launch = manifest["parallel"]["launches"][-1]
    ranks = [r for r in manifest["parallel"].get("ranks", []) if r.get("launch") == launch["launch"]]
    images = sum(r.get("images_made", 0) for r in ranks)
    starts = [r["generate_started"] for r in ranks if r.get("generate_started")]
    ends = [r["generate_finished"] for r in ranks if r.get("generate_finished")]
    generating = (max(ends) - min(starts)) if starts and ends else None
    return {
        "world_size": launch["world_size"],
        "images": images,
        "status": manifest.get("status"),
        "wall_seconds": launch.get("wall_seconds"),
        "generate_seconds": round(generating, 3) if generating else None,
        "load_seconds": [r.get("load_seconds") for r in ranks],
        "images_per_minute_with_load": round(60 * images / launch["wall_seconds"], 3) if launch.get("wall_seconds")
        else None,
        "images_per_minute_without_load": round(60 * images / generating, 3) if generating else None,
        "devices": sorted({f"{r.get('device_name')} ({r.get('physical_gpu')})" for r in ranks}),
    }


def warm_seconds(manifest: dict[str, Any]) -> list[float]:
    """Per-image seconds, each rank's first image left out (CUDA/cuDNN warm-up, NCCL set-up)."""
    by_rank: dict[Any, list[dict]] = {}
    for entry in manifest["images"]:
        by_rank.setdefault((entry.get("parallel") or {}).get("rank"), []).append(entry)
    seconds = []
    for entries in by_rank.values():
        entries.sort(key=lambda e: e["index"])
        seconds += [e["seconds"] for e in entries[1:]] or [e["seconds"] for e in entries]
    return seconds


def fidelity(cp_run: Path, cp: dict, ref_run: Path, ref: dict) -> list[dict[str, Any]]:
    refs = {(e["prompt"], e["seed"]): e for e in ref["images"]}
    rows = []
    for entry in cp["images"]:
        match = refs.get((entry["prompt"], entry["seed"]))
        if match is None:
            continue
        a = np.asarray(Image.open(cp_run / entry["file"]).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(ref_run / match["file"]).convert("RGB"), dtype=np.int16)
        diff = np.abs(a - b)
        value = psnr(a, b)  # inf for identical images: written as null with identical=true (JSON has no inf)
        rows.append({"seed": entry["seed"], "psnr_db": None if math.isinf(value) else round(value, 2),
                     "identical": bool(diff.max() == 0), "max_abs_diff": int(diff.max()),
                     "mean_abs_diff": round(float(diff.mean()), 3)})
    return rows


def collect(out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"batch": {}, "latency": {}, "notes": []}
    try:
        facts = gpu_facts()
        results["card"] = {k: facts.get(k) for k in ("gpu", "count", "total", "driver", "torch_cuda")}
    except Exception as exc:  # the report still says what ran
        results["card"] = {"error": str(exc)[:200]}
    results["versions"] = package_versions()
    refs: dict[int, tuple[Path, dict]] = {}
    for parent in sorted((out / "runs").glob("dp*"), key=lambda p: int(p.name[2:])):
        folder = run_folder(parent)
        if folder is None:
            results["notes"].append(f"{parent.name}: no run folder (stage skipped or failed early)")
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        n = int(parent.name[2:])
        refs[n] = (folder, manifest)
        row = throughput(manifest)
        row["latency_seconds"] = round(statistics.median(warm_seconds(manifest)), 3) if manifest["images"] else None
        row["run_folder"] = str(folder.relative_to(out))
        results["batch"][str(n)] = row
        results.setdefault("request", {k: manifest["parameters"].get(k) for k in
                                       ("width", "height", "steps", "num_images")})
        results["request"]["prompts"] = len(manifest["parameters"].get("prompts", []))
        results["model"] = manifest.get("model")
    one = results["batch"].get("1")
    for n, row in results["batch"].items():
        for key in ("with_load", "without_load"):
            base = one and one.get(f"images_per_minute_{key}")
            value = row.get(f"images_per_minute_{key}")
            row[f"efficiency_{key}"] = round(value / (int(n) * base), 3) if base and value else None
    for parent in sorted((out / "runs").glob("cp*"), key=lambda p: int(p.name[2:])):
        folder = run_folder(parent)
        if folder is None:
            results["notes"].append(f"{parent.name}: no run folder (stage skipped, refused or failed early)")
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        seconds = warm_seconds(manifest)
        row = {"images": len(manifest["images"]), "status": manifest.get("status"),
               "latency_seconds": round(statistics.median(seconds), 3) if seconds else None,
               "context_parallel": next((r.get("context_parallel") for r in manifest["parallel"].get("ranks", [])
                                         if r.get("context_parallel")), None),
               "run_folder": str(folder.relative_to(out))}
        if 1 in refs:
            row["fidelity_vs_1gpu"] = fidelity(folder, manifest, *refs[1])
            base = results["batch"]["1"].get("latency_seconds")
            row["speedup_vs_1gpu"] = round(base / row["latency_seconds"], 3) if base and row["latency_seconds"] \
                else None
        results["latency"][parent.name[2:]] = row
    for stage in sorted(out.glob("stage-*.log")):
        text = stage.read_text(errors="replace").strip().splitlines()
        if text and ("error" in text[-1].lower() or "refused" in text[-1].lower()):
            results["notes"].append(f"{stage.stem}: {text[-1][:300]}")
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["GPUs | images/min (with load) | eff. | images/min (no load) | eff. | s/image",
             "-----|------------------------|------|----------------------|------|--------"]
    for n, r in results["batch"].items():
        lines.append(f"{n:>4} | {r.get('images_per_minute_with_load')!s:>22} | {r.get('efficiency_with_load')!s:>4} | "
                     f"{r.get('images_per_minute_without_load')!s:>20} | {r.get('efficiency_without_load')!s:>4} | "
                     f"{r.get('latency_seconds')}")
    lines.append("")
    lines.append("one image on N GPUs (Ulysses) | s/image | speed-up vs 1 GPU | PSNR vs 1 GPU (dB) | max |diff|")
    one = results["batch"].get("1", {})
    lines.append(f"{1:>29} | {one.get('latency_seconds')!s:>7} | {'1.0':>17} | {'-':>18} | -")
    for n, r in results["latency"].items():
        fid = r.get("fidelity_vs_1gpu") or []
        finite = [f["psnr_db"] for f in fid if f["psnr_db"] is not None]
        worst = min(finite) if finite else ("identical" if fid else None)
        lines.append(f"{n:>29} | {r.get('latency_seconds')!s:>7} | {r.get('speedup_vs_1gpu')!s:>17} | "
                     f"{worst!s:>18} | {max((f['max_abs_diff'] for f in fid), default='-')}")
    lines += [f"note: {n}" for n in results["notes"]]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ns = [int(n) for n in results["batch"]]
    for key, label in (("with_load", "with load"), ("without_load", "without load")):
        left.plot(ns, [results["batch"][str(n)].get(f"images_per_minute_{key}") or 0 for n in ns], "o-", label=label)
    one = results["batch"].get("1", {}).get("images_per_minute_without_load")
    if one:
        left.plot(ns, [one * n for n in ns], "k:", label="linear")
    left.set(xlabel="GPUs (data parallel)", ylabel="images / minute", title="batch throughput")
    left.legend()
    lat = {1: results["batch"].get("1", {}).get("latency_seconds")}
    lat.update({int(n): r.get("latency_seconds") for n, r in results["latency"].items()})
    lat = {n: v for n, v in lat.items() if v}
    right.bar([str(n) for n in lat], list(lat.values()))
    right.set(xlabel="GPUs (Ulysses, one image)", ylabel="seconds / image", title="single-image latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ".")
    results = collect(out)
    (out / "issue16.json").write_text(json.dumps(results, indent=2))
    chart(results, out / "issue16.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
