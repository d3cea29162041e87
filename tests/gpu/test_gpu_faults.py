"""GPU out of memory, for real (device lane: pytest -m gpu): an artificially low memory cap makes the tiny model
run out of memory; the failure is recorded with its figures and ways out, memory is freed, and the same process
(the Jupyter kernel, in a notebook) generates again."""

from __future__ import annotations

import pytest
import torch

import fluxnb
from fluxnb.core.errors import GenerationFailed
from fluxnb.runs.outputs import RunFolder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_real_out_of_memory_is_caught_reported_and_survived(tiny_spec):
    model = fluxnb.load_model(tiny_spec, device="cuda", progress=False)
    baseline = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    request = fluxnb.make_request(tiny_spec, prompt="a fox", width=512, height=512, steps=2, num_images=2)
    run = RunFolder.create("gpu-oom")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((baseline + 8 * 2**20) / total)  # 8 MiB above the weights
    try:
        with pytest.raises(GenerationFailed) as info:
            fluxnb.generate(model, request, run, progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    message = str(info.value)
    assert "2 of 2 image(s) failed" in message and "Out of memory at 512x512" in message
    assert "GPU memory:" in message and "Memory was freed" in message
    manifest = fluxnb.read_manifest(run.path)
    assert manifest["status"] == "incomplete" and len(manifest["failures"]) == 2
    assert all(f["error"].startswith("OutOfMemoryError") for f in manifest["failures"])
    assert torch.cuda.memory_allocated() <= baseline + 2**20  # what the failed calls held was freed
    again = fluxnb.generate(model, request, RunFolder.create("gpu-oom", run.path, resume=True), progress=False)
    assert len(again) == 2
    assert fluxnb.read_manifest(run.path)["failures"] == []
