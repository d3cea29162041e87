"""Sharding a batch over processes, and the per-rank manifest parts that keep one writer per file.

A data-parallel batch (fluxnb.runs.dataparallel) runs one process per GPU. The run folder keeps one writer per file:
- the launching process holds the run folder's lock (outputs.RunLock) and is the only one that rewrites
  manifest.json;
- rank R of launch L writes only its own PNGs (each atomically, named by its request item as always) and its own
  part `.fluxnb-parts/L-rankR.json` (atomically, after every image);
- the owner merges the parts into the manifest (while the ranks run, after they exit, and when a run is resumed:
  leftover parts of a killed launch first) and deletes a part only after the manifest that holds it is written.

Sharding depends only on the list of items still to make, never on file names or seeds: an image's index, seed and
file name are the request's, whatever the number of processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_json, own_folder
from .outputs import RunFolder, png_problem

PARTS_DIR = ".fluxnb-parts"


def shard(pending: list[int], world_size: int, rank: int) -> list[int]:
    """Rank `rank`'s share of the item indexes still to make: every world_size-th, starting at rank (sorted first,
    so the same pending set always gives the same shards)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
    return sorted(pending)[rank::world_size]


def pending_indexes(run_dir: str | Path, manifest: dict[str, Any], total: int) -> list[int]:
    """Item indexes 0..total-1 the run folder does not hold an image for yet (listed, and its file there)."""
    done = {entry.get("index") for entry in manifest["images"] if (Path(run_dir) / entry["file"]).is_file()}
    return [index for index in range(total) if index not in done]


def part_path(run_dir: str | Path, launch: int, rank: int) -> Path:
    return Path(run_dir) / PARTS_DIR / f"{launch:03d}-rank{rank}.json"


class RankPart:
    """What one rank writes: its images (PNGs named by item) and its part file; never manifest.json.

    Stands in for the RunFolder that generation.generate() writes into (path, manifest, resumed_parameters,
    save_image, record_failure, record), so a rank runs the very same generation code as a single-process batch.
    """

    resumed_parameters = None  # the launching command checked the run's input files (params.refuse_changed_inputs)

    def __init__(self, run_dir: str | Path, launch: int, rank: int, world_size: int, placement: dict[str, Any],
                 images: list[dict[str, Any]]):
        self.path = Path(run_dir)
        self.placement = placement  # rank, world size, host, device name: copied into every image's metadata
        self.manifest: dict[str, Any] = {"images": list(images), "failures": []}  # what this rank may skip
        self.part: dict[str, Any] = {"launch": launch, **placement, "status": "running", "images": [],
                                     "failures": []}
        own_folder(run_dir, PARTS_DIR, "the run folder's parts folder")
        self.file = part_path(run_dir, launch, rank)
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.file, self.part)

    def record(self, **fields: Any) -> None:
        self.part.update(fields)
        self._save()

    def save_image(self, image, metadata: dict[str, Any]) -> Path:
        """The PNG (atomically, via RunFolder's writer), then its line in this rank's part."""
        metadata["parallel"] = dict(self.placement)
        path = RunFolder.write_png(self.path, image, metadata)
        entry = {"file": path.name, **metadata}
        self.manifest["images"].append(entry)
        self.part["images"].append(entry)
        self.part["failures"] = [f for f in self.part["failures"] if f.get("index") != metadata.get("index")]
        self._save()
        return path

    def record_failure(self, failure: dict[str, Any]) -> None:
        failure = {**failure, "parallel": dict(self.placement)}
        self.part["failures"] = [f for f in self.part["failures"] if f.get("index") != failure["index"]]
        self.part["failures"].append(failure)
        self._save()


def read_parts(run_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable part in the run folder (an unreadable one is skipped: its PNGs are adopted from disk)."""
    if not os.path.lexists(Path(run_dir) / PARTS_DIR):
        return []
    folder = own_folder(run_dir, PARTS_DIR, "the run folder's parts folder")  # a link there is refused, not read
    parts = []
    for file in sorted(folder.glob("*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            parts.append((file, data))
    return parts


def merge_parts(run: RunFolder, *, delete: bool) -> int:
    """Merge the ranks' parts into `run`'s manifest (the owner only); return how many images were added.

    An image is listed once (by file name) and only if its PNG is complete; a failure is dropped once its image
    exists. delete=True (no rank of these parts is running): the parts are deleted after the manifest is written.
    """
    parts = read_parts(run.path)
    if not parts:
        return 0
    listed = {entry["file"] for entry in run.manifest["images"]}
    new: list[dict[str, Any]] = []

    def progress() -> str:  # what a rewrite is owed for: failures and launches, not each rank's image count
        ranks = [{k: v for k, v in r.items() if k != "images_made"}
                 for r in run.manifest.get("parallel", {}).get("ranks", [])]
        return json.dumps([run.manifest["failures"], ranks], default=str)

    before = progress()
    ranks = run.manifest.setdefault("parallel", {}).setdefault("ranks", [])
    for _file, part in parts:
        for entry in part.get("images", []):
            name = entry.get("file")
            if not isinstance(name, str) or name in listed or Path(name).name != name:
                continue
            if not (run.path / name).is_file() or png_problem(run.path / name):
                continue  # an unfinished PNG: RunFolder.open sets it aside, the item is made again
            new.append(entry)
            listed.add(name)
        for failure in part.get("failures", []):
            run.manifest["failures"] = [f for f in run.manifest["failures"] if f.get("index") != failure.get("index")]
            run.manifest["failures"].append(failure)
        summary = {k: v for k, v in part.items() if k not in ("images", "failures")}
        summary["images_made"] = len(part.get("images", []))
        ranks[:] = [r for r in ranks if (r.get("launch"), r.get("rank")) != (part.get("launch"), part.get("rank"))]
        ranks.append(summary)
    done = {entry.get("index") for entry in (*run.manifest["images"], *new)}
    run.manifest["failures"] = [f for f in run.manifest["failures"] if f.get("index") not in done]
    run.add_images(new)  # each at a bounded cost (RunFolder's manifest log)
    if delete:  # the launch is over: in item order, written whole before any part goes
        run.manifest["images"].sort(key=lambda e: e.get("index") if isinstance(e.get("index"), int) else 0)
    if progress() != before or delete:
        run.record()
    if delete:
        for file, _part in parts:
            file.unlink(missing_ok=True)
        for temp in (run.path / PARTS_DIR).glob(".*.tmp"):
            os.unlink(temp)  # a part write a kill interrupted: the part before it was complete, and merged
    return len(new)
