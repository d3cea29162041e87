"""The knowledge base: schema, coverage of the known issues, version rules, and errors reproduced for real.

Every version combination the research names (the entries' `known_issues` rows) is evaluated and must be flagged
with its entry id; the two supported lines (requirements/default.txt and guide.txt, the two CI environments) must not
be flagged as blocking.
Where an error can be produced on this CPU machine (the tiny model, the installed packages, or a torchvision whose
operators never registered), it is produced and diagnosed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

import fluxnb
from fluxnb.core.environment import package_version
from fluxnb.core.errors import KnowledgeError
from fluxnb.knowledge.base import evaluate, load_knowledge, parse_knowledge, parse_versions, supported_line
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.stack  # in both lanes: version rules and the import chain of each line

STABLE_IDS = [
    "torchvision-mismatch",
    "guide-autoimageprocessor",
    "torchao-no-config-classes",
    "torchao-quant-type-api",
    "torchao-fp8-v1-checkpoint",
    "torchao-prequantized-offload",
    "device-map-cuda0",
    "torchao-size-measurement",
    "quanto-qfloat8-marlin",
    "bnb-no-gpu",
    "bnb-8bit-to",
    "autopipeline-no-flux",
    "mt5tokenizer-transformers5",
    "load-in-8bit-kwarg",
    "hub-major-split",
    "torch-cuda-driver-too-old",
    "transformers5-checkpoint-on-4x",
    "bnb-8bit-prequantized",  # added by the troubleshooting replay (attempt 6 of fluxnb/replay.yaml: the working setup)
    "cuda-out-of-memory",  # batches record failed images with it (tests/faults/test_faults.py)
    "torchao-extra-missing",  # the fast torchao entries need the torchao extra and triton
    "compile-needs-triton",
    "compiled-int8-small-input",
    "cuda-graph-capture-failed",  # the compiled forward's CUDA graph (fluxnb/models/backends/cuda_graph.py)
    # the editing pipelines (issue 24), reproduced in tests/unit/test_editing_knowledge.py
    "fill-dev-transformer",
    "control-lora-proj-out-rank",
    "control-lora-then-lora",
    "control-lora-left-loaded",
    "lora-into-4bit-fill",
    "kontext-output-size",
    "kontext-needs-diffusers-035",
    "control-image-tensor-size",
    "fill-rgba-image",
]
TRANSFORMERS_5 = Version(package_version("transformers")) >= Version("5")


def ids(findings) -> list[str]:
    return [f.entry.id for f in findings]


def test_the_knowledge_file_loads_with_the_stable_ids():
    kb = load_knowledge()
    assert kb.ids == STABLE_IDS
    for entry in kb.entries:
        assert entry.symptoms and entry.cause and entry.fix and entry.source


def test_every_known_issues_row_has_an_entry():
    rows = sorted({row for entry in load_knowledge().entries for row in entry.known_issues})
    assert rows == list(range(1, 17))


def test_every_guide_failure_has_an_entry():
    guide = {entry.guide for entry in load_knowledge().entries if entry.guide}
    for where in ("attempt 1", "attempt 2", "attempt 3", "attempt 4", "attempt 5", "version note 1", "version note 2"):
        assert any(where in g for g in guide), where


def test_knowledge_keeps_no_copy_of_the_model_types(config):
    """Type facts live in the backend records only; the knowledge base keeps the known issues and version rules."""
    from fluxnb.models.backends import REGISTRY

    raw = yaml.safe_load((Path(fluxnb.__file__).parent / "knowledge.yaml").read_text(encoding="utf-8"))
    assert "model_types" not in raw
    assert not any(name in yaml.safe_dump(raw["paths"]) for name in REGISTRY)
    assert REGISTRY["flux-bnb-8bit"].needs_cuda and not REGISTRY["flux-tiny"].needs_cuda


def test_schema_problems_are_all_reported_at_once():
    data = yaml.safe_load((Path(fluxnb.__file__).parent / "knowledge.yaml").read_text(encoding="utf-8"))
    data["entries"][0]["when"][0] = {"versions": {"diffusers": ">=oops", "numpy": ">=1"}}
    data["entries"][1]["id"] = data["entries"][2]["id"]
    data["entries"][3]["symptoms"] = ["unbalanced (paren"]
    data["entries"][4]["severity"] = "fatal"
    with pytest.raises(KnowledgeError) as info:
        parse_knowledge(data)
    text = str(info.value)
    for expected in ("not a valid PEP 440 specifier", "numpy: unknown package", "duplicate id", "not a valid regex",
                     "severity: must be one of"):
        assert expected in text
    assert "5 problem(s)" in text


def test_parse_versions_names_a_bad_version():
    assert parse_versions("diffusers=0.35.1, transformers==4.57.0") == {"diffusers": "0.35.1", "transformers": "4.57.0"}
    with pytest.raises(fluxnb.FluxnbError, match="diffusers='zero' is not a valid version"):
        parse_versions("diffusers=zero")


# Each combination the research names (known_issues row, version set) -> the entry that must flag it.
COMBINATIONS = [
    (1, "torch=2.8.0,torchvision=0.21.0", "torchvision-mismatch"),
    (1, "torch=2.8.0+cu128,torchvision=0.23.0+cpu", "torchvision-mismatch"),
    (1, "diffusers=0.35.1,transformers=4.57.0", "guide-autoimageprocessor"),
    (2, "torchao=0.7.0", "torchao-no-config-classes"),
    (3, "diffusers=0.34.0,torchao=0.16.0", "torchao-quant-type-api"),
    (3, "diffusers=0.38.0,torchao=0.14.0", "torchao-quant-type-api"),
    (3, "diffusers=0.36.0,torchao=0.9.0", "torchao-quant-type-api"),
    (4, "torchao=0.13.0", "torchao-fp8-v1-checkpoint"),
    (4, "torchao=0.17.0", "torchao-fp8-v1-checkpoint"),
    (5, "diffusers=0.32.0,torchao=0.9.0", "torchao-prequantized-offload"),
    (5, "diffusers=0.42.1,torchao=0.15.0", "torchao-prequantized-offload"),
    (6, "diffusers=0.34.0", "device-map-cuda0"),
    (6, "diffusers=0.42.1", "device-map-cuda0"),
    (7, "torchao=0.13.0", "torchao-size-measurement"),
    (8, "optimum-quanto=0.2.6,capability=8.9", "quanto-qfloat8-marlin"),
    (8, "optimum-quanto=0.2.7", "quanto-qfloat8-marlin"),
    (9, "diffusers=0.42.1,capability=none", "bnb-no-gpu"),
    (10, "diffusers=0.36.0,bitsandbytes=0.46.0", "bnb-8bit-to"),
    (10, "diffusers=0.37.0,bitsandbytes=0.47.0", "bnb-8bit-to"),
    (10, "diffusers=0.37.0,bitsandbytes=0.48.0,transformers=4.57.1", "bnb-8bit-to"),
    (11, "diffusers=0.30.0", "autopipeline-no-flux"),
    (12, "diffusers=0.36.0,transformers=5.0.0", "mt5tokenizer-transformers5"),
    (13, "transformers=5.0.0", "load-in-8bit-kwarg"),
    (14, "diffusers=0.40.0,transformers=4.57.0", "hub-major-split"),
    (14, "transformers=4.57.1,huggingface-hub=1.0.0", "hub-major-split"),
    (15, "torch=2.14.1,torch-cuda=13.0,driver=550.54.15", "torch-cuda-driver-too-old"),
    (15, "torch=2.14.1,torch-cuda=13.0,driver=570.133.20", "torch-cuda-driver-too-old"),
]


@pytest.mark.parametrize(("row", "versions", "entry_id"), COMBINATIONS, ids=lambda v: str(v))
def test_known_issues_combination_is_flagged(row, versions, entry_id):
    found = evaluate(versions)
    assert entry_id in ids(found)
    assert row in load_knowledge().get(entry_id).known_issues


@pytest.mark.parametrize(("versions", "entry_id"), [
    ("torch=2.8.0,torchvision=0.23.0", "torchvision-mismatch"),  # a matched pair
    ("torch=2.13.0+cpu,torchvision=0.28.0+cpu", "torchvision-mismatch"),
    ("diffusers=0.35.2,transformers=4.57.1,torch=2.8.0", "torchvision-mismatch"),  # no torchvision: imports fine
    ("torchao=0.9.0", "torchao-no-config-classes"),
    ("diffusers=0.37.0,transformers=5.0.0", "mt5tokenizer-transformers5"),
    ("diffusers=0.37.0,bitsandbytes=0.48.0,transformers=5.24.0", "bnb-8bit-to"),
    ("diffusers=0.42.1,transformers=5.24.0,huggingface-hub=2.4.0", "hub-major-split"),
    ("diffusers=0.36.0,transformers=4.57.1,huggingface-hub=0.36.0", "hub-major-split"),
    ("torch=2.14.1,torch-cuda=13.0,driver=580.65.06", "torch-cuda-driver-too-old"),
    ("optimum-quanto=0.2.4,capability=8.9", "quanto-qfloat8-marlin"),
    ("diffusers=0.42.1,capability=8.9", "bnb-no-gpu"),
])
def test_the_fixed_combination_is_not_flagged(versions, entry_id):
    assert entry_id not in ids(evaluate(versions))


def _lock_versions(name: str) -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / "requirements" / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            req = Requirement(line)
            out[req.name] = next(iter(req.specifier)).version
    return out


@pytest.mark.parametrize("line", ["default", "guide"])
def test_the_supported_lines_are_not_blocked(line, config):
    versions = _lock_versions(line)
    assert {"diffusers", "transformers", "huggingface_hub"} <= set(versions)
    assert supported_line(versions) == line
    for spec in config.models.values():
        blocking = [f.entry.id for f in evaluate(versions, model_type=spec.type) if f.relevance == "blocks"]
        assert blocking == [], f"{line} line blocks {spec.name}: {blocking}"


def test_the_installed_versions_are_a_supported_line():
    from fluxnb.core.environment import installed_versions

    versions = installed_versions()
    assert supported_line(versions) in ("default", "guide")
    assert not [f for f in evaluate(versions, model_type="flux-bnb-8bit") if f.relevance == "blocks"]


def test_relevance_follows_the_model_type():
    found = {f.entry.id: f.relevance for f in evaluate("torchao=0.7.0,diffusers=0.34.0", model_type="flux-bnb-8bit")}
    assert found["torchao-no-config-classes"] == "other"  # fluxnb's bnb path does not use torchao
    assert found["bnb-8bit-to"] == "affects"
    found = {f.entry.id: f.relevance for f in evaluate("torch=2.8.0,torchvision=0.21.0", model_type="flux-tiny")}
    assert found["torchvision-mismatch"] == "blocks"


# -- reproduced here, for real ----------------------------------------------------------------------------------


def test_device_map_cuda0_is_rejected_by_the_installed_diffusers(tiny_model):
    from diffusers import FluxPipeline

    with pytest.raises(NotImplementedError) as info:
        FluxPipeline.from_pretrained(tiny_model.report.checkpoint, device_map="cuda:0")
    assert "cuda:0 not supported. Supported strategies are: balanced" in str(info.value)
    assert [d.entry.id for d in fluxnb.diagnose(info.value)] == ["device-map-cuda0"]
    assert "device-map-cuda0" in ids(evaluate({"diffusers": package_version("diffusers")}))


def test_bitsandbytes_loading_without_a_gpu_is_refused(tiny_model):
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    with pytest.raises(RuntimeError) as info:
        FluxTransformer2DModel.from_pretrained(tiny_model.report.checkpoint, subfolder="transformer",
                                               quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    assert str(info.value) == "No GPU found. A GPU is needed for quantization."
    assert [d.entry.id for d in fluxnb.diagnose(info.value)] == ["bnb-no-gpu"]


def test_load_in_8bit_kwarg_on_the_installed_transformers(tiny_model, caplog):
    from transformers import T5EncoderModel

    folder = Path(tiny_model.report.checkpoint) / "text_encoder_2"
    if TRANSFORMERS_5:
        with pytest.raises(TypeError) as info:
            T5EncoderModel.from_pretrained(folder, load_in_8bit=True)
        text = str(info.value)
        assert "T5EncoderModel.__init__() got an unexpected keyword argument 'load_in_8bit'" in text
    else:  # 4.x still takes it, with a deprecation warning in the log
        with caplog.at_level("WARNING"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            T5EncoderModel.from_pretrained(folder, load_in_8bit=True)
        text = caplog.text
        assert "The `load_in_4bit` and `load_in_8bit` arguments are deprecated" in text
    assert "load-in-8bit-kwarg" in [d.entry.id for d in fluxnb.diagnose(text)]
    assert "load-in-8bit-kwarg" in ids(evaluate({"transformers": package_version("transformers")}))


def test_mt5tokenizer_on_the_installed_transformers():
    if TRANSFORMERS_5:
        with pytest.raises(ImportError) as info:
            from transformers import MT5Tokenizer  # noqa: F401
        assert "cannot import name 'MT5Tokenizer' from 'transformers'" in str(info.value)
        assert [d.entry.id for d in fluxnb.diagnose(info.value)] == ["mt5tokenizer-transformers5"]
        # the installed diffusers (>= 0.37) no longer needs it, and the rules agree:
        assert "mt5tokenizer-transformers5" not in ids(evaluate({"diffusers": package_version("diffusers"),
                                                                 "transformers": package_version("transformers")}))
    else:
        from transformers import MT5Tokenizer  # noqa: F401 - the import is the check (4.x still has it)

        assert "mt5tokenizer-transformers5" not in ids(evaluate({"transformers": package_version("transformers")}))


def write_mismatched_torchvision(folder: Path) -> Path:
    """A torchvision whose C++ operators never registered with this torch, as with a build for another torch.

    Real torchvision registers fake (meta) kernels for its ops at import; when its compiled library belongs to
    another torch the ops are missing and torch itself raises "operator torchvision::nms does not exist".
    """
    package = folder / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent("""
        import torch

        __version__ = "0.21.0"


        @torch.library.register_fake("torchvision::nms")
        def _meta_nms(dets, scores, iou_threshold):
            return dets.new_empty((0,), dtype=torch.long)
    """), encoding="utf-8")
    info = folder / "torchvision-0.21.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.21.0\n", encoding="utf-8")
    return folder


def test_a_mismatched_torchvision_breaks_importing_flux_and_is_diagnosed(tmp_path):
    site = write_mismatched_torchvision(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", "from diffusers import FluxPipeline"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                             str(site), os.environ.get("PYTHONPATH")]))}, timeout=300)
    assert out.returncode != 0
    assert "operator torchvision::nms does not exist" in out.stderr
    assert "Could not import module 'CLIPImageProcessor'" in out.stderr
    assert fluxnb.diagnose(out.stderr)[0].entry.id == "torchvision-mismatch"
    assert "torchvision-mismatch" in ids(evaluate({"torch": package_version("torch"), "torchvision": "0.21.0"}))


def test_fast_entries_need_torchao_and_triton_on_a_gpu():
    """The doctor's rules for the compiled torchao entries (flux-dev-torchao-*): missing extras named on a GPU."""
    from fluxnb.knowledge.base import GpuFacts

    kb = load_knowledge()
    gpu = GpuFacts(cuda=True, capability="8.9")
    bare = {f.entry.id: f.relevance for f in evaluate({"diffusers": "0.42.1"}, gpu, "flux-torchao-int8dq", kb)}
    assert bare["torchao-extra-missing"] == "blocks" and bare["compile-needs-triton"] == "affects"
    ready = {"diffusers": "0.42.1", "torchao": "0.17.0", "triton": "3.6.0"}
    found = ids(evaluate(ready, gpu, "flux-torchao-int8dq", kb))
    assert "torchao-extra-missing" not in found and "compile-needs-triton" not in found
    from fluxnb.models.backends import REGISTRY

    assert "compile" not in REGISTRY["flux-torchao-int8wo"].uses  # int8 weight-only stays eager


def test_the_recorded_cuda_graph_capture_failures_are_diagnosed():
    """The GPU lane's own failures (run 26, H100: a capture that failed, then CUDA's random generator left in capture
    mode) point at the entry that says how to turn the graph off."""
    import xml.etree.ElementTree as ET
    from pathlib import Path

    report = Path(__file__).parents[2] / "results" / "issue15" / "gpu-tests-run26.xml"
    failures = [f.text for f in ET.parse(report).iter("failure")]
    assert len(failures) == 3
    for text in failures:
        assert "cuda-graph-capture-failed" in ids(fluxnb.diagnose(text))
