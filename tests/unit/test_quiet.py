"""Known-harmless library log lines are dropped at their source; every other warning stays visible."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fluxnb.core.quiet import HARMLESS

pytestmark = pytest.mark.stack  # in both lanes: the libraries' log lines differ between the lines

TRIGGER = """
import logging, sys
{first}
import transformers
transformers.CLIPImageProcessor  # torchvision missing: transformers falls back to the PIL processor and says so
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure ...")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a real bitsandbytes problem")
# bitsandbytes 0.50's LLM.int8 matmul logs this on every call on CUDA (its CPU path does not): emitted by hand here
logging.getLogger("bitsandbytes.autograd._functions").warning(
    "MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.bfloat16")
transformers.logging.get_logger("transformers.utils.import_utils").warning("a real transformers problem")
"""


def _stderr(first: str) -> str:
    done = subprocess.run([sys.executable, "-c", TRIGGER.format(first=first)], capture_output=True, text=True,
                          timeout=300, check=True)
    return done.stderr


def test_harmless_lines_are_dropped_and_real_warnings_stay():
    quiet = _stderr("import fluxnb")
    assert "requires torchvision (not installed)" not in quiet
    assert "gemm_4bit_forward" not in quiet
    assert "MatMul8bitLt" not in quiet
    assert "a real bitsandbytes problem" in quiet and "a real transformers problem" in quiet


def test_without_fluxnb_the_library_lines_appear():
    """The control, where this machine makes the library speak: transformers 5 names the torchvision processor it
    falls back to (4.x, the guide's line, uses the PIL one and says nothing). The two bitsandbytes lines need a CUDA
    matmul or an AVX512-BF16 CPU, so the trigger emits them by hand: the next test ties that text to the library."""
    import transformers

    loud = _stderr("")
    torchvision = importlib.util.find_spec("torchvision") is not None
    if int(transformers.__version__.split(".")[0]) >= 5 and not torchvision:
        assert "`CLIPImageProcessor` requires torchvision (not installed)" in loud
    else:  # 4.x: CLIPImageProcessor is the PIL one; or torchvision is there (a GPU image): nothing is said
        assert "requires torchvision" not in loud


def _source(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")


def test_each_dropped_text_is_in_the_installed_library_that_logs_it():
    """Independent of the filter and of the trigger: each text fluxnb drops is in the source of the module that logs
    it (a library that rewords its line would slip past the filter unseen), and the trigger emits the bitsandbytes
    lines with the library's own format strings. From transformers 5 on only: 4.x never logs the torchvision line."""
    import transformers

    for line in HARMLESS:
        source = _source(line.logger)
        if line.logger.startswith("transformers.") and int(transformers.__version__.split(".")[0]) < 5:
            assert not any(start in source for start in line.starts), line.logger
        else:
            assert all(start in source for start in line.starts), f"{line.logger} no longer logs {line.starts}"
    assert '"MatMul8bitLt: inputs will be cast from %s to float16 during quantization"' in _source(
        "bitsandbytes.autograd._functions")
    assert '"Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure' in _source(
        "bitsandbytes.backends.cpu.ops")
