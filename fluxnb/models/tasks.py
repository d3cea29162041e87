"""What each kind of FLUX model does, as data: its diffusers pipeline, the request modes it serves, and the facts
that follow from its transformer (issue 24: editing pictures).

A model entry names its task (model_config.yaml `task:`, text-to-image by default); a request names its mode. Adding
an editing model of a known task is an entry in model_config.yaml; a new task is one record here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.environment import package_version
from ..core.errors import RequestError

TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
INPAINT = "inpaint"  # repaint the masked region of a picture (FLUX.1-Fill)
OUTPAINT = "outpaint"  # extend a picture's canvas (FLUX.1-Fill, the new border masked)
EDIT = "edit"  # change a picture by an instruction (FLUX.1-Kontext)
CONTROL = "control"  # keep a picture's structure: its edge or depth map conditions the image (FLUX.1-Canny/Depth)
CONTROL_TYPES = ("canny", "depth")
EDITING_MODES = (INPAINT, OUTPAINT, EDIT, CONTROL)  # the modes of the editing models (all but FLUX.1-dev's two)


@dataclass(frozen=True)
class Task:
    """One kind of FLUX model.

    Attributes:
        name: the value of an entry's `task:`.
        pipeline: the diffusers pipeline class that runs it.
        modes: the request modes it serves.
        since_diffusers: the first diffusers release with that pipeline (older ones refuse the mode before loading).
        in_channels: its transformer's input channels (the tiny model's are built to match): 64 packed latent
            channels (16 VAE channels x 2x2 patches), plus for Fill the masked picture's 64 and the mask's 256 (each
            latent pixel carries its 8x8 block of the mask), plus for Control the control image's 64. Kontext
            appends the reference picture as tokens, so its channels are FLUX.1-dev's.
        kind: the file name's short form of each mode it serves (`0003-inp-seed7-....png`).
        what: one line for people.
    """

    name: str
    pipeline: str
    modes: tuple[str, ...]
    since_diffusers: str
    in_channels: int
    kind: dict[str, str]
    what: str


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("text-to-image", "FluxPipeline", (TEXT_TO_IMAGE, IMAGE_TO_IMAGE), "0.30.0", 64,
         {TEXT_TO_IMAGE: "t2i", IMAGE_TO_IMAGE: "i2i"}, "a picture from text (and image-to-image by strength)"),
    Task("fill", "FluxFillPipeline", (INPAINT, OUTPAINT), "0.32.0", 384, {INPAINT: "inp", OUTPAINT: "out"},
         "repaints the masked part of a picture, or extends its canvas"),
    Task("kontext", "FluxKontextPipeline", (EDIT,), "0.35.0", 64, {EDIT: "edit"},
         "changes a picture as an instruction says"),
    Task("control", "FluxControlPipeline", (CONTROL,), "0.32.0", 128, {CONTROL: "ctl"},
         "a new picture with the edges or depth of a given one"),
)}
MODES: dict[str, Task] = {mode: task for task in TASKS.values() for mode in task.modes}


def task_for(mode: str) -> Task:
    """The task whose models serve a request mode (RequestError naming the modes for an unknown one)."""
    if mode not in MODES:
        raise RequestError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}.",
                           fix='e.g. mode="inpaint" (a Fill model repaints the white part of a mask)')
    return MODES[mode]


def missing_pipeline(task: Task) -> str | None:
    """Why this environment's diffusers cannot run `task` (None when it can). Read from the installed version, not
    by importing diffusers: a request is refused in milliseconds, without the libraries' import-time noise."""
    from packaging.version import Version

    version = package_version("diffusers")
    if version is not None and Version(version).release >= Version(task.since_diffusers).release:
        return None
    return (f"{task.pipeline} arrived in diffusers {task.since_diffusers}; this environment has "
            + (f"diffusers {version}" if version else "no diffusers"))


def pipeline_class(task_name: str):
    """The diffusers class of `task_name` (callers check missing_pipeline first: a request refuses the mode)."""
    import diffusers

    return getattr(diffusers, TASKS[task_name].pipeline)


def file_kind(mode: str | None) -> str:
    """The short form of a request mode in an image's file name (t2i for an unknown or missing mode)."""
    task = MODES.get(mode or "")
    return task.kind[mode] if task else "t2i"
