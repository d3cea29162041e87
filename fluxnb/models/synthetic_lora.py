"""LoRA adapters with random weights for a FLUX transformer, built locally with PEFT (tests and the GPU bench).

No adapter can be downloaded in tests; these have the real key names and shapes (diffusers/PEFT layout, and the
same weights in the Kohya layout that diffusers converts on load), so loading runs every real step.
"""

from __future__ import annotations

import re
from pathlib import Path

# Modules a synthetic adapter targets: the ones Kohya's FLUX layout names one to one (no fused qkv), so the same
# weights can be written in both layouts.
TARGETS = (r"(single_)?transformer_blocks\.\d+\.(attn\.to_out\.0|attn\.to_add_out|ff\.net\.0\.proj|ff\.net\.2|"
           r"ff_context\.net\.0\.proj|ff_context\.net\.2|proj_out)")  # a regex: PEFT matches it in full
# diffusers module name -> Kohya name (the inverse of diffusers' _convert_kohya_flux_lora_to_diffusers)
_KOHYA = (
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0", r"lora_unet_double_blocks_\1_img_attn_proj"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out", r"lora_unet_double_blocks_\1_txt_attn_proj"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj", r"lora_unet_double_blocks_\1_img_mlp_0"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2", r"lora_unet_double_blocks_\1_img_mlp_2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj", r"lora_unet_double_blocks_\1_txt_mlp_0"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2", r"lora_unet_double_blocks_\1_txt_mlp_2"),
)
_KOHYA_SINGLE = ((r"single_transformer_blocks\.(\d+)\.proj_out", r"lora_unet_single_blocks_\1_linear2"),)


def build_lora(transformer, path: str | Path, rank: int = 4, seed: int = 0, magnitude: float = 1.0) -> Path:
    """A random LoRA for `transformer` (not modified) saved in the diffusers layout at `path` (.safetensors).

    magnitude scales lora_B so that the adapter visibly changes the output of a random-weight model.
    """
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    adapter = f"synthetic_{seed}"
    # init_lora_weights=False: lora_B random too (PEFT's default zeros it, an adapter that changes nothing)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False),
                            adapter_name=adapter)
    try:
        with torch.no_grad():
            for module in transformer.modules():
                if isinstance(module, BaseTunerLayer) and adapter in module.lora_B:
                    module.lora_B[adapter].weight.mul_(magnitude)
        layers = {k: v.detach().to("cpu", torch.float32).contiguous()
                  for k, v in get_peft_model_state_dict(transformer, adapter_name=adapter).items()}
    finally:
        transformer.delete_adapters(adapter)
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name)
    return path


def to_kohya(source: str | Path, target: str | Path, prefix: str = "lora_unet_") -> Path:
    """The same adapter in Kohya's FLUX layout (lora_unet_..., lora_down/lora_up, .alpha = rank: scale 1).

    prefix="diffusion_model." writes ComfyUI's variant of the same names.
    """
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(source))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        name = None
        for pattern, replacement in (*_KOHYA_SINGLE, *_KOHYA):
            if re.fullmatch(pattern, module):
                name = re.sub(pattern, replacement, module)
                break
        if name is None:
            raise ValueError(f"{module} has no one-to-one Kohya name")
        name = prefix + name.removeprefix("lora_unet_")
        if kind == "A.weight":
            out[f"{name}.lora_down.weight"] = tensor
            out[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
        else:
            out[f"{name}.lora_up.weight"] = tensor
    save_file(out, str(target))
    return Path(target)
