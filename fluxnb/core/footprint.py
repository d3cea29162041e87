"""What each pipeline component really is: its class, weight format, device and real bytes in memory.

`get_memory_footprint()`-style numel x element_size is wrong for quantized tensor subclasses (torchao
reports bf16 element sizes: the guide's attempt 4), so bytes come from the tensors that really hold the data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

PIPELINE_COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "vae")



@dataclass(frozen=True)
class ComponentFootprint:
    name: str
    cls: str
    format: str  # "int8 (bnb LLM.int8)", "nf4 (bnb 4-bit)", "bf16", "fp32", "float8 (torchao)", ...
    device: str
    bytes: int
    quantized_layers: int
    linear_layers: int

    def to_dict(self) -> dict:
        return asdict(self)


def _bnb_layer_format(module) -> str | None:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "int8 (bnb LLM.int8)"
    if isinstance(module, bnb.nn.Linear4bit):
        quant_type = getattr(module.weight, "quant_type", None) or getattr(module, "quant_type", "4bit")
        return f"{quant_type} (bnb 4-bit)"
    return None


def _torchao_layer_format(module) -> str | None:
    weight = getattr(module, "weight", None)
    if weight is None or type(weight).__module__.split(".")[0] != "torchao":
        return None
    return f"{type(weight).__name__} (torchao)"


def _tensor_bytes(tensor) -> int:
    """Real bytes of one tensor. A wrapper tensor subclass (torchao's quantized weights) reports the element size of
    the dtype it emulates, so it is measured by the inner tensors it really holds, as torchao's own
    get_model_size_in_bytes does."""
    if hasattr(type(tensor), "__tensor_flatten__"):
        inner_names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in inner_names)
    quant_state = getattr(tensor, "quant_state", None)  # bnb 4-bit: packed uint8 data + absmax etc.
    extra = 0
    if quant_state is not None and getattr(quant_state, "absmax", None) is not None:
        extra = quant_state.absmax.numel() * quant_state.absmax.element_size()
    return tensor.numel() * tensor.element_size() + extra


def _dtype_name(dtype) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def component_footprint(name: str, module) -> ComponentFootprint:
    """Inspect one nn.Module: weight format, device, real bytes, quantized vs plain Linear layers."""
    import torch

    quantized_formats: Counter[str] = Counter()
    quantized = linear = 0
    for sub in module.modules():
        layer_format = _bnb_layer_format(sub) or _torchao_layer_format(sub)
        if layer_format:
            quantized += 1
            quantized_formats[layer_format] += 1
        elif isinstance(sub, torch.nn.Linear):
            linear += 1
    total = 0
    devices: Counter[str] = Counter()
    float_dtypes: Counter[str] = Counter()
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size = _tensor_bytes(tensor)
        total += size
        devices[str(tensor.device)] += size
        if tensor.dtype.is_floating_point:
            float_dtypes[_dtype_name(tensor.dtype)] += size
    if quantized_formats:
        fmt = " + ".join(sorted(quantized_formats))
    else:
        fmt = float_dtypes.most_common(1)[0][0] if float_dtypes else "empty"
    device = devices.most_common(1)[0][0] if devices else "none"
    if len(devices) > 1:
        device += " (+" + ", ".join(d for d in devices if d != device) + ")"
    return ComponentFootprint(name, type(module).__name__, fmt, device, total, quantized, linear)


def pipeline_footprint(pipe) -> list[ComponentFootprint]:
    """Footprints of the FLUX pipeline's weight-carrying components, in a fixed order."""
    return [component_footprint(n, getattr(pipe, n)) for n in PIPELINE_COMPONENTS if getattr(pipe, n, None) is not None]
