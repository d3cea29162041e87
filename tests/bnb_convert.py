"""Convert a module's Linear layers to bitsandbytes layers on the CPU (test helper).

diffusers refuses quantized *loading* without a GPU (knowledge entry bnb-no-gpu), but bitsandbytes' layers run on a
CPU, so the verification code can be tested on real bnb modules here; the loading path itself is proven by
the GPU lane (tests/gpu/test_gpu.py).
"""

from __future__ import annotations

import torch


def convert_linears(module: torch.nn.Module, bits: int = 8) -> torch.nn.Module:
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            if bits == 8:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False)
                new.weight = bnb.nn.Int8Params(child.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                        quant_type="nf4", compute_dtype=torch.float32)
                new.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                new.bias = child.bias
            setattr(module, name, new.to("cpu"))
        else:
            convert_linears(child, bits)
    return module
