"""Random sequences of generate, SIGKILL, resume and tampering (within the documented contract: deleting or
truncating an image, a stray file, a leftover temporary file) never leave an image twice in the manifest, a
manifest entry without its complete PNG, or a file changed outside the run folder (issue 22). Real processes,
real kills; hypothesis draws the sequences (fixed seed: the same ones on every CI run)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fluxnb
from fluxnb.runs.outputs import image_file_name, png_problem
from tests.waiting import wait_for

BATCH = ["--model", "flux-tiny", "--prompt", "a red fox", "--prompt", "a lighthouse", "--num-images", "3",
         "--steps", "6", "--width", "64", "--height", "64", "--seed", "5"]
ITEMS = 6
ACTIONS = st.sampled_from(["resume", "kill a resume", "delete an image", "truncate an image", "a stray file",
                           "a leftover temporary file"])


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fluxnb.cli", "generate", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def pngs(run: Path) -> list[Path]:
    return sorted(run.glob("*.png"))


def kill_after(process: subprocess.Popen, run_of, images: int) -> None:
    """SIGKILL `process` once its run folder holds `images` PNGs (unless it finished first)."""

    def enough() -> bool:
        run = run_of()
        return process.poll() is not None or (run is not None and len(pngs(run)) >= images)

    wait_for(enough, process)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check(run: Path) -> dict:
    """The invariants after each of fluxnb's operations: each image once, each entry with its complete PNG under the
    name its item gives."""
    manifest = fluxnb.read_manifest(run)
    files = [entry["file"] for entry in manifest["images"]]
    indexes = [entry["index"] for entry in manifest["images"]]
    assert len(files) == len(set(files)) and len(indexes) == len(set(indexes)), files
    for entry in manifest["images"]:
        assert entry["file"] == image_file_name(entry) and png_problem(run / entry["file"]) is None, entry["file"]
    return manifest


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=st.integers(1, 4), steps=st.lists(st.tuples(ACTIONS, st.integers(0, 5)), min_size=1, max_size=4))
def test_no_sequence_of_kills_resumes_and_tampering_breaks_a_run_folder(tmp_path_factory, first, steps):
    base = tmp_path_factory.mktemp("states")
    outside = base / "outside"  # files beside the run folder that nothing may change
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's file")
    (outside / "photo.png").write_bytes(b"not fluxnb's")
    before = snapshot(outside)
    work = base / "work"
    work.mkdir()

    def run_of() -> Path | None:
        found = sorted((work / "outputs").glob("*-generate")) if (work / "outputs").is_dir() else []
        return found[0] if found else None

    kill_after(start([*BATCH, "--output-dir", str(work / "outputs")], work), run_of, first)
    run = run_of()
    check(run)
    for action, n in steps:
        images = pngs(run)
        if action == "resume":
            done = start(["--resume", str(run)], work)
            done.communicate(timeout=600)
            assert done.returncode == 0, done.stderr
        elif action == "kill a resume":
            kill_after(start(["--resume", str(run)], work), lambda: run, len(images) + 1 + n % 2)
        elif action == "delete an image" and images:
            images[n % len(images)].unlink()
        elif action == "truncate an image" and images:
            victim = images[n % len(images)]
            victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // (n + 2))])
        elif action == "a stray file":
            (run / f"stray-{n}.png").write_bytes(b"someone else's picture")
        elif action == "a leftover temporary file":
            (run / f".manifest.json.{n}.tmp").write_text("{")
        if action in ("resume", "kill a resume"):  # after fluxnb's own operations (a tampering breaks them until then)
            check(run)
    done = start(["--resume", str(run)], work)  # and the run can always be finished
    done.communicate(timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = check(run)
    assert sorted(entry["index"] for entry in manifest["images"]) == list(range(ITEMS))
    assert sorted(p.name for p in pngs(run)) == sorted(entry["file"] for entry in manifest["images"])
    assert snapshot(outside) == before
