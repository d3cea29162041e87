"""The synthetic checkpoints' second weight set: activation outliers injected without changing the function."""

from __future__ import annotations

import pytest
import torch

import fluxnb
from fluxnb.models.synthetic import inject_outliers

pytestmark = pytest.mark.stack  # in both lanes: checkpoints written and read by each line


def _inputs(config, tokens: int = 64, text: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return dict(hidden_states=rnd(1, tokens, config.in_channels),
                encoder_hidden_states=rnd(1, text, config.joint_attention_dim),
                pooled_projections=rnd(1, config.pooled_projection_dim),
                timestep=torch.tensor([0.5], dtype=torch.float64), guidance=torch.tensor([3.5], dtype=torch.float64),
                img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3), return_dict=False)


def test_outliers_keep_the_function_and_reach_the_quantized_linears(tiny_spec):
    transformer = fluxnb.load_model(tiny_spec, device="cpu", progress=False).pipe.transformer.to(torch.float64)
    inputs = _inputs(transformer.config)
    seen: list[torch.Tensor] = []
    transformer.single_transformer_blocks[0].proj_mlp.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].abs().amax(dim=(0, 1))))
    with torch.no_grad():
        before = transformer(**inputs)[0]
        channel_max_before = seen.pop()
        record = inject_outliers(transformer, channels=2, scale=50.0)
        after = transformer(**inputs)[0]
        channel_max_after = seen.pop()
    assert record == {"outlier_channels": 2, "outlier_scale": 50.0, "outlier_seed": 20251122}
    assert float((after - before).norm() / before.norm()) < 1e-12  # the same function, in float64
    grown = (channel_max_after / channel_max_before) > 10
    assert int(grown.sum()) == 2  # exactly the chosen channels became outliers, the others did not move
    assert torch.allclose(channel_max_after[~grown], channel_max_before[~grown])
