"""Files a user hands to fluxnb, read with limits, so that no file can make fluxnb hang, fill memory or crash.

Every YAML fluxnb reads from a user (`fluxnb run -f`, `-p` values, `--prompts`, model_config.yaml) goes through
`load_yaml`: the file must be a regular file (a directory, a device such as /dev/zero or a symlink loop is named
as what it is), at most `max_bytes`, UTF-8; the document at most MAX_DEPTH levels deep and MAX_NODES nodes once
its aliases are expanded (a 234-byte "alias bomb" expands to millions), and no mapping may repeat a key (YAML
would silently keep the last one). Errors quote positions, never the document: a message cannot expand it.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import InputError

MAX_YAML_BYTES = 512 * 1024  # far above any real parameters file, prompt list or model_config.yaml
MAX_DEPTH = 32  # nesting levels (parameters are flat; model_config.yaml uses 4)
MAX_NODES = 100_000  # scalars, lists and mappings, counted with every alias expanded
# fluxnb's own JSON files read back (a run folder's manifest and log, fluxnb-run.json): the read limit, which the
# write side keeps to (fluxnb.models.params bounds a request's manifest at validation, well under it).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def describe_path(path: Path) -> str | None:
    """Why `path` is not a readable regular file ("does not exist", "is a directory", ...), or None when it is."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (the link points, directly or not, to itself)"
        if exc.errno == errno.EACCES:
            return "cannot be read (permission denied)"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        return "is a device (such as /dev/zero), not a file"
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        return "is a pipe or socket, not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def read_text_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_YAML_BYTES,
                   fix: str = "give the path of a UTF-8 text file") -> str:
    """The text of a user's file, refused (InputError naming `what` and the file) unless it is a regular UTF-8
    file of at most `max_bytes`."""
    file = Path(path)
    problem = describe_path(file)
    if problem:
        raise InputError(f"{what} {file} {problem}.", fix=fix)
    size = file.stat().st_size
    if size > max_bytes:
        raise InputError(f"{what} {file} is {size:,} bytes; the limit is {max_bytes:,} bytes.",
                         fix=f"{fix} (split a long batch into several runs)")
    with open(file, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return decode_utf8(data, f"{what} {file}", fix)


def decode_utf8(data: bytes, what: str, fix: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); other encodings are named, with the position."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{what} is UTF-16 encoded; fluxnb reads UTF-8.",
                         fix=f"{fix}: save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 IN > OUT`)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{what} is not UTF-8: byte 0x{data[exc.start]:02x} at line {line} (offset {exc.start}) "
                         "cannot be decoded (Latin-1 or Windows-1252 text?).",
                         fix=f"{fix}: save it as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8 IN > OUT`)") from None
    return text.removeprefix("\ufeff")


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on depth and nodes, and duplicate mapping keys refused."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0
        self.open_anchors: set[str] = set()  # anchors of the nodes being composed (an alias to one is a cycle)

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # noqa: D102 - PyYAML's hook
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Limit(f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            if self.nodes > MAX_NODES:
                raise _Limit(f"more than {MAX_NODES:,} nodes", self.peek_event().start_mark)
            event = self.peek_event()
            if self.check_event(AliasEvent):
                mark = event.start_mark
                if event.anchor in self.open_anchors:
                    raise _Limit("a recursive alias (a node that contains itself)", mark)
                node = super().compose_node(parent, index)
                self.nodes += _expanded_size(node, {}, mark) - 1
                if self.nodes > MAX_NODES:
                    raise _Limit(f"aliases that expand to more than {MAX_NODES:,} nodes (an alias bomb?)", mark)
                return node
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                self.open_anchors.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.open_anchors.discard(anchor)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:  # noqa: D102 - PyYAML's hook
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and not (key_node.tag == "tag:yaml.org,2002:merge"):
                key = self.construct_object(key_node, deep=False)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue
                if first is not key_node.start_mark:
                    raise _Limit(f"duplicate key {str(key)[:80]!r} (first at line {first.line + 1}; YAML would "
                                 "silently keep only the last value)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


class _Limit(Exception):
    def __init__(self, reason: str, mark: Any):
        super().__init__(reason)
        self.reason = reason
        self.mark = mark


def _expanded_size(node: Node, memo: dict[int, int], mark: Any) -> int:
    """Nodes under `node` with every alias expanded (each shared node counted once per use, computed once)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if isinstance(node, ScalarNode):
        return 1
    memo[key] = 1  # a cycle cannot occur: aliases to open anchors are refused while composing
    children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, memo, mark)
        if total > MAX_NODES:
            break
    memo[key] = total
    return total


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def parse_yaml(text: str, what: str, fix: str = "correct the YAML there") -> Any:
    """Parse YAML text with the limits above; errors name `what` and the position, never the content."""
    loader = None
    try:
        loader = _LimitedLoader(text)
        return loader.get_single_data()
    except _Limit as exc:
        raise InputError(f"{what}: {exc.reason}{_where(exc.mark)}; refused.", fix=fix) from None
    except yaml.YAMLError as exc:  # ComposerError, ConstructorError, ReaderError, ScannerError...
        mark = getattr(exc, "problem_mark", None)
        problem = str(getattr(exc, "problem", None) or getattr(exc, "reason", None) or type(exc).__name__)[:200]
        raise InputError(f"{what}: YAML syntax error{_where(mark)}: {problem}.", fix=fix) from None
    except RecursionError:
        raise InputError(f"{what}: nesting too deep to read; refused.", fix=fix) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_YAML_BYTES,
              fix: str = "give the path of a UTF-8 YAML file") -> Any:
    """A user's YAML file: checked as a file (read_text_file), then parsed with the limits (parse_yaml)."""
    text = read_text_file(path, what, max_bytes=max_bytes, fix=fix)
    return parse_yaml(text, f"{what} {Path(path)}", fix="correct the YAML there")
