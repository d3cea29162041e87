"""A stroke drawn with Playwright's mouse on a mask painter's canvas, and the check that a saved mask is that stroke,
pixel by pixel: shared by the painter's own test and notebook 06's form test.

The expected mask is computed here from the mouse's page coordinates and the canvas element's on-screen box
(picture x = side * (clientX - left) / box width), never from the painter's own code.

Tolerance: none at the ends, what rounding to whole page pixels allows along the edges. Mouse down and mouse up
carry their exact coordinates; the moves between them (Playwright's 12 steps, which Chromium may coalesce) are
rounded to whole page pixels, x and y each by up to half a pixel, so a point of the painted polyline may stray from
the straight segment, across it, by up to 0.5 * (|cos a| + |sin a|) page px for a stroke at angle a (half a pixel
along an axis, 0.71 px on the diagonal; 0.68 px, i.e. 0.34 picture px, for notebook 06's stroke on a 512 px canvas
showing 256 px). A pixel whose centre lies within that distance (+0.01 px for floating point) of the brush's edge
may therefore go either way; every other pixel must match: all of the band inside, nothing outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stroke:
    """Where the mouse went down and up (page px) over the canvas's on-screen box."""

    start: tuple[int, int]
    end: tuple[int, int]
    box: dict[str, float]

    def in_picture(self, side: int) -> list[tuple[float, float]]:
        """The stroke's ends in picture px, for a square picture of `side` px."""
        box = self.box
        return [(side * (x - box["left"]) / box["width"], side * (y - box["top"]) / box["height"])
                for x, y in (self.start, self.end)]


def distance_to_segment(width: int, height: int, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance from every pixel centre (col + 0.5, row + 0.5) to the segment a-b, by projection."""
    cx, cy = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((cx - ax) * dx + (cy - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(cx - (ax + t * dx), cy - (ay + t * dy))


def draw_stroke(page, canvas) -> Stroke:
    """A diagonal stroke, left to right, across the canvas (a Playwright locator) as a person draws it: whole page
    pixels (Chromium reports mouse events in whole CSS pixels), 12 moves between down and up."""
    canvas.scroll_into_view_if_needed()
    page.wait_for_function("el => el.width === 512 && el.height === 512", arg=canvas.element_handle())
    box = page.evaluate("el => { const r = el.getBoundingClientRect(); "
                        "return {left: r.left, top: r.top, width: r.width, height: r.height}; }",
                        canvas.element_handle())
    assert box["width"] > 100 and box["height"] > 100, box  # on screen, whatever CSS scale the page gives it
    start = (round(box["left"] + 0.2 * box["width"]), round(box["top"] + 0.3 * box["height"]))
    end = (round(box["left"] + 0.75 * box["width"]), round(box["top"] + 0.6 * box["height"]))
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=12)
    page.mouse.up()
    return Stroke(start, end, box)


def assert_mask_is_the_stroke(mask: np.ndarray, stroke: Stroke, side: int, brush: int) -> None:
    """`mask` (0/255, side x side) is exactly the band of `brush` px along the stroke, edges within tolerance."""
    assert mask.shape == (side, side) and set(np.unique(mask)) == {0, 255}
    ends = stroke.in_picture(side)
    distance = distance_to_segment(side, side, *ends)
    differ = (mask == 255) != (distance <= brush / 2)
    (x0, y0), (x1, y1) = stroke.start, stroke.end
    across = 0.5 * (abs(x1 - x0) + abs(y1 - y0)) / float(np.hypot(x1 - x0, y1 - y0))  # page px: module docstring
    edge = across * side / stroke.box["width"] + 0.01  # picture px
    undecided = np.abs(distance - brush / 2) <= edge
    print(f"stroke {ends} in picture px; {int(differ.sum())} pixel(s) within {edge:.3f} px of the brush's "
          f"edge went the other way: {np.round(distance[differ] - brush / 2, 3).tolist()}")
    assert not (differ & ~undecided).any(), (
        f"{int((differ & ~undecided).sum())} pixel(s) differ from the stroke {ends}: "
        f"{np.argwhere(differ & ~undecided)[:10].tolist()}")
