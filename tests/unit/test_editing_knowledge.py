"""Knowledge entries of the editing pipelines (issue 24: Fill, Control, Kontext): each failure produced for real on
the tiny editing pipelines (tests/editing_tiny.py, milliseconds on the CPU) and diagnosed as its entry; where this
machine cannot produce it, the text the issue thread quotes. The outcomes depend on the diffusers line (Kontext only
exists from 0.35; some bugs were fixed), so both lanes run these.
"""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

import fluxnb
from fluxnb.core.environment import package_version
from fluxnb.knowledge.base import evaluate, load_knowledge
from tests import editing_tiny

pytestmark = pytest.mark.stack

EDITING_IDS = ["fill-dev-transformer", "control-lora-proj-out-rank", "control-lora-then-lora",
               "control-lora-left-loaded", "lora-into-4bit-fill", "kontext-output-size", "kontext-needs-diffusers-035",
               "control-image-tensor-size", "fill-rgba-image"]
DIFFUSERS = package_version("diffusers")
HAS_KONTEXT = hasattr(__import__("diffusers"), "FluxKontextPipeline")
IMAGE = Image.new("RGB", (64, 64), (200, 120, 40))
MASK = Image.new("L", (64, 64), 255)  # white = repaint
CALL = dict(prompt="a red fox", num_inference_steps=1, height=64, width=64)


def first(error) -> str:
    found = fluxnb.diagnose(error)
    assert found, f"nothing diagnosed for {error!r}"
    return found[0].entry.id


def flagged(entry_id: str) -> bool:
    return entry_id in [f.entry.id for f in evaluate({"diffusers": DIFFUSERS})]


def test_the_editing_entries_are_in_the_knowledge_base():
    kb = load_knowledge()
    for entry_id in EDITING_IDS:
        entry = kb.get(entry_id)
        assert set(entry.affects) & {"fill", "control", "kontext"}, entry_id


def test_a_dev_transformer_in_fill_is_diagnosed():
    pipe = editing_tiny.build("fill", transformer="dev")
    with pytest.raises(RuntimeError) as info:
        pipe(image=IMAGE, mask_image=MASK, **CALL)
    assert "mat1 and mat2 shapes cannot be multiplied (16x384 and 64x32)" in str(info.value)
    assert first(info.value) == "fill-dev-transformer"
    # the same error on the real model, as FLUX.1 at 1024x1024 prints it, and one of another cause is not claimed
    assert first("RuntimeError: mat1 and mat2 shapes cannot be multiplied (4096x384 and 64x3072)") == \
        "fill-dev-transformer"
    assert fluxnb.diagnose("mat1 and mat2 shapes cannot be multiplied (1x1024 and 768x16384)") == []


def test_an_rgba_image_into_fill_is_diagnosed():
    pipe = editing_tiny.build("fill")
    with pytest.raises(RuntimeError) as info:
        pipe(image=IMAGE.convert("RGBA"), mask_image=MASK, **CALL)
    assert "expected input[1, 4, 64, 64] to have 3 channels, but got 4 channels instead" in str(info.value)
    assert first(info.value) == "fill-rgba-image"
    pipe(image=IMAGE.convert("RGBA").convert("RGB"), mask_image=MASK, **CALL)  # the fix


def test_a_control_tensor_of_another_size_is_diagnosed():
    pipe = editing_tiny.build("control")
    with pytest.raises(RuntimeError) as info:
        pipe(control_image=torch.zeros(1, 3, 32, 32), **CALL)
    assert ("Sizes of tensors must match except in dimension 2. Expected size 16 but got size 4 for tensor number 1 "
            "in the list.") in str(info.value)
    assert first(info.value) == "control-image-tensor-size"
    pipe(control_image=Image.new("RGB", (32, 32)), **CALL)  # the fix: a PIL image is resized
    # another concatenation error (nunchaku's LoRA composer) is not this entry
    assert fluxnb.diagnose("Sizes of tensors must match except in dimension 0. Expected size 64 but got size 128 "
                           "for tensor number 1 in the list.") == []


def control_lora(pipe) -> dict:
    """A Canny/Depth-like Control LoRA: x_embedder widened to 128 inputs, proj_out of a lower rank than the rest."""
    return editing_tiny.lora_state_dict(pipe, rank=8, in_features={"x_embedder": 2 * editing_tiny.PACKED},
                                        ranks={"proj_out": 4})


def test_a_control_lora_left_loaded_breaks_the_next_pipeline():
    from diffusers import FluxImg2ImgPipeline

    pipe = editing_tiny.build("control", transformer="dev")
    pipe.load_lora_weights(control_lora(pipe))
    assert pipe.transformer.config.in_channels == 128
    img2img = FluxImg2ImgPipeline.from_pipe(pipe)
    with pytest.raises(RuntimeError) as info:
        img2img(image=IMAGE, strength=0.9, **CALL)
    assert "The size of tensor a (32) must match the size of tensor b (16) at non-singleton dimension 1" in \
        str(info.value)
    assert first(info.value) == "control-lora-left-loaded"
    assert flagged("control-lora-left-loaded")
    pipe.unload_lora_weights(reset_to_overwritten_params=True)  # the fix
    FluxImg2ImgPipeline.from_pipe(pipe)(image=IMAGE, strength=0.9, **CALL)


def test_control_lora_loading_on_the_tested_lines():
    """#11464 (proj_out ranks) and #10180 (a second LoRA) do not occur on either tested line: the Control LoRA and a
    FLUX.1-dev LoRA after it both load; the rules do not flag these versions. The errors are the threads' texts."""
    pipe = editing_tiny.build("control", transformer="dev")
    pipe.load_lora_weights(control_lora(pipe), adapter_name="canny")
    pipe.load_lora_weights(editing_tiny.lora_state_dict(editing_tiny.build("dev")), adapter_name="turbo")
    pipe.set_adapters(["canny", "turbo"], adapter_weights=[0.85, 0.125])
    pipe(control_image=IMAGE, **CALL)
    assert not flagged("control-lora-proj-out-rank") and not flagged("control-lora-then-lora")
    # Not reproducible here (fixed on both lines): the literal text of diffusers issue #11464 (diffusers 0.33.1)
    issue_11464 = ("RuntimeError: Error(s) in loading state_dict for FluxTransformer2DModel:\n"
                   "        size mismatch for proj_out.lora_A.default_0.weight: copying a param with shape "
                   "torch.Size([64, 3072]) from checkpoint, the shape in current model is torch.Size([128, 3072]).\n"
                   "        size mismatch for proj_out.lora_B.default_0.weight: copying a param with shape "
                   "torch.Size([64, 64]) from checkpoint, the shape in current model is torch.Size([64, 128]).")
    assert first(issue_11464) == "control-lora-proj-out-rank"
    assert "control-lora-proj-out-rank" in [f.entry.id for f in evaluate({"diffusers": "0.33.1"})]
    # ... and of issue #10180 (a traceback on diffusers main before 0.32.0; the thread shows it up to here)
    issue_10180 = ("RuntimeError: Error(s) in loading state_dict for FluxTransformer2DModel:\n"
                   "        size mismatch for x_embedder.lo")
    assert first(issue_10180) == "control-lora-then-lora"
    assert "control-lora-then-lora" in [f.entry.id for f in evaluate({"diffusers": "0.31.0"})]


def quantize_x_embedder_nf4(pipe) -> None:
    """The transformer's x_embedder as a bitsandbytes NF4 layer on the CPU (diffusers' own bnb loading refuses to run
    without a GPU; this is the layer a BitsAndBytesConfig(load_in_4bit=True) load makes)."""
    bnb = pytest.importorskip("bitsandbytes")
    old = pipe.transformer.x_embedder
    new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=True, compute_dtype=torch.float32,
                            quant_type="nf4")
    new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type="nf4")._quantize("cpu")
    new.bias = old.bias
    pipe.transformer.x_embedder = new


def test_a_dev_lora_into_an_nf4_fill_transformer_is_diagnosed():
    pipe = editing_tiny.build("fill")
    quantize_x_embedder_nf4(pipe)
    assert type(pipe.transformer.x_embedder.weight).__name__ == "Params4bit"
    dev_lora = editing_tiny.lora_state_dict(editing_tiny.build("dev"))
    with pytest.raises(RuntimeError) as info:
        pipe.load_lora_weights(dev_lora)
    assert "output with shape [4, 1] doesn't match the broadcast shape [4, 64]" in str(info.value)
    assert first(info.value) == "lora-into-4bit-fill"
    assert flagged("lora-into-4bit-fill")
    plain = editing_tiny.build("fill")  # the fix: x_embedder not quantized (llm_int8_skip_modules), the LoRA loads
    plain.load_lora_weights(dev_lora)


@pytest.mark.skipif(HAS_KONTEXT, reason="this diffusers has FluxKontextPipeline")
def test_kontext_is_missing_before_diffusers_035():
    with pytest.raises(ImportError) as info:
        from diffusers import FluxKontextPipeline  # noqa: F401
    assert "cannot import name 'FluxKontextPipeline' from 'diffusers'" in str(info.value)
    assert first(info.value) == "kontext-needs-diffusers-035"
    assert flagged("kontext-needs-diffusers-035")


@pytest.mark.skipif(not HAS_KONTEXT, reason="FluxKontextPipeline arrived in diffusers 0.35")
def test_kontext_rescales_the_requested_size_and_the_entry_says_how_to_keep_it():
    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    pipe = editing_tiny.build("kontext")
    handler, logger = Lines(), logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        wide = Image.new("RGB", (96, 64), (200, 120, 40))
        out = pipe(image=wide, prompt="a red fox", num_inference_steps=1, height=64, width=96).images[0]
    finally:
        logger.removeHandler(handler)
    assert out.size == (1248, 832)  # 96x64 asked, scaled up to max_area = 1024*1024
    text = "\n".join(handler.lines)
    assert "Generation `height` and `width` have been adjusted to 832 and 1248 to fit the model requirements" in text
    assert first(text) == "kontext-output-size"
    assert not flagged("kontext-needs-diffusers-035") and flagged("kontext-output-size")
    out = pipe(image=wide, prompt="a red fox", num_inference_steps=1, height=64, width=96, max_area=96 * 64,
               _auto_resize=False).images[0]  # the fix
    assert out.size == (96, 64)
