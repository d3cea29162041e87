"""Notebook 00's verification helpers (fluxnb.doctor.verification): memory picture, weight formats, verdict file."""

from __future__ import annotations

import pytest

import fluxnb
from fluxnb.core.footprint import ComponentFootprint
from fluxnb.doctor.checks import FAIL, OK
from fluxnb.doctor.verification import SetupVerification, memory_figure, quantization_rows, read_verdict
from fluxnb.models.loading import LoadReport

pytestmark = pytest.mark.stack  # in both lanes: notebook 00's verification on each line


def test_memory_figure_shows_the_guide_beside_the_measurement():
    mib = 2**20
    components = [ComponentFootprint("transformer", "FluxTransformer2DModel", "int8", "cuda:0", 3 * mib, 5, 1),
                  ComponentFootprint("text_encoder", "CLIPTextModel", "bf16", "cuda:0", mib // 2, 0, 9),
                  ComponentFootprint("text_encoder_2", "T5EncoderModel", "int8", "cuda:0", mib, 7, 0),
                  ComponentFootprint("vae", "AutoencoderKL", "bf16", "cuda:0", mib // 2, 0, 0)]
    fig = memory_figure(components)
    left, right = fig.axes
    assert [p.get_height() for p in left.patches] == [12, 5, 1, 1]  # the guide's GB: transformer, T5, VAE, CLIP
    assert [p.get_height() for p in right.patches] == [3.0, 1.0, 0.5, 0.5]  # the same order, in MiB
    assert right.get_ylabel() == "MiB" and right.get_title() == "measured after loading here (5.00 MiB in all)"
    assert [t.get_text() for t in right.get_xticklabels()] == ["transformer\nint8", "T5\nint8", "VAE\nbf16",
                                                               "CLIP\nbf16"]


def test_quantization_rows(tiny_model):
    assert all(r.status == OK for r in quantization_rows(tiny_model.report))
    plain = ComponentFootprint("transformer", "FluxTransformer2DModel", "bf16", "cuda:0", 23 * 2**30, 0, 500)
    report = LoadReport("flux-dev-bnb-8bit", "diffusers/FLUX.1-dev-bnb-8bit", "flux-bnb-8bit", "x", "hub checkpoint",
                        "cuda", "none", 1.0, [plain])
    (row,) = quantization_rows(report)
    assert row.status == FAIL and "promised int8" in row.found


def test_verification_verdicts(tmp_path, tiny_model):
    run = fluxnb.RunFolder.create("verify", tmp_path / "run")
    verification = SetupVerification(run, fluxnb.check_environment("flux-tiny"))
    assert read_verdict(run.path)["ready"] is False  # not finished yet
    with verification.step("load"):
        pass
    with pytest.raises(NotImplementedError):
        with verification.step("generate"):
            from diffusers import FluxPipeline

            FluxPipeline.from_pretrained(tiny_model.report.checkpoint, device_map="cuda:0")
    verdict = read_verdict(run.path)
    assert verdict["ready"] is False and verdict["verdict"].startswith("not ready, because generate failed")
    assert verdict["steps"]["generate"]["known_issues"] == ["device-map-cuda0"]
    assert fluxnb.read_manifest(run.path)["status"] == "failed"
