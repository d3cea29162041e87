"""The editing modes' inputs (issue 24): checked before anything loads, then turned into the pipeline's arguments.

- inpaint: a picture and a mask of its size (white = repaint, black = keep) that selects part of it.
- outpaint: a picture and margins (left, top, right, bottom; multiples of 16) by which its canvas grows; the new
  border is the mask.
- edit: a picture (Kontext's reference) and an instruction as the prompt; the result keeps the picture's size.
- control: a control image of the result's size: given (`control_image`: an edge or depth map), or, for Canny, the
  edge map of a picture computed with OpenCV. Depth maps are the user's: no depth model ships with fluxnb.
"""

from __future__ import annotations

from typing import Any

from ..core.compat import kontext_keep_size
from ..core.errors import RequestError
from ..core.units import SIZE_MULTIPLE
from .config import ModelSpec
from .images import check_image_file, load_image_file, picture_size
from .tasks import CONTROL, CONTROL_TYPES, EDIT, EDITING_MODES, INPAINT, OUTPAINT, TASKS, missing_pipeline, task_for

PICTURE_INPUTS = ("init_image", "mask", "control_image")  # a request's pictures, each with its `NAME_sha256`
MASK_THRESHOLD = 128  # a mask pixel at or above it is repainted (the pipelines binarize masks the same way)
CANNY_THRESHOLDS = (50, 200)  # the low and high hysteresis thresholds of the FLUX.1-Canny model card's detector


def check_mode(spec: ModelSpec, mode: str) -> None:
    """The mode exists, the entry's task serves it, and this diffusers has the task's pipeline."""
    task = task_for(mode)
    if spec.task != task.name:
        raise RequestError("mode", f"{mode} needs a {task.name} model ({task.what}); model {spec.name!r} is a "
                           f"{spec.task} model.", fix=f"a model of task {task.name} (`fluxnb doctor` lists each model "
                           "with its task; a model_config.yaml entry names it with `task:`)")
    missing = missing_pipeline(TASKS[spec.task])
    if missing:
        raise RequestError("mode", f"{mode}: {missing}.", fix=f"pip install 'diffusers>={task.since_diffusers}' (the "
                           "default stack, requirements/default.txt, has it)")


def fitted_size(size: tuple[int, int], max_size: tuple[int, int]) -> tuple[int, int]:
    """A picture's size as the result's default: scaled down to fit max_size (aspect kept), then each side rounded
    down to a multiple of 16 (at least 16)."""
    scale = min(1.0, max_size[0] / size[0], max_size[1] / size[1])
    return tuple(max(SIZE_MULTIPLE, int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE) for side in size)


def check_mask(mask: Any, init_image: str | None) -> str:
    """A mask image of the picture's size that selects some of it (white = repaint), not nothing and not all."""
    import numpy as np

    path = check_image_file("mask", mask)
    picture = load_image_file("mask", path).convert("L")
    w, h = picture_size("init_image", init_image) if init_image is not None else picture.size
    if picture.size != (w, h):
        raise RequestError("mask", f"{path!r} is {picture.size[0]}x{picture.size[1]}; the picture (init_image) is "
                           f"{w}x{h}.", fix=f"paint or resize the mask at {w}x{h} (white = repaint, black = keep)")
    selected = float((np.asarray(picture) >= MASK_THRESHOLD).mean())
    if selected == 0.0:
        raise RequestError("mask", f"{path!r} selects nothing (no pixel is {MASK_THRESHOLD} or brighter): the picture "
                           "would come back unchanged.", fix="paint the region to repaint white")
    if selected == 1.0:
        raise RequestError("mask", f"{path!r} selects the whole picture: nothing of it would be kept.",
                           fix="leave black what must stay, or make a new picture with text-to-image")
    return path


def check_expand(expand: Any, picture: tuple[int, int], max_size: tuple[int, int]) -> tuple[tuple[int, ...],
                                                                                           tuple[int, int]]:
    """Outpaint margins (left, top, right, bottom): multiples of 16, not all 0, the grown canvas within the model's
    maximum. Returns (margins, canvas size); the picture is first fitted to multiples of 16."""
    fix = "expand=(left, top, right, bottom) in pixels, each a multiple of 16, e.g. (0, 0, 256, 0) to extend right"
    if not isinstance(expand, (list, tuple)) or len(expand) != 4 or any(
            isinstance(side, bool) or not isinstance(side, int) or side < 0 for side in expand):
        raise RequestError("expand", f"must be four whole numbers >= 0, got {expand!r}.", fix=fix)
    if not any(expand):
        raise RequestError("expand", "all four margins are 0: the canvas would not grow.", fix=fix)
    odd = [side for side in expand if side % SIZE_MULTIPLE]
    if odd:
        raise RequestError("expand", f"{', '.join(map(str, odd))} is not a multiple of {SIZE_MULTIPLE} (FLUX: the VAE "
                           "downsamples by 8 and the transformer packs 2x2 patches).", fix=fix)
    base = fitted_size(picture, max_size)
    canvas = (base[0] + expand[0] + expand[2], base[1] + expand[1] + expand[3])
    if canvas[0] > max_size[0] or canvas[1] > max_size[1]:
        raise RequestError("expand", f"the picture ({base[0]}x{base[1]}) grown by {tuple(expand)} is "
                           f"{canvas[0]}x{canvas[1]}; this model's maximum is {max_size[0]}x{max_size[1]}.",
                           fix="smaller margins, or a smaller picture")
    return tuple(expand), canvas


def canny_missing() -> str | None:
    """Why a Canny edge map cannot be computed here (None when OpenCV is installed)."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "the Canny edge map is computed with OpenCV, which is not installed"
    return None


def canny_edges(picture):
    """The Canny edge map of a picture, as the FLUX.1-Canny model card makes it (white edges on black, RGB)."""
    import cv2
    import numpy as np
    from PIL import Image

    gray = cv2.cvtColor(np.asarray(picture.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, *CANNY_THRESHOLDS)
    return Image.fromarray(edges).convert("RGB")


def check_control(spec: ModelSpec, control: Any, control_image: Any, init_image: Any) -> tuple[str, str | None]:
    """The control type (the entry's first when None) and its control image (given; or None: Canny from init_image).
    Returns (control, control_image path or None)."""
    allowed = spec.controls or CONTROL_TYPES
    control = allowed[0] if control is None else control
    if control not in allowed:
        raise RequestError("control", f"model {spec.name!r} was trained on {', '.join(allowed)} maps, got "
                           f"{control!r}.", fix=f"control={allowed[0]!r}, or an entry trained on {control!r} maps")
    if control_image is not None:
        return control, check_image_file("control_image", control_image)
    if control == "depth":
        raise RequestError("control_image", "a depth model needs its depth map: no depth estimator ships with fluxnb "
                           "(its weights cannot be built here).", fix="give control_image=DEPTH.png (e.g. made with "
                           "Depth Anything), the size of the result")
    if init_image is None:
        raise RequestError("init_image", "control canny needs a picture to take the edges of, or the edge map itself.",
                           fix="init_image=PICTURE (its Canny edges are computed) or control_image=EDGES.png")
    missing = canny_missing()
    if missing:
        raise RequestError("control", f"canny from init_image: {missing}.", fix='pip install "fluxnb[edit]" (OpenCV '
                           "headless), or give the edge map as control_image")
    return control, None


def default_size(mode: str, init_image: str | None, control_image: str | None, expand_canvas: tuple | None,
                 max_size: tuple[int, int]) -> tuple[int, int] | None:
    """The result's size when width and height are not given: outpaint's grown canvas; a given control image's
    size; else the picture's, fitted (None: the model's default)."""
    if mode == OUTPAINT:
        return expand_canvas
    if mode == CONTROL and control_image is not None:
        return picture_size("control_image", control_image)
    if init_image is not None:
        return fitted_size(picture_size("init_image", init_image), max_size)
    return None


def check_control_size(control_image: str, width: int, height: int) -> None:
    """A given control image must have the result's size (the pipeline would otherwise stretch or refuse it)."""
    size = picture_size("control_image", control_image)
    if size != (width, height):
        raise RequestError("control_image", f"{control_image!r} is {size[0]}x{size[1]}; the result is "
                           f"{width}x{height}.", fix=f"make the control image {width}x{height}, or leave width and "
                           "height unset (the control image's size is used)")


def pipeline_inputs(request) -> dict[str, Any]:
    """The editing pipeline's arguments for a checked request (a GenerationRequest of an editing mode)."""
    from PIL import Image

    size = (request.width, request.height)
    if request.mode in (INPAINT, OUTPAINT):
        picture = load_image_file("init_image", request.init_image)
        if request.mode == INPAINT:
            mask = load_image_file("mask", request.mask).convert("L").resize(size, Image.NEAREST)
            return {"image": picture.resize(size, Image.LANCZOS), "mask_image": mask}
        return outpaint_inputs(picture, tuple(request.expand), size)
    if request.mode == EDIT:  # Kontext keeps the given size (max_area = its area) and the reference as it is
        picture = load_image_file("init_image", request.init_image)
        return {"image": picture.resize(size, Image.LANCZOS), "max_area": size[0] * size[1], **kontext_keep_size()}
    if request.mode == CONTROL:
        if request.control_image is not None:
            return {"control_image": load_image_file("control_image", request.control_image)}
        picture = load_image_file("init_image", request.init_image).resize(size, Image.LANCZOS)
        return {"control_image": canny_edges(picture)}
    raise ValueError(f"not an editing mode: {request.mode!r}")


def outpaint_inputs(picture, expand: tuple[int, ...], canvas: tuple[int, int]) -> dict[str, Any]:
    """The picture on its grown canvas (the new border mid-grey) and the mask of that border (white)."""
    from PIL import Image

    left, top, right, bottom = expand
    inner = (canvas[0] - left - right, canvas[1] - top - bottom)
    grown = Image.new("RGB", canvas, (127, 127, 127))
    grown.paste(picture.resize(inner, Image.LANCZOS), (left, top))
    mask = Image.new("L", canvas, 255)
    mask.paste(0, (left, top, left + inner[0], top + inner[1]))
    return {"image": grown, "mask_image": mask}


def picture_files(parameters: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """The pictures of a stored request as (parameter, path, SHA-256 when the run started)."""
    return [(name, parameters.get(name), parameters.get(f"{name}_sha256")) for name in PICTURE_INPUTS]


def is_editing(mode: str) -> bool:
    return mode in EDITING_MODES

