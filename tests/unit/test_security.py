"""Secrets and paths: a token in the environment never reaches anything fluxnb writes or prints; parameter
files are read with the safe YAML loader; parameters cannot point writes outside the run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fluxnb
from fluxnb.runs.runner import read_parameters_file, run_notebook

pytestmark = pytest.mark.stack  # in both lanes: the hub's token lookup (huggingface_hub 0.x and 2.x)

FAKE_TOKEN = "hf_fluxnbFAKEtoken0123456789abcdefXYZ"


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fluxnb.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_a_planted_token_is_never_written_or_printed(outputs_dir: Path, tmp_path: Path):
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN}
    transcripts = [
        run_cli("generate", "--prompt", "a fox", "--steps", "2", env=env),
        run_cli("run", "01_text_to_image", "-p", "steps", "2", env=env),
        run_cli("doctor", "--model", "flux-dev", env=env),
        run_cli("doctor", "--model", "flux-dev", "--json", env=env),
    ]
    assert transcripts[0].returncode == 0, transcripts[0].stderr
    assert transcripts[1].returncode == 0, transcripts[1].stderr
    written = [p for p in outputs_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in written) and any(p.suffix == ".png" for p in written)
    for path in written:
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    for done in transcripts:
        assert FAKE_TOKEN not in done.stdout + done.stderr


def test_parameter_files_use_the_safe_loader(tmp_path: Path):
    marker = tmp_path / "pwned"
    params = tmp_path / "batch.yaml"
    params.write_text(f"prompt: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(fluxnb.FluxnbError, match="batch.yaml: YAML syntax error"):
        read_parameters_file(params)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["output_dir", "resume"])
def test_parameters_cannot_choose_where_runs_write(name, tmp_path: Path, outputs_dir: Path):
    with pytest.raises(fluxnb.FluxnbError, match=f"parameter '{name}' is set by fluxnb run itself"):
        run_notebook("01_text_to_image", {name: str(tmp_path / "elsewhere")})
    assert not (tmp_path / "elsewhere").exists() and not outputs_dir.exists()


def test_job_names_cannot_escape_the_outputs_folder(outputs_dir: Path):
    run = fluxnb.RunFolder.create("../../etc/evil")
    assert run.path.parent == outputs_dir
    assert ".." not in run.path.name and "/" not in run.path.name
