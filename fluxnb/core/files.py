"""Files and folders fluxnb writes: atomically, under one kind of lock, and never outside a folder it made.

The rule (README "Guarantees"): every write, move or delete fluxnb does stays inside a folder it made and can list.
A path that leaves that folder (`..`, an absolute path) or a symbolic link placed where fluxnb expects its own file
or folder is refused with an error naming it, never followed: a link planted as a run folder's lock file, its
`set-aside/` or `.fluxnb-parts/` folder, or a compile-cache key would otherwise make fluxnb truncate, move into or
delete what the link points at.

One lock (fcntl.flock on a file opened without following links: the kernel releases it when its process dies) and
one atomic write (a temporary file in the same folder, fsync, rename) serve the whole package.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError

_LINK_FIX = "remove the link (`rm PATH` removes the link, not what it points to); fluxnb makes its own again"


def _link_refused(path: Path, what: str) -> InputError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return InputError(f"{what} {path} is a symbolic link (to {target}); fluxnb writes only into files and folders "
                      "it made itself, so it does not follow it.", fix=_LINK_FIX.replace("PATH", str(path)))


def own_folder(parent: str | os.PathLike, name: str, what: str = "folder") -> Path:
    """`parent/name` as a real folder, made when missing: a symbolic link, a file or a name that leaves `parent`
    is refused (InputError naming it), so that what fluxnb moves or writes into it stays inside `parent`."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise InputError(f"{what} name {name!r} is not a plain folder name inside {parent}.",
                         fix="use a name without '/' or '..'")
    path = Path(parent) / name
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise _link_refused(path, what)
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {path} exists but is not a folder.",
                         fix=f"move that file away (fluxnb needs a folder of that name inside {parent})")
    return path


def open_lock_file(path: str | os.PathLike, what: str = "lock file") -> int:
    """A file descriptor of the lock file `path` (created when missing), opened without following a symbolic link,
    and refused unless it is a regular file: a planted link would otherwise have fluxnb write into its target."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_refused(path, what) from None
        if exc.errno == errno.EISDIR:
            raise InputError(f"{what} {path} is a folder, not a file.",
                             fix="move that folder away; fluxnb makes the lock file again") from None
        read_only = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}"
                         + (" (the folder is read-only)" if read_only else ""),
                         fix="make the folder writable (chmod u+w), or copy it to a writable place") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{what} {path} is not a regular file (a pipe or a device).",
                         fix="move it away; fluxnb makes the lock file again")
    return fd


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Take the OS lock on an open lock file without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "lock file") -> Iterator[None]:
    """Hold the OS lock on `path` (waiting for it) while inside; released when the block ends or the process dies."""
    fd = open_lock_file(path, what)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: readers never see half a file,
    and a crash leaves either the old file or the new one (plus, at worst, a `.NAME.*.tmp` file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # replaces a link itself, never what it points to
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False, default=str).encode("utf-8"))


def append_line(path: str | os.PathLike, line: bytes) -> int:
    """Append one line to `path` (made when missing, never through a link) and flush it to disk; the file's size
    after it. A crash leaves at worst a torn last line, which a reader skips."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_refused(Path(path), "file") from None
        raise
    try:
        os.write(fd, line if line.endswith(b"\n") else line + b"\n")
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def real_subfolders(parent: str | os.PathLike) -> list[Path]:
    """The folders directly inside `parent` that are real folders (symbolic links left out), sorted by name."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if stat.S_ISDIR(os.lstat(p).st_mode))


def remove_own_folder(parent: str | os.PathLike, name: str, what: str = "folder") -> Path:
    """Delete the real folder `parent/name` and everything in it; refused (InputError) when `name` is not one of
    the folders real_subfolders(parent) lists (a path, `..`, a symbolic link, a file, nothing)."""
    parent = Path(parent)
    names = [p.name for p in real_subfolders(parent)]
    if name not in names:
        raise InputError(f"{what} {name!r} is not one of the folders in {parent}; only those are removed.",
                         fix=f"use one of: {', '.join(names) or '(none: nothing to remove)'}")
    folder = parent / name
    shutil.rmtree(folder)
    return folder
