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
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .config import ModelConfig, ModelSpec, load_config
from .environment import package_version
from .hub import hf_cache_dir, hf_token, is_cached, offline_mode
from .knowledge import (
    RULE_PACKAGES,
    Finding,
    GpuFacts,
    KnowledgeBase,
    ModelTypeNeeds,
    evaluate,
    load_knowledge,
    parse_versions,
    split_gpu_facts,
    supported_line,
    torch_torchvision_mismatch,
)

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 2**30
# Oldest Linux driver branch for each CUDA major of torch's build (CUDA minor-version compatibility).
MIN_DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}
# PyTorch's wheel index for the newest CUDA line each driver branch supports.
TORCH_INDEX_FOR_DRIVER = ((580, "cu130"), (570, "cu128"), (525, "cu126"), (450, "cu118"))


# fluxnb's requirements without which no image can be generated (the rest serve notebooks and tooling).
GENERATION_PACKAGES = {"torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "huggingface-hub",
                       "safetensors", "sentencepiece", "protobuf", "pillow", "numpy", "pyyaml"}


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


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver version (nvidia-smi, else /proc/driver/nvidia/version), or None."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    proc = Path("/proc/driver/nvidia/version")
    if proc.exists():
        match = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9]+\.[0-9.]+)", proc.read_text(errors="replace"))
        if match:
            return match.group(1)
    return None


def torch_index_for_driver(driver: str) -> str | None:
    major = Version(driver).major
    return next((tag for floor, tag in TORCH_INDEX_FOR_DRIVER if major >= floor), None)


def installed_versions() -> dict[str, str]:
    """Installed versions of the packages the rules name (canonical names; missing ones left out)."""
    out = {}
    for name in RULE_PACKAGES:
        version = package_version(name)
        if version:
            out[canonicalize_name(name)] = version
    return out


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


def _check_python(rows: list[Check]) -> None:
    requires = metadata.metadata("fluxnb").get("Requires-Python") or ">=3.10"
    version = platform.python_version()
    from packaging.specifiers import SpecifierSet

    ok = SpecifierSet(requires).contains(version)
    rows.append(Check("python", OK if ok else FAIL, f"Python {version} ({sys.executable}); fluxnb needs {requires}",
                      "" if ok else f"use a Python {requires} interpreter for the project's environment"))


def _gpu_facts() -> tuple[GpuFacts, dict[str, Any]]:
    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda": cuda,
                            "driver": nvidia_driver_version()}
    capability = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        capability = f"{props.major}.{props.minor}"
        info.update(gpu=props.name, capability=capability, free=free, total=total, count=torch.cuda.device_count())
    return GpuFacts(cuda=cuda, capability=capability, torch_cuda=torch.version.cuda, driver=info["driver"]), info


def _check_torch(rows: list[Check], info: dict[str, Any], needs: ModelTypeNeeds) -> None:
    torch_cuda, driver, cuda = info["torch_cuda"], info["driver"], info["cuda"]
    build = f"CUDA {torch_cuda} build" if torch_cuda else "CPU-only build (no CUDA)"
    driver_text = driver or "none found (no nvidia-smi, no /proc/driver/nvidia)"
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


def _check_gpu(rows: list[Check], info: dict[str, Any], spec: ModelSpec, needs: ModelTypeNeeds) -> None:
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
    if needs.min_capability and Version(cap) < Version(needs.min_capability):
        rows.append(Check("GPU", FAIL, found + f"; compute capability below {needs.min_capability}",
                          f"use a GPU with compute capability >= {needs.min_capability} (the L4 is 8.9)"))
    elif needs.vram_gib and total < needs.vram_gib and not needs.offload_ok:
        rows.append(Check("GPU", FAIL, found + "; not enough memory on this GPU",
                          "use a 24 GB GPU (L4, A10G, A100...) or a smaller model such as flux-dev-bnb-4bit"))
    elif needs.vram_gib and free < needs.vram_gib:
        hint = "it will offload to the CPU (slower)" if needs.offload_ok else "free memory is short"
        rows.append(Check("GPU", WARN, found + f"; {hint}",
                          "free GPU memory (other kernels/processes: `nvidia-smi`), or restart the kernel"))
    else:
        rows.append(Check("GPU", OK, found))


def _check_models(rows: list[Check], config: ModelConfig, kb: KnowledgeBase, info: dict[str, Any]) -> None:
    parts = []
    for spec in config.models.values():
        needs = kb.model_types.get(spec.type)
        if needs is None:
            parts.append(f"{spec.name}: type {spec.type} unknown to the doctor")
        elif needs.needs_cuda and not info["cuda"]:
            parts.append(f"{spec.name}: needs a CUDA GPU ({needs.why_gpu})")
        elif needs.min_capability and Version(info["capability"]) < Version(needs.min_capability):
            parts.append(f"{spec.name}: needs compute capability {needs.min_capability}+ (this GPU: "
                         f"{info['capability']})")
        elif needs.needs_cuda and needs.vram_gib and info["total"] / GIB < needs.vram_gib and not needs.offload_ok:
            parts.append(f"{spec.name}: needs ~{needs.vram_gib:g} GiB of GPU memory")
        else:
            parts.append(f"{spec.name}: runs here")
    runnable = sum(p.endswith("runs here") for p in parts)
    rows.append(Check("models on this machine", OK if runnable else WARN, "; ".join(parts),
                      "" if runnable == len(parts) else "the GPU models need a CUDA GPU with a matching torch build"))


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
    problems, blocking = [], False
    for text in metadata.requires("fluxnb") or []:
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


def _check_disk_and_hub(rows: list[Check], spec: ModelSpec, needs: ModelTypeNeeds) -> None:
    if spec.type == "flux-tiny":
        from .tiny import tiny_cache_dir

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
    from .selection import resolve_model

    choice = resolve_model(model, config)
    spec = choice.spec
    needs = kb.model_types.get(spec.type)
    if needs is None:
        raise KeyError(f"model type {spec.type!r} has no entry under model_types in knowledge.yaml")
    have = installed_versions()
    report = DoctorReport(spec.name, spec.type, choice.reason, False, have)
    gpu, info = _gpu_facts()
    _check_python(report.rows)
    _check_torch(report.rows, info, needs)
    _check_gpu(report.rows, info, spec, needs)
    _check_models(report.rows, config, kb, info)
    _check_versions(report.rows, have, kb, hypothetical=False)
    _check_torchvision(report.rows, have)
    _check_disk_and_hub(report.rows, spec, needs)
    findings = evaluate(have, gpu, spec.type, kb)
    # The machine checks above already report these with machine detail; keep the entries as findings only.
    covered = {"torchvision-mismatch", "torch-cuda-driver-too-old"}
    _add_findings(report, [f for f in findings if f.entry.id not in covered], kb)
    report.findings = findings
    return report


def report_json(report: DoctorReport) -> str:
    return json.dumps(report.to_dict(), indent=2)


# ---------------------------------------------------------------- notebook 00: memory picture, verification, verdict

# GUIDE.md "Where the ~21 GB goes (8-bit)", in GB as the guide wrote them.
GUIDE_MEMORY_GB = {"transformer": 12.0, "text_encoder_2": 5.0, "vae": 1.0, "text_encoder": 1.0}
GUIDE_LABELS = {"transformer": "transformer\n(8-bit)", "text_encoder_2": "T5\n(8-bit)", "vae": "VAE",
                "text_encoder": "CLIP"}
MEASURED_LABELS = {"transformer": "transformer", "text_encoder_2": "T5", "vae": "VAE", "text_encoder": "CLIP"}
VERDICT_FILE = "verdict.json"


def memory_figure(components):
    """Bar charts: the guide's per-component memory of 8-bit FLUX.1-dev on the L4, beside what was measured here.

    `components` is LoadReport.components. Two panels with their own units, because the tiny model is a few MB.
    """
    import matplotlib.pyplot as plt

    names = list(GUIDE_MEMORY_GB)
    measured = {c.name: c for c in components}
    biggest = max((c.bytes for c in components), default=0)
    unit, scale = next(((u, s) for u, s in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)) if biggest >= s),
                       ("B", 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    bars = left.bar([GUIDE_LABELS[n] for n in names], [GUIDE_MEMORY_GB[n] for n in names], color="#8c8c8c")
    left.bar_label(bars, fmt="~%g GB")
    left.set_title(f"the guide: FLUX.1-dev 8-bit on the L4 (~{sum(GUIDE_MEMORY_GB.values()):g} GB)")
    left.set_ylabel("GB")
    values = [measured[n].bytes / scale if n in measured else 0 for n in names]
    # Measured bars carry the format actually loaded (e.g. "T5\nfp32" for the tiny model), not the guide's "(8-bit)".
    bars = right.bar([f"{MEASURED_LABELS[n]}\n{measured[n].format if n in measured else 'absent'}" for n in names],
                     values, color="#3b7dd8")
    right.bar_label(bars, fmt="%.2f")
    total = sum(c.bytes for c in components) / scale
    right.set_title(f"measured after loading here ({total:.2f} {unit} in all)")
    right.set_ylabel(unit)
    fig.tight_layout()
    plt.close(fig)
    return fig


def quantization_rows(report) -> list[Check]:
    """Per component: the weight format found vs what the model type promises (EXPECTED_FORMATS)."""
    from .loading import EXPECTED_FORMATS, human_bytes

    expected = EXPECTED_FORMATS.get(report.type, {})
    rows = []
    for c in report.components:
        want = expected.get(c.name)
        found = f"{c.cls}: {c.format} on {c.device}, {human_bytes(c.bytes)}, {c.quantized_layers} quantized / " \
                f"{c.linear_layers} plain Linear layers"
        if want is None:
            rows.append(Check(c.name, OK, found + " (not quantized by this model type)"))
        else:
            good = c.format.startswith(want) and c.quantized_layers >= c.linear_layers
            rows.append(Check(c.name, OK if good else FAIL, found + f"; promised {' or '.join(want)}",
                              "" if good else "the checkpoint is not the pre-quantized one, or bitsandbytes failed"))
    return rows


def verification_request(spec, prompt: str = "a photo of a cat sitting on a red chair in the sun"):
    """One small image: at most 4 steps and 512x512, so the check takes seconds on a GPU."""
    from .params import make_request

    width, height = (min(v, 512) for v in spec.params.default_size)
    return make_request(spec, prompt=prompt, seed=0, steps=min(spec.params.default_steps, 4), width=width,
                        height=height, num_images=1)


class SetupVerification:
    """The steps of notebook 00 and their verdict, kept in `verdict.json` of the run folder at every step.

    `with verification.step("load"): ...` records the step; on failure it records the error with its
    diagnosis, writes a "not ready, because ..." verdict, and re-raises (the cell fails). `finish()` writes
    the final verdict: ready only when the doctor found no blocker and every step passed.
    """

    def __init__(self, run, doctor: DoctorReport):
        self.run = run
        self.doctor = doctor
        self.steps: dict[str, dict[str, Any]] = {}
        self.reasons = [f"doctor: {r.check}: {r.found}" for r in doctor.blocking]
        run.record(doctor=doctor.to_dict())
        self._write(final=False)

    @property
    def path(self) -> Path:
        return Path(self.run.path) / VERDICT_FILE

    def _write(self, final: bool) -> dict[str, Any]:
        from .outputs import atomic_write_json

        ready = final and not self.reasons and all(s["status"] == "ok" for s in self.steps.values())
        if ready:
            text = (f"ready: {self.doctor.model} loads with the weight formats its type promises and generates on "
                    "this machine")
            if self.doctor.model_type == "flux-tiny":
                text += (" (flux-tiny has random weights: this proves the workflow, not FLUX.1-dev; the doctor's "
                         "'models on this machine' row says which real models can run here)")
        elif self.reasons:
            text = "not ready, because " + "; ".join(self.reasons)
        else:
            text = "not ready, because the verification has not finished"
        verdict = {"ready": ready, "verdict": text, "model": self.doctor.model, "model_type": self.doctor.model_type,
                   "reasons": list(self.reasons), "steps": self.steps, "final": final}
        atomic_write_json(self.path, verdict)
        return verdict

    @contextmanager
    def step(self, name: str):
        from .diagnosis import explain_errors

        try:
            with explain_errors():
                yield
        except Exception as exc:
            from .diagnosis import diagnose

            self.steps[name] = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
                                "known_issues": [d.entry.id for d in diagnose(exc)]}
            self.reasons.append(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            self._write(final=True)
            self.run.record(verdict=self.verdict_dict(), status="failed")
            raise
        self.steps[name] = {"status": "ok"}
        self._write(final=False)

    def fail(self, name: str, reason: str) -> None:
        """Record a check that found a problem without an exception (e.g. a blank image)."""
        self.steps[name] = {"status": "failed", "error": reason}
        self.reasons.append(f"{name}: {reason}")

    def verdict_dict(self) -> dict[str, Any]:
        import json

        return json.loads(self.path.read_text(encoding="utf-8"))

    def finish(self) -> dict[str, Any]:
        verdict = self._write(final=True)
        self.run.record(verdict=verdict)
        self.run.finish("complete" if verdict["ready"] else "not ready")
        return verdict


def read_verdict(run_dir: str | Path) -> dict[str, Any]:
    """The verdict notebook 00 wrote into its run folder."""
    return json.loads((Path(run_dir) / VERDICT_FILE).read_text(encoding="utf-8"))
