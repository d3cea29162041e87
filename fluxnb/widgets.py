"""An ipywidgets UI for people exploring in JupyterLab: prompt box, sliders, a Generate button, live output.

The button calls exactly what the headless notebooks and the tests call (make_request -> generate into the
run folder), so an image made by hand carries the same metadata as one made by papermill. A bad value
(fluxnb's own error, e.g. a size that is not a multiple of 16) is shown in the output area as its message;
any other exception is shown with its traceback by the Output widget (nothing is hidden).

Notebooks show the UI only when `interactive` is True: widgets do nothing useful under papermill.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from .display import figure_png, show_grid, timing_summary
from .errors import FluxnbError
from .generation import GeneratedImage, generate
from .loading import LoadedModel
from .outputs import RunFolder
from .params import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, GenerationRequest, make_request
from .units import SIZE_MULTIPLE

MAX_IMAGES_IN_UI = 8


def _sizes(maximum: int) -> list[int]:
    return list(range(SIZE_MULTIPLE, maximum + 1, SIZE_MULTIPLE))


class GenerateForm:
    """The widgets and the one action behind the Generate button (`generate()`), testable without a browser."""

    def __init__(
        self,
        model: LoadedModel,
        run: RunFolder,
        *,
        mode: str = TEXT_TO_IMAGE,
        init_image: str | Path | None = None,
        model_reason: str | None = None,
        initial: GenerationRequest | None = None,
    ):
        import ipywidgets as w

        self.model = model
        self.run = run
        self.mode = mode
        self.model_reason = model_reason
        self.results: list[GeneratedImage] = []  # every image this form showed, in order
        self.last_error: str | None = None
        params = model.spec.params
        width, height = (initial.width, initial.height) if initial else params.default_size
        label = {"description_width": "110px"}
        layout = w.Layout(width="460px")
        self.prompt = w.Textarea(
            value="\n".join(initial.prompts) if initial else "",
            placeholder="describe the picture (one prompt per line)",
            description="prompt",
            rows=3,
            layout=w.Layout(width="600px"),
            style=label,
        )
        self.steps = w.IntSlider(
            value=initial.steps if initial else params.default_steps, min=1, max=params.max_steps,
            description="steps", style=label, layout=layout,
        )
        guidance = initial.guidance_scale if initial else params.guidance_scale
        self.guidance_scale = w.FloatSlider(
            value=guidance, min=0.5, max=max(10.0, guidance), step=0.5, description="guidance",
            style=label, layout=layout,
        )
        self.seed = w.IntText(value=initial.seed if initial else 0, description="seed", style=label)
        # Values outside the model's list stay selectable as typed values would be: make_request has the last word.
        self.width = w.Dropdown(options=sorted({*_sizes(params.max_size[0]), width}), value=width,
                                description="width", style=label)
        self.height = w.Dropdown(options=sorted({*_sizes(params.max_size[1]), height}), value=height,
                                 description="height", style=label)
        self.num_images = w.IntSlider(
            value=min(initial.num_images, MAX_IMAGES_IN_UI) if initial else 1, min=1, max=MAX_IMAGES_IN_UI,
            description="images/prompt", style=label, layout=layout,
        )
        controls: list[Any] = [self.prompt, self.steps, self.guidance_scale, self.seed, self.width, self.height,
                               self.num_images]
        self.init_image = None
        self.strength = None
        if mode == IMAGE_TO_IMAGE:
            start = initial.init_image if initial and initial.init_image else init_image
            self.init_image = w.Text(value=str(start or ""), description="init_image", style=label,
                                     layout=w.Layout(width="600px"))
            self.strength = w.FloatSlider(
                value=initial.strength if initial and initial.strength else 0.6, min=0.05, max=1.0, step=0.05,
                description="strength", style=label, layout=layout,
            )
            controls += [self.init_image, self.strength]
        elif mode != TEXT_TO_IMAGE:
            raise ValueError(f"mode must be {TEXT_TO_IMAGE!r} or {IMAGE_TO_IMAGE!r}, got {mode!r}")
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.button.on_click(lambda _button: self.generate())
        self.output = w.Output(layout=w.Layout(border="1px solid #ddd", padding="4px"))
        header = w.HTML(
            f"<b>{model.spec.name}</b> ({model.report.weights}); images go to <code>{run.path}</code>"
        )
        self.container = w.VBox([header, *controls, self.button, self.output])
        self.container.form = self  # reach the form (and its results) from the container the UI functions return

    # -- the action ---------------------------------------------------------------------------------------

    def prompt_value(self) -> str | list[str]:
        """One prompt per non-empty line; a single line (or nothing) stays a string so errors read naturally."""
        lines = [line.strip() for line in self.prompt.value.splitlines() if line.strip()]
        return lines if len(lines) > 1 else self.prompt.value.strip()

    def request(self) -> GenerationRequest:
        """The current widget values, validated exactly as the notebooks validate their parameters."""
        extra: dict[str, Any] = {}
        if self.mode == IMAGE_TO_IMAGE:
            extra = {"init_image": self.init_image.value.strip() or None, "strength": self.strength.value}
        return make_request(
            self.model.spec,
            prompt=self.prompt_value(),
            seed=self.seed.value,
            steps=self.steps.value,
            guidance_scale=self.guidance_scale.value,
            width=self.width.value,
            height=self.height.value,
            num_images=self.num_images.value,
            mode=self.mode,
            **extra,
        )

    def generate(self) -> list[GeneratedImage]:
        """What the Generate button does: validate, generate into the run folder, show images and timings."""
        self.output.outputs = ()
        self.last_error = None
        try:
            request = self.request()
        except FluxnbError as exc:
            return self._show_error(exc)
        count = len(request.items())
        self._text(f"generating {count} image(s) with {self.model.spec.name} "
                   f"({request.steps} steps, {request.width}x{request.height})...\n")
        images = None
        self.button.disabled = True
        try:
            # In a kernel, an unexpected exception is shown here with its traceback by the Output widget
            # (which then swallows it so the UI stays usable); outside a kernel it propagates.
            with self.output:
                try:
                    images = generate(self.model, request, self.run, progress=False, model_reason=self.model_reason)
                except FluxnbError as exc:
                    return self._show_error(exc)
        finally:
            self.button.disabled = False
        if images is None:
            return []
        self.results += images
        self.output.outputs = ()
        self._png(figure_png(show_grid(images)))
        self._text(timing_summary(images) + "\n")
        return images

    # -- output helpers: plain output records, so they work in a kernel and in tests alike ------------------

    def _text(self, text: str, stream: str = "stdout") -> None:
        self.output.outputs += ({"output_type": "stream", "name": stream, "text": text},)

    def _png(self, data: bytes) -> None:
        self.output.outputs += ({
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(data).decode("ascii"), "text/plain": "<image grid>"},
            "metadata": {},
        },)

    def _show_error(self, exc: FluxnbError) -> list[GeneratedImage]:
        self.last_error = str(exc)
        self._text(f"{type(exc).__name__}: {exc}\nNothing was generated; change the value and press Generate.\n",
                   stream="stderr")
        return []

    def output_text(self) -> str:
        """All text currently shown in the output area."""
        return "".join(o.get("text", "") for o in self.output.outputs if o.get("output_type") == "stream")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.container)


def text_to_image_ui(model: LoadedModel, run: RunFolder, model_reason: str | None = None,
                     initial: GenerationRequest | None = None):
    """The text-to-image form's widget container (pre-filled from `initial`, e.g. the notebook's request)."""
    return GenerateForm(model, run, model_reason=model_reason, initial=initial).container


def image_to_image_ui(model: LoadedModel, run: RunFolder, init_image: str | Path, model_reason: str | None = None,
                      initial: GenerationRequest | None = None):
    """The image-to-image form's widget container: the same controls plus init_image and strength."""
    return GenerateForm(model, run, mode=IMAGE_TO_IMAGE, init_image=init_image, model_reason=model_reason,
                        initial=initial).container
