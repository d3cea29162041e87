"""CPU coverage of the float8 fast path's logic, which only a GPU runs for real.

fluxnb/models/backends/fp8_rows.py copies the body of diffusers' FluxSingleTransformerBlock.forward (and calls
FeedForward's
layers itself) so that a kernel can take the GELU and the row quantization: here its forward runs on the real tiny
FLUX blocks with the kernel's float8 linear replaced by the same product in float32, and must give diffusers' own
output bit for bit; a change of diffusers' block body breaks it. The kernels themselves (fp8_rows_triton.py) run
under Triton's interpreter against plain torch.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock


def float32_gelu_linear(linear, mlp: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
    """What the fused float8 linear computes, unquantized: linear([attention | GELU-tanh(mlp)])."""
    row = F.gelu(mlp, approximate="tanh")
    return linear(row if attention is None else torch.cat([attention, row], dim=-1))


@pytest.fixture
def fused_in_float32(monkeypatch):
    """fp8_rows' classes take their fused path (as compiled on a GPU), with the float32 product for the kernel."""
    from fluxnb.models.backends import fp8_rows

    monkeypatch.setattr(fp8_rows, "_fused", lambda x, linear: True)
    monkeypatch.setattr(fp8_rows, "gelu_float8_linear", float32_gelu_linear)
    monkeypatch.setattr(fp8_rows, "_per_row_float8", lambda linear: True)  # as if torchao made it float8 per row
    return fp8_rows


def _block_inputs(transformer, g: torch.Generator) -> dict:
    """A single block's inputs at the tiny model's width: 8 text and 16 image tokens, their rotary embedding."""
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    ids = torch.randint(0, 8, (24, 3), generator=g).float()
    return dict(hidden_states=torch.randn(1, 16, dim, generator=g),
                encoder_hidden_states=torch.randn(1, 8, dim, generator=g),
                temb=torch.randn(1, dim, generator=g), image_rotary_emb=transformer.pos_embed(ids))


@pytest.mark.stack  # the single block's forward differs between the diffusers lines
def test_the_fused_single_block_forward_is_diffusers_forward(tiny_model, fused_in_float32):
    """On a diffusers line whose single block takes (hidden_states, encoder_hidden_states, ...), fluxnb swaps its
    copy of the body in, and the copy must equal diffusers' forward exactly. On a line whose block has another
    forward (the guide's 0.34: one joint tensor), the swap is refused: the copy does not even fit its call."""
    transformer = copy.deepcopy(tiny_model.pipe.transformer)
    block = transformer.single_transformer_blocks[0]
    assert type(block) is FluxSingleTransformerBlock
    inputs = _block_inputs(transformer, torch.Generator().manual_seed(0))
    swap = fused_in_float32._swap_for(block)
    with torch.inference_mode():
        if swap is None:
            with pytest.raises(TypeError):
                FluxSingleTransformerBlock.forward(block, **inputs)  # no encoder_hidden_states there
            return
        text, image = FluxSingleTransformerBlock.forward(block, **inputs)
        block.__class__ = swap
        fused_text, fused_image = block(**inputs)
    assert swap is fused_in_float32.GeluFloat8SingleBlock
    assert text.shape == (1, 8, inputs["temb"].shape[-1]) and image.shape == (1, 16, inputs["temb"].shape[-1])
    assert torch.equal(fused_text, text) and torch.equal(fused_image, image)
    assert not torch.equal(image, inputs["hidden_states"])  # the block did something


@pytest.mark.stack
def test_the_fused_feed_forward_is_diffusers_feed_forward(tiny_model, fused_in_float32):
    """The double blocks' FeedForward (GELU-tanh projection, dropout, linear): fluxnb's fused forward calls the
    layers itself and must equal diffusers' forward exactly."""
    ff = copy.deepcopy(tiny_model.pipe.transformer.transformer_blocks[0].ff)
    assert type(ff) is FeedForward
    x = torch.randn(1, 24, ff.net[0].proj.in_features, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = FeedForward.forward(ff.eval(), x)
        assert fused_in_float32._swap_for(ff) is fused_in_float32.GeluFloat8FeedForward
        ff.__class__ = fused_in_float32.GeluFloat8FeedForward
        assert torch.equal(ff(x), expected)


def test_first_block_cache_runs_on_the_swapped_blocks(tiny_model, fused_in_float32):
    """The float8 entry's cached mode with FirstBlockCache: diffusers' hooks look a block's outputs up by its exact
    class, so the swapped single block must be registered beside diffusers' own (it failed on an H200, run 33:
    "Model class GeluFloat8SingleBlock not registered"). The cached forward gives the uncached one's output on the
    step the cache computes in full."""
    from fluxnb.models import step_cache

    transformer = copy.deepcopy(tiny_model.pipe.transformer)
    assert fused_in_float32.use_fused_fp8_rows(transformer) > 0
    assert type(transformer.single_transformer_blocks[0]) is fused_in_float32.GeluFloat8SingleBlock
    g = torch.Generator().manual_seed(0)
    dim = transformer.config.in_channels
    inputs = dict(hidden_states=torch.randn(1, 16, dim, generator=g),
                  encoder_hidden_states=torch.randn(1, 8, transformer.config.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(1, transformer.config.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3),
                  txt_ids=torch.zeros(8, 3), return_dict=False)
    with torch.inference_mode():
        expected = transformer(**inputs)[0]
        step_cache.enable(transformer, step_cache.parse_cache("first-block@0.05"))
        with transformer.cache_context("cond"):
            cached = transformer(**inputs)[0]
    assert torch.equal(cached, expected)
