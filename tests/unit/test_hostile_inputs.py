"""The third round of hostile input (issue 22): options a resume would ignore, a repeated sweep axis, a manifest
without its job, a LoRA that is a pipe, `fluxnb diagnose` on a pipe nobody writes, uploads under the same name,
a lock file that is a folder. Each through the real command or widget, with the real message."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

import fluxnb
from fluxnb.runs.outputs import LOCK_FILE, MANIFEST
from tests.cli_errors import refused


def generate_folder(tmp_path: Path, manifest: dict) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return run


@pytest.mark.parametrize("option", [
    ["--sweep", "steps=1,2"], ["--lora", "style.safetensors"], ["--cache", "taylorseer@2"], ["--fuse-loras"],
    ["--checkpoint", "/somewhere"], ["--output-dir", "elsewhere"], ["--model", "flux-tiny"], ["--prompt", "x"],
    ["--seed", "5"], ["--init-image", "a.png"], ["--max-sequence-length", "64"],
])
def test_every_request_option_is_refused_with_resume(capsys, tmp_path: Path, option: list[str]):
    """One rule: the parser's request group. --sweep, --lora, --cache and --fuse-loras were silently ignored."""
    run = generate_folder(tmp_path, {"job": "generate", "images": []})
    refused(capsys, ["generate", "--resume", str(run), *option],
            f"--resume finishes the run's original request exactly; {option[0]} would change it, so it is refused.",
            "Fix: fluxnb generate --resume")


def test_engine_options_stay_allowed_with_resume(capsys, tmp_path: Path):
    run = generate_folder(tmp_path, {"job": "generate", "images": []})  # no model or parameters recorded yet
    refused(capsys, ["generate", "--resume", str(run), "--gpus", "2"], "holds no generate parameters to resume")


@pytest.mark.parametrize(("ray", "why"), [([], "no --ray"),
                                          (["--ray", "local"], "--ray local ends its cluster with the command")])
def test_keep_warm_without_a_cluster_that_outlives_the_command_is_refused_before_a_run_folder(capsys, tmp_path: Path,
                                                                                               ray, why):
    refused(capsys, ["generate", "--model", "flux-tiny", "--prompt", "x", "--output-dir", str(tmp_path), *ray,
                     "--keep-warm", "60"], "parameter `keep-warm`: keeps Ray actors loaded after the batch", why,
            "Fix: start a cluster once (ray start --head) and pass --ray auto --keep-warm SECONDS")
    assert not list(tmp_path.iterdir())


def test_keep_warm_of_no_time_is_refused(capsys, tmp_path: Path):
    refused(capsys, ["generate", "--model", "flux-tiny", "--prompt", "x", "--output-dir", str(tmp_path), "--ray",
                     "auto", "--keep-warm", "0"], "must be a number of seconds above 0, got 0.0", "--keep-warm 600")


def test_a_manifest_without_its_job_is_named(capsys, tmp_path: Path):
    run = generate_folder(tmp_path, {"images": []})
    err = refused(capsys, ["generate", "--resume", str(run)], "manifest names no job")
    assert "None" not in err  # it used to print "fluxnb run None --resume"


def test_a_repeated_sweep_axis_is_refused(capsys):
    refused(capsys, ["generate", "--model", "flux-tiny", "--prompt", "x", "--sweep", "steps=1,2", "--sweep",
                     "steps=4"], "parameter `sweep`: axis 'steps' is given twice (--sweep 'steps=4')",
            "Fix: give all its values once: --sweep steps=V1,V2,...")


def test_a_lora_that_is_a_pipe_is_named_as_a_pipe(capsys, tmp_path: Path):
    fifo = tmp_path / "style.safetensors"
    os.mkfifo(fifo)
    refused(capsys, ["generate", "--model", "flux-tiny", "--prompt", "x", "--lora", str(fifo)],
            f"LoRA file {str(fifo)!r}: is a pipe or socket, not a file")


def test_diagnose_gives_up_on_a_pipe_nobody_writes(tmp_path: Path):
    fifo = tmp_path / "trace"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "diagnose", str(fifo), "--wait", "0.5"],
                          capture_output=True, text=True, timeout=60)  # it used to wait forever
    assert done.returncode == 2
    assert f"{fifo} is a named pipe and no program wrote into it within 0.5 s" in done.stderr


def test_diagnose_still_reads_a_pipe_that_is_written(tmp_path: Path):
    fifo = tmp_path / "trace"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-m", "fluxnb.cli", "diagnose", str(fifo)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    with open(fifo, "w", encoding="utf-8") as writer:  # blocks until the reader has opened it
        writer.write("RuntimeError: No GPU found. A GPU is needed for quantization.\n")
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert "bnb-no-gpu" in out


def test_a_lock_file_that_is_a_folder_is_named(capsys, tmp_path: Path):
    run = generate_folder(tmp_path, {"job": "generate", "images": [], "model": {"name": "flux-tiny"},
                                     "parameters": {"prompts": ["a fox"]}})
    (run / LOCK_FILE).mkdir()
    err = refused(capsys, ["generate", "--resume", str(run)],
                  f"the run folder's lock file {run / LOCK_FILE} is a folder, not a file.")
    assert "chmod" not in err  # not a permissions problem


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_of_the_same_name_never_replace_each_other(tiny_model):
    from fluxnb.core.packaged import SAMPLE_INIT_IMAGE
    from fluxnb.ui.widgets import image_to_image_ui

    run = fluxnb.RunFolder.create("uploads")
    form = image_to_image_ui(tiny_model, run, SAMPLE_INIT_IMAGE).form

    def upload(name: str, data: bytes) -> Path:
        form.upload.value = ({"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
                              "last_modified": datetime.now(timezone.utc)},)
        return Path(form.init_image.value)

    red, blue = _png("red"), _png("blue")
    first = upload("photo.png", red)
    second = upload("photo.png", blue)  # another picture under a taken name
    again = upload("photo.png", red)  # the same picture again: the same file
    assert (first.name, second.name, again) == ("photo.png", "photo-2.png", first)
    assert first.read_bytes() == red and second.read_bytes() == blue
    dotdot = upload("..", blue)  # used to end in a raw OSError
    assert dotdot.parent == run.path / "inputs" and dotdot.name == "upload.png" and dotdot.read_bytes() == blue


def test_a_shard_is_read_once_whatever_the_batch(tiny_spec):
    """The data-parallel shard filter built a set of the shard for every item: quadratic in the batch (32,000 items
    took 15.3 s instead of 0.27 s). Counted, not timed: the shard is read once."""
    from fluxnb.runs.generation import shard_points

    class Counted(list):
        reads = 0

        def __iter__(self):
            Counted.reads += 1
            return super().__iter__()

    request = fluxnb.make_request(tiny_spec, prompt=[f"p {i}" for i in range(100)], num_images=64)
    points = request.points()
    shard = Counted(range(1, len(points), 2))
    mine = shard_points(points, shard)
    assert [p["index"] for p in mine] == list(shard) and Counted.reads == 2  # once to filter, once here to compare
