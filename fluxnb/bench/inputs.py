"""The bench's fixed inputs for the editing models (issue 24), and the request each task is timed with.

Every backend of one run gets the same pictures, made here at each bench size (deterministic: no file to ship, the
same pixels on every machine), and the same request, made through fluxnb's own `make_request` (the entry's checks
and defaults) and turned into the pipeline's arguments by `editing.pipeline_inputs`: the bench times the product's
path, not a copy of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.config import ModelSpec
from ..models.editing import pipeline_inputs
from ..models.params import GenerationRequest, make_request
from ..models.tasks import CONTROL, EDIT, INPAINT

# The mode each editing task is timed in (outpaint is Fill too: inpaint's call with a grown canvas).
BENCH_MODES = {"fill": INPAINT, "kontext": EDIT, "control": CONTROL}
# What each task's rows say they were given (the row's `inputs`).
INPUTS_TEXT = {
    "fill": "inpaint: the bench's picture (colour ramps and a disc) and a mask of its middle half",
    "kontext": "edit: the bench's picture as the reference, the prompt as the instruction",
    "control": "control: the bench's picture given as the control image itself (no edge or depth map is computed: "
               "the canny and depth entries take the same path, and speed and fidelity between backends do not "
               "depend on what the map shows)",
}


def fixed_pictures(task: str, width: int, height: int, folder: Path) -> dict[str, str]:
    """The fixed inputs of one task and size, as make_request's keyword arguments (paths of PNG files written into
    `folder`): a deterministic picture (colour ramps and a disc); for Fill a mask of its middle (white = repaint);
    for Control the picture is the control image."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width]
    y, x = y / max(height - 1, 1), x / max(width - 1, 1)
    disc = ((x - 0.35) ** 2 + (y - 0.4) ** 2) < 0.04
    rgb = np.stack([x, y, np.where(disc, 1.0, 0.3 * (1 - x))], axis=-1)
    picture = folder / f"picture-{width}x{height}.png"
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(picture)
    if task == "control":
        return {"control_image": str(picture)}
    inputs = {"init_image": str(picture)}
    if task == "fill":
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
        inputs["mask"] = str(folder / f"mask-{width}x{height}.png")
        Image.fromarray(mask).save(inputs["mask"])
    return inputs


def editing_request(spec: ModelSpec, pictures: dict[str, str], generation: dict[str, Any],
                    steps: int) -> GenerationRequest:
    """The request an editing entry is timed with: the bench's prompt, seed, size and tokens, the entry's own
    guidance, the task's mode and pictures, checked as any user's request is."""
    return make_request(spec, prompt=generation["prompt"], seed=generation["seed"], steps=steps,
                        width=generation["width"], height=generation["height"],
                        max_sequence_length=generation["max_sequence_length"], mode=BENCH_MODES[spec.task],
                        **pictures)


def editing_arguments(spec: ModelSpec, pictures: dict[str, str], generation: dict[str, Any],
                      steps: int) -> dict[str, Any]:
    """run_phases' arguments for an editing entry: `generation` with the request's guidance and the pipeline inputs
    (editing.pipeline_inputs: the picture, mask or control image, Kontext's size kept)."""
    request = editing_request(spec, pictures, generation, steps)
    return {**generation, "guidance_scale": request.guidance_scale, "inputs": pipeline_inputs(request)}
