"""Pictures for people: an image grid with captions, and bar charts of time and peak memory per image.

Both return a matplotlib Figure and work headless (Agg). The figure is closed in pyplot before it is
returned, so a notebook shows it exactly once (as a cell's last expression, or with `display(fig)`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core.units import byte_unit
from ..models.backends import get_backend
from ..runs.generation import GeneratedImage, compile_seconds, peak_memory_bytes
from .fonts import use_cjk_fallback


def shown_path(path) -> str:
    """A file or folder as a person reads it: relative to the current folder when inside it (outputs/...)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def model_banner(choice) -> str:
    """The first lines of a run: which model runs and why; plainly, when the pictures will be noise."""
    lines = []
    if get_backend(choice.spec.type).embedded:
        lines += [
            f"NOTE: this run uses {choice.spec.name}, the embedded tiny FLUX with RANDOM WEIGHTS:",
            "      its pictures are noise. It proves the workflow end to end (validation, loading,",
            "      generation, metadata, outputs), not image quality. On a CUDA GPU with hub access,",
            "      model='auto' runs the real FLUX.1-dev instead.",
        ]
    lines.append(str(choice))
    return "\n".join(lines)


def _image_and_metadata(item: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(item, GeneratedImage):
        return item.image, item.metadata
    if hasattr(item, "size") and hasattr(item, "mode"):  # a PIL image
        return item, {}
    raise TypeError(f"expected a GeneratedImage or a PIL image, got {type(item).__name__}")


def caption(metadata: dict[str, Any], width: int = 32) -> str:
    """Prompt (wrapped, shortened), seed and seconds of one image."""
    if not metadata:
        return ""
    prompt = textwrap.shorten(str(metadata.get("prompt", "")), width=width * 2, placeholder="...")
    lines = textwrap.wrap(prompt, width=width) or [""]
    facts = [f"seed {metadata['seed']}"] if "seed" in metadata else []
    if "seconds" in metadata:
        compiled = compile_seconds(metadata)
        facts.append(f"{metadata['seconds']:.2f} s" + (f" (compile {compiled:.1f} s)" if compiled else ""))
    if metadata.get("strength") is not None:
        facts.append(f"strength {metadata['strength']:g}")  # 0.6, not a slider's 0.6000000000000001
    return "\n".join([*lines, ", ".join(facts)])


MAX_GRID_IMAGES = 16  # a grid of a long batch shows its first images; every image stays in the run folder


def show_grid(
    images: Sequence[Any],
    titles: Sequence[str] | None = None,
    columns: int = 4,
    cell_inches: float = 3.0,
    limit: int = MAX_GRID_IMAGES,
):
    """A grid of GeneratedImage (captioned with prompt, seed, seconds) or PIL images; returns the Figure.

    At most `limit` images are drawn (the pixels of a saved image are read from its PNG only here), so that the
    figure of a 1000-image batch costs what a 16-image one does; the title says how many were left out.
    Captions in Korean, Chinese or Japanese render with Noto Sans CJK (fluxnb.ui.fonts).
    """
    import matplotlib.pyplot as plt

    use_cjk_fallback()

    if not images:
        raise ValueError("show_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    total = len(images)
    items = [_image_and_metadata(item) for item in list(images)[:limit]]
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(cell_inches * columns, (cell_inches + 0.6) * rows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(items):
            fig.delaxes(ax)
            continue
        image, metadata = items[i]
        ax.imshow(image)
        ax.set_title(titles[i] if titles is not None else caption(metadata), fontsize=9)
        ax.axis("off")
    if total > len(items):
        fig.suptitle(f"the first {len(items)} of {total} images (all {total} are in the run folder)", fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # shown once, by whoever displays the returned figure
    return fig


def plot_timings(images: Sequence[GeneratedImage]):
    """Two bar charts: seconds per image and peak memory per image (GPU allocated, or CPU peak RSS)."""
    import matplotlib.pyplot as plt

    if not images:
        raise ValueError("plot_timings needs at least one generated image")
    metadata = [_image_and_metadata(item)[1] for item in images]
    if not all(metadata):
        raise TypeError("plot_timings needs GeneratedImage objects (their metadata holds seconds and memory)")
    labels = [f"#{m['index']}\nseed {m['seed']}" for m in metadata]
    seconds = [m["seconds"] for m in metadata]
    memory = [peak_memory_bytes(m) for m in metadata]
    unit, scale = byte_unit(max(memory, default=0), smallest="MiB")
    kind = metadata[0]["peak_memory"].get("kind", "")
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(min(24.0, max(8.0, 1.2 * len(images) + 4)), 3.5))
    positions = range(len(images))
    bars = ax_time.bar(positions, seconds, color="tab:blue")
    ax_time.bar_label(bars, fmt="%.2f")
    compiled = [compile_seconds(m) for m in metadata]
    if any(compiled):  # the first image of a compiled model at a size pays torch.compile once
        ax_time.bar(positions, compiled, color="tab:red", label="of which torch.compile (first call)")
        ax_time.legend(fontsize=8)
    ax_time.set_title(f"seconds per image ({metadata[0]['steps']} steps)")
    ax_time.set_ylabel("s")
    bars = ax_mem.bar(positions, [b / scale for b in memory], color="tab:orange")
    ax_mem.bar_label(bars, fmt="%.2f" if unit == "GiB" else "%.0f")
    ax_mem.set_title(f"peak memory per image ({kind})" if kind else "peak memory per image")
    ax_mem.set_ylabel(unit)
    for ax in (ax_time, ax_mem):
        ax.set_xticks(list(positions), labels, fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (for widgets and files; works without a display)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buffer.getvalue()


def timing_summary(images: Sequence[GeneratedImage]) -> str:
    """One line per image: file, seed, seconds, seconds per step, peak memory."""
    lines = []
    for item in images:
        m = item.metadata
        memory = peak_memory_bytes(m)
        unit, scale = byte_unit(memory, smallest="MiB")
        where = item.path or "(not saved)"
        compiled = compile_seconds(m)
        lines.append(f"{where}: seed {m['seed']}, {m['seconds']:.2f} s ({m['seconds_per_step']:.3f} s/step), "
                     f"peak memory {memory / scale:.2f} {unit}"
                     + (f"; includes {compiled:.1f} s of torch.compile (first image at this size)" if compiled else ""))
    return "\n".join(lines)


def progress_lines(request) -> Callable[[GeneratedImage], None]:
    """generate()'s `on_image` for notebooks: one printed line per image as soon as it is saved.

    A headless `fluxnb run --progress` streams these lines to the terminal while the notebook runs, so a long batch
    does not look hung; in JupyterLab they list the files as they appear.
    """
    total = len(request.items())
    done = 0

    def line(image: GeneratedImage) -> None:
        nonlocal done
        done += 1
        m = image.metadata
        print(f"image {done}/{total} saved: {image.path or '(not saved)'} (seed {m['seed']}, {m['seconds']:.2f} s)",
              flush=True)

    return line
