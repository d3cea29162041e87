"""`fluxnb diagnose [FILE]`: name the known issues in a traceback or log; exit 1 when none matches."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import threading
from typing import BinaryIO, TextIO

from ..core.errors import RequestError
from ..core.userfiles import describe_path
from ..knowledge.diagnosis import diagnose, format_diagnoses

# Tracebacks end a log: the last TAIL_BYTES are searched. A stream (stdin, a device) is read to its end, keeping
# only that tail in memory, but never past MAX_STREAM_BYTES (/dev/zero has no end).
TAIL_BYTES = 4 * 1024 * 1024
MAX_STREAM_BYTES = 256 * 1024 * 1024
# Opening a named pipe waits for a program to open it for writing: at most this long (--wait), never forever.
PIPE_WAIT_SECONDS = 30.0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("diagnose", help="name the known issues in a traceback or log (stdin or FILE); "
                            "exit 1 when none matches")
    parser.add_argument("file", nargs="?", metavar="FILE", help="file holding the traceback (default: stdin)")
    parser.add_argument("--json", action="store_true", help="print the matches as JSON")
    parser.add_argument("--wait", type=float, default=PIPE_WAIT_SECONDS, metavar="SECONDS",
                        help=f"FILE a named pipe: how long to wait for a program to write into it (default "
                        f"{PIPE_WAIT_SECONDS:.0f})")
    return parser


def open_within(path: str, seconds: float) -> BinaryIO | None:
    """open(path, "rb") given at most `seconds`: a named pipe's open blocks until a writer comes, so it runs in a
    helper thread; None when no writer came in time (the thread stays blocked until the process ends)."""
    opened: list[BinaryIO] = []
    failed: list[OSError] = []

    def attempt() -> None:
        try:
            opened.append(open(path, "rb"))  # noqa: SIM115 - handed to the caller, who closes it
        except OSError as exc:
            failed.append(exc)

    opener = threading.Thread(target=attempt, daemon=True)
    opener.start()
    opener.join(seconds)
    if failed:
        raise failed[0]
    return opened[0] if opened else None


def read_tail(handle: BinaryIO | TextIO, regular_size: int | None) -> tuple[bytes, str | None]:
    """The last TAIL_BYTES of a file or stream, and a note when that is not all of it."""
    if regular_size is not None:
        if regular_size > TAIL_BYTES:
            handle.seek(regular_size - TAIL_BYTES)
        data = handle.read(TAIL_BYTES)
        note = f"the input is {regular_size:,} bytes: its last {TAIL_BYTES:,} were searched" \
            if regular_size > TAIL_BYTES else None
        return data, note
    tail, total = b"", 0
    while chunk := handle.read(1024 * 1024):
        if isinstance(chunk, str):  # a text stream (stdin replaced by a test or an embedding program)
            chunk = chunk.encode("utf-8", errors="replace")
        total += len(chunk)
        tail = (tail + chunk)[-TAIL_BYTES:]
        if total >= MAX_STREAM_BYTES:
            return tail, (f"stopped reading after {MAX_STREAM_BYTES:,} bytes (the input does not end); the last "
                          f"{TAIL_BYTES:,} read were searched")
    note = f"the input was {total:,} bytes: its last {TAIL_BYTES:,} were searched" if total > TAIL_BYTES else None
    return tail, note


def run(args: argparse.Namespace) -> int:
    fix = "give a readable file, or pipe the traceback into `fluxnb diagnose`"
    if args.file in (None, "-"):
        data, note = read_tail(getattr(sys.stdin, "buffer", sys.stdin), None)
    else:
        problem = describe_path(args.file)
        if problem and not problem.startswith(("is a device", "is a pipe")):  # streams are read, bounded
            raise RequestError("FILE", f"{args.file} {problem}.", fix=fix)
        try:
            handle = open_within(args.file, args.wait)
            if handle is None:
                raise RequestError("FILE", f"{args.file} is a named pipe and no program wrote into it within "
                                   f"{args.wait:g} s.", fix="start the program that writes the traceback into it "
                                   "first, or pipe it in: `PROGRAM 2>&1 | fluxnb diagnose`")
            with handle:
                mode = os.fstat(handle.fileno()).st_mode
                data, note = read_tail(handle, os.fstat(handle.fileno()).st_size if stat.S_ISREG(mode) else None)
        except OSError as exc:
            raise RequestError("FILE", f"cannot read {args.file}: {exc.strerror or exc}.", fix=fix) from None
    if note:
        print(f"fluxnb diagnose: {note}", file=sys.stderr)
    diagnoses = diagnose(data.decode("utf-8", errors="replace"))
    print(json.dumps([d.to_dict() for d in diagnoses], indent=2) if args.json else format_diagnoses(diagnoses))
    return 0 if diagnoses else 1
