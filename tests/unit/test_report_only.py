"""Facts that only feed a report never break the main path (fluxnb.core.facts): each lookup is forced to fail the way a
library rename would make it fail, and the load, the image or the doctor goes on with "unknown (why)"."""

from __future__ import annotations

import sys
import types

import pytest

import fluxnb
from fluxnb.core import environment
from fluxnb.ui.display import plot_timings, timing_summary


def test_a_changed_attention_registry_leaves_the_load_working(tiny_spec, monkeypatch):
    """diffusers' private registry answering in a new shape (one value where fluxnb unpacks two) breaks the lookup."""
    from diffusers.models import attention_dispatch

    class Registry(attention_dispatch._AttentionBackendRegistry):
        @classmethod
        def get_active_backend(cls):
            return ("native",)  # no longer (name, function)

    monkeypatch.setattr(attention_dispatch, "_AttentionBackendRegistry", Registry)
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    monkeypatch.undo()  # diffusers' own attention needs the real registry to generate
    assert model.report.attention == ("unknown (attention backend lookup failed: ValueError: not enough values to "
                                      "unpack (expected 2, got 1))")
    assert "attention: unknown (attention backend lookup failed" in str(model.report)
    request = fluxnb.make_request(tiny_spec, prompt="a fox", steps=1, width=32, height=32)
    assert fluxnb.generate(model, request, progress=False)[0].metadata["speed"]["attention"].startswith("unknown (")


def test_broken_compile_counters_leave_the_image_and_its_charts_working(tiny_model, tiny_spec, monkeypatch):
    import torch._dynamo.utils

    class Counters:
        def __getitem__(self, key):
            raise KeyError(f"no counter group {key!r} in this torch")

    monkeypatch.setattr(torch._dynamo.utils, "counters", Counters())
    request = fluxnb.make_request(tiny_spec, prompt="a fox", steps=1, width=32, height=32, num_images=2)
    run = fluxnb.RunFolder.create("report-only")
    images = fluxnb.generate(tiny_model, request, run, progress=False)
    reason = "unknown (torch._dynamo counters failed: KeyError: \"no counter group 'stats' in this torch\")"
    assert [img.metadata["compile"] for img in images] == [{"unknown": reason}] * 2
    assert len(fluxnb.read_manifest(run.path)["images"]) == 2
    assert timing_summary(images).count(": seed ") == 2
    ax_time = plot_timings(images).axes[0]  # the seconds drawn, without compile bars (no figure to draw them from)
    assert [bar.get_height() for bar in ax_time.patches] == [img.metadata["seconds"] for img in images]
    assert ax_time.get_legend() is None


def test_a_broken_nvml_binding_makes_the_driver_unknown_with_the_reason(monkeypatch):
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        raise AttributeError("module 'pynvml' has no attribute 'nvmlInit_v2'")

    nvml.NVMLError, nvml.nvmlInit = NVMLError, init
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(environment, "_driver_from_nvidia_smi", lambda: None)  # this machine: no other source
    monkeypatch.setattr(environment, "_driver_from_proc", lambda: None)
    problems: list[str] = []
    assert environment.nvidia_driver_version(problems) is None
    assert problems == ["unknown (reading the driver version from NVML failed: AttributeError: module 'pynvml' has "
                        "no attribute 'nvmlInit_v2')"]
    row = fluxnb.check_environment("flux-tiny").row("torch / CUDA / driver")
    assert "NVIDIA driver: unknown (reading the driver version from NVML failed: AttributeError" in row.found
    links = environment.gpu_links(2)
    assert links["kind"].startswith("unknown (reading the GPU interconnect from NVML failed: AttributeError")


def test_a_report_only_failure_is_said_once_in_the_log(caplog):
    from fluxnb.core.facts import report_only

    @report_only("an example lookup")
    def lookup() -> str:
        raise ValueError("boom")

    with caplog.at_level("WARNING", logger="fluxnb.core.facts"):
        assert lookup() == "unknown (an example lookup failed: ValueError: boom)"
    assert [r.getMessage() for r in caplog.records] == ["fluxnb: unknown (an example lookup failed: ValueError: boom)"]


@pytest.mark.parametrize("broken", [False, True])
def test_the_fallback_can_keep_the_shape_a_caller_reads(broken):
    from fluxnb.core.facts import report_only

    @report_only("links", fallback=lambda reason: {"kind": reason, "pairs": []})
    def links() -> dict:
        if broken:
            raise OSError("no NVML")
        return {"kind": "NVLink", "pairs": [[0, 1]]}

    assert links()["kind"] == ("unknown (links failed: OSError: no NVML)" if broken else "NVLink")


def test_fluxnb_run_from_a_source_folder_is_said_not_a_failure(monkeypatch):
    """Imported from a checkout on PYTHONPATH (no installed metadata), the doctor cannot read fluxnb's own requirements:
    it says so, and the rest of its report stands."""
    from importlib import metadata

    real = metadata.distribution

    def distribution(name: str):
        if name == "fluxnb":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    report = fluxnb.check_environment("flux-tiny")
    row = report.row("fluxnb requirements")
    assert row.status == "warn" and "fluxnb runs from a source folder" in row.found and "pip install -e ." in row.fix
    assert report.row("python").status == "ok" and report.ok
