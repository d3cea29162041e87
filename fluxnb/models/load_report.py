"""What a load produced, per component: class, weight format, device, real bytes; shown as text and HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from ..core.footprint import ComponentFootprint
from ..core.units import human_bytes


@dataclass
class LoadReport:
    """The load report every `load_model` returns (printed by the CLI, shown in notebooks, saved in manifests).

    Attributes:
        model / model_id / type: the model entry's name, checkpoint id and backend type.
        checkpoint: where the weights were read (hub id or local folder).
        weights: "hub checkpoint", "local checkpoint" or the tiny model's "random weights" label.
        device / offload: where the pipeline runs and the CPU offload mode ("none", "model", "sequential").
        load_seconds: wall time of the load, verification included.
        components: per-component footprint (class, format, device, bytes, quantized/plain layer counts).
        notes: what the load did that a user should know (compile, offload, fallbacks, reuse).
        compile_mode: torch.compile's mode for the compiled blocks (None: default mode, or not compiled).
        compile_cache: where the persistent compile cache is and whether it was warm before the load
            (fluxnb.models.compile_cache.CompileCacheState.to_dict()); None when nothing is compiled.
        cache: the cached mode's setting (fluxnb.models.step_cache.CacheSetting.to_dict()); None when off.
        attention: the attention backend the transformer runs (fluxnb.models.attention).
    """

    model: str
    model_id: str
    type: str
    checkpoint: str
    weights: str
    device: str
    offload: str
    load_seconds: float
    components: list[ComponentFootprint]
    notes: list[str] = field(default_factory=list)
    compile_mode: str | None = None
    compile_cache: dict | None = None
    cache: dict | None = None
    attention: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    def component(self, name: str) -> ComponentFootprint:
        return next(c for c in self.components if c.name == name)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_id": self.model_id,
            "type": self.type,
            "checkpoint": self.checkpoint,
            "weights": self.weights,
            "device": self.device,
            "offload": self.offload,
            "load_seconds": round(self.load_seconds, 3),
            "total_bytes": self.total_bytes,
            "components": [c.to_dict() for c in self.components],
            "notes": list(self.notes),
            "compile_mode": self.compile_mode,
            "compile_cache": self.compile_cache,
            "cache": self.cache,
            "attention": self.attention,
        }

    def __str__(self) -> str:
        lines = [
            f"{self.model} ({self.model_id}, type {self.type}): {self.weights}",
            f"loaded in {self.load_seconds:.1f} s on {self.device}, offload: {self.offload}"
            + (f", attention: {self.attention}" if self.attention else ""),
        ]
        for c in self.components:
            lines.append(f"  {c.name:<15} {c.cls:<24} {c.format:<22} {c.device:<10} {human_bytes(c.bytes):>11}")
        lines.append(f"  {'total':<15} {'':<24} {'':<22} {'':<10} {human_bytes(self.total_bytes):>11}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{c.name}</td><td>{c.cls}</td><td>{html.escape(c.format)}</td><td>{c.device}</td>"
            f"<td style='text-align:right'>{human_bytes(c.bytes)}</td></tr>"
            for c in self.components
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>{html.escape(self.model)}</b> ({html.escape(self.model_id)}, type {self.type}): "
            f"{html.escape(self.weights)}; loaded in {self.load_seconds:.1f} s on {self.device}, "
            f"offload: {self.offload}</p>"
            "<table><tr><th>component</th><th>class</th><th>format</th><th>device</th><th>memory</th></tr>"
            f"{rows}<tr><td><b>total</b></td><td></td><td></td><td></td>"
            f"<td style='text-align:right'><b>{human_bytes(self.total_bytes)}</b></td></tr></table>"
            + (f"<ul>{notes}</ul>" if notes else "")
        )
