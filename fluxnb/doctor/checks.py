"""The environment doctor: can the chosen model generate on this machine, and if not, why and how to fix it.

`check_environment()` returns a DoctorReport (rows of check / ok|warn|fail / what was found / the fix; an
HTML table in notebooks). `check_environment(versions="diffusers=0.35.1,transformers=4.57.0")` evaluates a
hypothetical version set against the knowledge base instead of this machine. `fluxnb doctor` prints the same
and exits 1 when something blocks generation with the chosen model.
"""

from __future__ import annotations

import html
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ..core.environment import GENERATION_PACKAGES, gpu_facts, installed_versions, package_version
from ..core.errors import ModelUnavailableError
from ..core.hub import hf_cache_dir, hf_token, is_cached, offline_mode
from ..core.units import GIB
from ..knowledge.base import (
    Finding,
    GpuFacts,
    KnowledgeBase,
    evaluate,
    load_knowledge,
    parse_versions,
    split_gpu_facts,
    supported_line,
    torch_torchvision_mismatch,
)
from ..models import compile_cache
from ..models.attention import choose_attention
from ..models.backends import Backend, compile_wanted, get_backend
from ..models.config import ModelConfig, ModelSpec, load_config
from ..models.selection import resolve_model
from ..models.tasks import TASKS, TEXT_TO_IMAGE, missing_pipeline
from ..models.tiny import tiny_cache_dir
from ..runs.contextparallel import context_parallel_available

OK, WARN, FAIL = "ok", "warn", "fail"
# Oldest Linux driver branch for each CUDA major of torch's build (CUDA minor-version compatibility).
MIN_DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}
# PyTorch's wheel index for the newest CUDA line each driver branch supports.
TORCH_INDEX_FOR_DRIVER = ((580, "cu130"), (570, "cu128"), (525, "cu126"), (450, "cu118"))


@dataclass
class Check:
    check: str
    status: str  # ok / warn / fail
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "found": self.found, "fix": self.fix}


@dataclass
class DoctorReport:
    model: str | None
    model_type: str | None
    model_reason: str
    hypothetical: bool
    versions: dict[str, str]
    rows: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[Check]:
        return [r for r in self.rows if r.status == FAIL]

    @property
    def ok(self) -> bool:
        """True when nothing blocks generation with the chosen model."""
        return not self.blocking

    def row(self, check: str) -> Check:
        return next(r for r in self.rows if r.check == check)

    @property
    def verdict(self) -> str:
        subject = "this version set" if self.hypothetical else "this machine"
        if self.ok:
            warns = [r.check for r in self.rows if r.status == WARN]
            tail = f" (warnings: {', '.join(warns)})" if warns else ""
            return f"ready: nothing blocks {self.model} on {subject}{tail}"
        return f"not ready: {self.model} is blocked on {subject} by " + "; ".join(
            f"{r.check} ({r.found})" for r in self.blocking
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_type": self.model_type,
            "model_reason": self.model_reason,
            "hypothetical": self.hypothetical,
            "ok": self.ok,
            "verdict": self.verdict,
            "versions": dict(self.versions),
            "rows": [r.to_dict() for r in self.rows],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        width = max((len(r.check) for r in self.rows), default=10)
        head = "fluxnb doctor: " + ("version set " + ", ".join(f"{k}={v}" for k, v in self.versions.items())
                                    if self.hypothetical else f"{platform.node() or 'this machine'}")
        lines = [head, f"model: {self.model} ({self.model_type}) - {self.model_reason}", ""]
        for r in self.rows:
            lines.append(f"[{r.status.upper():4}] {r.check:<{width}}  {r.found}")
            if r.fix and r.status != OK:
                lines.append(f"       {'':<{width}}  fix: {r.fix}")
        if self.notes:
            lines.append("")
            lines += [f"note: {n}" for n in self.notes]
        lines += ["", self.verdict]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colors = {OK: "#1a7f37", WARN: "#9a6700", FAIL: "#cf222e"}
        left = "style='text-align:left;vertical-align:top'"
        fixes = [r.fix if r.status != OK else "" for r in self.rows]
        with_fix = any(fixes)  # a "fix" column only when some row has one to show
        rows = "".join(
            f"<tr><td {left}>{html.escape(r.check)}</td>"
            f"<td style='color:{colors[r.status]};font-weight:bold;text-align:left;vertical-align:top'>{r.status}</td>"
            f"<td {left}>{html.escape(r.found)}</td>"
            + (f"<td {left}>{html.escape(fix)}</td>" if with_fix else "") + "</tr>"
            for r, fix in zip(self.rows, fixes, strict=True)
        )
        names = ("check", "status", "found", "fix") if with_fix else ("check", "status", "found")
        header = "".join(f"<th {left}>{name}</th>" for name in names)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>model:</b> {html.escape(str(self.model))} ({html.escape(str(self.model_type))}) - "
            f"{html.escape(self.model_reason)}</p>"
            f"<table><tr>{header}</tr>{rows}</table>" + (f"<ul>{notes}</ul>" if notes else "")
            + f"<p><b>{html.escape(self.verdict)}</b></p>"
        )


# ---------------------------------------------------------------- facts about this machine


def torch_index_for_driver(driver: str) -> str | None:
    major = Version(driver).major
    return next((tag for floor, tag in TORCH_INDEX_FOR_DRIVER if major >= floor), None)


def torchvision_import_check(timeout: float = 120) -> tuple[bool, str]:
    """Import torchvision in a fresh interpreter (never here: a broken one poisons this process)."""
    code = "import torch, torchvision; print(torchvision.__version__)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"importing torchvision took more than {timeout:.0f} s"
    if out.returncode == 0:
        return True, out.stdout.strip()
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit status {out.returncode}"


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ---------------------------------------------------------------- checks


def _own_distribution() -> metadata.Distribution | None:
    """fluxnb's installed distribution (its requirements), or None when it runs from a source folder on PYTHONPATH."""
    try:
        return metadata.distribution("fluxnb")
    except metadata.PackageNotFoundError:
        return None


def _check_python(rows: list[Check]) -> None:
    own = _own_distribution()
    requires = (own.metadata.get("Requires-Python") if own else None) or ">=3.10"
    version = platform.python_version()
    from packaging.specifiers import SpecifierSet

    ok = SpecifierSet(requires).contains(version)
    rows.append(Check("python", OK if ok else FAIL, f"Python {version} ({sys.executable}); fluxnb needs {requires}",
                      "" if ok else f"use a Python {requires} interpreter for the project's environment"))


def _gpu_facts() -> tuple[GpuFacts, dict[str, Any]]:
    """environment.gpu_facts, plus the part the knowledge rules evaluate."""
    info = gpu_facts()
    return GpuFacts(cuda=info["cuda"], capability=info.get("capability"), torch_cuda=info["torch_cuda"],
                    driver=info["driver"]), info


def _check_torch(rows: list[Check], info: dict[str, Any], needs: Backend) -> None:
    torch_cuda, driver, cuda = info["torch_cuda"], info["driver"], info["cuda"]
    build = f"CUDA {torch_cuda} build" if torch_cuda else "CPU-only build (no CUDA)"
    driver_text = driver or info.get("driver_unknown") or "none found (no nvidia-smi, no /proc/driver/nvidia)"
    found = f"torch {info['torch']}, {build}; NVIDIA driver: {driver_text}"
    index = torch_index_for_driver(driver) if driver else None
    index_fix = (f"pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/{index} "
                 "(and torchvision from the same index if you need it)") if index else ""
    if cuda:
        rows.append(Check("torch / CUDA / driver", OK, found + "; torch.cuda.is_available() is True"))
        return
    status = FAIL if needs.needs_cuda else OK
    if torch_cuda and driver:
        need = MIN_DRIVER_FOR_CUDA.get(Version(torch_cuda).major)
        if need and Version(driver).major < need:
            found += (f"; torch.cuda.is_available() is False because this torch is built for CUDA {torch_cuda}, which "
                      f"needs an R{need}+ driver, and the driver is {driver}")
            rows.append(Check("torch / CUDA / driver", FAIL if needs.needs_cuda else WARN, found,
                              f"install a torch built for the driver's CUDA: {index_fix}; "
                              f"or upgrade the driver to R{need}+"))
            return
        found += "; torch.cuda.is_available() is False although build and driver look compatible"
        rows.append(Check("torch / CUDA / driver", status if needs.needs_cuda else WARN, found,
                          "check `nvidia-smi` and that the GPU is attached to this VM/container"))
        return
    if torch_cuda and not driver:
        found += "; no GPU driver, so torch.cuda.is_available() is False"
        fix = "run on a machine with an NVIDIA GPU and driver (CUDA 13 torch wheels need an R580+ driver)"
    elif driver:  # CPU torch on a GPU machine
        found += "; this torch cannot use the GPU"
        fix = index_fix or "install a CUDA build of torch from https://download.pytorch.org/whl/"
    else:
        found += "; no GPU here"
        fix = ("on a GPU machine: install a torch matching its driver (PyPI's torch wheels are CUDA 13 builds, which "
               "need an R580+ driver; for R550/R570 use https://download.pytorch.org/whl/cu126 or cu128)")
    found += "" if needs.needs_cuda else f" (fine for {needs.type})"
    rows.append(Check("torch / CUDA / driver", status, found, fix))


def _check_gpu(rows: list[Check], info: dict[str, Any], spec: ModelSpec, needs: Backend) -> None:
    if not info["cuda"]:
        if needs.needs_cuda:
            rows.append(Check("GPU", FAIL, f"no CUDA GPU: {spec.name} ({spec.type}) cannot run here: {needs.why_gpu}",
                              "run on a CUDA GPU with >= "
                              f"{needs.vram_gib:g} GiB (the guide's L4: 22 GiB usable, compute capability 8.9), or "
                              "use model='flux-tiny' (or 'auto') on this machine"))
        else:
            rows.append(Check("GPU", OK, f"no CUDA GPU: {spec.name} runs on the CPU ({needs.why_gpu})"))
        return
    total, free, cap = info["total"] / GIB, info["free"] / GIB, info["capability"]
    found = (f"{info['gpu']} (compute capability {cap}, sm_{cap.replace('.', '')}), {total:.1f} GiB total, "
             f"{free:.1f} GiB free; {spec.name} needs ~{needs.vram_gib:g} GiB")
    if needs.min_capability and Version(cap) < Version(needs.capability_text):
        rows.append(Check("GPU", FAIL, found + f"; compute capability below {needs.capability_text}",
                          f"use a GPU with compute capability >= {needs.capability_text} (the L4 is 8.9)"))
    elif needs.vram_gib and total < needs.vram_gib and not needs.offload_ok:
        rows.append(Check("GPU", FAIL, found + "; not enough memory on this GPU",
                          "use a 24 GB GPU (L4, A10G, A100...) or a smaller model such as flux-dev-bnb-4bit"))
    elif needs.vram_gib and free < needs.vram_gib:
        hint = "it will offload to the CPU (slower)" if needs.offload_ok else "free memory is short"
        rows.append(Check("GPU", WARN, found + f"; {hint}",
                          "free GPU memory (other kernels/processes: `nvidia-smi`), or restart the kernel"))
    else:
        rows.append(Check("GPU", OK, found))


def multi_gpu_modes(count: int, context_parallel_missing: str | None, ray: bool) -> list[str]:
    """Which of fluxnb's multi-GPU modes this host can use (README "More than one GPU")."""
    if count < 2:
        modes = [f"{'one GPU' if count == 1 else 'no GPU'}: the multi-GPU modes need 2+ GPUs (`--gpus N` still runs "
                 "N CPU processes with gloo where there is no GPU: a demonstration, not a speed-up)"]
    else:
        modes = [f"data parallel: fluxnb generate --gpus {count} (one pipeline per GPU, any model type)"]
        modes.append(f"one image on several GPUs: not with this diffusers ({context_parallel_missing})"
                     if context_parallel_missing else
                     f"one image on several GPUs: fluxnb generate --gpus {count} --parallel ulysses (bf16 entries)")
    if ray:
        modes.append("many hosts: fluxnb generate --ray ADDRESS (ray is installed)")
    return modes


def _check_multi_gpu(rows: list[Check], info: dict[str, Any]) -> None:
    gpus = info.get("gpus") or []
    links = info.get("links")
    found = f"{len(gpus)} GPU(s)"
    if gpus:
        found += ": " + ", ".join(f"{g['index']}: {g['name']} {g['total_memory'] / GIB:.0f} GiB" for g in gpus)
    if len(gpus) > 1:
        found += ("; interconnect: " + (f"{links['kind']} (active NVLink links per GPU: {links['nvlink_active_links']})"
                                        if links else "unknown (install nvidia-ml-py to read it from NVML)"))
    modes = multi_gpu_modes(len(gpus), context_parallel_available(), package_version("ray") is not None)
    rows.append(Check("multi-GPU", OK, found + ". Modes: " + "; ".join(modes)))


def _check_models(rows: list[Check], config: ModelConfig, info: dict[str, Any]) -> None:
    parts = []
    for spec in config.models.values():
        needs = get_backend(spec.type)
        name = spec.name if spec.task == TEXT_TO_IMAGE else f"{spec.name} ({spec.task})"
        missing = missing_pipeline(TASKS[spec.task])
        if missing:
            parts.append(f"{name}: {missing}")
        elif needs.needs_cuda and not info["cuda"]:
            parts.append(f"{name}: needs a CUDA GPU ({needs.why_gpu})")
        elif needs.min_capability and Version(info["capability"]) < Version(needs.capability_text):
            parts.append(f"{name}: needs compute capability {needs.capability_text}+ (this GPU: "
                         f"{info['capability']})")
        elif needs.needs_cuda and needs.vram_gib and info["total"] / GIB < needs.vram_gib and not needs.offload_ok:
            parts.append(f"{name}: needs ~{needs.vram_gib:g} GiB of GPU memory")
        else:
            parts.append(f"{name}: runs here{_attention_here(spec, needs, info)}")
    runnable = sum(": runs here" in p for p in parts)
    rows.append(Check("models on this machine", OK if runnable else WARN, "; ".join(parts),
                      "" if runnable == len(parts) else "the GPU models need a CUDA GPU with a matching torch build"))


def _attention_here(spec, needs, info: dict[str, Any]) -> str:
    """The attention kernel an entry runs on this GPU, where its record chooses one per compute capability (the
    float8 entries: SageAttention on the L4's 8.9), and why it falls back to SDPA (e.g. the package missing)."""
    if not needs.attention or not info["cuda"]:
        return ""
    capability = tuple(int(v) for v in str(info["capability"]).split("."))
    try:
        plan = choose_attention(spec, needs.attention, "cuda", capability)
    except ModelUnavailableError as exc:
        return f" (attention: {exc})"
    return f" (attention {plan.kernel}: {plan.fallback})" if plan.fallback else f" (attention {plan.kernel})"


def _check_versions(rows: list[Check], versions: dict[str, str], kb: KnowledgeBase, hypothetical: bool) -> None:
    shown = ", ".join(f"{k} {v}" for k, v in versions.items()) or "none given"
    line = supported_line(versions, kb)
    outside_guide = [f"{p} {versions[p]} ({s})" for p, s in kb.guide_ranges.items()
                     if p in versions and not s.contains(Version(versions[p]).public, prereleases=True)]
    guide_text = ("inside the guide's verified ranges" if not outside_guide
                  else "outside the guide's own ranges: " + ", ".join(outside_guide))
    if line:
        rows.append(Check("package versions", OK,
                          f"{shown}; tested line: {line} ({kb.lines[line]['description']}); {guide_text}"))
    else:
        lines = "; ".join(
            f"{n}: " + ", ".join(f"{p}{s}" for p, s in ln["versions"].items()) for n, ln in kb.lines.items()
        )
        rows.append(Check("package versions", WARN, f"{shown}; not one of the tested lines; {guide_text}",
                          f"prefer a tested line ({lines})"))
    if hypothetical:
        return
    own = _own_distribution()
    if own is None:
        rows.append(Check("fluxnb requirements", WARN, f"fluxnb runs from a source folder ({Path(__file__).parents[1]}"
                          "), not an installed package: its requirements cannot be read, so they are not checked",
                          "install it: `pip install -e .` in a checkout, or the wheel (README)"))
        return
    problems, blocking = [], False
    for text in own.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = package_version(req.name)
        if have is None:
            problems.append(f"{req.name} missing (needs {req.specifier or 'any'})")
        elif not req.specifier.contains(Version(have).public, prereleases=True):
            problems.append(f"{req.name} {have} (needs {req.specifier})")
        else:
            continue
        blocking = blocking or canonicalize_name(req.name) in GENERATION_PACKAGES
    status = FAIL if blocking else WARN if problems else OK
    found = "; ".join(problems) or "every requirement of fluxnb is installed in range"
    if problems and not blocking:
        found += " (notebook/tooling packages: generation itself is not blocked)"
    rows.append(Check("fluxnb requirements", status, found,
                      "reinstall the project environment (`pip install -e .` in the venv, or rebuild it)"
                      if problems else ""))


def _check_torchvision(rows: list[Check], versions: dict[str, str]) -> None:
    tv = package_version("torchvision")
    if tv is None:
        rows.append(Check("torchvision", OK, "not installed (FLUX does not need it, so it cannot mismatch torch)"))
        return
    ok, detail = torchvision_import_check()
    pair = torch_torchvision_mismatch(versions["torch"], tv) if "torch" in versions else None
    if ok and not pair:
        rows.append(Check("torchvision", OK,
                          f"torchvision {detail} imports and pairs with torch {versions.get('torch')}"))
        return
    entry = load_knowledge().get("torchvision-mismatch")
    found = f"torchvision {tv}: " + ("; ".join(x for x in (pair, None if ok else f"import fails: {detail}") if x))
    rows.append(Check("torchvision", FAIL if not ok else WARN, found + " [torchvision-mismatch]", entry.fix))


def _check_disk_and_hub(rows: list[Check], spec: ModelSpec, needs: Backend) -> None:
    if needs.embedded:
        folder = tiny_cache_dir()
        state = "built" if folder.exists() else "built on first use"
        rows.append(Check("model files", OK, f"{spec.name} is embedded: {state} in {folder} (no download, a few MB)"))
        return
    cache = hf_cache_dir()
    cached = is_cached(spec.id)
    offline = offline_mode()
    usage = shutil.disk_usage(_existing_parent(cache))
    free = usage.free / GIB
    if cached:
        rows.append(Check("disk / HF cache", OK, f"{spec.id} is cached in {cache}; {free:.1f} GiB free there"))
    elif free < needs.download_gib * 1.1:
        rows.append(Check("disk / HF cache", FAIL,
                          f"{free:.1f} GiB free in {cache}; {spec.id} downloads ~{needs.download_gib:g} GiB",
                          "put the cache on the data disk (set HF_HOME before starting Jupyter, e.g. "
                          "/home/jupyter/hf-cache on Workbench) or free space"))
    else:
        rows.append(Check("disk / HF cache", OK,
                          f"{free:.1f} GiB free in {cache}; {spec.id} downloads ~{needs.download_gib:g} GiB"))
    if offline and not cached:
        rows.append(Check("hub access", FAIL, f"offline mode is on (HF_HUB_OFFLINE) and {spec.id} is not cached",
                          "unset HF_HUB_OFFLINE to download once, or copy the model into the cache"))
    else:
        mode = "offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set)" if offline else "online mode"
        rows.append(Check("hub access", OK, f"{mode}; {spec.id} {'is' if cached else 'is not yet'} cached"))
    if spec.requires_auth:
        has = hf_token() is not None  # presence only: the token itself is never shown
        rows.append(Check("HF token", OK if has else FAIL,
                          f"{spec.id} is gated; a token is {'present' if has else 'missing'}",
                          "" if has else "accept the license on the model page, then `huggingface-cli login` or set "
                          "HF_TOKEN (never as a notebook parameter)"))


def _check_compile_cache(rows: list[Check], spec: ModelSpec, needs: Backend, config: ModelConfig) -> None:
    """Is the persistent compile cache warm for this entry (and at which sizes)? The recommended entry named."""
    if config.recommended:
        rows.append(Check("recommended fast model", OK, f"{config.recommended} (model_config.yaml runtime."
                          "recommended; results/README.md has the figures)"))
    if not compile_wanted(spec, needs)[0]:
        rows.append(Check("compile cache", OK, f"{spec.name} runs eager: nothing to compile"))
        return
    folder = compile_cache.cache_dir()
    entries = compile_cache.count_entries(folder)
    label = compile_cache.warm_label(spec.name, spec.compile_mode, 0, 0).rsplit(" ", 1)[0] + " "
    sizes = [k.rsplit(" ", 1)[1] for k in compile_cache.warm_index(folder) if k.startswith(label)]
    if sizes:
        rows.append(Check("compile cache", OK, f"warm for {spec.name} at {', '.join(sorted(sizes))} in {folder} "
                          f"({entries} entries): its first image compiles in seconds"))
    else:
        rows.append(Check("compile cache", WARN, f"cold for {spec.name} in {folder} ({entries} entries): its first "
                          "image pays the full compile (tens of seconds), later processes reuse it",
                          "nothing to fix: generate one image once on this machine (`fluxnb cache` shows it)"))


def _add_findings(report: DoctorReport, findings: list[Finding], kb: KnowledgeBase) -> None:
    report.findings = findings
    for f in findings:
        if f.relevance == "other":
            paths = ", ".join(kb.paths.get(p, p) for p in f.entry.affects)
            report.notes.append(f"[{f.entry.id}] {f.entry.title}: {f.note} (affects {paths}; not used by "
                                f"{report.model})")
            continue
        status = FAIL if f.relevance == "blocks" else WARN
        report.rows.append(Check(f"known issue: {f.entry.id}", status, f"{f.entry.title}: {f.note}", f.entry.fix))


def check_environment(
    model: str = "auto",
    versions: str | dict[str, str] | None = None,
    *,
    config: ModelConfig | None = None,
) -> DoctorReport:
    """Check this machine for `model` (a model_config.yaml name or 'auto'), or evaluate a version set.

    With `versions` ("diffusers=0.35.1,transformers=4.57.0" or a dict) only the knowledge rules run, for that set;
    'auto' then means the primary model, since the question is whether the real model would work.

    Args:
        model: a model name from model_config.yaml or "auto" (the entry whose needs are checked).
        versions: a version set to evaluate instead of this machine ("diffusers=0.35.1,transformers=4.57.0", also
            driver=, torch-cuda=, capability=), or None for the installed packages and this GPU.
        config: the model config (default: the project's model_config.yaml).

    Returns:
        DoctorReport: one row per check (ok / warn / fail, what was found, the fix) and the knowledge-base findings;
        `report.ok` is False when something blocks the model.

    Raises:
        RequestError: an unknown model name, or a version set that is not NAME=VERSION of known packages.
    """
    config = config or load_config()
    kb = load_knowledge()
    if versions is not None:
        given = parse_versions(versions)
        packages, _gpu = split_gpu_facts(given)
        spec = config.get(config.primary_model if model == "auto" else model)
        reason = "auto: the primary model (version check)" if model == "auto" else "chosen by name"
        report = DoctorReport(spec.name, spec.type, reason, True, given)
        _check_versions(report.rows, packages, kb, hypothetical=True)
        _add_findings(report, evaluate(given, None, spec.type, kb), kb)
        report.notes.append("only the knowledge base's version rules were evaluated, on the versions (and GPU facts) "
                            "given; nothing of this machine was checked, and packages not given are not checked")
        return report
    choice = resolve_model(model, config)
    spec = choice.spec
    needs = get_backend(spec.type)
    have = installed_versions()
    report = DoctorReport(spec.name, spec.type, choice.reason, False, have)
    gpu, info = _gpu_facts()
    _check_python(report.rows)
    report.rows.append(Check("model config", OK, f"{config.path} (from {config.source}); {len(config.models)} "
                             f"models, primary {config.primary_model}"))
    _check_torch(report.rows, info, needs)
    _check_gpu(report.rows, info, spec, needs)
    _check_multi_gpu(report.rows, info)
    _check_models(report.rows, config, info)
    _check_versions(report.rows, have, kb, hypothetical=False)
    _check_torchvision(report.rows, have)
    _check_disk_and_hub(report.rows, spec, needs)
    _check_compile_cache(report.rows, spec, needs, config)
    findings = evaluate(have, gpu, spec.type, kb)
    # The machine checks above already report these with machine detail; keep the entries as findings only.
    covered = {"torchvision-mismatch", "torch-cuda-driver-too-old"}
    _add_findings(report, [f for f in findings if f.entry.id not in covered], kb)
    report.findings = findings
    return report


def report_json(report: DoctorReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
