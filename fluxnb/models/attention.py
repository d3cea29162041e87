"""Which attention kernel the transformer runs: said in the load report and each image's metadata.

diffusers (0.36+) dispatches FLUX attention through its attention-backend registry: a processor's own
`_attention_backend` when one was set (`transformer.set_attention_backend(...)`), else the registry's active one
("native": torch's scaled_dot_product_attention, which picks flash / memory-efficient / cuDNN kernels itself).
Older diffusers lines (the guide's 0.34) call scaled_dot_product_attention directly. The registry is private to
diffusers: the lookup only feeds the report, so a rename there makes it "unknown (...)", never a failed load.
"""

from __future__ import annotations

from ..core.compat import active_attention_backend, processor_attention_backend
from ..core.facts import report_only

SDPA = "native (torch scaled_dot_product_attention)"


@report_only("attention backend lookup")
def attention_backend(transformer) -> str:
    """The backend name(s) the transformer's attention processors use (private diffusers registry: report only)."""
    active = active_attention_backend()
    if active is None:  # diffusers before its registry (0.36) calls scaled_dot_product_attention itself
        return SDPA
    chosen = {processor_attention_backend(m.processor) for m in transformer.modules() if hasattr(m, "processor")}
    chosen.discard(None)
    if chosen:
        return ", ".join(sorted(chosen))
    return SDPA if active == "native" else active
