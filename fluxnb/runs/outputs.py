"""Run folders: every run writes into a new folder; files are written atomically; nothing is overwritten.

A run folder holds the PNGs (metadata in a PNG text chunk), `manifest.json` (rewritten after every image,
so a crash keeps what was finished) and, for notebook runs, the executed notebook. Its promises:
- one writer: a process writes a run folder only while it holds the OS lock on `.fluxnb-writer.lock` in it
  (fluxnb.core.files: an OS lock the kernel releases when the process dies, so a SIGKILLed run never blocks a resume);
  a second writer is refused with the holder's pid and host (RunFolderBusy);
- each item once: an image's file name follows from its request item (index, mode, seed and a digest of the
  parameters that make its pixels), so the same item always lands on the same name; a resume adopts a complete
  PNG whose own metadata names that file, and sets aside (never deletes) files it cannot account for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import sys
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import FluxnbError, InputError, OutputWriteError, RunFolderBusy
from ..core.files import append_line, atomic_write_bytes, open_lock_file, own_folder, try_lock
from ..core.userfiles import MAX_MANIFEST_BYTES, decode_utf8, describe_path
from ..models.tasks import file_kind

MANIFEST = "manifest.json"
# A batch's images are listed without rewriting the whole manifest after each one (that would cost a batch of n
# images n^2/2 entries of writing): while manifest.json is small it is rewritten after every image (cheap, and
# readers of the file see each image at once); beyond SMALL_MANIFEST_BYTES each entry is appended to MANIFEST_LOG
# (one JSON line, flushed), and manifest.json is rewritten, and the log emptied, once the log is as large as it.
# Every image thus costs a bounded number of bytes written. read_manifest adds the log's entries.
MANIFEST_LOG = "manifest.log"
SMALL_MANIFEST_BYTES = 256 * 1024
PNG_METADATA_KEY = "fluxnb"
LOCK_FILE = ".fluxnb-writer.lock"
# A process started by the lock's holder to write for it (the Jupyter kernel of `fluxnb run`) finds the holder's
# token in this variable and writes under the holder's lock instead of being refused.
LOCK_TOKEN_ENV = "FLUXNB_RUN_LOCK_TOKEN"
SET_ASIDE = "set-aside"  # files a resume could not account for are moved here, never deleted
# The parameters that make an image's pixels: two items with the same values are the same image.
IDENTITY_KEYS = ("mode", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
                 "max_sequence_length", "strength", "init_image", "cache")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


# LoRA adapters (file sha256 and scale each), fused or not, sweep coordinates: absent from images without them (and
# from images made before they existed), which therefore keep their identity.
EXPLORATION_KEYS = ("loras", "lora_fused", "sweep")
# The editing modes' inputs (mask, outpaint margins, control type and image): part of an image's identity only where
# present, so the identity (and file name) of every other image stays what earlier versions gave it.
EDITING_KEYS = ("mask", "expand", "control", "control_image")


def identity(metadata: dict[str, Any]) -> tuple:
    """What makes an image's pixels (its IDENTITY_KEYS, EXPLORATION_KEYS and editing inputs), comparable across runs
    and processes."""
    return (tuple(str(metadata.get(key)) for key in IDENTITY_KEYS)
            + tuple(str(metadata.get(key) or None) for key in EXPLORATION_KEYS)
            + tuple(f"{key}={metadata[key]}" for key in EDITING_KEYS if metadata.get(key) is not None))


def image_file_name(metadata: dict[str, Any]) -> str:
    """The one file name of a request item: `INDEX-KIND-seedSEED-DIGEST.png` (KIND: t2i, i2i, inp, out, edit, ctl:
    fluxnb.models.tasks), whatever is on disk already.

    The digest (of the identity) tells apart items of different requests written into one run folder (the
    notebooks' widget forms); the same item always gets the same name, so a resume can find an image whose
    manifest line a crash prevented.
    """
    kind = file_kind(metadata.get("mode"))
    digest = hashlib.sha256(json.dumps(identity(metadata), ensure_ascii=False).encode("utf-8")).hexdigest()[:8]
    index = metadata.get("index")
    index = index if isinstance(index, int) and index >= 0 else 0
    return f"{index:04d}-{kind}-seed{metadata.get('seed')}-{digest}.png"


def default_outputs_dir() -> Path:
    """`FLUXNB_OUTPUTS`, else outputs/ in the current folder (where the command was typed; a notebook's own folder
    in JupyterLab)."""
    return Path(os.environ.get("FLUXNB_OUTPUTS") or Path.cwd() / "outputs")


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



class RunLock:
    """The OS lock that makes a process the one writer of a run folder, held until released or the process ends.

    The OS lock (fluxnb.core.files.try_lock) on `<run>/.fluxnb-writer.lock`, opened without following links, which then
    holds the holder's pid, host and a token. Within one process the lock is shared (a notebook may reopen its own
    run folder); a child started with the holder's token in FLUXNB_RUN_LOCK_TOKEN writes under the holder's lock
    (`fluxnb run`: the CLI holds it, its kernel writes).
    """

    _held: dict[str, tuple[int, int, str]] = {}  # real path -> (fd, users in this process, token)

    def __init__(self, key: str, token: str | None):
        self.key = key
        self.token = token  # None: written under a parent's lock
        self._released = False

    @classmethod
    def acquire(cls, folder: str | Path) -> RunLock:
        folder = Path(folder)
        key = os.path.realpath(folder)
        if key in cls._held:
            fd, users, token = cls._held[key]
            cls._held[key] = (fd, users + 1, token)
            return cls(key, token)
        fd = open_lock_file(folder / LOCK_FILE, "the run folder's lock file")
        if not try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            if holder.get("token") and holder.get("token") == os.environ.get(LOCK_TOKEN_ENV):
                return cls(key, None)
            who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
                   + (f" ({holder['command']}, since {holder.get('since', '?')})" if holder.get("command") else ""))
            raise RunFolderBusy(
                f"run folder {folder} is being written by {who}; a run folder has one writer at a time, so this "
                "second one is refused (it would make the same images again).",
                fix=f"wait for that process to finish (or stop it: kill {holder.get('pid', 'PID')}), then resume "
                "again if images are missing",
            )
        token = secrets.token_hex(16)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": _command_line()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        cls._held[key] = (fd, 1, token)
        return cls(key, token)

    def release(self) -> None:
        """Let go (the last user in this process closes the file, which releases the OS lock)."""
        if self._released or self.token is None:
            self._released = True
            return
        self._released = True
        fd, users, token = RunLock._held[self.key]
        if users > 1:
            RunLock._held[self.key] = (fd, users - 1, token)
            return
        del RunLock._held[self.key]
        os.close(fd)  # the lock file stays: unlinking it would let two writers lock two different files


def _command_line() -> str:
    """What the holder is, for the refusal message: `fluxnb generate --resume ...`, or the program's name."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    name = "fluxnb" if "fluxnb" in program else os.path.basename(program)
    return " ".join([name, *sys.argv[1:]])[:200]


def lock_holder(folder: str | Path) -> dict[str, Any] | None:
    """The record (pid, host, token, command) of the process holding `folder`'s writer lock, or None when no
    process holds it. Asked by a data-parallel rank at every step: is the holder still the process that launched
    me (the same token), or a later resume (another token), or no one?"""
    fd = open_lock_file(Path(folder) / LOCK_FILE, "the run folder's lock file")
    try:
        if try_lock(fd, shared=True):  # free: the holder is gone (released at once, when fd closes)
            return None
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's record. It writes it right after locking, so for an instant the file is empty or still holds
    the previous holder's record (a process that is gone): both are read again, for at most a second."""
    data: Any = None
    for _ in range(20):
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict) and not _gone(data):
            return data
        time.sleep(0.05)
    return data if isinstance(data, dict) else {}


def _gone(holder: dict[str, Any]) -> bool:
    """A record left by a process of this host that no longer exists (a killed earlier holder)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to another user
        return False
    return False


def _release_quietly(lock: RunLock) -> None:
    lock.release()


def check_run_folder(path: str | Path) -> Path:
    """`path` as a run folder to resume, or an InputError saying what it is instead (a file, nothing...)."""
    path = Path(path)
    fix = "give the folder printed as `run folder: ...` by the run to resume"
    problem = describe_path(path)
    if problem and problem != "is a directory, not a file":
        raise InputError(f"run folder {path} {problem}.", fix=fix)
    if not path.is_dir():
        raise InputError(f"{path} is a file, not a run folder.", fix=fix)
    if not (path / MANIFEST).exists():
        raise InputError(f"{path} is not a run folder ({MANIFEST} is missing).", fix=fix)
    return path


class RunFolder:
    """One run: its folder and manifest. Images are added one by one, each saved as soon as it exists.

    The RunFolder holds the folder's writer lock (RunLock) from create/open until close() or the process ends.
    """

    def __init__(self, path: Path, job: str):
        self.path = Path(path)
        self.job = job
        self.resumed_parameters: dict[str, Any] | None = None  # a new run: nothing it started from before
        self._take_lock()
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

    def _take_lock(self) -> None:
        self._lock = RunLock.acquire(self.path)
        self._finalizer = weakref.finalize(self, _release_quietly, self._lock)

    def close(self) -> None:
        """Release the writer lock now (also done when the object is collected or the process ends)."""
        self._finalizer()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

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
        """Reopen an existing run folder to resume it (as its one writer) and account for every file in it.

        Listed images whose file is gone are dropped (made again); a listed or unlisted PNG that is incomplete
        (truncated) or not fluxnb's is moved to set-aside/ and said so in the manifest; an unlisted complete PNG
        whose own metadata gives its file name (a crash came between the PNG and the manifest line) is adopted.
        """
        path = check_run_folder(path)
        run = cls.__new__(cls)
        run.path = path
        run._take_lock()  # before reading: another writer may be about to change it
        manifest = read_manifest(path)
        run.job, run.manifest = manifest.get("job", path.name), manifest
        run.resumed_parameters = dict(manifest.get("parameters") or {})  # what the run started from (generate())
        manifest.setdefault("failures", [])
        run._account_for_files()
        manifest.update(status="running", resumed=manifest.get("resumed", 0) + 1)
        run._save_manifest()
        return run

    def account_for_files(self) -> None:
        """Adopt complete unlisted images, set aside what cannot be accounted for, and save the manifest (the
        data-parallel owner calls it once its ranks have exited: a rank killed between its PNG and its part line)."""
        self._account_for_files()
        self._save_manifest()

    def _account_for_files(self) -> None:
        """Make the manifest list exactly the complete images on disk (see open())."""
        kept, notes = [], self.manifest.setdefault("set_aside", [])
        before = len(notes)
        for entry in self.manifest["images"]:
            file = self.path / entry["file"]
            if not file.is_file():
                continue  # gone: the item is made again
            why = png_problem(file)
            if why:
                notes.append(self._set_aside(file, f"listed in the manifest but {why}; the image is made again"))
                continue
            kept.append(entry)
        listed = {entry["file"] for entry in kept}
        for file in sorted(self.path.glob("*.png")):
            if file.name in listed:
                continue
            why = png_problem(file)
            metadata = None
            if not why:
                try:
                    metadata = read_png_metadata(file)
                except (FluxnbError, ValueError):
                    why = "carries no fluxnb metadata"
            if isinstance(metadata, dict) and image_file_name(metadata) == file.name:
                kept.append({"file": file.name, **metadata})  # written, but the crash came before its manifest line
                listed.add(file.name)
                continue
            why = why or "its metadata does not match its file name"
            notes.append(self._set_aside(file, f"not listed in the manifest and {why}"))
        for temp in sorted(self.path.glob(".*.tmp")):  # an atomic write a crash interrupted (never renamed)
            notes.append(self._set_aside(temp, "an unfinished temporary file of a write a crash interrupted"))
        kept.sort(key=lambda entry: entry.get("index") if isinstance(entry.get("index"), int) else 0)
        self.manifest["images"] = kept
        for note in notes[before:]:  # said where a person (terminal, notebook cell) sees it
            print(f"fluxnb: set aside {self.path / note['file']} -> {note['moved_to']}: {note['why']}",
                  file=sys.stderr, flush=True)

    def _set_aside(self, file: Path, why: str) -> dict[str, str]:
        """Move a file the run cannot use to set-aside/ (never delete a user's file); return the manifest note."""
        aside = own_folder(self.path, SET_ASIDE, "the run folder's set-aside folder")
        target = aside / file.name.lstrip(".")
        n = 1
        while target.exists():
            n += 1
            target = aside / f"{file.stem.lstrip('.')}.{n}{file.suffix}"
        os.replace(file, target)
        return {"file": file.name, "moved_to": f"{SET_ASIDE}/{target.name}", "why": why,
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def _save_manifest(self) -> None:
        """Rewrite manifest.json whole (it then holds every entry of the log, which is emptied)."""
        data = json.dumps(self.manifest, indent=2, ensure_ascii=False, default=str).encode("utf-8")
        if len(data) > MAX_MANIFEST_BYTES:  # fluxnb.models.params bounds a request well under this: a tampered manifest
            raise OutputWriteError(self.path / MANIFEST, OSError(f"it would hold {len(data):,} bytes, more than the "
                                                                 f"{MAX_MANIFEST_BYTES:,} fluxnb reads back"))
        try:
            atomic_write_bytes(self.path / MANIFEST, data)
            (self.path / MANIFEST_LOG).unlink(missing_ok=True)
        except OSError as exc:
            raise OutputWriteError(self.path / MANIFEST, exc) from None
        self._manifest_bytes, self._log_bytes = len(data), 0

    def _list_image(self, entry: dict[str, Any]) -> None:
        """Add one image's entry: appended to the log, or the manifest rewritten (while it is small, or once the
        log has grown as large as it): a bounded cost per image, whatever the batch's size."""
        self.manifest["images"].append(entry)
        if self._manifest_bytes <= SMALL_MANIFEST_BYTES or self._log_bytes >= self._manifest_bytes:
            self._save_manifest()
            return
        line = json.dumps(entry, ensure_ascii=False, default=str).encode("utf-8")
        try:
            self._log_bytes = append_line(self.path / MANIFEST_LOG, line)
        except OSError as exc:
            raise OutputWriteError(self.path / MANIFEST_LOG, exc) from None

    def record(self, **fields: Any) -> None:
        """Store run-level facts (model, load_report, parameters...) in the manifest now."""
        self.manifest.update(fields)
        self._save_manifest()

    def listed(self, metadata: dict[str, Any]) -> dict[str, Any] | None:
        """The manifest entry of this item (same identity), or None."""
        wanted = identity(metadata)
        return next((entry for entry in self.manifest["images"] if identity(entry) == wanted), None)

    @staticmethod
    def write_png(folder: Path, image, metadata: dict[str, Any]) -> Path:
        """Write one PNG named by image_file_name, atomically, with its metadata (no manifest line: the caller's)."""
        import io

        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt(PNG_METADATA_KEY, json.dumps(metadata, ensure_ascii=False, default=str))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        target = Path(folder) / image_file_name(metadata)
        try:
            atomic_write_bytes(target, buffer.getvalue())
        except OSError as exc:
            raise OutputWriteError(target, exc) from None
        return target

    def save_image(self, image, metadata: dict[str, Any]) -> Path:
        """Write one PNG (named by image_file_name, never overwriting) with its metadata; list it in the manifest."""
        target = self.path / image_file_name(metadata)
        if target.exists():  # not ours to overwrite (a file placed there by hand): kept beside, said so
            self.manifest.setdefault("set_aside", []).append(
                self._set_aside(target, "was in the way of an image of this run (not listed in the manifest)"))
        self.write_png(self.path, image, metadata)
        failures = [f for f in self.manifest["failures"] if f.get("index") != metadata.get("index")]
        if len(failures) != len(self.manifest["failures"]):  # an item that failed before: its failure goes
            self.manifest["failures"] = failures
            self.manifest["images"].append({"file": target.name, **metadata})
            self._save_manifest()
        else:
            self._list_image({"file": target.name, **metadata})
        return target

    def add_images(self, entries: list[dict[str, Any]]) -> None:
        """List images another process wrote (a data-parallel rank's), each at the cost of one (fluxnb.runs.shards)."""
        for entry in entries:
            self._list_image(entry)

    def record_failure(self, failure: dict[str, Any]) -> None:
        """List a failed image in the manifest (replacing an earlier failure of the same image)."""
        self.manifest["failures"] = [f for f in self.manifest["failures"] if f.get("index") != failure["index"]]
        self.manifest["failures"].append(failure)
        self._save_manifest()

    def finish(self, status: str = "complete") -> None:
        self.record(status=status, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def png_problem(path: Path) -> str | None:
    """Why `path` is not a complete PNG ("is truncated", ...), or None. Reads its chunks, not its pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.seek(max(0, size - len(_PNG_END)))
            if handle.read() != _PNG_END:
                return "is truncated (it does not end with the PNG end chunk)"
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"is not a readable PNG ({str(exc)[:120]})"
    return None


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """The fluxnb metadata stored in a PNG written by RunFolder.save_image.

    Returns:
        dict: the metadata fluxnb wrote into the PNG's text chunk (seed, parameters, model, timings, memory...).

    Raises:
        FluxnbError: the file is not a PNG written by fluxnb.
    """
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(PNG_METADATA_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise FluxnbError(f"{path} carries no fluxnb metadata (not written by fluxnb)")
    return json.loads(text)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's manifest, with the entries of its log (MANIFEST_LOG), checked enough to resume from.

    Returns:
        dict: the manifest (status, model, parameters, images, failures...).

    Raises:
        InputError: no manifest there, or one that is not a fluxnb manifest (named, with what is wrong and the fix):
            too large, not UTF-8 JSON, nested too deep, or a field of the wrong type.
    """
    path = Path(run_dir) / MANIFEST
    fix = ("restore manifest.json from a backup, or start a new run (the PNGs keep their own metadata: "
           "fluxnb.read_png_metadata)")
    problem = describe_path(path)
    if problem:
        raise InputError(f"{path} {problem}; {Path(run_dir)} is not a resumable run folder.", fix=fix)
    manifest = read_own_json(path, fix)
    problems = _manifest_problems(manifest)
    if problems:
        raise InputError(f"{path} is not a fluxnb manifest: {'; '.join(problems[:3])}.", fix=fix)
    manifest.setdefault("images", [])
    manifest.setdefault("failures", [])
    listed = {entry["file"] for entry in manifest["images"]}
    for entry in _log_entries(Path(run_dir) / MANIFEST_LOG):
        if entry["file"] not in listed:
            manifest["images"].append(entry)
            listed.add(entry["file"])
    return manifest


def read_own_json(path: Path, fix: str) -> Any:
    """A JSON file fluxnb wrote (a manifest, a run record), read within the limits it writes to: a tampered one is
    refused with what is wrong (too large, not UTF-8, not JSON, nested too deep, a number too long), not a traceback."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path} is {size:,} bytes, larger than the {MAX_MANIFEST_BYTES:,} fluxnb writes; it was not "
                         "written by fluxnb, or was edited.", fix=fix)
    with open(path, "rb") as handle:
        text = decode_utf8(handle.read(MAX_MANIFEST_BYTES + 1), str(path), fix)
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{path} is nested too deep to be a file fluxnb wrote.", fix=fix) from None
    except ValueError as exc:  # JSONDecodeError, and a number of thousands of digits (int conversion limit)
        raise InputError(f"{path} is not valid JSON ({str(exc)[:200]}); it was not written by fluxnb, or was damaged.",
                         fix=fix) from None


def _log_entries(path: Path) -> list[dict[str, Any]]:
    """The image entries of a manifest log; a line a crash cut short (or one that is not an entry) is skipped: the
    PNG it named carries its own metadata, and the resume adopts it."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_MANIFEST_BYTES:
        return []
    entries = []
    with open(path, "rb") as handle:
        for line in handle.read(MAX_MANIFEST_BYTES).splitlines():
            try:
                entry = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError):
                continue
            if isinstance(entry, dict) and not _entry_problems(entry, "log entry"):
                entries.append(entry)
    return entries


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Fields a resume reads, and the types they must have (a manifest someone edited is refused, not crashed on).
_TOP_TYPES: dict[str, tuple[type, ...]] = {"job": (str,), "status": (str,), "model": (dict, type(None)),
                                           "parameters": (dict, type(None)), "set_aside": (list,),
                                           "parallel": (dict,), "resumed": (int,)}
_ENTRY_TYPES: dict[str, tuple[type, ...]] = {"seed": (int,), "prompt": (str,), "sweep": (dict, type(None)),
                                             "parallel": (dict,), "peak_memory": (dict,), "seconds": (int, float)}


def _entry_problems(entry: dict[str, Any], where: str) -> list[str]:
    problems = []
    file = entry.get("file")
    if not isinstance(file, str):
        problems.append(f"{where} has no \"file\" name")
    elif Path(file).name != file or file.startswith("."):
        problems.append(f"{where}.file {file[:80]!r} is not a plain file name in the run folder")
    index = entry.get("index", 0)
    if not _is_int(index) or index < 0:
        problems.append(f"{where}.index must be a non-negative integer, got {str(index)[:40]!r}")
    for key, types in _ENTRY_TYPES.items():
        if key in entry and not isinstance(entry[key], types):
            problems.append(f"{where}.{key} is a JSON {type(entry[key]).__name__}")
    return problems


def _manifest_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"the top level is a JSON {type(manifest).__name__}, not an object"]
    images = manifest.get("images", [])
    if not isinstance(images, list):
        return [f"`images` is a JSON {type(images).__name__}, not a list"]
    problems = [f"`{key}` is a JSON {type(manifest[key]).__name__}" for key, types in _TOP_TYPES.items()
                if key in manifest and not isinstance(manifest[key], types)]
    for i, entry in enumerate(images):
        if not isinstance(entry, dict):
            problems.append(f"images[{i}] is a JSON {type(entry).__name__}, not an object")
        else:
            problems += _entry_problems(entry, f"images[{i}]")
    failures = manifest.get("failures", [])
    if not isinstance(failures, list):
        problems.append("`failures` is not a list")
    else:
        problems += [f"failures[{i}] is not an object with an integer index" for i, failure in enumerate(failures)
                     if not isinstance(failure, dict) or not _is_int(failure.get("index", 0))]
    model = manifest.get("model")
    if isinstance(model, dict) and "name" in model and not isinstance(model["name"], str):
        problems.append("`model.name` is not a name")
    return problems
