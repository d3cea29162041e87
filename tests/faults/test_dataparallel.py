"""Data parallel on the CPU with real processes: torchrun, 2 gloo ranks of the tiny model, a real SIGKILL of one
rank and of the owner, and resumes with another (and the same) number of processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

import fluxnb
from fluxnb.runs.outputs import LOCK_TOKEN_ENV, image_file_name
from fluxnb.runs.shards import PARTS_DIR
from tests.waiting import wait_for

SLOW = ["--steps", "12", "--width", "64", "--height", "64", "--num-images", "2", "--seed", "7"]
PROMPTS = ("a red fox", "a lighthouse", "a bowl of ramen")


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fluxnb.cli", "generate", "--model", "flux-tiny", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def prompt_args() -> list[str]:
    return [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]


def consistent(run_dir: Path) -> dict:
    """Every listed image is a complete PNG under the name its item gives, listed once; no stray temp files."""
    manifest = fluxnb.read_manifest(run_dir)
    listed = sorted(entry["file"] for entry in manifest["images"])
    assert listed == sorted(p.name for p in run_dir.glob("*.png")) and len(listed) == len(set(listed))
    assert all(entry["file"] == image_file_name(entry) for entry in manifest["images"])
    assert not list(run_dir.glob(".*.tmp"))
    for entry in manifest["images"]:
        assert fluxnb.read_png_metadata(run_dir / entry["file"]).get("parallel") == entry.get("parallel")
    return manifest


def rank_part_with_image(outputs_dir: Path, rank: int):
    """The part of `rank` once it lists an image (its pid is in it), else None."""
    for part in outputs_dir.glob(f"*-generate/{PARTS_DIR}/*-rank{rank}.json"):
        try:
            data = json.loads(part.read_text())
        except ValueError:
            continue
        if data.get("images"):
            return data
    return None


def test_a_killed_rank_loses_nothing_and_a_resume_with_one_process_finishes_exactly_the_rest(outputs_dir):
    process = cli(*prompt_args(), *SLOW, "--gpus", "2")
    victim = wait_for(lambda: rank_part_with_image(outputs_dir, 1), process)
    os.kill(victim["pid"], signal.SIGKILL)  # rank 1 dies after its first image; torchrun stops rank 0
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    assert "note: asked for 2 GPU(s), this host has no CUDA GPU: running 2 CPU process(es) (gloo)" in out
    run_dir = next(outputs_dir.glob("*-generate"))
    assert "image(s) of the batch are missing (item indexes" in err
    assert f"Fix: fluxnb generate --resume {run_dir} --gpus 2" in err
    manifest = consistent(run_dir)
    assert manifest["status"] == "incomplete"
    before = {entry["file"]: (run_dir / entry["file"]).stat().st_ino for entry in manifest["images"]}
    for entry in manifest["images"]:  # who made what: the item's shard of a 2-process gloo launch on the CPU
        made_by = entry["parallel"]
        assert made_by["rank"] == entry["index"] % 2 and made_by["world_size"] == 2
        assert made_by["backend"] == "gloo" and made_by["device_name"] == "cpu"
    assert 1 <= len(before) < 6
    process = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir), "--gpus",
                              "1"], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    manifest = consistent(run_dir)
    assert manifest["status"] == "complete"
    assert sorted(entry["index"] for entry in manifest["images"]) == list(range(6))
    assert {f: (run_dir / f).stat().st_ino for f in before} == before  # finished images untouched
    new = [entry for entry in manifest["images"] if entry["file"] not in before]
    assert len(new) == 6 - len(before) and all(entry["parallel"]["world_size"] == 1 for entry in new)
    assert [launch["world_size"] for launch in manifest["parallel"]["launches"]] == [2, 1]


def test_killing_the_whole_launch_leaves_parts_that_a_resume_merges_first(outputs_dir):
    # 9 items per rank: neither can finish its share while the other makes its first image, so both are orphaned
    # mid-batch (with 3 each, a rank on a loaded machine sometimes finished before the kill)
    process = cli(*prompt_args(), *SLOW, "--num-images", "6", "--gpus", "2", start_new_session=True)
    ranks = wait_for(lambda: all(rank_part_with_image(outputs_dir, r) for r in (0, 1))
                     and [rank_part_with_image(outputs_dir, r)["pid"] for r in (0, 1)], process)
    os.killpg(process.pid, signal.SIGKILL)  # the owner and torchrun; the ranks live in sessions of their own
    process.communicate(timeout=60)
    run_dir = next(outputs_dir.glob("*-generate"))
    # orphaned ranks see the owner's lock gone at their next step and stop
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in ranks), seconds=60, what="the orphaned ranks to stop")
    parts = [json.loads(p.read_text()) for p in (run_dir / PARTS_DIR).glob("*.json")]
    assert parts and all(part["status"] == "failed" and "OwnerGone" in part["error"] for part in parts), [
        (part["status"], part.get("error")) for part in parts]
    process = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir), "--gpus",
                              "2"], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    manifest = consistent(run_dir)
    assert sorted(entry["index"] for entry in manifest["images"]) == list(range(18))
    assert manifest["status"] == "complete"
    assert {r["launch"] for r in manifest["parallel"]["ranks"]} == {0, 1}  # the killed launch's parts were merged
    assert not list((run_dir / PARTS_DIR).glob("*.json"))  # merged, then deleted
    assert {entry["parallel"]["world_size"] for entry in manifest["images"]} == {2}



HOLD = """
import sys, time
from fluxnb.core.errors import RunFolderBusy
from fluxnb.runs.outputs import RunFolder
while True:  # the writer that comes next (a resume): it takes the lock the moment it is free
    try:
        run = RunFolder.open(sys.argv[1])
        break
    except RunFolderBusy:
        time.sleep(0.01)
print(run._lock.token, flush=True)
sys.stdin.readline()
"""


def test_a_rank_whose_launch_died_stops_although_another_writer_holds_the_lock(tiny_spec, tmp_path: Path):
    """A rank outlives its launch (its own session); the next writer takes the lock at once (a resume). The rank
    used to ask only "is the lock held?" and made its items beside that writer (issue 22). It now checks that the
    holder is its own launch (the token), after its load and at every step, and stops without an image."""
    import socket

    run = fluxnb.RunFolder.create("generate", base=tmp_path)
    request = fluxnb.make_request(tiny_spec, prompt=list(PROMPTS), num_images=2, steps=12, width=64, height=64)
    run.record(model={"name": "flux-tiny", "reason": "test"}, parameters=request.to_dict())
    run.close()
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    token = owner.stdout.readline().strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, LOCK_TOKEN_ENV: token, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    rank = subprocess.Popen([sys.executable, "-m", "fluxnb.runs.dataparallel", str(run.path), "--launch", "0",
                             "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    part = run.path / PARTS_DIR / "000-rank0.json"

    def loading() -> bool:
        try:
            data = json.loads(part.read_text())
        except (OSError, ValueError):
            return False
        return "shard" in data and "load_seconds" not in data

    wait_for(loading, rank)
    nxt = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    owner.kill()  # the launch dies while its rank loads
    owner.wait(timeout=60)
    assert nxt.stdout.readline().strip() not in ("", token)  # the next writer holds the lock, under its own token
    try:
        _out, err = rank.communicate(timeout=300)
        assert rank.returncode != 0
        data = json.loads(part.read_text())
        assert data["status"] == "failed" and "OwnerGone" in data["error"], data
        assert not data["images"] and not list(run.path.glob("*.png")), err  # nothing beside the next writer
    finally:
        nxt.stdin.close()
        nxt.wait(timeout=60)
