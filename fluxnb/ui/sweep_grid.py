"""The labelled grid of a sweep (the "X/Y plot"): one column per value of the first axis, one row per seed and value
of the second, titled with the axis names, values and seeds; saved in the run folder as sweep-grid.png.

Drawn with matplotlib using its default font family, so that the CJK-capable font setup of fluxnb.ui.display (applied
through matplotlib's rcParams) also covers prompts and titles here.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_bytes
from ..models.params import GenerationRequest
from .fonts import use_cjk_fallback

GRID_FILE = "sweep-grid.png"
PNG_LAYOUT_KEY = "fluxnb-sweep-grid"  # PNG text chunk: the grid's rows, columns and cell files (tests, tools)
CELL_INCHES = 1.9


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_layout(request: GenerationRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, columns) of a request's grid: each a dict of the coordinates it fixes (prompt, seed, axis values)."""
    axes = [axis for axis, _ in request.sweep]
    columns = [{axes[0]: v} for v in request.sweep[0][1]] if axes else [{}]
    second = [{axes[1]: v} for v in request.sweep[1][1]] if len(axes) > 1 else [{}]
    rows = [{"prompt": prompt, "seed": request.seed + k, **y}
            for prompt in request.prompts for k in range(request.num_images) for y in second]
    return rows, columns


def _key(metadata: dict[str, Any]) -> tuple:
    return (metadata["prompt"], metadata["seed"], tuple(sorted((metadata.get("sweep") or {}).items())))


def sweep_figure(request: GenerationRequest, images: list):
    """The matplotlib Figure of the grid; `images`: GeneratedImage objects of the request (missing cells blank)."""
    return _draw(request, images)[0]


def _draw(request: GenerationRequest, images: list) -> tuple[Any, dict[str, Any]]:
    from matplotlib.figure import Figure

    use_cjk_fallback()  # a Korean (CJK) prompt in the title renders, as in the image grid (fluxnb.ui.display)
    rows, columns = grid_layout(request)
    by_key = {_key(image.metadata): image for image in images}
    axes_names = [axis for axis, _ in request.sweep]
    figure = Figure(figsize=(CELL_INCHES * len(columns) + 1.6, CELL_INCHES * len(rows) + 1.0), dpi=100,
                    layout="constrained")
    grid = figure.subplots(len(rows), len(columns), squeeze=False)
    cells = []
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            ax = grid[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            coordinates = {**{k: v for k, v in row.items() if k not in ("prompt", "seed")}, **column}
            image = by_key.get((row["prompt"], row["seed"], tuple(sorted(coordinates.items()))))
            if image is not None:
                ax.imshow(image.image)
                cells.append({"row": r, "column": c, "file": Path(image.path).name if image.path else None})
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            if r == 0 and axes_names:
                ax.set_title(f"{axes_names[0]} = {_value(column[axes_names[0]])}", fontsize=9)
            if c == 0:
                label = [f"seed {row['seed']}"]
                if len(axes_names) > 1:
                    label.insert(0, f"{axes_names[1]} = {_value(row[axes_names[1]])}")
                if len(request.prompts) > 1:
                    label.insert(0, textwrap.shorten(row["prompt"], 24, placeholder="…"))
                ax.set_ylabel("\n".join(label), fontsize=8)
    title = " × ".join(axes_names) or "seeds"
    figure.suptitle(f"sweep: {title}\n{textwrap.shorten(request.prompts[0], 80, placeholder='…')}", fontsize=10)
    return figure, {"rows": len(rows), "columns": len(columns), "cells": cells}


def save_sweep_grid(request: GenerationRequest, images: list, run_dir: str | Path) -> Path:
    """Draw the grid and write it atomically into the run folder; its layout rides in a PNG text chunk."""
    figure, layout = _draw(request, images)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={PNG_LAYOUT_KEY: json.dumps(layout, ensure_ascii=False)})
    target = Path(run_dir) / GRID_FILE
    atomic_write_bytes(target, buffer.getvalue())
    return target


def read_grid_layout(path: str | Path) -> dict[str, Any]:
    """The rows, columns and cells written by save_sweep_grid."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[PNG_LAYOUT_KEY])  # type: ignore[attr-defined]
