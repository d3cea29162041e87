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
from .errors import FluxnbError

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
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "run"


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
        }
        self._save_manifest()

    @classmethod
    def create(cls, job: str, output_dir: str | Path | None = None, base: str | Path | None = None) -> RunFolder:
        """Use `output_dir` (made by `fluxnb run` for this run; must not hold another run) or make a new folder."""
        if output_dir is None:
            return cls(new_run_dir(job, base), job)
        path = Path(output_dir)
        if (path / MANIFEST).exists():
            raise FluxnbError(f"output_dir {path} already holds a run ({MANIFEST} exists); runs never overwrite "
                              "each other. Fix: leave output_dir unset to get a new folder.")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, job)

    def _save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def record(self, **fields: Any) -> None:
        """Store run-level facts (model, load_report, parameters...) in the manifest now."""
        self.manifest.update(fields)
        self._save_manifest()

    def save_image(self, image, metadata: dict[str, Any], stem: str) -> Path:
        """Write one PNG (named with a running number + stem) with its metadata, then list it in the manifest."""
        import io

        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt(PNG_METADATA_KEY, json.dumps(metadata, ensure_ascii=False, default=str))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        target = self.path / f"{len(self.manifest['images']):04d}-{stem}.png"
        if target.exists():
            raise FluxnbError(f"{target} already exists; fluxnb never overwrites an image")
        atomic_write_bytes(target, buffer.getvalue())
        self.manifest["images"].append({"file": target.name, **metadata})
        self._save_manifest()
        return target

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
