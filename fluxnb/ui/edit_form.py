"""Notebook 06's form: pick an editing mode, give what it takes (paint the mask, set the margins, pick the control
type), press Generate.

It is a GenerateForm (fluxnb.ui.widgets) with other controls: the same live progress bar, the same Stop after the
current image, the same one-block error listing every bad value, the same background thread in a kernel. What it
adds is that the model follows the mode: each Generate resolves the mode's model ("auto": its 8-bit entry on a GPU,
its tiny one elsewhere) and loads it with `load_model(spec, reuse=True)`, so the same model stays loaded between
clicks and switching from inpaint to edit swaps Fill for Kontext.

The painted mask is checked with the rest of the request first (from a scratch copy), and only a valid request's
mask is saved into the run folder's inputs/ (never replacing another mask there): a bad value writes nothing.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.errors import RequestError
from ..core.files import own_folder
from ..models.config import ModelConfig, load_config
from ..models.editing import pipeline_inputs
from ..models.images import load_image_file
from ..models.loading import LoadedModel, load_model
from ..models.params import GenerationRequest, make_request
from ..models.selection import AUTO, ModelChoice, resolve_model
from ..models.tasks import CONTROL, CONTROL_TYPES, EDIT, EDITING_MODES, INPAINT, OUTPAINT, task_for
from ..runs.generation import GeneratedImage
from ..runs.outputs import RunFolder
from .display import caption, show_grid, shown_path
from .mask import MaskPainter, OutpaintBorder, padded_preview, save_mask
from .widgets import MAX_IMAGES_IN_UI, UPLOADS_DIR, GenerateForm

MASK_FILE = "mask.png"  # in the run folder's inputs/; another mask goes to mask-2.png... (fluxnb.ui.mask.free_name)
DEFAULT_EXPAND = (0, 0, 64, 0)


def nothing_painted() -> RequestError:
    return RequestError("mask", "nothing is painted: inpaint repaints the painted part of the picture.",
                        fix="paint over what FLUX should repaint (or upload a mask), or pick mode outpaint")


class EditForm(GenerateForm):
    """The editing modes' form; `mode` is the dropdown's value, and each mode's inputs are shown only in that mode."""

    def __init__(self, picture_path: str | Path, run: RunFolder, *, model: str = AUTO, mode: str = INPAINT,
                 brush: int | None = None, config: ModelConfig | None = None):
        import ipywidgets as w

        self._setup(None, run, None)
        self.picture_path = Path(picture_path)
        self.picture = load_image_file("init_image", picture_path)
        self.model_name = model
        self.config = config or load_config()
        self._choices: dict[str, ModelChoice] = {}
        self.last_request: GenerationRequest | None = None
        label, layout = {"description_width": "110px"}, w.Layout(width="460px")
        task_for(mode)  # an unknown mode is refused by name, with the modes there are
        self.mode_picker = w.Dropdown(options=list(EDITING_MODES), value=mode, description="mode", style=label)
        self.mode_area = w.Box()
        self._mode_panels(w, label, brush)
        self.prompt = w.Textarea(value="", placeholder="what to paint (edit: the instruction)", description="prompt",
                                 rows=2, layout=w.Layout(width="600px"), style=label)
        self.steps = w.IntSlider(value=1, min=1, max=50, description="steps", style=label, layout=layout)
        # the editing models' cards ask for very different guidance (Fill 30, Kontext 2.5): each mode's default
        self.guidance_scale = w.FloatSlider(value=1.0, min=0.5, max=50.0, step=0.5, description="guidance",
                                            style=label, layout=layout)
        self.seed = w.IntText(value=0, description="seed", style=label)
        self.num_images = w.IntSlider(value=1, min=1, max=MAX_IMAGES_IN_UI, description="images", style=label,
                                      layout=layout)
        self.mode_picker.observe(lambda _change: self._show_mode(), names="value")
        self._show_mode()
        self._action_widgets(w)
        self._assemble(w, [self.mode_picker, self.mode_area, self.prompt, self.steps, self.guidance_scale, self.seed,
                           self.num_images])

    def _mode_panels(self, w, label: dict, brush: int | None) -> None:
        """What each mode takes besides the prompt: the painter, the margins, nothing, the control type."""
        self.painter = MaskPainter(self.picture, brush=brush or max(8, min(self.picture.size) // 8))
        self.border = OutpaintBorder(self.picture, DEFAULT_EXPAND)
        self.control = w.Dropdown(options=list(CONTROL_TYPES), value=CONTROL_TYPES[0], description="control",
                                  style=label)
        self.control_image = w.Text(value="", placeholder="optional: a picture used as it is (depth needs one)",
                                    description="control_image", style=label, layout=w.Layout(width="600px"))
        self.panels = {
            INPAINT: self.painter.container,
            OUTPAINT: self.border.container,
            EDIT: w.HTML("<small>edit takes the picture as a reference and the prompt as the instruction "
                         "(e.g. <i>make it a winter scene</i>)</small>"),
            CONTROL: w.VBox([self.control, self.control_image,
                             w.HTML("<small>canny: the edges are computed from the picture; depth: give the depth "
                                    "map as control_image (light = near)</small>")]),
        }

    @property
    def mode(self) -> str:
        return self.mode_picker.value

    def choice(self) -> ModelChoice:
        """The mode's model entry and why ("auto" resolved once per task: the same answer for every click)."""
        task = task_for(self.mode).name
        if task not in self._choices:
            self._choices[task] = resolve_model(self.model_name, self.config, task=task)
        return self._choices[task]

    def _show_mode(self) -> None:
        """Swap in the mode's inputs, and its model's steps and guidance (the editing models' cards differ: 50 steps
        and guidance 30 for Fill, 2.5 for Kontext...)."""
        self.mode_area.children = (self.panels[self.mode],)
        params = self.choice().spec.params
        self.steps.max = params.max_steps
        self.steps.value = params.default_steps
        self.guidance_scale.value = params.guidance_scale

    def _header_html(self) -> str:
        loaded = f"<b>{self.model.spec.name}</b> ({self.model.report.weights}) loaded" if self.model else \
            "the mode's model loads at the first Generate"
        return (f"edit {self.picture_path.name} ({self.picture.width}x{self.picture.height}); {loaded}; "
                f"images go to <code>{shown_path(self.run.path)}</code>")  # the one <code>: the run folder

    # -- the action ---------------------------------------------------------------------------------------------

    def request(self) -> GenerationRequest:
        """The mode's request, every bad value listed at once; a valid inpaint request's mask is saved into the
        run folder's inputs/ and named by the request."""
        choice = self.choice()
        mask = self.painter.mask_image() if self.mode == INPAINT and self.painter.painted() else None
        with tempfile.TemporaryDirectory(prefix="fluxnb-mask-") as scratch:
            inputs = self._mode_inputs(save_mask(mask, Path(scratch) / MASK_FILE) if mask else None)
            try:
                request = make_request(choice.spec, prompt=self.prompt_value(), mode=self.mode,
                                       init_image=str(self.picture_path), seed=self.seed.value,
                                       steps=self.steps.value, guidance_scale=round(self.guidance_scale.value, 4),
                                       num_images=self.num_images.value, **inputs)
            except RequestError as exc:
                raise self._painted_or(exc) from None
        if mask is not None:  # the same bytes as the checked copy, so the request's mask_sha256 holds
            folder = own_folder(self.run.path, UPLOADS_DIR, "the run folder's inputs folder")
            request = dataclasses.replace(request, mask=str(save_mask(mask, folder / MASK_FILE)))
        self.model_reason = choice.reason
        self.last_request = request
        return request

    def _mode_inputs(self, mask: Path | None) -> dict[str, Any]:
        if self.mode == INPAINT:
            return {"mask": str(mask) if mask else None}
        if self.mode == OUTPAINT:  # the sliders' values as they are: make_request checks them with the rest
            return {"expand": tuple(self.border.sliders[side].value for side in OutpaintBorder.SIDES)}
        if self.mode == CONTROL:
            return {"control": self.control.value, "control_image": self.control_image.value.strip() or None}
        return {}

    def _painted_or(self, exc: RequestError) -> RequestError:
        """make_request's error, with "nothing painted" (what a person did) in place of "no mask given"."""
        if self.mode != INPAINT or self.painter.painted():
            return exc
        return RequestError.several([nothing_painted() if p.parameter == "mask" else p for p in exc.problems])

    def model_for(self, request: GenerationRequest) -> LoadedModel:
        """The mode's model, loaded once and kept between clicks (load_model's reuse: the notebooks' mode)."""
        spec = self.choice().spec
        if self.model is None or self.model.spec != spec:
            self.status.value = f"loading {spec.name}..."
            self.model = load_model(spec, config=self.config, progress=False, reuse=True)
            self.header.value = self._header_html()
            self.status.value = ""
        return self.model

    def _grid(self, images: list[GeneratedImage]):
        """The input, what the mode gave the model besides the prompt (mask, grown canvas, control image), and
        the results, side by side."""
        panels: list[Any] = [self.picture]
        titles = [f"input\n{self.picture_path.name}"]
        given = self._given(self.last_request)
        if given is not None:
            panels.append(given[0])
            titles.append(given[1])
        return show_grid([*panels, *images], titles=[*titles, *[caption(i.metadata) for i in images]],
                         columns=len(panels) + len(images))

    def _given(self, request: GenerationRequest) -> tuple[Image.Image, str] | None:
        if request.mode == INPAINT:
            return pipeline_inputs(request)["mask_image"], f"mask (white = repaint)\n{Path(request.mask).name}"
        if request.mode == OUTPAINT:
            canvas = padded_preview(self.picture, tuple(request.expand))
            return canvas, f"canvas {canvas.width}x{canvas.height}\nexpand (l, t, r, b) = {tuple(request.expand)}"
        if request.mode == CONTROL:
            return pipeline_inputs(request)["control_image"], f"control image ({request.control})"
        return None


def edit_ui(picture_path: str | Path, output_dir: str | Path | None = None, model: str = AUTO, *,
            mode: str = INPAINT, run: RunFolder | None = None):
    """Notebook 06's form as a widget container (its EditForm is `.form`): images go into `run`, or into a new run
    folder (under `output_dir` when given)."""
    run = run or RunFolder.create("06_edit-form", output_dir)
    return EditForm(picture_path, run, model=model, mode=mode).container
