"""Facts that only feed a report never break the main path: a failing lookup becomes "unknown (why)".

The attention kernel in the load report, the NVIDIA driver and the GPU interconnect in the doctor, the compile
counters in each image's metadata are read from library internals or system tools that change between releases. A
model load or an image must not fail because one of them moved: `report_only` runs such a lookup and turns any
exception into its fallback, "unknown (<what>: <the error>)" by default, said once in the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
Lookup = Callable[..., T]


def unknown(what: str, exc: BaseException) -> str:
    """The text a report shows for a lookup that failed: what it was, and the error's first line."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unknown ({what} failed: {type(exc).__name__}{': ' + first[:160] if first else ''})"


def report_only(what: str, fallback: Callable[[str], Any] | None = None) -> Callable[[Lookup], Lookup]:
    """Decorate a lookup that only feeds a report: an exception returns `fallback(reason)` (default: the reason,
    "unknown (...)") instead of propagating."""

    def decorate(lookup: Lookup) -> Lookup:
        @functools.wraps(lookup)
        def guarded(*args: Any, **kwargs: Any) -> T:
            try:
                return lookup(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the point: no report-only lookup may break the main path
                reason = unknown(what, exc)
                logger.warning("fluxnb: %s", reason)
                return reason if fallback is None else fallback(reason)

        return guarded

    return decorate
