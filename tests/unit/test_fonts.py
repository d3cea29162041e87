"""Korean (and other CJK) captions render with the pip-installed Noto Sans CJK: no missing-glyph warning."""

from __future__ import annotations

import io
import logging
import warnings

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless, as in CI and under papermill

from PIL import Image  # noqa: E402

from fluxnb.runs.generation import GeneratedImage  # noqa: E402
from fluxnb.ui.display import figure_png, show_grid  # noqa: E402
from fluxnb.ui.fonts import CJK_FAMILY, cjk_font_path, use_cjk_fallback  # noqa: E402

KOREAN = "붉은 여우, 눈 속의 수채화"


def _draw(title: str, family: list[str] | None = None) -> list[str]:
    """Render a figure titled `title`; the missing-glyph messages matplotlib emitted (warnings and log records)."""
    import matplotlib.pyplot as plt

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect()
    logging.getLogger("matplotlib").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(
                {"font.family": family} if family else {}):
            warnings.simplefilter("always")
            fig, ax = plt.subplots()
            ax.set_title(title)
            fig.canvas.draw()
            plt.close(fig)
    finally:
        logging.getLogger("matplotlib").removeHandler(handler)
    return [str(w.message) for w in caught] + messages


def test_default_font_lacks_hangul():
    """The control: without the fallback, matplotlib's DejaVu Sans cannot draw the prompt."""
    messages = _draw(KOREAN, family=["DejaVu Sans"])
    assert any("missing from font(s) DejaVu Sans" in m for m in messages)


def test_korean_caption_renders_without_missing_glyphs():
    assert cjk_font_path().is_file()
    assert use_cjk_fallback() == CJK_FAMILY
    assert [m for m in _draw(KOREAN) if "missing" in m or "findfont" in m] == []


def test_show_grid_draws_a_korean_prompt_caption():
    image = Image.new("RGB", (64, 64), "white")
    item = GeneratedImage(image=image, metadata={"prompt": KOREAN, "seed": 3, "seconds": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would fail the test here
        png = figure_png(show_grid([item], columns=1))
    drawn = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    title_band = drawn[: drawn.shape[0] // 5]
    assert (title_band < 128).sum() > 200  # the caption's glyphs are ink, not an empty band
