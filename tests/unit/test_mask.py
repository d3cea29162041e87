"""fluxnb.ui.mask without a browser: the painter's mouse handlers driven with coordinates, the kernel's mask compared
pixel by pixel with masks computed here independently (pixel centres against the stroke, by plain geometry)."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from fluxnb.core.errors import InputError
from fluxnb.ui.mask import ERASE, MaskPainter, OutpaintBorder, rectangle_mask


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A gradient, so that a picture drawn at the wrong place would show."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], -1), "RGB")


def centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel centre: pixel (col, row) covers [col, col + 1) x [row, row + 1)."""
    return np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)


def horizontal_band(width: int, height: int, x0: float, x1: float, y: float, radius: float) -> np.ndarray:
    """Pixels whose centre is within `radius` of the horizontal segment (x0, y)-(x1, y): above or below the
    segment the vertical distance, beyond its ends the distance to the nearer end."""
    cx, cy = centres(width, height)
    nearest_x = np.clip(cx, x0, x1)
    return (cx - nearest_x) ** 2 + (cy - y) ** 2 <= radius**2


def vertical_band(width: int, height: int, x: float, y0: float, y1: float, radius: float) -> np.ndarray:
    return horizontal_band(height, width, y0, y1, x, radius).T


def painted(painter: MaskPainter) -> np.ndarray:
    values = np.asarray(painter.mask_image())
    assert set(np.unique(values)) <= {0, 255}  # FLUX.1-Fill's binary mask: white repaints, black keeps
    return values == 255


def stroke(painter: MaskPainter, *points: tuple[float, float]) -> None:
    """Mouse down at the first point, a move to each next one, up at the last: canvas coordinates."""
    painter.on_mouse_down(*points[0])
    for point in points[1:]:
        painter.on_mouse_move(*point)
    painter.on_mouse_up(*points[-1])


def test_a_fast_stroke_marks_exactly_the_pixels_within_half_the_brush_of_its_segment():
    painter = MaskPainter(picture(64, 64), brush=8, display_side=64)  # canvas pixel = picture pixel
    assert (painter.canvas.width, painter.canvas.height) == (64, 64)
    stroke(painter, (10, 10), (50, 10))  # one move event for 40 px: the segment between them is painted
    expected = horizontal_band(64, 64, 10, 50, 10, 4)
    assert np.array_equal(painted(painter), expected)
    # the band by hand: rows 6..13 (centres 6.5..13.5) over columns 10..49, and rounded ends beyond
    assert expected[6:14, 10:50].all() and not expected[5, 10:50].any() and not expected[14, 10:50].any()
    assert expected[10, 6] and not expected[10, 5] and expected[10, 53] and not expected[10, 54]
    assert painter.strokes == 1


def test_a_stroke_of_several_moves_is_the_union_of_its_segments_and_hovering_paints_nothing():
    painter = MaskPainter(picture(64, 64), brush=6, display_side=64)
    painter.on_mouse_move(5, 5)  # no button pressed: the pointer only moves
    assert not painted(painter).any()
    stroke(painter, (8, 40), (30, 40), (30, 12))  # right, then up
    expected = horizontal_band(64, 64, 8, 30, 40, 3) | vertical_band(64, 64, 30, 12, 40, 3)
    assert np.array_equal(painted(painter), expected)
    painter.on_mouse_move(60, 60)  # after mouse up
    assert np.array_equal(painted(painter), expected)


def test_a_canvas_shown_larger_than_the_picture_maps_events_back_to_picture_pixels():
    painter = MaskPainter(picture(96, 64), brush=8, display_side=384)  # 4 canvas pixels per picture pixel
    assert (painter.canvas.width, painter.canvas.height) == (384, 256)
    stroke(painter, (40, 40), (200, 40))  # = picture (10, 10) to (50, 10)
    assert painter.mask_image().size == (96, 64)
    assert np.array_equal(painted(painter), horizontal_band(96, 64, 10, 50, 10, 4))


def test_a_large_picture_is_shown_smaller_and_the_mask_keeps_its_full_size():
    painter = MaskPainter(picture(1024, 768), brush=32, display_side=256)  # a quarter: 256x192
    assert (painter.canvas.width, painter.canvas.height) == (256, 192)
    stroke(painter, (25, 100), (125, 100))  # = picture (100, 400) to (500, 400)
    image = painter.mask_image()
    assert image.mode == "L" and image.size == (1024, 768)
    assert np.array_equal(painted(painter), horizontal_band(1024, 768, 100, 500, 400, 16))


def test_erase_removes_exactly_its_band_from_the_mask():
    painter = MaskPainter(picture(64, 64), brush=8, display_side=64)
    stroke(painter, (10, 10), (50, 10))
    painter.tool.value = ERASE
    stroke(painter, (30, 0), (30, 30))
    expected = horizontal_band(64, 64, 10, 50, 10, 4) & ~vertical_band(64, 64, 30, 0, 30, 4)
    assert np.array_equal(painted(painter), expected)
    assert not painted(painter)[10, 27:33].any() and painted(painter)[10, 20]


def test_clear_and_invert():
    painter = MaskPainter(picture(64, 48), brush=8, display_side=64)
    stroke(painter, (10, 10), (50, 10))
    band = horizontal_band(64, 48, 10, 50, 10, 4)
    painter.invert()
    assert np.array_equal(painted(painter), ~band)  # repaint everything but the stroke
    painter.invert()
    assert np.array_equal(painted(painter), band)
    painter.clear()
    assert not painted(painter).any() and painter.painted() == 0
    painter.invert()
    assert painted(painter).all() and painter.painted() == 64 * 48


def upload(painter: MaskPainter, image: Image.Image, name: str = "mask.png") -> bool | None:
    data = io.BytesIO()
    image.save(data, format="PNG")
    painter.upload.value = ({"name": name, "type": "image/png", "size": len(data.getvalue()),  # as ipywidgets 8
                             "content": memoryview(data.getvalue()), "last_modified": datetime.now(timezone.utc)},)
    return painter.last_error is None


def test_an_uploaded_mask_of_another_size_is_refused_naming_both_sizes_and_the_fix():
    painter = MaskPainter(picture(64, 64), brush=8, display_side=64)
    stroke(painter, (10, 10), (50, 10))
    before = painted(painter).copy()
    assert not upload(painter, Image.new("L", (32, 48), 255), "small mask.png")
    assert painter.last_error.startswith("mask small mask.png is 32x48 pixels but the picture is 64x64")
    assert "Fix: export the mask at 64x64" in painter.last_error
    assert "32x48" in painter.message.value and "64x64" in painter.message.value  # shown under the buttons
    assert np.array_equal(painted(painter), before)  # the painted mask is kept
    with pytest.raises(InputError, match=r"mask m\.png is 65x64 pixels but the picture is 64x64"):
        painter.load_mask(Image.new("L", (65, 64)), "m.png")
    painter.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
                             "last_modified": datetime.now(timezone.utc)},)
    assert painter.last_error.startswith("mask notes.txt is not a picture PIL can read")


def test_an_uploaded_mask_of_the_right_size_replaces_the_mask_cut_at_half_grey():
    painter = MaskPainter(picture(64, 32), brush=8, display_side=64)
    stroke(painter, (10, 10), (50, 10))
    grey = np.zeros((32, 64), np.uint8)
    grey[:, :20] = 200  # light grey: repaint
    grey[:, 20:40] = 127  # just under half: keep
    grey[:, 40:] = 128
    assert upload(painter, Image.fromarray(grey, "L").convert("RGB"))  # any mode: read as grey levels
    expected = np.zeros((32, 64), bool)
    expected[:, :20] = expected[:, 40:] = True
    assert np.array_equal(painted(painter), expected)
    assert painter.upload.value == ()  # ready for the next upload of the same file
    assert f"{expected.sum()} pixel(s) to repaint" in painter.message.value


def test_save_writes_the_mask_and_never_replaces_another_one(tmp_path):
    painter = MaskPainter(picture(48, 32), brush=8, display_side=96)
    stroke(painter, (20, 20), (100, 20))  # picture (10, 10) to (50, 10), clipped at the right edge (48)
    first = painter.save(tmp_path / "mask.png")
    assert first == tmp_path / "mask.png"
    with Image.open(first) as saved:
        assert saved.mode == "L" and saved.size == (48, 32)
        assert np.array_equal(np.asarray(saved) == 255, horizontal_band(48, 32, 10, 50, 10, 4))
    assert painter.save(tmp_path / "mask.png") == first  # the same mask again: the same file
    painter.invert()
    second = painter.save(tmp_path / "mask.png")
    assert second == tmp_path / "mask-2.png"
    with Image.open(first) as kept:
        assert np.array_equal(np.asarray(kept) == 255, horizontal_band(48, 32, 10, 50, 10, 4))
    with pytest.raises(InputError, match="the folder .*nowhere does not exist"):
        painter.save(tmp_path / "nowhere" / "mask.png")


@pytest.mark.parametrize("brush", [0, -4, 257, 2.5, True])
def test_a_bad_brush_is_refused_by_name(brush):
    with pytest.raises(InputError, match=r"parameter `brush`: .* from 1 to 256"):
        MaskPainter(picture(), brush=brush)


def test_rectangle_mask():
    mask = np.asarray(rectangle_mask((40, 30), (5, 6, 25, 16)))
    expected = np.zeros((30, 40), bool)
    expected[6:16, 5:25] = True
    assert np.array_equal(mask == 255, expected) and set(np.unique(mask)) == {0, 255}
    with pytest.raises(InputError, match=r"mask box \(0, 0, 41, 10\) does not lie inside the picture \(40x30\)"):
        rectangle_mask((40, 30), (0, 0, 41, 10))


def test_outpaint_border_gives_its_margins_and_previews_the_padded_canvas():
    start = picture(64, 48)
    border = OutpaintBorder(start, preview_side=1024)
    assert border.expand() == (0, 0, 0, 0)
    for side, value in zip(("left", "top", "right", "bottom"), (32, 16, 0, 64), strict=True):
        border.sliders[side].value = value
    assert border.expand() == (32, 16, 0, 64)
    padded = border.padded_preview()
    assert padded.size == (64 + 32, 48 + 16 + 64)
    assert np.array_equal(np.asarray(padded)[16:64, 32:96], np.asarray(start))  # the picture where it stays
    # the border: grey (128) half-tinted with the mask colour (255, 0, 170), to within PIL's rounding
    assert np.abs(np.asarray(padded)[0, 0] - np.array([191.5, 64, 149])).max() <= 0.5
    assert "64x48 &rarr; canvas 96x128" in border.size_note.value
    with Image.open(io.BytesIO(border.preview.value)) as shown:
        assert shown.size == (96, 128)
    border.sliders["right"].value = 20  # typed into the readout
    with pytest.raises(InputError, match=r"parameter `expand` \(right\): 20 is not a multiple of 16") as refused:
        border.expand()
    assert "Fix: use 16 or 32" in str(refused.value)
