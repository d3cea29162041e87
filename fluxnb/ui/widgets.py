"""An ipywidgets UI for people exploring in JupyterLab: prompt box, sliders, a Generate button, live output.

The button calls exactly what the headless notebooks and the tests call (make_request -> generate into the
run folder), so an image made by hand carries the same metadata as one made by papermill. Every bad value
(fluxnb's own error, e.g. a size that is not a multiple of 16) is shown in the output area as one block
(render_error); any other exception is shown with its traceback (nothing is hidden).

While it generates, a bar shows image i of n, step k of N, the time elapsed and an estimate of the time left
(from generate()'s per-step callback), and Stop ends the batch after the current image. In a kernel the
generation runs in a background thread so that the kernel stays free to receive the Stop click; outside a
kernel (tests) the button runs it in place.

Notebooks show the UI only when `interactive` is True: widgets do nothing useful under papermill.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..core.errors import FluxnbError, render_error
from ..core.files import atomic_write_bytes, own_folder
from ..core.units import SIZE_MULTIPLE
from ..models.loading import LoadedModel
from ..models.params import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, GenerationRequest, make_request
from ..runs.generation import GeneratedImage, generate
from ..runs.outputs import RunFolder
from .display import caption, figure_png, show_grid, shown_path, timing_summary

MAX_IMAGES_IN_UI = 8
UPLOADS_DIR = "inputs"  # uploaded starting pictures are kept in the run folder, so its images stay reproducible


def _in_a_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


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

        self._setup(model, run, model_reason)
        self.mode = mode
        label = {"description_width": "110px"}
        layout = w.Layout(width="460px")
        controls = self._parameter_controls(w, initial, label, layout) + self._lora_controls(w, initial, label, layout)
        self.init_image = None
        self.strength = None
        if mode == IMAGE_TO_IMAGE:
            controls += self._init_image_controls(w, initial, init_image, label, layout)
        elif mode != TEXT_TO_IMAGE:
            raise ValueError(f"mode must be {TEXT_TO_IMAGE!r} or {IMAGE_TO_IMAGE!r}, got {mode!r}")
        self._action_widgets(w)
        self._assemble(w, controls)

    def _setup(self, model: LoadedModel | None, run: RunFolder, model_reason: str | None) -> None:
        """What every form holds besides its widgets (a subclass with other controls starts here too): the model
        (None for a form that loads one per Generate, see `model_for`), the run folder, the images shown."""
        self.model = model
        self.run = run
        self.model_reason = model_reason
        self.results: list[GeneratedImage] = []  # every image this form showed, in order
        self.last_error: str | None = None
        self._stop_requested = False
        self._thread: threading.Thread | None = None

    def _parameter_controls(self, w, initial: GenerationRequest | None, label: dict, layout) -> list[Any]:
        """Prompt, steps, guidance, seed, size and image count: the request's values, else the entry's defaults."""
        params = self.model.spec.params
        width, height = (initial.width, initial.height) if initial else params.default_size
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
        return [self.prompt, self.steps, self.guidance_scale, self.seed, self.width, self.height, self.num_images]

    def _lora_controls(self, w, initial: GenerationRequest | None, label: dict, layout) -> list[Any]:
        """One of the adapters the notebook's request loaded (or none), at a scale of the slider; shown only when
        the request has adapters."""
        adapters = list(initial.loras) if initial else []
        self.lora = w.Dropdown(options=[("none", None), *[(f"{a.name} ({a.file})", a) for a in adapters]],
                               value=adapters[0] if adapters else None, description="LoRA", style=label)
        self.lora_scale = w.FloatSlider(value=adapters[0].scale if adapters else 1.0, min=-1.0, max=2.0, step=0.05,
                                        description="LoRA scale", style=label, layout=layout)
        return [self.lora, self.lora_scale] if adapters else []

    def _init_image_controls(self, w, initial: GenerationRequest | None, init_image: str | Path | None,
                             label: dict, layout) -> list[Any]:
        """Image-to-image: the init image's path or an upload (saved into the run folder), its preview, strength."""
        start = initial.init_image if initial and initial.init_image else init_image
        self.init_image = w.Text(value=str(start or ""), description="init_image", style=label,
                                 layout=w.Layout(width="480px"))
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload",
                                   tooltip="upload a picture: it is saved into the run folder")
        self.upload.observe(lambda _change: self.take_upload(), names="value")
        self.preview = w.Image(format="png", layout=w.Layout(max_width="96px", max_height="96px"))
        self.path_note = w.HTML(f"<small>relative paths are read from <code>{Path.cwd()}</code>; an upload is "
                                f"saved into <code>{shown_path(self.run.path / UPLOADS_DIR)}</code></small>")
        self.init_image.observe(lambda _change: self._preview(), names="value")
        self._preview()
        self.strength = w.FloatSlider(
            value=initial.strength if initial and initial.strength else 0.6, min=0.05, max=1.0, step=0.05,
            description="strength", style=label, layout=layout,
        )
        return [w.HBox([w.VBox([w.HBox([self.init_image, self.upload]), self.path_note]), self.preview]),
                self.strength]

    def _action_widgets(self, w) -> None:
        """The Generate and Stop buttons, the progress bar and status line, the output area."""
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.button.on_click(lambda _button: self.start())
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="end the batch after the image being made")
        self.stop_button.on_click(lambda _button: self.stop())
        # Shown only while generating (an empty bar or box under the button would look like something failed).
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", bar_style="info",
                                      layout=w.Layout(width="460px", visibility="hidden"))
        self.status = w.HTML("")
        self.output = w.Output(layout=w.Layout(padding="4px"))

    def _assemble(self, w, controls: list[Any]) -> None:
        """The form's container: a header naming the model and the run folder, the controls, the actions."""
        header = self.header = w.HTML(self._header_html())
        self.container = w.VBox([header, *controls, w.HBox([self.button, self.stop_button]),
                                 w.HBox([self.progress, self.status]), self.output])
        self.container.form = self  # reach the form (and its results) from the container the UI functions return
        for widget, name in ((self.container, "form"), (self.progress, "progress"), (self.status, "status"),
                             (self.output, "output"), (header, "header")):
            widget.add_class(f"fluxnb-{name}")  # stable names for the page's CSS and the browser tests

    def _header_html(self) -> str:
        return (f"<b>{self.model.spec.name}</b> ({self.model.report.weights}); images go to "
                f"<code>{shown_path(self.run.path)}</code>")

    # -- the action ---------------------------------------------------------------------------------------

    def prompt_value(self) -> str | list[str]:
        """One prompt per non-empty line; a single line (or nothing) stays a string so errors read naturally."""
        lines = [line.strip() for line in self.prompt.value.splitlines() if line.strip()]
        return lines if len(lines) > 1 else self.prompt.value.strip()

    def request(self) -> GenerationRequest:
        """The current widget values, validated exactly as the notebooks validate their parameters."""
        extra: dict[str, Any] = {}
        if self.mode == IMAGE_TO_IMAGE:
            # sliders step in binary floats (0.05 * 12 = 0.6000000000000001): keep the value a person sees
            extra = {"init_image": self.init_image.value.strip() or None, "strength": round(self.strength.value, 4)}
        return make_request(
            self.model.spec,
            prompt=self.prompt_value(),
            seed=self.seed.value,
            steps=self.steps.value,
            guidance_scale=round(self.guidance_scale.value, 4),
            width=self.width.value,
            height=self.height.value,
            num_images=self.num_images.value,
            mode=self.mode,
            loras=[{"path": self.lora.value.path, "name": self.lora.value.name,
                    "scale": round(self.lora_scale.value, 4)}] if self.lora.value is not None else None,
            **extra,
        )

    def model_for(self, request: GenerationRequest) -> LoadedModel:
        """The model that makes `request`: this form's own (a subclass may load the request's, see EditForm)."""
        return self.model

    def start(self) -> None:
        """What the Generate button does: in a kernel, generate() in a background thread (the kernel stays free
        to receive Stop); elsewhere, in place."""
        if self._thread is not None and self._thread.is_alive():
            return
        if not _in_a_kernel():
            self.generate()
            return
        self._thread = threading.Thread(target=self._generate_showing_errors, name="fluxnb-generate", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background generation ends (tests, scripts)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """What Stop does: the batch ends after the image being made (finished images are all kept)."""
        self._stop_requested = True
        self.stop_button.disabled = True
        self.status.value = "stopping after the current image..."

    def _generate_showing_errors(self) -> None:
        try:
            self.generate()
        except Exception as exc:  # shown in full in the output area (a thread has no cell to raise into)
            self.output.outputs += ({
                "output_type": "error",
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": traceback.format_exception(exc),
            },)
            self.status.value = f"failed: {type(exc).__name__}"

    def generate(self) -> list[GeneratedImage]:
        """Validate, generate into the run folder with live progress, show images (beside the starting picture
        for image-to-image) and timings. Returns the images shown."""
        self.output.outputs = ()
        self.last_error = None
        try:
            request = self.request()
            model = self.model_for(request)
        except FluxnbError as exc:
            self.progress.layout.visibility = "hidden"  # the last run's bar would read as this one's
            return self._show_error(exc)
        count = len(request.items())
        self._text(f"generating {count} image(s) with {model.spec.name} "
                   f"({request.steps} steps, {request.width}x{request.height})...\n")
        images: list[GeneratedImage] = []
        self._stop_requested = False
        self.button.disabled = True
        self.stop_button.disabled = False
        progress = _Progress(self, count, request.steps)
        try:
            images = generate(model, request, self.run, progress=False, model_reason=self.model_reason,
                              on_step=progress.step, on_image=progress.image_done, stop=lambda: self._stop_requested)
        except FluxnbError as exc:
            self.progress.bar_style = "danger"
            return self._show_error(exc)
        finally:
            self.button.disabled = False
            self.stop_button.disabled = True
        self.results += images
        self.output.outputs = ()
        stopped = self._stop_requested and len(images) < count
        if images:
            self._png(figure_png(self._grid(images)))
            self._text(timing_summary(images) + "\n")
        if stopped:
            self._text(f"stopped after {len(images)} of {count} image(s); every finished image is in the run folder "
                       "and its manifest. Press Generate to make the rest (the finished ones are not redone).\n")
        progress.finish(len(images), stopped)  # "done" once the images are on screen
        return images

    def _grid(self, images: list[GeneratedImage]):
        if self.mode != IMAGE_TO_IMAGE:
            return show_grid(images)
        from PIL import Image

        first = images[0].metadata
        with Image.open(first["init_image"]) as start:
            start_image = start.convert("RGB").resize((first["width"], first["height"]))
        return show_grid([start_image, *images],
                         titles=[f"starting picture\n{Path(first['init_image']).name}",
                                 *[caption(image.metadata) for image in images]])

    # -- image-to-image: the starting picture ----------------------------------------------------------------

    def take_upload(self) -> Path | None:
        """An uploaded picture is saved into the run folder (inputs/) and becomes init_image. It never replaces an
        earlier upload of the same name (images made from that one keep pointing at its pixels): another picture
        under a taken name is saved as NAME-2.png, NAME-3.png..."""
        if not self.upload.value:
            return None
        upload = self.upload.value[0]
        data = bytes(upload["content"])
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload["name"]).name).lstrip(".") or "upload.png"
        folder = own_folder(self.run.path, UPLOADS_DIR, "the run folder's uploads folder")
        path, n = folder / name, 1
        while path.exists() and path.read_bytes() != data:
            n += 1
            path = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
        if not path.exists():
            atomic_write_bytes(path, data)
        self.init_image.value = str(path)
        return path

    def _preview(self) -> None:
        """A thumbnail of the starting picture beside its path (nothing when the path is not a readable image)."""
        import io

        from PIL import Image, UnidentifiedImageError

        path = Path(self.init_image.value.strip()).expanduser()
        try:
            with Image.open(path) as image:
                image.thumbnail((96, 96))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
        except (OSError, UnidentifiedImageError, ValueError):
            self.preview.value = b""
            return
        self.preview.value = buffer.getvalue()

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
        done = len(exc.results) if hasattr(exc, "results") else 0
        after = (f"{done} image(s) were generated and kept." if done else
                 "Nothing was generated; change the value(s) and press Generate.")
        self._text(f"{render_error(exc)}\n{after}\n", stream="stderr")
        self.status.value = ""
        return []

    def output_text(self) -> str:
        """All text currently shown in the output area."""
        return "".join(o.get("text", "") for o in self.output.outputs if o.get("output_type") == "stream")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.container)


class _Progress:
    """The bar and the line beside it: image i of n, step k of N, elapsed, an estimate of the time left."""

    def __init__(self, form: GenerateForm, count: int, steps: int):
        self.form = form
        self.count = count
        self.steps = steps  # per image; image-to-image runs fewer: corrected by the first callback
        self.done_images = 0
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []
        self.last = self.started
        form.progress.max = count * steps
        form.progress.value = 0
        form.progress.bar_style = "info"
        form.progress.layout.visibility = "visible"
        form.status.value = f"image 1 of {count}: starting..."

    def step(self, done: int, total: int) -> None:
        now = time.perf_counter()
        self.step_seconds.append(now - self.last)
        self.last = now
        if total != self.steps:
            self.steps = total
            self.form.progress.max = self.count * total
        value = self.done_images * total + done
        elapsed = now - self.started
        left = (self.count * total - value) * (sum(self.step_seconds) / len(self.step_seconds))
        self.form.status.value = (f"image {self.done_images + 1} of {self.count} &middot; step {done}/{total} "
                                  f"&middot; {_duration(elapsed)} elapsed &middot; about {_duration(left)} left")
        self.form.progress.value = value

    def image_done(self, image: GeneratedImage) -> None:
        self.done_images += 1
        self.last = time.perf_counter()  # saving the PNG is not a denoising step

    def finish(self, made: int, stopped: bool) -> None:
        elapsed = _duration(time.perf_counter() - self.started)
        self.form.progress.bar_style = "warning" if stopped else "success"
        if not stopped:
            self.form.progress.value = self.form.progress.max
        self.form.status.value = (f"stopped: {made} of {self.count} image(s) in {elapsed}" if stopped
                                  else f"done: {made} image(s) in {elapsed}")


def text_to_image_ui(model: LoadedModel, run: RunFolder, model_reason: str | None = None,
                     initial: GenerationRequest | None = None):
    """The text-to-image form's widget container (pre-filled from `initial`, e.g. the notebook's request)."""
    return GenerateForm(model, run, model_reason=model_reason, initial=initial).container


def image_to_image_ui(model: LoadedModel, run: RunFolder, init_image: str | Path, model_reason: str | None = None,
                      initial: GenerationRequest | None = None):
    """The image-to-image form's widget container: the same controls plus init_image and strength."""
    return GenerateForm(model, run, mode=IMAGE_TO_IMAGE, init_image=init_image, model_reason=model_reason,
                        initial=initial).container
