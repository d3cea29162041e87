"""Masks for inpainting and outpainting, made where a person looks at the picture: a brush on a canvas, or margins.

`MaskPainter` shows the picture on an ipycanvas `MultiCanvas` with the painted mask over it, half transparent, and a
brush that follows the mouse. The mask itself lives in the kernel as a numpy array (255 = repaint, 0 = keep, as
FLUX.1-Fill reads it) and is updated by the very strokes the browser draws: nothing depends on reading pixels back
from the browser, so a headless test that calls the mouse handlers gets the mask a person would get. Between two
mouse events the stroke is the straight segment joining them (a fast stroke has no gaps): a pixel is painted when
its centre lies within half the brush size of a segment. After each stroke the overlay is redrawn from the kernel's
mask, so what is shown is what will be repainted.

`OutpaintBorder` picks the margins to add around the picture (multiples of 16, as FLUX needs) with a preview of the
padded canvas. `rectangle_mask` is the mask of a box, for headless runs that cannot paint.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import InputError, render_error
from ..core.files import atomic_write_bytes
from ..core.units import SIZE_MULTIPLE

REPAINT, KEEP = 255, 0
OVERLAY_RGB = (255, 0, 170)  # magenta: readable over most pictures
DISPLAY_SIDE = 512  # the canvas's longer side in canvas pixels: a 64 px picture is shown 8x, a 2048 px one at 1/4
MAX_BRUSH = 256
MAX_MARGIN = 1024
PAINT, ERASE = "paint", "erase"


# -- the geometry, shared by the brush and the tests' reasoning ---------------------------------------------------


def mark_segment(mask: np.ndarray, start: tuple[float, float], end: tuple[float, float], radius: float,
                 value: int = REPAINT) -> None:
    """Set to `value` every pixel of `mask` whose centre (col + 0.5, row + 0.5) lies within `radius` of the segment
    start-end (image coordinates, x right, y down); a zero-length segment marks a disc. In place."""
    (ax, ay), (bx, by) = start, end
    height, width = mask.shape
    left, right = max(0, int(np.floor(min(ax, bx) - radius))), min(width, int(np.ceil(max(ax, bx) + radius)) + 1)
    top, bottom = max(0, int(np.floor(min(ay, by) - radius))), min(height, int(np.ceil(max(ay, by) + radius)) + 1)
    if left >= right or top >= bottom:
        return
    cy, cx = np.mgrid[top:bottom, left:right] + 0.5
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = np.zeros_like(cx) if length2 == 0 else np.clip(((cx - ax) * dx + (cy - ay) * dy) / length2, 0.0, 1.0)
    inside = (cx - ax - t * dx) ** 2 + (cy - ay - t * dy) ** 2 <= radius * radius
    mask[top:bottom, left:right][inside] = value


def rectangle_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """An "L" mask of `size` (width, height), white (repaint) inside `box` = (left, top, right, bottom), right and
    bottom excluded, black elsewhere: the mask a headless run uses instead of painting."""
    width, height = size
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise InputError(f"mask box {box} does not lie inside the picture ({width}x{height})",
                         fix=f"use 0 <= left < right <= {width} and 0 <= top < bottom <= {height}")
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = REPAINT
    return Image.fromarray(mask, "L")


def binary_mask(image: Image.Image, picture_size: tuple[int, int], name: str) -> np.ndarray:
    """A mask picture as 0/255, refused (naming both sizes and the fix) unless it is the picture's size.
    Grey levels are cut at 128, as FLUX.1-Fill's mask processor binarizes them."""
    if image.size != picture_size:
        (w, h), (pw, ph) = image.size, picture_size
        raise InputError(f"mask {name} is {w}x{h} pixels but the picture is {pw}x{ph}: a mask must cover the "
                         "picture pixel for pixel (white = repaint, black = keep)",
                         fix=f"export the mask at {pw}x{ph} (resize it to the picture's size), or paint it here")
    return np.where(np.asarray(image.convert("L")) >= 128, REPAINT, KEEP).astype(np.uint8)


def padded_preview(image: Image.Image, expand: tuple[int, int, int, int]) -> Image.Image:
    """The outpainting canvas for a person to look at: the picture at (left, top) and the new border, which FLUX
    paints, in grey half-tinted with the mask colour. `expand` = (left, top, right, bottom) in pixels."""
    left, top, right, bottom = expand
    width, height = image.width + left + right, image.height + top + bottom
    grey = Image.new("RGB", (width, height), (128, 128, 128))
    canvas = Image.blend(grey, Image.new("RGB", (width, height), OVERLAY_RGB), 0.5)
    canvas.paste(image.convert("RGB"), (left, top))
    return canvas


def free_name(path: Path, data: bytes) -> Path:
    """`path`, or NAME-2.png, NAME-3.png... when `path` holds other bytes: a saved file is never replaced."""
    candidate, n = path, 1
    while candidate.exists() and candidate.read_bytes() != data:
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def save_mask(mask: Image.Image, path: str | Path) -> Path:
    """Write `mask` as a PNG (atomically) at `path`, or at a free NAME-2.png... when `path` holds another mask (an
    image made from that one keeps pointing at its pixels). Returns where it is."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"mask file {path}: the folder {path.parent} does not exist",
                         fix="save into an existing folder, e.g. the run folder's inputs/")
    data = png_bytes(mask)
    target = free_name(path, data)
    if not target.exists():
        atomic_write_bytes(target, data)
    return target


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- the painter -------------------------------------------------------------------------------------------------


class MaskPainter:
    """A picture with a brush over it; the mask is `mask` (uint8, 255 = repaint), read with `mask_image()`.

    The mouse handlers take canvas coordinates (ipycanvas already maps a canvas shown scaled by CSS back to canvas
    pixels); the canvas is the picture scaled to `display_side` on its longer side, and `to_image` maps back."""

    def __init__(self, image: Image.Image, brush: int = 32, *, display_side: int = DISPLAY_SIDE):
        import ipywidgets as w
        from ipycanvas import MultiCanvas

        if isinstance(brush, bool) or not isinstance(brush, int) or not 1 <= brush <= MAX_BRUSH:
            raise InputError(f"parameter `brush`: {brush!r} is not a brush size; allowed: a whole number of "
                             f"picture pixels from 1 to {MAX_BRUSH}", fix="use e.g. brush=32")
        self.picture = image.convert("RGB")
        width, height = self.picture.size
        self.mask = np.zeros((height, width), np.uint8)
        scale = display_side / max(width, height)
        self.canvas = MultiCanvas(3, width=max(1, round(width * scale)), height=max(1, round(height * scale)))
        self.canvas.layout.width = f"{self.canvas.width}px"  # not stretched to the notebook's width (too tall)
        self.scale_x, self.scale_y = self.canvas.width / width, self.canvas.height / height  # canvas px per image px
        self.strokes = 0  # finished strokes (a mouse down ... up), for a person and the tests
        self.last_error: str | None = None
        self._last: tuple[float, float] | None = None  # the stroke's previous point, image coordinates
        self._draw_picture()
        for event, handler in (("down", self.on_mouse_down), ("move", self.on_mouse_move),
                               ("up", self.on_mouse_up), ("out", self.on_mouse_out)):
            getattr(self.canvas, f"on_mouse_{event}")(handler)
        self._controls(w, brush)

    def _controls(self, w, brush: int) -> None:
        """Brush size, paint/erase, clear, invert, a mask upload, a message line; assembled into `container`."""
        self.brush = w.IntSlider(value=brush, min=1, max=MAX_BRUSH, description="brush (px)")
        self.tool = w.ToggleButtons(options=[PAINT, ERASE], value=PAINT, description="tool")
        self.clear_button = w.Button(description="clear", icon="eraser")
        self.clear_button.on_click(lambda _b: self.clear())
        self.invert_button = w.Button(description="invert", icon="adjust")
        self.invert_button.on_click(lambda _b: self.invert())
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload mask",
                                   tooltip=f"a PNG of {self.picture.width}x{self.picture.height}: white = repaint")
        self.upload.observe(lambda _change: self.take_upload(), names="value")
        self.message = w.HTML(f"<small>paint what FLUX should repaint (white in the mask); picture "
                              f"{self.picture.width}x{self.picture.height}</small>")
        self.container = w.VBox([self.canvas, w.HBox([self.brush, self.tool]),
                                 w.HBox([self.clear_button, self.invert_button, self.upload]), self.message])
        self.container.painter = self
        for widget, name in ((self.container, "mask-painter"), (self.canvas, "mask-canvas"),
                             (self.message, "mask-message")):
            widget.add_class(f"fluxnb-{name}")  # stable names for the browser tests

    # -- coordinates and strokes -----------------------------------------------------------------------------

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """Canvas coordinates (what ipycanvas sends) -> picture coordinates."""
        return x / self.scale_x, y / self.scale_y

    def on_mouse_down(self, x: float, y: float) -> None:
        self._last = self.to_image(x, y)
        self._stroke_to(self._last)

    def on_mouse_move(self, x: float, y: float) -> None:
        if self._last is not None:  # moves without a pressed button only move the pointer
            self._stroke_to(self.to_image(x, y))

    def on_mouse_up(self, x: float, y: float) -> None:
        if self._last is None:
            return
        self._stroke_to(self.to_image(x, y))
        self._last = None
        self.strokes += 1
        self._draw_mask()

    def on_mouse_out(self, x: float, y: float) -> None:
        """Leaving the canvas ends the stroke at the edge (a button released outside is never seen)."""
        self.on_mouse_up(x, y)

    def _stroke_to(self, point: tuple[float, float]) -> None:
        """The segment from the stroke's last point to `point`: into the kernel's mask, then onto the canvas."""
        from ipycanvas import hold_canvas

        start, radius = self._last, self.brush.value / 2
        painting = self.tool.value == PAINT
        mark_segment(self.mask, start, point, radius, REPAINT if painting else KEEP)
        self._last = point
        # on screen: filled circles along the segment, close enough that their union is the segment's band
        (ax, ay), (bx, by) = start, point
        r = radius * self.scale_x
        length = float(np.hypot((bx - ax) * self.scale_x, (by - ay) * self.scale_y))
        t = np.linspace(0.0, 1.0, max(2, int(np.ceil(length / max(0.5, r / 4))) + 1))
        layer = self.canvas[1]
        with hold_canvas(layer):
            layer.global_composite_operation = "source-over" if painting else "destination-out"
            layer.fill_style = "rgb({}, {}, {})".format(*OVERLAY_RGB)
            layer.fill_circles((ax + t * (bx - ax)) * self.scale_x, (ay + t * (by - ay)) * self.scale_y, r)
            layer.global_composite_operation = "source-over"

    # -- drawing ---------------------------------------------------------------------------------------------

    def _draw_picture(self) -> None:
        """Layer 0: the picture; layer 1: the mask in opaque colour; layer 2: the picture again at half opacity.
        Where the mask is, the eye sees picture and colour half and half; elsewhere the picture (no build-up of
        colour where strokes overlap, and erasing is cutting the colour out of layer 1)."""
        shown = np.asarray(self.picture.resize((self.canvas.width, self.canvas.height), Image.LANCZOS).convert("RGBA"))
        self.canvas[0].put_image_data(shown)
        veil = shown.copy()
        veil[..., 3] = 128
        self.canvas[2].put_image_data(veil)

    def _draw_mask(self) -> None:
        """Layer 1 redrawn from the kernel's mask (after a stroke, clear, invert or upload)."""
        layer = self.canvas[1]
        layer.clear()
        if not self.mask.any():
            return
        alpha = np.asarray(Image.fromarray(self.mask, "L").resize((self.canvas.width, self.canvas.height),
                                                                    Image.NEAREST))
        rgba = np.zeros((*alpha.shape, 4), np.uint8)
        rgba[..., :3] = OVERLAY_RGB
        rgba[..., 3] = alpha
        layer.put_image_data(rgba)

    # -- the buttons -------------------------------------------------------------------------------------------

    def clear(self) -> None:
        """Nothing to repaint."""
        self.mask[:] = KEEP
        self._draw_mask()

    def invert(self) -> None:
        """Repaint everything but what was painted (paint the part to keep, then invert)."""
        self.mask[:] = REPAINT - self.mask
        self._draw_mask()

    def load_mask(self, image: Image.Image, name: str = "image") -> None:
        """Replace the mask by a mask picture of the picture's size (white = repaint); refused otherwise."""
        self.mask[:] = binary_mask(image, self.picture.size, name)
        self._draw_mask()

    def take_upload(self) -> bool | None:
        """An uploaded mask PNG becomes the mask, or its refusal is shown under the buttons. None: no upload."""
        if not self.upload.value:
            return None
        upload = self.upload.value[0]
        name = re.sub(r"[^A-Za-z0-9._ -]", "_", str(upload["name"]))
        self.upload.value = ()  # the same file can be uploaded again after a change
        try:
            try:
                with Image.open(io.BytesIO(bytes(upload["content"]))) as image:
                    image.load()
                    self.load_mask(image, name)
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"mask {name} is not a picture PIL can read ({exc})",
                                 fix="upload a PNG, white where the picture should be repainted") from None
        except InputError as exc:
            self.last_error = str(exc)
            self.message.value = f"<pre style='color:#b00'>{render_error(exc)}</pre>"
            return False
        self.last_error = None
        self.message.value = f"<small>mask {name} loaded: {self.painted()} pixel(s) to repaint</small>"
        return True

    # -- the result ---------------------------------------------------------------------------------------------

    def painted(self) -> int:
        """How many picture pixels are to be repainted."""
        return int(np.count_nonzero(self.mask))

    def mask_image(self) -> Image.Image:
        """The mask as FLUX.1-Fill takes it: an "L" picture of the picture's size, white = repaint."""
        return Image.fromarray(self.mask.copy(), "L")

    def save(self, path: str | Path) -> Path:
        """Write the mask as a PNG (atomically) and return where: a file holding another mask is never replaced
        (NAME-2.png... is used instead, so an image made from the earlier mask keeps pointing at its pixels)."""
        return save_mask(self.mask_image(), path)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.container)


# -- outpainting margins -----------------------------------------------------------------------------------------


class OutpaintBorder:
    """Four margins (left, top, right, bottom; multiples of 16) to add around the picture, with a preview of the
    padded canvas: the picture where it stays, the new border (what FLUX.1-Fill paints) in the mask colour."""

    SIDES = ("left", "top", "right", "bottom")

    def __init__(self, image: Image.Image, expand: tuple[int, int, int, int] = (0, 0, 0, 0), *,
                 preview_side: int = 256):
        import ipywidgets as w

        self.picture = image.convert("RGB")
        self.preview_side = preview_side
        self.sliders = {side: w.IntSlider(value=value, min=0, max=MAX_MARGIN, step=SIZE_MULTIPLE, description=side)
                        for side, value in zip(self.SIDES, expand, strict=True)}
        self.preview = w.Image(format="png")
        self.size_note = w.HTML("")
        for slider in self.sliders.values():
            slider.observe(lambda _change: self._update(), names="value")
        self.container = w.HBox([w.VBox([*self.sliders.values(), self.size_note]), self.preview])
        self.container.add_class("fluxnb-outpaint-border")
        self._update()

    def expand(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), checked: whole multiples of 16 from 0 to MAX_MARGIN."""
        values = tuple(self.sliders[side].value for side in self.SIDES)
        for side, value in zip(self.SIDES, values, strict=True):
            if not 0 <= value <= MAX_MARGIN or value % SIZE_MULTIPLE:
                lower = value - value % SIZE_MULTIPLE
                raise InputError(f"parameter `expand` ({side}): {value} is not a multiple of {SIZE_MULTIPLE} from 0 "
                                 f"to {MAX_MARGIN} (FLUX sizes move in steps of {SIZE_MULTIPLE})",
                                 fix=f"use {max(0, lower)} or {min(MAX_MARGIN, lower + SIZE_MULTIPLE)}")
        return values  # type: ignore[return-value]

    def padded_preview(self) -> Image.Image:
        """The padded canvas of the margins as they are set (see `padded_preview`)."""
        return padded_preview(self.picture, tuple(self.sliders[side].value for side in self.SIDES))

    def _update(self) -> None:
        preview = self.padded_preview()
        self.size_note.value = (f"<small>picture {self.picture.width}x{self.picture.height} &rarr; canvas "
                                f"{preview.width}x{preview.height}</small>")
        preview.thumbnail((self.preview_side, self.preview_side))
        self.preview.value = png_bytes(preview)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.container)

