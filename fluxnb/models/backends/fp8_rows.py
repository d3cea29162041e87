"""The float8 type's GELU-then-linear layers with the GELU and the activation quantization in one kernel.

In FLUX the MLP branches end in GELU followed by a float8 linear: `ff.net.2` (and `ff_context.net.2`) of the double
blocks, and the single blocks' `proj_out`, whose input is [attention output | GELU(MLP)]. torchao quantizes that
input per row (row amax / 448, float8 e4m3); compiled, inductor read each row twice (amax, then quantize) after
writing the GELU output: 13 ms of a 100 ms float8 step on an H100 (results/README.md, run 22). Here, when the blocks
are compiled on a CUDA GPU with triton, these layers get the GELU input instead and call
torch.ops.fluxnb.gelu_fp8_rows (fluxnb/models/backends/fp8_rows_triton.py: one read of the row, one float8 write), then
the same `torch._scaled_mm` torchao calls. The classes are swapped in (`module.__class__`, as PEFT and the compiled
blocks see them as before); everywhere else (eager, the CPU, an adapter wrapped around the linear by PEFT) they run
diffusers' own forward, unchanged.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

from ...core.compat import (
    activation_quantization,
    add_repeated_block,
    register_block_class_like,
    scaled_mm_rows,
    weight_scale_shape,
)

# torch.ops.fluxnb.gelu_fp8_rows where triton is installed, set by use_fused_fp8_rows
_TRITON_OP = None


def _triton_op():
    """The Triton-backed op, registered on first use; None without triton."""
    global _TRITON_OP
    if _TRITON_OP is None:
        try:
            from . import fp8_rows_triton
        except ImportError:
            return None
        _TRITON_OP = fp8_rows_triton.gelu_fp8_rows
    return _TRITON_OP


def _per_row_float8(linear) -> bool:
    """A plain Linear whose weight is a torchao Float8Tensor with per-row scales and per-row dynamic activations."""
    weight = getattr(linear, "weight", None)
    if type(linear) is not torch.nn.Linear or type(weight).__name__ != "Float8Tensor":
        return False
    kwargs = activation_quantization(weight)
    return (kwargs is not None and type(kwargs.granularity).__name__ == "PerRow"
            and kwargs.float8_dtype == torch.float8_e4m3fn and kwargs.hp_value_lb is None
            and kwargs.hp_value_ub is None and weight_scale_shape(weight) == (weight.shape[0], 1))


def _fused(x: torch.Tensor, linear) -> bool:
    """Whether this call takes the kernel (decided while tracing, so the compiled graph guards on it)."""
    return (_TRITON_OP is not None and torch.compiler.is_compiling() and x.is_cuda and x.dtype == torch.bfloat16
            and _per_row_float8(linear))


def gelu_float8_linear(linear, mlp: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
    """linear([attention | GELU(mlp)]) with the row quantization in the kernel, then torchao's float8 matmul."""
    weight = linear.weight
    q, scale = _TRITON_OP(mlp, attention)
    out = scaled_mm_rows(q, scale, weight, linear.bias, mlp.dtype)
    return out.reshape(*mlp.shape[:-1], out.shape[-1])


class GeluFloat8FeedForward(FeedForward):
    """diffusers' FeedForward (GELU projection, dropout, linear); compiled on a GPU, GELU moves into the kernel."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not _fused(hidden_states, self.net[2]):
            return super().forward(hidden_states, *args, **kwargs)
        return gelu_float8_linear(self.net[2], self.net[0].proj(hidden_states))  # net[1]: dropout, off in eval


class GeluFloat8SingleBlock(FluxSingleTransformerBlock):
    """diffusers' FluxSingleTransformerBlock; compiled on a GPU, the MLP's GELU and the concatenation with the
    attention output move into the kernel that quantizes proj_out's input. The rest is diffusers' forward."""

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        if not _fused(hidden_states, self.proj_out):
            return super().forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                   joint_attention_kwargs)
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        residual = hidden_states
        norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
        mlp = self.proj_mlp(norm_hidden_states)
        attention = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                              **(joint_attention_kwargs or {}))
        hidden_states = residual + gate.unsqueeze(1) * gelu_float8_linear(self.proj_out, mlp, attention)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def _swap_for(module) -> type | None:
    """Our class for a diffusers module whose GELU (tanh) feeds a per-row float8 linear; None for any other."""
    if type(module) is FeedForward:
        gelu, linear = module.net[0], module.net[-1]
        if len(module.net) == 3 and type(gelu).__name__ == "GELU" and gelu.approximate == "tanh":
            return GeluFloat8FeedForward if _per_row_float8(linear) else None
    if (type(module) is FluxSingleTransformerBlock and getattr(module.act_mlp, "approximate", None) == "tanh"
            and "encoder_hidden_states" in inspect.signature(FluxSingleTransformerBlock.forward).parameters):
        return GeluFloat8SingleBlock if _per_row_float8(module.proj_out) else None  # (diffusers >= 0.42's forward)
    return None


def use_fused_fp8_rows(transformer: torch.nn.Module) -> int:
    """Swap in the fused classes where the GELU's linear is per-row float8 (the float8 type; int8 keeps diffusers'
    classes); returns how many modules. The swapped block class joins `_repeated_blocks`, so that regional compile
    still finds the single blocks."""
    if next(transformer.parameters()).is_cuda:
        _triton_op()
    count = 0
    for module in transformer.modules():
        swap = _swap_for(module)
        if swap is not None:
            module.__class__ = swap
            count += 1
    if count:
        add_repeated_block(transformer, GeluFloat8SingleBlock.__name__)
        register_block_class_like(GeluFloat8SingleBlock, FluxSingleTransformerBlock)  # for FirstBlockCache's hooks
    return count
