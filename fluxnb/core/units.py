"""Units every layer shares: bytes shown in the unit that reads best, and FLUX's image-side rule.

One formatter and one size check, so that the load report, the doctor, the charts and the bench agree.
"""

from __future__ import annotations

GIB = 2**30
MIB = 2**20
BYTE_UNITS = (("GiB", GIB), ("MiB", MIB), ("KiB", 2**10), ("B", 1))
SIZE_MULTIPLE = 16  # FLUX: the VAE downsamples by 8 and the transformer packs 2x2 latent patches


def byte_unit(n: float, smallest: str = "B") -> tuple[str, int]:
    """The largest unit that `n` bytes reach (never below `smallest`): 3e9 -> ("GiB", 2**30)."""
    allowed = BYTE_UNITS[: [u for u, _ in BYTE_UNITS].index(smallest) + 1]
    return next(((u, s) for u, s in allowed if n >= s), allowed[-1])


def human_bytes(n: float, unit: str | None = None, *, with_unit: bool = True) -> str:
    """1.23 GiB / 45.6 MiB / 789 KiB / 12 B: tiny and full-size models in one table; `unit` fixes the unit."""
    unit, scale = (unit, dict(BYTE_UNITS)[unit]) if unit else byte_unit(n)
    text = f"{n:g}" if scale == 1 else f"{n / scale:.2f}"
    return f"{text} {unit}" if with_unit else text


def is_image_side(value: int) -> bool:
    """Whether a width or height suits FLUX: a positive multiple of SIZE_MULTIPLE."""
    return value > 0 and value % SIZE_MULTIPLE == 0
