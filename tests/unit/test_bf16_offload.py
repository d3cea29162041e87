"""The bf16 backend's offload ladder (fluxnb/models/backends/bf16.py): which rung each amount of free GPU memory gets,
the boundaries included. The real tiny pipeline's weights, the GPU's free memory injected where the ladder reads it
(torch.cuda.mem_get_info)."""

from __future__ import annotations

import pytest
import torch

MARGIN = 3 * 2**30  # the ladder's activation margin: 3 GiB (activations at 1024x1024 plus the CUDA context)


def _bytes(module: torch.nn.Module) -> int:
    """Bytes of a float module's weights: each parameter and buffer once (T5 ties its embeddings)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.fixture(scope="module")
def sizes(tiny_model) -> dict[str, int]:
    pipe = tiny_model.pipe
    transformer = _bytes(pipe.transformer)
    total = transformer + sum(_bytes(getattr(pipe, n)) for n in ("text_encoder", "text_encoder_2", "vae"))
    assert 0 < transformer < total
    return {"transformer": transformer, "all": total}


@pytest.mark.parametrize("free, rung", [
    pytest.param(lambda s: s["all"] + MARGIN + 1, "none", id="all+margin+1"),
    pytest.param(lambda s: s["all"] + MARGIN, "none", id="all+margin"),  # exactly fits
    pytest.param(lambda s: s["all"] + MARGIN - 1, "model", id="all+margin-1"),
    pytest.param(lambda s: s["transformer"] + MARGIN, "model", id="transformer+margin"),  # the transformer just fits
    pytest.param(lambda s: s["transformer"] + MARGIN - 1, "sequential", id="transformer+margin-1"),
    pytest.param(lambda s: 0, "sequential", id="nothing-free"),
])
def test_each_rung_of_the_offload_ladder(tiny_model, sizes, monkeypatch, free, rung):
    from fluxnb.models.backends.bf16 import offload_for

    free_bytes = free(sizes)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *device: (free_bytes, 80 * 2**30))
    chosen, note = offload_for(tiny_model.pipe)
    assert chosen == rung
    gib = f"({free_bytes / 2**30:.1f} GiB)"
    if rung == "none":
        assert note is None
    elif rung == "model":
        assert note.startswith(f"all weights ({sizes['all'] / 2**30:.1f} GiB) exceed free GPU memory {gib}")
        assert "model CPU offload" in note
    else:
        assert note.startswith(f"the transformer alone ({sizes['transformer'] / 2**30:.1f} GiB) exceeds free GPU "
                               f"memory {gib}")
        assert "sequential CPU offload" in note
