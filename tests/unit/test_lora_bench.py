"""scripts/lora_bench.py runs end to end on the tiny model (the GPU run uses the full-size synthetic checkpoints)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO_ROOT


def test_lora_bench_smoke_run_on_the_tiny_model(tmp_path: Path):
    out = tmp_path / "lora-bench.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "lora_bench.py"), "--model", "flux-tiny",
                           "--size", "64x64", "--steps", "1", "--images", "1", "--rank", "2", "--out", str(out),
                           "--lora-dir", str(tmp_path / "adapters")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["device"]["device"] == "cpu" and report["versions"]["peft"]
    (result,) = report["results"]
    assert "error" not in result, result
    assert result["load_seconds"] > 0 and result["lora_load_seconds"] > 0
    assert result["no_lora"]["lora_fused"] is None and result["lora_unfused"]["lora_fused"] is False
    assert result["lora_fused"]["lora_fused"] is True and result["lora_fused"]["seconds_per_image"] > 0
    assert (tmp_path / "adapters" / "synthetic_r2_1.safetensors").is_file()
