"""The doctor on this CPU machine (truthful: no GPU), per model, with tokens/offline/cache/disk, and `fluxnb doctor`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fluxnb
from fluxnb.cli import main
from fluxnb.core.environment import nvidia_driver_version
from fluxnb.doctor.checks import FAIL, OK, torch_index_for_driver
from fluxnb.doctor.verification import memory_figure

from .test_knowledge import write_mismatched_torchvision

pytestmark = pytest.mark.stack  # in both lanes: the doctor's rows name the installed line

SECRET = "hf_doctorTestTokenThatMustNeverBePrinted"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face home: no saved login, nothing cached."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"), raising=False)
    return home


def test_auto_on_this_cpu_machine_is_the_tiny_model_and_ready():
    report = fluxnb.check_environment()
    assert report.model == "flux-tiny" and report.ok
    assert "no CUDA GPU" in report.model_reason
    gpu = report.row("GPU")
    assert gpu.status == OK and "no CUDA GPU" in gpu.found and "runs on the CPU" in gpu.found
    models = report.row("models on this machine").found
    for name in ("flux-dev-bnb-8bit", "flux-dev-bnb-4bit", "flux-dev"):
        assert f"{name}: needs a CUDA GPU" in models
    assert "flux-tiny: runs here" in models
    torch_row = report.row("torch / CUDA / driver")
    import torch

    assert torch.__version__ in torch_row.found
    assert report.row("package versions").status == OK  # both CI environments are tested lines
    requirements = report.row("fluxnb requirements")  # the guide venv lacks jupyterlab: a warning, not a blocker
    assert requirements.status == OK or (requirements.status == "warn" and "not blocked" in requirements.found)
    assert report.verdict.startswith("ready: nothing blocks flux-tiny")


def test_the_8bit_model_is_blocked_here_and_says_why():
    report = fluxnb.check_environment("flux-dev-bnb-8bit")
    assert not report.ok
    failing = {r.check for r in report.blocking}
    assert {"GPU", "torch / CUDA / driver", "known issue: bnb-no-gpu"} <= failing
    assert "R580" in report.row("torch / CUDA / driver").fix
    assert "~17.5 GiB" in report.row("disk / HF cache").found
    assert report.verdict.startswith("not ready: flux-dev-bnb-8bit is blocked")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and any(r["status"] == FAIL for r in data["rows"])
    html = report._repr_html_()
    assert "<table>" in html and "fail" in html and "known issue: bnb-no-gpu" in html


def test_driver_facts_are_read_from_the_machine():
    driver = nvidia_driver_version()
    import shutil

    if driver is None:
        assert not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None
    assert torch_index_for_driver("550.54.15") == "cu126"
    assert torch_index_for_driver("580.65.06") == "cu130"


def test_gated_model_token_presence_only(hf_home, monkeypatch):
    report = fluxnb.check_environment("flux-dev")
    assert report.row("HF token").status == FAIL and "missing" in report.row("HF token").found
    monkeypatch.setenv("HF_TOKEN", SECRET)
    report = fluxnb.check_environment("flux-dev")
    assert report.row("HF token").status == OK and "present" in report.row("HF token").found
    for text in (str(report), report._repr_html_(), json.dumps(report.to_dict())):
        assert SECRET not in text


def test_offline_and_not_cached_blocks_a_hub_model(hf_home, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    report = fluxnb.check_environment("flux-dev-bnb-4bit")
    hub = report.row("hub access")
    assert hub.status == FAIL and "offline mode is on (HF_HUB_OFFLINE)" in hub.found and "not cached" in hub.found
    assert str(hf_home / "hub") in report.row("disk / HF cache").found
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert fluxnb.check_environment("flux-dev-bnb-4bit").row("hub access").status == OK


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_is_the_hubs_own_flag(variable: str):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = "from fluxnb.core.hub import offline_mode; print(offline_mode())"
    for value, expected in (("1", "True"), ("", "False")):
        done = subprocess.run([sys.executable, "-c", code], env={**env, variable: value}, capture_output=True,
                              text=True, check=True)
        assert done.stdout.strip() == expected, (variable, value, done.stderr)


def test_a_cached_model_is_seen_as_cached(hf_home):
    snapshot = hf_home / "hub" / "models--diffusers--FLUX.1-dev-bnb-8bit"
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text("abc123")
    (snapshot / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    report = fluxnb.check_environment("flux-dev-bnb-8bit")
    assert "is cached" in report.row("disk / HF cache").found
    assert "is cached" in report.row("hub access").found


def test_a_mismatched_torchvision_fails_the_doctor(tmp_path, monkeypatch):
    # transformers and diffusers record at their first import which packages are installed: imported before the fake
    # torchvision is on the path, so that later tests of this process do not take it for a real one
    import diffusers.utils.import_utils  # noqa: F401
    import transformers.utils.import_utils  # noqa: F401

    site = write_mismatched_torchvision(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(str(site))  # metadata sees it here; it is only imported in a subprocess
    report = fluxnb.check_environment()
    row = report.row("torchvision")
    assert row.status == FAIL and "operator torchvision::nms does not exist" in row.found
    assert "torchvision-mismatch" in row.found and "matched pair" in row.fix
    assert not report.ok


# -- version sets -------------------------------------------------------------------------------------------------


def test_versions_api_answers_what_breaks():
    report = fluxnb.check_environment(versions="diffusers=0.35.1,transformers=4.57.0")
    assert report.hypothetical and report.model == "flux-dev-bnb-8bit"
    assert report.row("package versions").status == "warn"
    assert report.row("known issue: guide-autoimageprocessor").status == "warn"
    assert report.ok  # a warning, not a blocker: the real cause is torchvision (see the entry)
    report = fluxnb.check_environment(versions={"torch": "2.8.0", "torchvision": "0.21.0"})
    assert report.row("known issue: torchvision-mismatch").status == FAIL and not report.ok


def test_cli_doctor_on_this_machine(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[OK  ] GPU" in out and "ready: nothing blocks flux-tiny" in out
    assert main(["doctor", "--model", "flux-dev-bnb-8bit"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] GPU" in out and "not ready" in out


def test_cli_doctor_versions_and_json(capsys):
    assert main(["doctor", "--versions", "diffusers=0.35.1,transformers=4.57.0"]) == 0
    assert "guide-autoimageprocessor" in capsys.readouterr().out
    assert main(["doctor", "--json", "--versions", "diffusers=0.40.0,transformers=4.57.0"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and "hub-major-split" in [f["id"] for f in data["findings"]]
    assert main(["doctor", "--versions", "diffusers=soon"]) == 2
    assert "not a valid version" in capsys.readouterr().err


def test_every_backend_is_known_to_the_doctor_and_the_knowledge_base(config):
    """The doctor reads each type's needs from its backend record; the paths a record takes are knowledge paths."""
    from fluxnb.knowledge.base import load_knowledge
    from fluxnb.models.backends import REGISTRY

    kb = load_knowledge()
    for backend in REGISTRY.values():
        assert set(backend.uses) <= set(kb.paths), backend.type
    assert {spec.type for spec in config.models.values()} <= set(REGISTRY)
    for name in config.models:
        report = fluxnb.check_environment(name, config=config)
        assert report.rows, name


def test_doctor_on_a_gpu_too_old_for_the_fast_entries(monkeypatch):
    """A T4 (7.5): the int8 dynamic entry is blocked by its compute capability; the weight-only one would run."""
    from fluxnb.doctor import checks as doctor
    from fluxnb.knowledge.base import GpuFacts

    info = {"torch": "2.13.0", "torch_cuda": "13.0", "cuda": True, "driver": "580.159.04", "gpu": "Tesla T4",
            "capability": "7.5", "free": 15 * 2**30, "total": 15 * 2**30, "count": 1}
    facts = GpuFacts(cuda=True, capability="7.5", torch_cuda="13.0", driver="580.159.04")
    monkeypatch.setattr(doctor, "_gpu_facts", lambda: (facts, info))
    report = doctor.check_environment("flux-dev-torchao-int8dq")
    gpu = next(row for row in report.rows if row.check == "GPU")
    assert gpu.status == doctor.FAIL and "compute capability below 8.0" in gpu.found
    models = next(row for row in report.rows if row.check == "models on this machine").found
    assert "flux-dev-torchao-int8dq: needs compute capability 8.0+ (this GPU: 7.5)" in models
    assert "flux-dev-torchao-fp8: needs compute capability 8.9+ (this GPU: 7.5)" in models
    assert "flux-dev-torchao-int8: needs ~19 GiB of GPU memory" in models  # 7.5 is enough, 15 GiB is not


def test_doctor_table_headers_match_its_columns():
    """Headers left-aligned like the cells; a "fix" column only when some row has a fix to show."""
    import dataclasses

    blocked = fluxnb.check_environment("flux-dev-bnb-8bit")
    all_ok = dataclasses.replace(blocked, rows=[r for r in blocked.rows if r.status == OK])
    for report, columns in ((blocked, 4), (all_ok, 3)):
        rows = report._repr_html_().split("<tr>")[1:]
        header = rows[0].split("</th>")[:-1]
        assert len(header) == columns and all("text-align:left" in th for th in header)
        assert (">fix" in rows[0]) == (columns == 4)  # no empty fix column when nothing needs fixing
        assert len(rows) == len(report.rows) + 1 and all(row.count("<td") == columns for row in rows[1:])
    assert "R580" in blocked._repr_html_()  # the torch/driver fix is in its column


def test_memory_figure_names_measured_bars_by_their_real_format(tiny_model):
    right = memory_figure(tiny_model.report.components).axes[1]
    labels = [t.get_text() for t in right.get_xticklabels()]
    formats = {c.name: c.format for c in tiny_model.report.components}
    assert labels[1] == f"T5\n{formats['text_encoder_2']}"  # not "T5 (8-bit) fp32"
    assert not any("8-bit" in label for label in labels)
def test_a_model_type_without_a_backend_is_a_project_error_with_the_fix(config):
    """No bare KeyError reaches a user: an entry whose type has no backend record names the types that exist."""
    import dataclasses

    from fluxnb.models.config import ModelConfig

    odd = dataclasses.replace(config.get("flux-tiny"), name="odd", type="flux-nope")
    broken = ModelConfig(models={**config.models, "odd": odd}, primary_model=config.primary_model,
                         fallback_model=config.fallback_model, path=config.path)
    with pytest.raises(fluxnb.ModelUnavailableError) as info:
        fluxnb.check_environment("odd", config=broken)
    assert not isinstance(info.value, KeyError)
    message = str(info.value)
    assert message.startswith("unknown model type 'flux-nope'.")
    assert "Fix: use one of: flux-bnb-8bit, " in message and "(fluxnb/models/backends/)" in message


def test_driver_version_from_nvml_first_then_nvidia_smi(monkeypatch, tmp_path):
    """NVML (nvidia-ml-py) answers first where a driver does; without it, a real nvidia-smi process is asked."""
    import types

    from fluxnb.core import environment

    # nvidia-ml-py is installed here but there is no NVIDIA driver: NVML refuses, and nothing else answers.
    if importlib.util.find_spec("pynvml") is not None and not Path("/proc/driver/nvidia/version").exists():
        assert environment._driver_from_nvml() is None
    # without pynvml: a (real, executed) nvidia-smi on PATH is the fallback
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '580.65.06'\n", encoding="utf-8")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert nvidia_driver_version() == "580.65.06"
    # with NVML answering, nvidia-smi is not asked
    error = type("NVMLError", (Exception,), {})
    nvml = types.SimpleNamespace(NVMLError=error, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                                 nvmlSystemGetDriverVersion=lambda: b"590.10.01")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert nvidia_driver_version() == "590.10.01"


def test_doctor_says_whether_the_compile_cache_is_warm_for_the_entry():
    import copy

    import yaml

    from fluxnb.doctor.checks import WARN, check_environment
    from fluxnb.models import compile_cache
    from fluxnb.models.config import DEFAULT_CONFIG_PATH, parse_config

    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    eager = check_environment("flux-tiny", config=parse_config(raw))
    rows = {row.check: row for row in eager.rows}
    assert rows["compile cache"].found == "flux-tiny runs eager: nothing to compile"
    assert rows["recommended fast model"].found.startswith("flux-dev-torchao-fp8 (model_config.yaml runtime")
    compiled = copy.deepcopy(raw)
    compiled["models"]["flux-tiny"]["compile"] = True
    config = parse_config(compiled)
    folder = compile_cache.cache_dir()
    if folder.exists():  # cold: this machine's key holds nothing
        compile_cache.clear(key=folder.name)
    cold = {row.check: row for row in check_environment("flux-tiny", config=config).rows}["compile cache"]
    assert cold.status == WARN and cold.found.startswith(f"cold for flux-tiny in {folder}")
    folder.mkdir(parents=True)
    compile_cache.record_warm(folder, "flux-tiny", None, 64, 64)
    try:
        warm = {row.check: row for row in check_environment("flux-tiny", config=config).rows}["compile cache"]
        assert warm.status == OK and warm.found.startswith(f"warm for flux-tiny at 64x64 in {folder}")
    finally:
        compile_cache.clear(key=folder.name)


def test_doctor_on_an_l4_names_the_attention_kernel_its_record_chose(monkeypatch):
    """An L4 (8.9): the float8 entries run SageAttention there (their record's choice for 8.9, predicted), or SDPA
    with the reason when the package is missing; entries without a choice say nothing about attention."""
    from importlib import metadata

    from packaging.version import Version

    from fluxnb.doctor import checks as doctor
    from fluxnb.knowledge.base import GpuFacts
    from fluxnb.models import attention

    info = {"torch": "2.13.0", "torch_cuda": "13.0", "cuda": True, "driver": "580.159.04", "gpu": "NVIDIA L4",
            "capability": "8.9", "free": 22 * 2**30, "total": 22 * 2**30, "count": 1}
    facts = GpuFacts(cuda=True, capability="8.9", torch_cuda="13.0", driver="580.159.04")
    monkeypatch.setattr(doctor, "_gpu_facts", lambda: (facts, info))
    models = next(r for r in doctor.check_environment("flux-dev-torchao-fp8").rows
                  if r.check == "models on this machine").found
    if Version(metadata.version("diffusers")) < Version("0.36"):  # the guide line: no attention registry
        assert ("flux-dev-torchao-fp8: runs here (attention sdpa: it runs through diffusers' attention registry "
                "(diffusers >= 0.36); installed: 0.34.0)") in models
        return
    assert "flux-dev-torchao-fp8: runs here (attention sage)" in models
    assert "flux-dev-bnb-8bit: runs here;" in models  # the guide's entry: no attention choice
    real = attention.package_version
    monkeypatch.setattr(attention, "package_version", lambda name: None if name == "sageattention" else real(name))
    row = next(r for r in doctor.check_environment("flux-dev-torchao-fp8").rows if r.check == "models on this machine")
    assert ("flux-dev-torchao-fp8: runs here (attention sdpa: the sageattention package is not installed (pip install "
            "'sageattention==1.0.6'") in row.found
    assert row.status == doctor.OK
