"""The knowledge base (knowledge.yaml): known errors and version rules of the FLUX stack, as data.

One file, read by the doctor, the error diagnosis and the troubleshooting replay. This module loads it,
checks its schema (every problem at once), and evaluates its rules against any set of package versions
and GPU facts, installed or hypothetical: `evaluate({"diffusers": "0.35.1", "transformers": "4.57.0"})`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..core.environment import RULE_PACKAGES  # the packages the rules may name: one list, in environment.py
from ..core.errors import InputError, KnowledgeError
from ..models.backends import REGISTRY

KNOWLEDGE_FILE = "knowledge.yaml"
SEVERITIES = ("blocking", "degraded", "info")
GPU_KEYS = {"cuda", "min_capability", "max_capability", "torch_cuda", "driver"}
PAIR_CHECKS = ("torch-torchvision",)
TORCHVISION_MINOR_OFFSET = 15  # torch 2.N pairs with torchvision 0.(N+15): 2.8 <-> 0.23, 2.13 <-> 0.28


@dataclass(frozen=True)
class Alternative:
    versions: dict[str, SpecifierSet]
    absent: tuple[str, ...] = ()
    pair: str | None = None
    gpu: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    severity: str
    affects: tuple[str, ...]
    symptoms: tuple[re.Pattern, ...]
    when: tuple[Alternative, ...]
    cause: str
    fix: str
    source: str
    guide: str | None = None
    known_issues: tuple[int, ...] = ()

    def matches_text(self, text: str) -> list[str]:
        """The symptom patterns found in `text` (their matched text)."""
        return [m.group(0) for p in self.symptoms if (m := p.search(text))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "severity": self.severity,
            "affects": list(self.affects),
            "cause": self.cause,
            "fix": self.fix,
            "source": self.source,
            "guide": self.guide,
            "known_issues": list(self.known_issues),
        }


@dataclass(frozen=True)
class KnowledgeBase:
    entries: tuple[Entry, ...]
    lines: dict[str, dict[str, Any]]  # name -> {"description": str, "versions": {pkg: SpecifierSet}}
    guide_ranges: dict[str, SpecifierSet]
    paths: dict[str, str]

    def get(self, entry_id: str) -> Entry:
        for entry in self.entries:
            if entry.id == entry_id:
                return entry
        raise KeyError(f"no knowledge entry {entry_id!r}; known: {', '.join(e.id for e in self.entries)}")

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]


@dataclass(frozen=True)
class GpuFacts:
    """What the rules may ask about the GPU; None = unknown (a condition on it then does not match)."""

    cuda: bool | None = None
    capability: str | None = None  # "8.9"
    torch_cuda: str | None = None  # torch.version.cuda, "13.0"
    driver: str | None = None  # "550.54.15"


@dataclass(frozen=True)
class Finding:
    """A knowledge entry whose `when` matched a version set, with the alternative that matched."""

    entry: Entry
    note: str
    relevance: str  # "blocks" | "affects" | "other" for the chosen model type ("affects" when no model given)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.entry.id, "title": self.entry.title, "severity": self.entry.severity,
                "relevance": self.relevance, "note": self.note, "cause": self.entry.cause, "fix": self.entry.fix}


# ---------------------------------------------------------------- loading and schema


def _specifier(value: Any, where: str, problems: list[str]) -> SpecifierSet | None:
    if not isinstance(value, str):
        problems.append(f"{where}: must be a PEP 440 specifier string, got {value!r}")
        return None
    try:
        return SpecifierSet(value)
    except InvalidSpecifier:
        problems.append(f"{where}: {value!r} is not a valid PEP 440 specifier")
        return None


def _versions(raw: Any, where: str, problems: list[str]) -> dict[str, SpecifierSet]:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must map package names to specifiers")
        return {}
    out = {}
    for package, spec in raw.items():
        name = canonicalize_name(str(package))
        if name not in RULE_PACKAGES:
            problems.append(f"{where}.{package}: unknown package. Allowed: {', '.join(RULE_PACKAGES)}")
        parsed = _specifier(spec, f"{where}.{package}", problems)
        if parsed is not None:
            out[name] = parsed
    return out


def _alternative(raw: Any, where: str, paths: dict, problems: list[str]) -> Alternative | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    unknown = set(raw) - {"versions", "absent", "pair", "gpu", "note"}
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    versions = _versions(raw.get("versions", {}), f"{where}.versions", problems)
    pair = raw.get("pair")
    if pair is not None and pair not in PAIR_CHECKS:
        problems.append(f"{where}.pair: {pair!r} unknown. Allowed: {', '.join(PAIR_CHECKS)}")
    gpu = raw.get("gpu", {})
    if not isinstance(gpu, dict) or set(gpu) - GPU_KEYS:
        problems.append(f"{where}.gpu: must be a mapping with keys among {sorted(GPU_KEYS)}")
        gpu = {}
    for key in ("torch_cuda", "driver"):
        if key in gpu:
            _specifier(gpu[key], f"{where}.gpu.{key}", problems)
    if not (versions or pair or gpu):
        problems.append(f"{where}: needs at least one of versions, pair, gpu")
    absent = tuple(canonicalize_name(p) for p in raw.get("absent", []))
    return Alternative(versions=versions, absent=absent, pair=pair, gpu=gpu, note=str(raw.get("note", "")))


_ENTRY_KEYS = {"id", "title", "severity", "affects", "symptoms", "when", "cause", "fix", "source", "guide",
               "known_issues"}
_REQUIRED = ("id", "title", "severity", "affects", "symptoms", "when", "cause", "fix", "source")


def _check_entry_keys(raw: dict, where: str, seen: set[str], problems: list[str]) -> None:
    """The entry's keys, its id (unique, lower-case-with-dashes) and its severity."""
    for key in _REQUIRED:
        if key not in raw:
            problems.append(f"{where}: missing key {key!r}")
    for key in set(raw) - _ENTRY_KEYS:
        problems.append(f"{where}: unknown key {key!r}")
    entry_id = raw.get("id")
    if not isinstance(entry_id, str) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", entry_id or ""):
        problems.append(f"{where}.id: must be lower-case-with-dashes, got {entry_id!r}")
    elif entry_id in seen:
        problems.append(f"{where}.id: duplicate id {entry_id!r}")
    seen.add(str(entry_id))
    if raw.get("severity") not in SEVERITIES:
        problems.append(f"{where}.severity: must be one of {', '.join(SEVERITIES)}, got {raw.get('severity')!r}")


def _symptoms(raw: dict, where: str, problems: list[str]) -> list[re.Pattern]:
    """The entry's symptom regexes, compiled; each must bound its repeats, so that a search stays linear."""
    symptoms = []
    if not isinstance(raw.get("symptoms"), list) or not raw.get("symptoms"):
        problems.append(f"{where}.symptoms: must be a non-empty list of regexes")
    for text in raw.get("symptoms") or []:
        try:
            symptoms.append(re.compile(text))
        except (re.error, TypeError) as exc:
            problems.append(f"{where}.symptoms: {text!r} is not a valid regex ({exc})")
            continue
        if _UNBOUNDED.search(re.sub(r"\\.", "", text)):
            problems.append(f"{where}.symptoms: {text!r} repeats without bound (*, + or {{n,}}), which makes a "
                            "search of a long log line slow (quadratic); use a bounded repeat such as {0,400}")
    return symptoms


def _entry(i: int, raw: Any, paths: dict, seen: set[str], problems: list[str]) -> Entry | None:
    """One entry of `entries:`, checked; None where a required key is missing (the problem is listed)."""
    if not isinstance(raw, dict):
        problems.append(f"entries[{i}]: must be a mapping")
        return None
    where = f"entries[{i}] ({raw.get('id', '?')})"
    _check_entry_keys(raw, where, seen, problems)
    affects = raw.get("affects") or []
    for path in affects:
        if path not in paths:
            problems.append(f"{where}.affects: {path!r} is not declared under paths:")
    symptoms = _symptoms(raw, where, problems)
    alternatives = []
    for j, alt in enumerate(raw.get("when") or []):
        parsed = _alternative(alt, f"{where}.when[{j}]", paths, problems)
        if parsed:
            alternatives.append(parsed)
    for key in ("title", "cause", "fix", "source"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            problems.append(f"{where}.{key}: must be non-empty text")
    if not all(k in raw for k in _REQUIRED):
        return None
    return Entry(
        id=raw.get("id"), title=raw["title"], severity=raw["severity"], affects=tuple(affects),
        symptoms=tuple(symptoms), when=tuple(alternatives), cause=raw["cause"].strip(),
        fix=raw["fix"].strip(), source=raw["source"], guide=raw.get("guide"),
        known_issues=tuple(raw.get("known_issues") or ()),
    )


def _lines(data: dict, problems: list[str]) -> dict[str, dict[str, Any]]:
    """The supported lines (`lines:`), each with its description and version specifiers."""
    lines = {}
    for name, line in (data.get("lines") or {}).items():
        lines[name] = {"description": line.get("description", ""),
                       "versions": _versions(line.get("versions"), f"lines.{name}.versions", problems)}
    return lines


def parse_knowledge(data: Any, origin: str = KNOWLEDGE_FILE) -> KnowledgeBase:
    """Validate a parsed knowledge document; raise KnowledgeError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise KnowledgeError(f"{origin}: top level must be a mapping with `schema: 1`")
    paths = data.get("paths") or {}
    seen: set[str] = set()
    entries = [entry for i, raw in enumerate(data.get("entries") or [])
               if (entry := _entry(i, raw, paths, seen, problems)) is not None]
    lines = _lines(data, problems)
    guide_ranges = _versions(data.get("guide_ranges") or {}, "guide_ranges", problems)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise KnowledgeError(f"{origin} is invalid ({len(problems)} problem(s)):\n{listed}")
    return KnowledgeBase(tuple(entries), lines, guide_ranges, dict(paths))


# An unescaped *, + or {n,}: symptom patterns must bound every repeat, so that searching a log stays linear.
_UNBOUNDED = re.compile(r"[*+]|\{\d*,\}")


@lru_cache(maxsize=4)
def load_knowledge(path: str | Path | None = None) -> KnowledgeBase:
    """The package's knowledge.yaml (or another file), parsed and validated."""
    if path is None:
        text = resources.files("fluxnb").joinpath(KNOWLEDGE_FILE).read_text(encoding="utf-8")
        origin = KNOWLEDGE_FILE
    else:
        text, origin = Path(path).read_text(encoding="utf-8"), str(path)
    return parse_knowledge(yaml.safe_load(text), origin)


# ---------------------------------------------------------------- evaluating rules


# Keys a version set may carry besides packages: facts about a (hypothetical) GPU machine.
GPU_FACT_KEYS = ("driver", "torch-cuda", "capability")


def parse_versions(text: str | dict[str, str] | None) -> dict[str, str]:
    """'diffusers=0.35.1,transformers=4.57.0' (or a dict) -> {canonical name: version}; bad input names itself.

    Besides packages it takes GPU facts: driver=550.54.15, torch-cuda=13.0, capability=8.9 (or capability=none
    for a machine without a CUDA GPU). In text, every part must be NAME=VERSION (or NAME==VERSION) with NAME one
    of the packages the rules know or a GPU fact: a range (diffusers>=0.35), an empty name or a misspelt package
    would otherwise be evaluated as if the set were fine.
    """
    if text is None:
        return {}
    known = (*RULE_PACKAGES, *GPU_FACT_KEYS)
    fix = ("give NAME=VERSION pairs separated by commas, e.g. diffusers=0.35.1,transformers=4.57.0; NAME is one of "
           + ", ".join(known))
    if isinstance(text, dict):
        items = list(text.items())
    else:
        parts = [part.strip() for part in str(text).split(",")]
        if not any(parts):
            raise InputError("--versions is empty.", fix=fix)
        items = []
        for part in parts:
            match = _VERSION_PAIR.fullmatch(part)
            if not match:
                raise InputError(f"--versions: {part[:80]!r} is not NAME=VERSION.", fix=fix)
            name = canonicalize_name(match["name"])
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise InputError(f"--versions: {match['name'][:80]!r} is not a package the knowledge base knows"
                                 f"{hint}.", fix=fix)
            items.append((name, match["version"]))
    out = {}
    for name, version in items:
        name = canonicalize_name(str(name).strip().rstrip("="))
        version = str(version).strip().lstrip("=")
        if name == "capability" and version.lower() == "none":
            out[name] = "none"
            continue
        try:
            if len(version) > 64:
                raise InvalidVersion(version)
            Version(version)
        except (InvalidVersion, ValueError):
            raise InputError(f"--versions: {name}={version[:40]!r}{'...' if len(version) > 40 else ''} is not a "
                             "valid version.", fix=fix) from None
        out[name] = version
    return out


_VERSION_PAIR = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,100})==?(?P<version>[^=<>!~,\s]{1,200})")


def split_gpu_facts(versions: dict[str, str]) -> tuple[dict[str, str], GpuFacts | None]:
    """Separate the GPU facts of a version set from its packages (None when it names no GPU fact)."""
    packages = {k: v for k, v in versions.items() if k not in GPU_FACT_KEYS}
    if not any(k in versions for k in GPU_FACT_KEYS):
        return packages, None
    capability = versions.get("capability")
    cuda = None if capability is None else capability != "none"
    return packages, GpuFacts(cuda=cuda, capability=capability if cuda else None,
                              torch_cuda=versions.get("torch-cuda"), driver=versions.get("driver"))


def torch_torchvision_mismatch(torch_version: str, torchvision_version: str) -> str | None:
    """Why this torchvision does not belong to this torch, or None when they pair."""
    tv, tvv = Version(torch_version), Version(torchvision_version)
    if tv.major == 2 and tvv.major == 0 and tvv.minor != tv.minor + TORCHVISION_MINOR_OFFSET:
        return (f"torchvision {torchvision_version} pairs with torch 2.{tvv.minor - TORCHVISION_MINOR_OFFSET}, "
                f"not torch {torch_version} (which needs torchvision 0.{tv.minor + TORCHVISION_MINOR_OFFSET}.x)")
    if tv.local and tvv.local and tv.local != tvv.local:
        return f"different builds: torch {torch_version} vs torchvision {torchvision_version}"
    return None


def _version_ok(version: str, spec: SpecifierSet) -> bool:
    # Local labels (+cpu, +cu128) and pre-releases count as their public version.
    return spec.contains(Version(version).public, prereleases=True)


def _gpu_ok(conditions: dict[str, Any], gpu: GpuFacts | None) -> bool:
    if not conditions:
        return True
    if gpu is None:
        return False
    for key, want in conditions.items():
        if key == "cuda":
            if gpu.cuda is None or gpu.cuda != want:
                return False
        elif key in ("min_capability", "max_capability"):
            if gpu.capability is None:
                return False
            have, bound = Version(gpu.capability), Version(str(want))
            if (key == "min_capability" and have < bound) or (key == "max_capability" and have > bound):
                return False
        elif key in ("torch_cuda", "driver"):
            value = gpu.torch_cuda if key == "torch_cuda" else gpu.driver
            if value is None or not SpecifierSet(want).contains(Version(value), prereleases=True):
                return False
    return True


def alternative_matches(alt: Alternative, versions: dict[str, str], gpu: GpuFacts | None) -> str | None:
    """The alternative's note (or a generated one) when it holds for these versions and GPU facts, else None."""
    for package, spec in alt.versions.items():
        if package not in versions or not _version_ok(versions[package], spec):
            return None
    if any(p in versions for p in alt.absent):
        return None
    note = alt.note
    if alt.pair == "torch-torchvision":
        if "torch" not in versions or "torchvision" not in versions:
            return None
        why = torch_torchvision_mismatch(versions["torch"], versions["torchvision"])
        if why is None:
            return None
        note = f"{why}. {note}".strip() if not note else f"{why} ({note})"
    if not _gpu_ok(alt.gpu, gpu):
        return None
    if not note:
        note = ", ".join(f"{p} {versions[p]} matches {s}" for p, s in alt.versions.items())
    return note


def relevance(entry: Entry, model_type: str | None, kb: KnowledgeBase) -> str:
    """'blocks' (blocking and on the model's path), 'affects' (on its path), 'other' (a path it does not take)."""
    if model_type is None:
        return "blocks" if entry.severity == "blocking" else "affects"
    backend = REGISTRY.get(model_type)  # the paths a type takes are facts of its backend record
    uses = set(backend.uses) if backend else {"core"}
    if backend and backend.needs_cuda:
        uses.add("cuda")
    if not uses & set(entry.affects):
        return "other"
    return "blocks" if entry.severity == "blocking" else "affects"


def evaluate(
    versions: dict[str, str] | str,
    gpu: GpuFacts | None = None,
    model_type: str | None = None,
    kb: KnowledgeBase | None = None,
) -> list[Finding]:
    """Every knowledge entry whose rules hold for `versions` (+ GPU facts), ranked: blocking first."""
    kb = kb or load_knowledge()
    if isinstance(versions, str):
        versions = parse_versions(versions)
    else:
        versions = {canonicalize_name(k): v for k, v in versions.items()}
    versions, given_gpu = split_gpu_facts(versions)
    gpu = gpu or given_gpu
    findings = []
    for entry in kb.entries:
        for alt in entry.when:
            note = alternative_matches(alt, versions, gpu)
            if note is not None:
                findings.append(Finding(entry, note, relevance(entry, model_type, kb)))
                break
    order = {"blocks": 0, "affects": 1, "other": 2}
    return sorted(findings, key=lambda f: order[f.relevance])


def supported_line(versions: dict[str, str], kb: KnowledgeBase | None = None) -> str | None:
    """The name of the tested line ('default' / 'guide') these versions fall in, or None."""
    kb = kb or load_knowledge()
    versions = {canonicalize_name(k): v for k, v in versions.items()}
    for name, line in kb.lines.items():
        specs = line["versions"]
        if all(p in versions and _version_ok(versions[p], s) for p, s in specs.items() if p != "huggingface-hub") and (
            "huggingface-hub" not in versions or _version_ok(versions["huggingface-hub"], specs["huggingface-hub"])
        ):
            return name
    return None
