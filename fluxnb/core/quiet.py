"""Known-harmless library log lines, dropped at their source so that real warnings stand out.

Each entry names the logger that emits the line and the start of its text, with the reason it is harmless for
fluxnb. Nothing else is touched: other records of the same loggers, and every warning not listed here, stay
visible (a filter on one message, not a lowered logger level). Installed when fluxnb is imported, i.e. before
transformers or bitsandbytes are, since bitsandbytes logs its line while it is being imported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .compat import BNB_MATMUL_LOGGER


@dataclass(frozen=True)
class HarmlessLogLine:
    logger: str
    starts: tuple[str, ...]  # text the formatted message contains (after the class name it names, for some)
    why: str


HARMLESS = (
    HarmlessLogLine(
        "transformers.utils.import_utils",
        ("requires torchvision (not installed); falling back to",),
        "FLUX pipelines never use their image processors (the CLIP text encoder reads text only); transformers "
        "falls back to the PIL processor by itself. fluxnb does not need torchvision (the doctor says so).",
    ),
    HarmlessLogLine(
        "bitsandbytes.backends.cpu.ops",
        ("Failed to load CPU gemm_4bit_forward from kernels-community",),
        "an optional faster CPU kernel for 4-bit matmuls from the `kernels` package; bitsandbytes uses its own CPU "
        "path without it, and fluxnb runs bitsandbytes models on CUDA.",
    ),
    HarmlessLogLine(
        BNB_MATMUL_LOGGER,
        ("MatMul8bitLt: inputs will be cast from",),
        "LLM.int8 quantizes its bf16 inputs through float16 by design (the guide's bnb 8-bit config); bitsandbytes "
        "0.50 logs this on every matmul, about 15,000 lines for one benchmark run (results/README.md, run 16).",
    ),
)


class _DropHarmless(logging.Filter):
    def __init__(self, line: HarmlessLogLine):
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(start in message for start in self.line.starts)


def silence_known_harmless() -> None:
    """Attach the filters (idempotent: each logger gets at most one fluxnb filter per entry)."""
    for line in HARMLESS:
        logger = logging.getLogger(line.logger)
        if not any(isinstance(f, _DropHarmless) and f.line == line for f in logger.filters):
            logger.addFilter(_DropHarmless(line))


silence_known_harmless()  # on import: fluxnb/__init__ imports this module before any heavy library loads
