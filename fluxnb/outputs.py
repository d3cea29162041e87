"""Run folders: every run writes into a new folder; files are written atomically; nothing is overwritten.

A run folder holds the PNGs (metadata in a PNG text chunk), `manifest.json` (rewritten after every image,
so a crash keeps what was finished) and, for notebook runs, the executed notebook.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import PROJECT_ROOT
from .errors import FluxnbError, OutputWriteError

MANIFEST = "manifest.json"
PNG_METADATA_KEY = "fluxnb"


def default_outputs_dir() -> Path:
    """`FLUXNB_OUTPUTS`, else the project's outputs/ folder."""
    return Path(os.environ.get("FLUXNB_OUTPUTS") or PROJECT_ROOT / "outputs")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False, default=str).encode("utf-8"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:60] or "run"


def new_run_dir(job: str, base: str | Path | None = None) -> Path:
    """Create a fresh folder `<base>/<UTC timestamp>-<job>[-N]`; never reuses an existing one."""
    base = Path(base) if base is not None else default_outputs_dir()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FluxnbError(f"cannot create the outputs folder {base}: {exc}. Fix: choose a writable folder "
                          "(FLUXNB_OUTPUTS or --output-dir).") from None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{_slug(job)}"
    for n in range(1, 1000):
        candidate = base / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise FluxnbError(f"cannot create a run folder in {base}: {exc}. Fix: choose a writable folder.") from None
    raise FluxnbError(f"could not find a free run folder name under {base}")


class RunFolder:
    """One run: its folder and manifest. Images are added one by one, each saved as soon as it exists."""

    def __init__(self, path: Path, job: str):
        self.path = Path(path)
        self.job = job
        self.manifest: dict[str, Any] = {
            "job": job,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "model": None,
            "load_report": None,
            "parameters": None,
            "images": [],
            "failures": [],
        }
        self._save_manifest()

    @classmethod
    def create(
        cls,
        job: str,
        output_dir: str | Path | None = None,
        base: str | Path | None = None,
        resume: bool = False,
    ) -> RunFolder:
        """Use `output_dir` (made by `fluxnb run` for this run) or make a new folder.

        resume=True reopens a run folder that already holds a manifest (a batch that was killed, interrupted
        or had failures); generate() then adds only the images it does not hold yet.
        """
        if output_dir is None:
            if resume:
                raise FluxnbError("resume needs the run folder to resume: set output_dir (or --resume RUN_DIR)")
            return cls(new_run_dir(job, base), job)
        path = Path(output_dir)
        if (path / MANIFEST).exists():
            if resume:
                return cls.open(path)
            raise FluxnbError(f"output_dir {path} already holds a run ({MANIFEST} exists); runs never overwrite "
                              "each other. Fix: leave output_dir unset to get a new folder, or resume that run.")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FluxnbError(f"cannot create the run folder {path}: {exc}. Fix: choose a writable folder.") from None
        return cls(path, job)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """Reopen an existing run folder to resume it; images on disk are taken from its manifest."""
        path = Path(path)
        try:
            manifest = read_manifest(path)
        except FileNotFoundError:
            raise FluxnbError(f"{path} is not a run folder ({MANIFEST} is missing). Fix: give the folder printed "
                              "as `run folder: ...` by the run to resume.") from None
        except json.JSONDecodeError as exc:
            raise FluxnbError(f"{path / MANIFEST} is not valid JSON ({exc}); it was not written by fluxnb.") from None
        run = cls.__new__(cls)
        run.path, run.job, run.manifest = path, manifest.get("job", path.name), manifest
        manifest.setdefault("failures", [])
        # keep only images whose file really exists (a kill between the PNG and the manifest write loses nothing:
        # the PNG is written first, and an image without its manifest line is generated again)
        manifest["images"] = [entry for entry in manifest.get("images", []) if (path / entry["file"]).is_file()]
        manifest.update(status="running", resumed=manifest.get("resumed", 0) + 1)
        run._save_manifest()
        return run

    def _save_manifest(self) -> None:
        try:
            atomic_write_json(self.path / MANIFEST, self.manifest)
        except OSError as exc:
            raise OutputWriteError(self.path / MANIFEST, exc) from None

    def record(self, **fields: Any) -> None:
        """Store run-level facts (model, load_report, parameters...) in the manifest now."""
        self.manifest.update(fields)
        self._save_manifest()

    def save_image(self, image, metadata: dict[str, Any], stem: str) -> Path:
        """Write one PNG (running number + stem, never overwriting) with its metadata; list it in the manifest."""
        import io

        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt(PNG_METADATA_KEY, json.dumps(metadata, ensure_ascii=False, default=str))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        number = len(self.manifest["images"])
        while (target := self.path / f"{number:04d}-{stem}.png").exists():  # e.g. a PNG whose manifest line a kill
            number += 1  # prevented: kept, never overwritten
        try:
            atomic_write_bytes(target, buffer.getvalue())
        except OSError as exc:
            raise OutputWriteError(target, exc) from None
        self.manifest["images"].append({"file": target.name, **metadata})
        self.manifest["failures"] = [f for f in self.manifest["failures"] if f.get("index") != metadata.get("index")]
        self._save_manifest()
        return target

    def record_failure(self, failure: dict[str, Any]) -> None:
        """List a failed image in the manifest (replacing an earlier failure of the same image)."""
        self.manifest["failures"] = [f for f in self.manifest["failures"] if f.get("index") != failure["index"]]
        self.manifest["failures"].append(failure)
        self._save_manifest()

    def finish(self, status: str = "complete") -> None:
        self.record(status=status, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """The fluxnb metadata stored in a PNG written by RunFolder.save_image."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(PNG_METADATA_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise FluxnbError(f"{path} carries no fluxnb metadata (not written by fluxnb)")
    return json.loads(text)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))
