"""Known-harmless library log lines are dropped at their source; every other warning stays visible."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

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


def test_without_fluxnb_the_same_lines_appear():
    """The control: the lines the filters drop are really emitted by these libraries here."""
    import transformers

    loud = _stderr("")
    torchvision = importlib.util.find_spec("torchvision") is not None
    if int(transformers.__version__.split(".")[0]) >= 5 and not torchvision:  # 5.x named the torchvision processor
        assert "`CLIPImageProcessor` requires torchvision (not installed)" in loud  # CLIPImageProcessor
    else:  # 4.x: CLIPImageProcessor is the PIL one; or torchvision is there (a GPU image): nothing is said
        assert "requires torchvision" not in loud
    assert "Failed to load CPU gemm_4bit_forward" in loud
    assert "MatMul8bitLt: inputs will be cast from torch.bfloat16" in loud
    assert "a real bitsandbytes problem" in loud
