"""Diagnosis: every error text the field guide and its research quote is recognised; explain_errors; the CLI.

The texts are those the entries of fluxnb/knowledge.yaml cite in their `guide` and `known_issues` fields.
"""

from __future__ import annotations

import io

import pytest

import fluxnb
from fluxnb.cli import main
from fluxnb.knowledge.diagnosis import format_diagnoses

# (text as the field guide quotes it (the entries' `guide` field), the entry that must come first)
GUIDE_TEXTS = [
    ("The size of tensor a (4096) must match the size of tensor b (10240)", "torchao-fp8-v1-checkpoint"),
    ("Models quantized with version 1 of Float8DynamicActivationFloat8WeightConfig is deprecated",
     "torchao-fp8-v1-checkpoint"),
    ("You are attempting to perform cpu/disk offload with a pre-quantized torchao model",
     "torchao-prequantized-offload"),
    ("cuda:0 not supported. Supported strategies are: balanced", "device-map-cuda0"),
    ("model size unchanged (22 GB -> 22 GB)", "torchao-size-measurement"),
    ("the whole image is a pixel mosaic", "quanto-qfloat8-marlin"),
    ("diffusers 0.35.x + transformers 4.57.x: `AutoImageProcessor` import error", "torchvision-mismatch"),
    ("operator torchvision::nms does not exist", "torchvision-mismatch"),
    ("torchao 0.7.0: `Int4WeightOnlyConfig` import error", "torchao-no-config-classes"),
]
# The exact texts the research quotes (the entries' `known_issues` rows: text, entry).
KNOWN_ISSUES_TEXTS = [
    "ImportError: cannot import name 'AutoImageProcessor' from 'transformers'",
    "Could not import module 'AutoImageProcessor'. Are this object's requirements defined correctly?",
    "Could not import module 'CLIPImageProcessor'",
    "cannot import name 'Int4WeightOnlyConfig' from 'torchao.quantization'",
    "torchao <= 0.9.0 only supports string quant_type ...",
    "TorchAoConfig requires torchao >= 0.15.0",
    "quant_type must be an AOBaseConfig instance, got str",
    "Stored version is not the same as current default version of the config",
    "ValueError: You are attempting to perform cpu/disk offload with a pre-quantized torchao model This is not "
    "supported yet. Please remove the CPU or disk device from the device_map argument.",
    "NotImplementedError: cuda:0 not supported. Supported strategies are: balanced",
    "RuntimeError: No GPU found. A GPU is needed for quantization.",
    ".to is not supported for 8-bit bitsandbytes models",
    "Skipping the hook placement for the T5EncoderModel as it is loaded in bitsandbytes 8bit",
    "ValueError: AutoPipeline can't find a pipeline linked to FluxPipeline for flux",
    "Failed to import diffusers.pipelines.auto_pipeline ... cannot import name 'MT5Tokenizer' from 'transformers'",
    "TypeError: T5EncoderModel.__init__() got an unexpected keyword argument 'load_in_8bit'",
    "UserWarning: CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).",
    "Some weights of the model checkpoint at /x/text_encoder were not used when initializing CLIPTextModel: "
    "['embeddings.position_embedding.weight']",
    "AttributeError: module transformers has no attribute TokenizersBackend",
]
KNOWN_ISSUES_IDS = [
    "torchvision-mismatch", "torchvision-mismatch", "torchvision-mismatch", "torchao-no-config-classes",
    "torchao-quant-type-api", "torchao-quant-type-api", "torchao-quant-type-api", "torchao-fp8-v1-checkpoint",
    "torchao-prequantized-offload", "device-map-cuda0", "bnb-no-gpu", "bnb-8bit-to", "bnb-8bit-to",
    "autopipeline-no-flux", "mt5tokenizer-transformers5", "load-in-8bit-kwarg", "torch-cuda-driver-too-old",
    "transformers5-checkpoint-on-4x", "transformers5-checkpoint-on-4x",
]


@pytest.mark.parametrize(("text", "entry_id"), GUIDE_TEXTS)
def test_every_guide_error_text_is_recognised(text, entry_id):
    found = [d.entry.id for d in fluxnb.diagnose(text)]
    assert found and found[0] == entry_id, found


@pytest.mark.parametrize(("text", "entry_id"), list(zip(KNOWN_ISSUES_TEXTS, KNOWN_ISSUES_IDS, strict=True)))
def test_every_known_issues_text_is_recognised(text, entry_id):
    assert entry_id in [d.entry.id for d in fluxnb.diagnose(text)]


def test_the_guides_autoimageprocessor_note_names_both_entries():
    found = [d.entry.id for d in fluxnb.diagnose("cannot import name 'AutoImageProcessor' from 'transformers'")]
    assert found[:2] == ["torchvision-mismatch", "guide-autoimageprocessor"]


def test_an_exception_is_searched_with_its_chained_cause():
    try:
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as inner:
            raise ImportError("something else went wrong") from inner
    except ImportError as exc:
        error = exc
    (first, *_) = fluxnb.diagnose(error)
    assert first.entry.id == "torchvision-mismatch"
    assert "torchvision" in first.fix and first.cause


def test_versions_note_says_whether_these_versions_are_affected():
    text = "cuda:0 not supported. Supported strategies are: balanced"
    (match,) = fluxnb.diagnose(text, versions={"diffusers": "0.34.0"})
    assert "only device_map='balanced'" in match.versions_note
    (match,) = fluxnb.diagnose("torchao 0.7.0: `Int4WeightOnlyConfig` import error", versions={"torchao": "0.10.0"})
    assert match.versions_note is None


def test_unknown_errors_match_nothing():
    assert fluxnb.diagnose("ZeroDivisionError: division by zero") == []
    assert "no known issue matches" in format_diagnoses([])


def test_explain_errors_reraises_with_the_diagnosis_as_a_note(tiny_model):
    from diffusers import FluxPipeline

    with pytest.raises(NotImplementedError) as info:
        with fluxnb.explain_errors():
            FluxPipeline.from_pretrained(tiny_model.report.checkpoint, device_map="cuda:0")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "[device-map-cuda0]" in notes and "fix:" in notes
    with pytest.raises(ZeroDivisionError) as info:
        with fluxnb.explain_errors():
            1 / 0  # noqa: B018
    assert not getattr(info.value, "__notes__", [])


TRACEBACK = """Traceback (most recent call last):
  File "/home/jupyter/test_flux_gcp.py", line 40, in <module>
    pipe = FluxPipeline.from_pretrained(model_id, device_map="balanced")
ValueError: You are attempting to perform cpu/disk offload with a pre-quantized torchao model This is not supported yet.
"""


def test_cli_diagnose_reads_a_file(tmp_path, capsys):
    path = tmp_path / "traceback.txt"
    path.write_text(TRACEBACK)
    assert main(["diagnose", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[torchao-prequantized-offload]" in out and "fix:" in out
    assert main(["diagnose", "--json", str(path)]) == 0
    assert '"id": "torchao-prequantized-offload"' in capsys.readouterr().out
    assert main(["diagnose", str(tmp_path / "missing.txt")]) == 2


def test_cli_diagnose_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("RuntimeError: No GPU found. A GPU is needed for quantization.\n"))
    assert main(["diagnose"]) == 0
    assert "[bnb-no-gpu]" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("KeyError: 'x'\n"))
    assert main(["diagnose", "-"]) == 1
    assert "no known issue matches" in capsys.readouterr().out
