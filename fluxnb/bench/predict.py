"""Predicted L4 seconds per image, from what this bench run measured on its own card: labelled "predicted" wherever
it is shown, since no L4 is reachable from here.

The model: FLUX.1-dev's denoising is compute-bound (about 74 TFLOP per step at 1024x1024, streaming its weights
costs far less), so a step takes FLOPs / (efficiency x the card's peak for the precision the backend computes in).
The efficiency is what the measured card reached (FLOPs / (measured s/step x its peak)); the same efficiency is
assumed on the L4, with the L4's weight-streaming time as a floor. Text encoding and VAE decoding scale with the
bf16 peak ratio. Then one calibration: the guide's one L4 figure (bnb 8-bit, 77 s/image at 1024x1024, 28 steps)
divided by this model's prediction for the same run's bnb 8-bit row; every backend's prediction is multiplied by
that factor (it carries what the peak ratios miss, e.g. the L4's clocks under its 72 W limit).
Published peaks (dense, no sparsity): NVIDIA datasheets.

The attention kernel is the one lever whose effect does not carry over by peak ratios: an entry with `attention:
auto` runs the record's choice for 8.9 on the L4 (fluxnb/models/attention.py), which may differ from what it ran
here. Where the L4 would run a kernel with a published Ada speed-up over FlashAttention2 (SageAttention: 2.1x) and
this card ran SDPA, the L4 step is shortened by attention's share of it (from the FLOPs, attention in bf16, the
linears at the entry's precision) times the time that kernel saves. A row that ran such a kernel on this card gets no
L4 figure: its speed here (SageAttention 1 is slower than cuDNN on an H100) says nothing about an Ada card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models.attention import KERNELS, choice_for, kernel_that_ran
from ..models.backends import REGISTRY
from ..models.tasks import TEXT_TO_IMAGE

# FLUX.1-dev's transformer: hidden 3072, 19 double + 38 single blocks, 512 text tokens (the real model's dims).
HIDDEN = 3072
BLOCKS = 57
TEXT_TOKENS = 512
PER_TOKEN_MATMUL_PARAMS = 12 * HIDDEN * HIDDEN * BLOCKS  # 6.45 B: each block's linears seen by one token
TRANSFORMER_PARAMS = 11.9e9
GUIDE_L4_SECONDS = 77.0  # the guide's measured L4 figure: bnb 8-bit, 1024x1024, 28 steps
GUIDE_L4_SETTINGS = ("1024x1024", 28)


@dataclass(frozen=True)
class Card:
    """Published peak rates of a GPU (dense tensor-core TFLOP/s, memory GB/s)."""

    name: str
    bf16_tflops: float
    eight_bit_tflops: float  # fp8 / int8, dense
    bandwidth_gbs: float


L4 = Card("NVIDIA L4", 121.0, 242.0, 300.0)
L4_CAPABILITY = (8, 9)  # the compute capability whose record choices the L4 runs
CARDS = (
    Card("H100", 989.0, 1979.0, 3350.0),  # SXM figures; a PCIe H100 is slower (the prediction says which card ran)
    Card("H200", 989.0, 1979.0, 4800.0),
    L4,
)
# What each backend type computes its big matmuls in, and the bytes per transformer weight it streams per step.
COMPUTE = {
    "flux-bf16": ("bf16", 2.0), "flux-bnb-8bit": ("bf16", 1.0), "flux-bnb-4bit": ("bf16", 0.5),
    "flux-torchao-int8wo": ("bf16", 1.0), "flux-torchao-int8dq": ("8bit", 1.0), "flux-torchao-fp8dq": ("8bit", 1.0),
}
LABEL = "predicted (not measured): from this run's efficiency on its card, the L4's published peaks, calibrated on " \
        "the guide's bnb 8-bit L4 figure (77 s/image)"


def step_tflop(width: int, height: int) -> float:
    """TFLOP of one FLUX.1-dev transformer forward at this size (linears plus attention)."""
    return sum(step_parts(width, height)) / 1e12


def step_parts(width: int, height: int) -> tuple[float, float]:
    """FLOPs of one forward's linears and of its attention at this size."""
    tokens = (width // 16) * (height // 16) + TEXT_TOKENS
    return 2 * PER_TOKEN_MATMUL_PARAMS * tokens, 4 * tokens * tokens * HIDDEN * BLOCKS


def l4_attention_share(width: int, height: int, precision: str) -> float:
    """Attention's share of an L4 step at equal efficiency: attention in bf16, the linears at `precision`."""
    linears, attention = step_parts(width, height)
    attention_time = attention / L4.bf16_tflops
    return attention_time / (linears / _peak(L4, precision) + attention_time)


def l4_attention_kernel(entry: dict[str, Any]) -> str:
    """The attention kernel an entry of the bench would run on an L4: its `attention:` setting, or for `auto` its
    record's choice for compute capability 8.9."""
    setting = entry.get("attention") or "auto"
    if setting != "auto":
        return setting
    record = REGISTRY.get(entry.get("type", ""))
    choice = choice_for(record.attention if record else (), L4_CAPABILITY)
    return choice.kernel if choice else "sdpa"


def attention_lever(row: dict[str, Any], entry: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """How the L4's attention kernel changes this row's predicted step (None: the same kernel as measured here);
    {"unpredictable": why} when this card ran a kernel whose speed here does not carry to an Ada card."""
    ran = str((entry.get("load_report") or {}).get("attention") or "")
    kernel = KERNELS.get(l4_attention_kernel(entry))
    ran_kernel = kernel_that_ran(ran)
    if ran_kernel:
        return {"unpredictable": f"ran {ran_kernel.name} attention on this card: its speed here says nothing about "
                "an Ada card"}
    if kernel is None or kernel.ada_speedup == 1.0:
        return None
    share = l4_attention_share(row["width"], row["height"], precision)
    return {"kernel": kernel.name, "attention_share": round(share, 3), "ada_speedup": kernel.ada_speedup,
            "step_factor": round(1 - share * (1 - 1 / kernel.ada_speedup), 3), "source": kernel.ada_source}


def card_for(gpu_name: str | None) -> Card | None:
    """The published figures of the card that ran (None when it is not one we have figures for)."""
    if not gpu_name:
        return None
    return next((c for c in CARDS if c.name.lower().replace("nvidia ", "") in gpu_name.lower()), None)


def _peak(card: Card, precision: str) -> float:
    return card.bf16_tflops if precision == "bf16" else card.eight_bit_tflops


def uncalibrated_l4(row: dict[str, Any], model_type: str, card: Card, step_factor: float = 1.0
                    ) -> dict[str, Any] | None:
    """The L4 seconds per image before calibration, and the efficiency it rests on (None for unknown types).
    `step_factor` shortens the compute part of the L4 step (the attention lever, attention_lever)."""
    if model_type not in COMPUTE or "seconds_per_step" not in row:
        return None
    precision, weight_bytes = COMPUTE[model_type]
    # The same efficiency (FLOPs / (s/step x peak)) on both cards: the step's FLOPs cancel, and the L4's compute
    # time is the measured step scaled by the ratio of the two peaks. The efficiency itself is reported (it says
    # how well this card was used), from step_tflop.
    compute = row["seconds_per_step"] * _peak(card, precision) / _peak(L4, precision) * step_factor
    efficiency = step_tflop(row["width"], row["height"]) / (row["seconds_per_step"] * _peak(card, precision))
    stream = TRANSFORMER_PARAMS * weight_bytes / (L4.bandwidth_gbs * 1e9)
    step = max(compute, stream)
    other = row["seconds_per_image"] - row["seconds_per_step"] * row["steps"]
    other_l4 = max(0.0, other) * card.bf16_tflops / L4.bf16_tflops
    return {"seconds_per_image": step * row["steps"] + other_l4, "efficiency": efficiency, "precision": precision}


def add_predictions(results: dict[str, Any]) -> dict[str, Any] | None:
    """Add `predicted_l4_seconds_per_image` to every row it can, and the calibration to the results; None (and
    nothing added) when the card is not one with published figures here, the card is an L4 (then it is measured), or
    the run timed an editing task (the model and its calibration are FLUX.1-dev text-to-image's).
    """
    card = card_for((results.get("device") or {}).get("gpu"))
    if card is None or card is L4 or results["settings"].get("task", TEXT_TO_IMAGE) != TEXT_TO_IMAGE:
        return None  # editing models: other token counts, and no L4 figure of theirs to calibrate on
    entries = {b["label"]: b for b in results["backends"]}
    raw, levers = {}, {}
    for index, row in enumerate(results["rows"]):
        entry = entries.get(row["backend"], {})
        if "error" in row or entry.get("type") not in COMPUTE:
            continue
        levers[index] = attention_lever(row, entry, COMPUTE[entry["type"]][0])
        step_factor = (levers[index] or {}).get("step_factor", 1.0)
        if guess := uncalibrated_l4(row, entry["type"], card, step_factor):
            raw[index] = guess
    baseline = results["settings"]["baseline"]
    anchor = next((raw[i] for i, r in enumerate(results["rows"]) if i in raw and r["backend"] == baseline
                   and (r["size"], r["steps"]) == GUIDE_L4_SETTINGS and r.get("weights", "gaussian") == "gaussian"),
                  None)
    factor = GUIDE_L4_SECONDS / anchor["seconds_per_image"] if anchor else None
    for index, guess in raw.items():
        row = results["rows"][index]
        if levers[index] and "unpredictable" in levers[index]:
            row["predicted_l4"] = levers[index]
            continue
        row["predicted_l4"] = {"attention": levers[index]} if levers[index] else {}
        row["predicted_l4"] |= {"seconds_per_image": round(guess["seconds_per_image"] * (factor or 1.0), 1),
                               "uncalibrated_seconds_per_image": round(guess["seconds_per_image"], 1),
                               "calibrated": factor is not None, "efficiency_here": round(guess["efficiency"], 3),
                               "precision": guess["precision"]}
    info = {"label": LABEL, "card": card.name, "l4": L4.__dict__, "calibration_factor": factor and round(factor, 3),
            "anchor": f"{baseline} at {GUIDE_L4_SETTINGS[0]}, {GUIDE_L4_SETTINGS[1]} steps = {GUIDE_L4_SECONDS} s"}
    results["predicted_l4"] = info
    return info
