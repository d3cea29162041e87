"""Which attention kernel the transformer runs: said in the load report and each image's metadata.

diffusers (0.36+) dispatches FLUX attention through its attention-backend registry: a processor's own
`_attention_backend` when one was set (`transformer.set_attention_backend(...)`), else the registry's active one
("native": torch's scaled_dot_product_attention, which picks flash / memory-efficient / cuDNN kernels itself).
Older diffusers lines (the guide's 0.34) call scaled_dot_product_attention directly.
"""

from __future__ import annotations

SDPA = "native (torch scaled_dot_product_attention)"


def attention_backend(transformer) -> str:
    """The backend name(s) the transformer's attention processors use."""
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    except ImportError:
        return SDPA
    chosen = {str(getattr(getattr(m, "processor", None), "_attention_backend", None) or "")
              for m in transformer.modules() if hasattr(m, "processor")}
    chosen.discard("")
    if chosen:
        return ", ".join(sorted(chosen))
    active, _ = _AttentionBackendRegistry.get_active_backend()
    name = getattr(active, "value", active)
    return SDPA if name == "native" else str(name)
