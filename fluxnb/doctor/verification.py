"""Notebook 00's verification: the guide's memory picture, the weight formats, one small image, the verdict.

Built on the doctor (fluxnb.doctor.checks: is this machine ready?) and the loader's LoadReport; the verdict is kept in
`verdict.json` of the run folder at every step, so that a failed cell still leaves "not ready, because ...".
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_json
from ..core.units import byte_unit, human_bytes
from ..knowledge.diagnosis import diagnose, explain_errors
from ..models.backends import get_backend
from ..models.load_report import LoadReport
from ..models.loading import quantization_problem
from ..models.params import GenerationRequest, make_request
from ..runs.outputs import RunFolder
from .checks import FAIL, OK, Check, DoctorReport

# Where the ~21 GB of the guide's 8-bit FLUX.1-dev on the L4 go (knowledge entry bnb-8bit-prequantized), in GB as
# the guide's authors measured them.
GUIDE_MEMORY_GB = {"transformer": 12.0, "text_encoder_2": 5.0, "vae": 1.0, "text_encoder": 1.0}
GUIDE_LABELS = {"transformer": "transformer\n(8-bit)", "text_encoder_2": "T5\n(8-bit)", "vae": "VAE",
                "text_encoder": "CLIP"}
MEASURED_LABELS = {"transformer": "transformer", "text_encoder_2": "T5", "vae": "VAE", "text_encoder": "CLIP"}
VERDICT_FILE = "verdict.json"


def memory_figure(components):
    """Bar charts: the guide's per-component memory of 8-bit FLUX.1-dev on the L4, beside what was measured here.

    `components` is LoadReport.components. Two panels with their own units, because the tiny model is a few MB.
    """
    import matplotlib.pyplot as plt

    names = list(GUIDE_MEMORY_GB)
    measured = {c.name: c for c in components}
    unit, scale = byte_unit(max((c.bytes for c in components), default=0))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    bars = left.bar([GUIDE_LABELS[n] for n in names], [GUIDE_MEMORY_GB[n] for n in names], color="#8c8c8c")
    left.bar_label(bars, fmt="~%g GB")
    left.set_title(f"the guide: FLUX.1-dev 8-bit on the L4 (~{sum(GUIDE_MEMORY_GB.values()):g} GB)")
    left.set_ylabel("GB")
    values = [measured[n].bytes / scale if n in measured else 0 for n in names]
    # Measured bars carry the format actually loaded (e.g. "T5\nfp32" for the tiny model), not the guide's "(8-bit)".
    bars = right.bar([f"{MEASURED_LABELS[n]}\n{measured[n].format if n in measured else 'absent'}" for n in names],
                     values, color="#3b7dd8")
    right.bar_label(bars, fmt="%.2f")
    total = sum(c.bytes for c in components) / scale
    right.set_title(f"measured after loading here ({total:.2f} {unit} in all)")
    right.set_ylabel(unit)
    fig.tight_layout()
    plt.close(fig)
    return fig


def quantization_rows(report: LoadReport) -> list[Check]:
    """Per component: the weight format found vs what the model type's backend record promises (the loader's rule)."""
    expected = get_backend(report.type).expected_formats
    rows = []
    for c in report.components:
        want = expected.get(c.name)
        found = f"{c.cls}: {c.format} on {c.device}, {human_bytes(c.bytes)}, {c.quantized_layers} quantized / " \
                f"{c.linear_layers} plain Linear layers"
        if want is None:
            rows.append(Check(c.name, OK, found + " (not quantized by this model type)"))
            continue
        problem = quantization_problem(c, want)
        rows.append(Check(c.name, FAIL if problem else OK, found + f"; promised {' or '.join(want)}",
                          f"{problem}: the checkpoint is not the one model_config.yaml names, or the quantization "
                          "library failed" if problem else ""))
    return rows


def verification_request(spec, prompt: str = "a photo of a cat sitting on a red chair in the sun") -> GenerationRequest:
    """One small image: at most 4 steps and 512x512, so the check takes seconds on a GPU."""
    width, height = (min(v, 512) for v in spec.params.default_size)
    return make_request(spec, prompt=prompt, seed=0, steps=min(spec.params.default_steps, 4), width=width,
                        height=height, num_images=1)


class SetupVerification:
    """The steps of notebook 00 and their verdict, kept in `verdict.json` of the run folder at every step.

    `with verification.step("load"): ...` records the step; on failure it records the error with its
    diagnosis, writes a "not ready, because ..." verdict, and re-raises (the cell fails). `finish()` writes
    the final verdict: ready only when the doctor found no blocker and every step passed.
    """

    def __init__(self, run: RunFolder, doctor: DoctorReport):
        self.run = run
        self.doctor = doctor
        self.steps: dict[str, dict[str, Any]] = {}
        self.reasons = [f"doctor: {r.check}: {r.found}" for r in doctor.blocking]
        run.record(doctor=doctor.to_dict())
        self._write(final=False)

    @property
    def path(self) -> Path:
        return Path(self.run.path) / VERDICT_FILE

    def _write(self, final: bool) -> dict[str, Any]:
        ready = final and not self.reasons and all(s["status"] == "ok" for s in self.steps.values())
        if ready:
            text = (f"ready: {self.doctor.model} loads with the weight formats its type promises and generates on "
                    "this machine")
            if self.doctor.model_type == "flux-tiny":
                text += (" (flux-tiny has random weights: this proves the workflow, not FLUX.1-dev; the doctor's "
                         "'models on this machine' row says which real models can run here)")
        elif self.reasons:
            text = "not ready, because " + "; ".join(self.reasons)
        else:
            text = "not ready, because the verification has not finished"
        verdict = {"ready": ready, "verdict": text, "model": self.doctor.model, "model_type": self.doctor.model_type,
                   "reasons": list(self.reasons), "steps": self.steps, "final": final}
        atomic_write_json(self.path, verdict)
        return verdict

    @contextmanager
    def step(self, name: str):
        try:
            with explain_errors():
                yield
        except Exception as exc:
            self.steps[name] = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
                                "known_issues": [d.entry.id for d in diagnose(exc)]}
            self.reasons.append(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            self._write(final=True)
            self.run.record(verdict=self.verdict_dict(), status="failed")
            raise
        self.steps[name] = {"status": "ok"}
        self._write(final=False)

    def fail(self, name: str, reason: str) -> None:
        """Record a check that found a problem without an exception (e.g. a blank image)."""
        self.steps[name] = {"status": "failed", "error": reason}
        self.reasons.append(f"{name}: {reason}")

    def verdict_dict(self) -> dict[str, Any]:
        return json.loads(self.path.read_text(encoding="utf-8"))

    def finish(self) -> dict[str, Any]:
        verdict = self._write(final=True)
        self.run.record(verdict=verdict)
        self.run.finish("complete" if verdict["ready"] else "not ready")
        return verdict


def read_verdict(run_dir: str | Path) -> dict[str, Any]:
    """The verdict notebook 00 wrote into its run folder."""
    return json.loads((Path(run_dir) / VERDICT_FILE).read_text(encoding="utf-8"))
