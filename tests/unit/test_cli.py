"""The `fluxnb` command as a user types it: real subprocesses, real messages on the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fluxnb
from fluxnb.runs.runner import parse_cli_value


def fluxnb_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fluxnb.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_generate_writes_a_run_folder(outputs_dir: Path):
    done = fluxnb_cli("generate", "--prompt", "a red fox", "--prompt", "a cat", "--seed", "11", "--steps", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("NOTE: this run uses flux-tiny, the embedded tiny FLUX with RANDOM WEIGHTS")
    assert any(line.startswith("model: flux-tiny") and "no CUDA GPU" in line for line in lines[:6])
    run_dir = Path(done.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    assert run_dir.parent == outputs_dir
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete"
    assert [(i["prompt"], i["seed"]) for i in manifest["images"]] == [("a red fox", 11), ("a cat", 11)]
    assert manifest["load_report"]["model"] == "flux-tiny"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "1000", "--model", "flux-dev-bnb-8bit"], "parameter `width`: 1000 is not a multiple of 16"),
        (["--steps", "0"], "parameter `steps`: must be between 1 and 50"),
        (["--model", "flux-dev-bnb-8bit", "--negative-prompt", "blurry"], "parameter `negative_prompt`"),
        (["--model", "flux-schnell"], "parameter `model`: 'flux-schnell' is not defined"),
        (["--init-image", "no/such/file.png"], "parameter `init_image`: 'no/such/file.png' does not exist"),
    ],
)
def test_generate_bad_input_exits_2_with_the_message(args, message, outputs_dir: Path):
    done = fluxnb_cli("generate", "--prompt", "a fox", *args)
    assert done.returncode == 2
    assert f"fluxnb: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())  # refused before anything was written


def test_empty_prompt_and_model_that_cannot_run_here(outputs_dir: Path):
    done = fluxnb_cli("generate", "--prompt", "")
    assert done.returncode == 2 and "parameter `prompt`: is empty" in done.stderr
    done = fluxnb_cli("generate", "--prompt", "a fox", "--model", "flux-dev-bnb-8bit")
    assert done.returncode == 1
    assert "needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    manifest = fluxnb.read_manifest(next(outputs_dir.iterdir()))
    assert manifest["status"] == "failed" and "needs a CUDA GPU" in manifest["error"]


def test_broken_model_config_is_reported_with_the_line(tmp_path: Path):
    config = tmp_path / "model_config.yaml"
    config.write_text("models:\n  flux-tiny: {id: x\n", encoding="utf-8")
    done = fluxnb_cli("generate", "--prompt", "a fox", "--config", str(config))
    assert done.returncode == 2
    assert f"fluxnb: error: {config} is not a valid fluxnb model config" in done.stderr
    assert "YAML syntax error at line 3" in done.stderr


def test_run_refuses_unknown_parameter_names_and_files():
    done = fluxnb_cli("run", "no_such_notebook")
    assert done.returncode == 2 and "notebook 'no_such_notebook' not found" in done.stderr
    done = fluxnb_cli("run", "01_text_to_image", "-f", "missing.yaml")
    assert done.returncode == 2 and "parameters file missing.yaml does not exist" in done.stderr


@pytest.mark.parametrize(
    ("text", "value"),
    [("28", 28), ("3.5", 3.5), ("-2", -2), ("1e3", 1000.0), ("null", None), ("None", None), ("True", True),
     ("false", False), ("[a, b]", "[a, b]"), ("a cat: cute", "a cat: cute"), ("a red fox", "a red fox"), ("", ""),
     ("a poster #1 of the series", "a poster #1 of the series"), ("&word and *alias", "&word and *alias"),
     ("nan", "nan"), ("'quoted'", "'quoted'")],
)
def test_p_values_reach_the_notebook_as_typed(text, value):
    """-p as papermill's -p: YAML used to drop everything from ` #` and an `&anchor`."""
    assert parse_cli_value(text) == value


@pytest.mark.parametrize(("text", "value"), [("[a, b]", ["a", "b"]), ("{steps: [20, 28]}", {"steps": [20, 28]}),
                                             ("28", 28)])
def test_y_values_are_yaml(text, value):
    from fluxnb.runs.runner import parse_yaml_value

    assert parse_yaml_value(text) == value


def test_a_prompt_with_a_hash_reaches_the_images_as_typed(outputs_dir: Path):
    prompt = "a poster #1 of the series & more"
    done = fluxnb_cli("run", "01_text_to_image", "-p", "prompt", prompt, "-p", "steps", "1", "-y", "loras", "[]")
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    assert [e["prompt"] for e in fluxnb.read_manifest(run_dir)["images"]] == [prompt]


def test_run_says_first_which_model_runs_and_makes_only_the_images_asked_for(outputs_dir: Path):
    done = fluxnb_cli("run", "01_text_to_image", "-p", "steps", "1", "-p", "num_images", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("NOTE: this run uses flux-tiny, the embedded tiny FLUX with RANDOM WEIGHTS")
    assert any(line.startswith("model: flux-tiny (fluxnb/flux-tiny) - auto: no CUDA GPU") for line in lines)
    run_dir = Path(lines[-1].removeprefix("run folder: "))
    assert run_dir.parent == outputs_dir
    assert {p.suffix for p in run_dir.iterdir() if p.is_file()} == {".png", ".json", ".ipynb", ".lock"}
    # headless: the 2 images asked for, nothing more (section 8's lesson sweep runs in JupyterLab only)
    assert len(list(run_dir.rglob("*.png"))) == 2 and not [p for p in run_dir.iterdir() if p.is_dir()]
    assert len(fluxnb.read_manifest(run_dir)["images"]) == 2
