"""Many hosts, on one: a local Ray cluster on the CPU with two actors of the tiny model, real SIGKILLs of the actors'
processes mid-batch, and a resume on Ray. Ray is an optional extra (requirements/extras.txt: the default lane)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fluxnb
from fluxnb.runs.outputs import image_file_name
from tests.waiting import wait_for

pytest.importorskip("ray", reason="the ray extra is installed in the default test lane only (requirements/extras.txt)")

PROMPTS = ("a red fox", "a lighthouse", "a bowl of ramen")
BATCH = ["--steps", "12", "--width", "64", "--height", "64", "--num-images", "2", "--seed", "3"]


def cli(*args: str) -> subprocess.Popen:
    prompts = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    return subprocess.Popen([sys.executable, "-m", "fluxnb.cli", "generate", "--model", "flux-tiny", *prompts, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_pids(outputs_dir: Path) -> dict[int, int]:
    """worker -> pid, from the metadata of the PNGs written so far."""
    pids = {}
    for png in outputs_dir.glob("*-generate/*.png"):
        try:
            made_by = fluxnb.read_png_metadata(png)["parallel"]
        except Exception:  # a PNG being renamed into place
            continue
        pids[made_by["worker"]] = made_by["pid"]
    return pids


def test_ray_workers_killed_mid_batch_lose_nothing_and_a_resume_on_ray_finishes(outputs_dir):
    process = cli(*BATCH, "--ray", "local", "--gpus", "2")
    first = wait_for(lambda: worker_pids(outputs_dir), process)
    victim_worker, victim = next(iter(first.items()))
    os.kill(victim, signal.SIGKILL)  # one actor's process dies mid-batch: the other takes its item
    run_dir = next(outputs_dir.glob("*-generate"))
    seen = {p.name for p in run_dir.glob("*.png")}
    survivor = wait_for(lambda: next(((w, pid) for w, pid in worker_pids(outputs_dir).items() if w != victim_worker
                                      and {p.name for p in run_dir.glob("*.png")} - seen), None), process)
    os.kill(survivor[1], signal.SIGKILL)  # and then the last one: no worker left
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    assert "a Ray worker died" in out
    assert "image(s) of the batch are missing" in err and "2 Ray worker(s) died and no worker was left" in err
    assert f"fluxnb generate --resume {run_dir} --ray local" in err
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "incomplete"
    listed = sorted(entry["file"] for entry in manifest["images"])
    on_disk = sorted(p.name for p in run_dir.glob("*.png"))
    assert set(listed) <= set(on_disk) and len(listed) == len(set(listed))  # a PNG a kill orphaned is adopted later
    before = {name: (run_dir / name).stat().st_ino for name in on_disk}
    assert 2 <= len(before) < 6

    resume = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir), "--ray",
                             "local", "--gpus", "1"], capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete"
    assert sorted(entry["index"] for entry in manifest["images"]) == list(range(6))
    assert sorted(entry["file"] for entry in manifest["images"]) == sorted(p.name for p in run_dir.glob("*.png"))
    assert all(entry["file"] == image_file_name(entry) for entry in manifest["images"])
    assert {name: (run_dir / name).stat().st_ino for name in before} == before  # nothing made twice
    assert [launch["world_size"] for launch in manifest["parallel"]["launches"]] == [2, 1]
    assert {entry["parallel"]["mode"] for entry in manifest["images"]} == {"ray"}


def test_a_killed_command_leaves_no_ray_process_behind(outputs_dir):
    """`--ray local` starts a cluster for the run: when the command is SIGKILLed (no atexit runs), every process of
    that cluster (GCS, raylet, agents, actors) must end too, not linger and hold the CPU or GPU (issue 22)."""
    import psutil

    process = cli(*BATCH, "--ray", "local", "--gpus", "2")
    wait_for(lambda: worker_pids(outputs_dir), process)  # the cluster is up and its actors are making images
    cluster = psutil.Process(process.pid).children(recursive=True)
    assert any("raylet" in " ".join(child.cmdline()) for child in cluster)
    process.kill()
    process.communicate(timeout=60)
    _gone, alive = psutil.wait_procs(cluster, timeout=20)  # Ray's agents alone used to linger about 60 s
    assert not alive, [p.name() for p in alive]
