"""CJK text in matplotlib figures: prompts written in Korean (or Chinese, Japanese) caption the image grid.

matplotlib's default font (DejaVu Sans) has no Hangul or CJK ideographs: such captions would render as empty boxes,
with a "Glyph ... missing from font(s) DejaVu Sans" warning per character. fluxnb depends on a pip-installed copy of
Noto Sans CJK (package `manimgx-fonts-cjk`, SIL Open Font License), so the same font exists on a fresh machine and
on a Workbench image, and adds it to matplotlib's per-character font fallback: Latin text keeps DejaVu Sans, and
characters DejaVu Sans lacks come from Noto Sans CJK.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

FONT_PACKAGE = "manimgx_fonts_cjk"
FONT_FILE = "NotoSansCJK-VF.otf.ttc"
# One face of the collection: Korean glyph shapes first (the guide's users write Korean); every face covers Hangul,
# kana and the CJK ideographs.
CJK_FAMILY = "Noto Sans CJK KR"


def cjk_font_path() -> Path:
    """The Noto Sans CJK collection installed with fluxnb's dependencies."""
    return Path(str(resources.files(FONT_PACKAGE) / FONT_FILE))


def use_cjk_fallback() -> str:
    """Register Noto Sans CJK with matplotlib and put it last in the font fallback list; returns its family name.

    Idempotent and cheap after the first call (the font is registered once per process).
    """
    import matplotlib
    from matplotlib import font_manager

    manager = font_manager.fontManager
    if CJK_FAMILY not in {entry.name for entry in manager.ttflist}:
        manager.addfont(str(cjk_font_path()))
        # This variable font's default instance declares weight 100; matplotlib renders that instance whatever the
        # weight asked, but would log "Failed to find font weight normal" at every lookup. Register it as normal.
        manager.ttflist = [dataclasses.replace(entry, weight=400) if entry.fname.endswith(FONT_FILE) else entry
                           for entry in manager.ttflist]
    families = [f for f in matplotlib.rcParams["font.family"] if f != CJK_FAMILY]
    matplotlib.rcParams["font.family"] = [*families, CJK_FAMILY]
    return CJK_FAMILY
