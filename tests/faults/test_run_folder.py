"""A run folder has one writer and holds each request item once: real processes started together, a real SIGKILL
between a PNG and its manifest line, a real truncated PNG, a real RSS measurement over a long batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

import fluxnb
from fluxnb.runs.outputs import LOCK_FILE, SET_ASIDE, image_file_name
from tests.waiting import wait_for_images

BATCH = ["--steps", "20", "--width", "192", "--height", "192", "--num-images", "4", "--seed", "100"]
PROMPTS = ("a red fox in the snow", "a lighthouse")


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fluxnb.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def consistent(run_dir: Path) -> dict:
    """The manifest lists exactly the PNGs on disk, each under the name its request item gives, once."""
    manifest = fluxnb.read_manifest(run_dir)
    listed = sorted(entry["file"] for entry in manifest["images"])
    assert listed == sorted(p.name for p in run_dir.glob("*.png"))
    assert all(entry["file"] == image_file_name(entry) for entry in manifest["images"])
    assert not list(run_dir.glob(".*.tmp"))
    return manifest


def killed_batch(outputs_dir: Path, tmp_path: Path, images_before_kill: int) -> Path:
    """A `fluxnb generate` batch of 8 images, SIGKILLed once `images_before_kill` PNGs exist."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    process = cli("generate", "--prompts", str(prompts), *BATCH)
    run_dir = wait_for_images(outputs_dir, images_before_kill, process, 300)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return run_dir


def expected_pairs() -> list[tuple[str, int]]:
    return sorted((p, s) for p in PROMPTS for s in (100, 101, 102, 103))


def test_two_generate_resumes_at_once_one_is_refused(tiny_model, outputs_dir: Path, tmp_path: Path):
    run_dir = killed_batch(outputs_dir, tmp_path, 2)
    first, second = cli("generate", "--resume", str(run_dir)), cli("generate", "--resume", str(run_dir))
    results = [(p, *p.communicate(timeout=600)) for p in (first, second)]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], results
    (winner, _, _), = [r for r in results if r[0].returncode == 0]
    (_, _, refused), = [r for r in results if r[0].returncode == 2]
    assert (f"is being written by process {winner.pid} on host {socket.gethostname()}" in refused
            and "a run folder has one writer at a time" in refused), refused
    assert "Traceback" not in refused
    manifest = consistent(run_dir)
    assert manifest["status"] == "complete"
    assert sorted((i["prompt"], i["seed"]) for i in manifest["images"]) == expected_pairs()
    assert len(list(run_dir.glob("*.png"))) == 8
    # the SIGKILL lands at any moment: inside an atomic write it leaves a temporary file, which the resume sets aside
    # (seen: the manifest's). Nothing else may be set aside: no image.
    set_aside = manifest.get("set_aside", [])
    assert all(note["file"].endswith(".tmp") and note["why"].startswith("an unfinished temporary file")
               for note in set_aside), set_aside
    assert sorted(p.name for p in (run_dir / SET_ASIDE).glob("*")) == sorted(
        Path(note["moved_to"]).name for note in set_aside)


def test_two_notebook_resumes_at_once_one_is_refused(tiny_model, outputs_dir: Path, tmp_path: Path):
    """`fluxnb run --resume` twice at once: the CLI holds the lock while its kernel writes; the other is refused."""
    batch = tmp_path / "batch.yaml"
    batch.write_text("prompt: [a red fox, a lighthouse]\nnum_images: 3\nseed: 40\nsteps: 20\nwidth: 192\n"
                     "height: 192\n", encoding="utf-8")
    process = cli("run", "01_text_to_image", "-f", str(batch))
    run_dir = wait_for_images(outputs_dir, 1, process, 300, job="01_text_to_image")
    for pid in [process.pid, *(c.pid for c in psutil.Process(process.pid).children(recursive=True))]:
        os.kill(pid, signal.SIGKILL)
    process.communicate()
    first = cli("run", "01_text_to_image", "--resume", str(run_dir))
    second = cli("run", "01_text_to_image", "--resume", str(run_dir))
    results = [(p, *p.communicate(timeout=600)) for p in (first, second)]
    assert sorted(p.returncode for p, _, _ in results) == [0, 2], results
    (winner, _, _), = [r for r in results if r[0].returncode == 0]
    (_, _, refused), = [r for r in results if r[0].returncode == 2]
    assert f"is being written by process {winner.pid} on host {socket.gethostname()}" in refused, refused
    manifest = consistent(run_dir)
    assert manifest["status"] == "complete"
    pairs = sorted((i["prompt"], i["seed"]) for i in manifest["images"])
    assert pairs == sorted((p, s) for p in ("a red fox", "a lighthouse") for s in (40, 41, 42))


KILL_AFTER_PNG = textwrap.dedent("""
    import os, signal, sys
    import fluxnb.runs.outputs as outputs
    real, landed = outputs.atomic_write_bytes, []

    def write_then_die(path, data):  # the PNG lands (renamed into place); the process dies before its manifest line
        real(path, data)
        if str(path).endswith(".png"):
            landed.append(path)
            if len(landed) == int(sys.argv[1]):
                os.kill(os.getpid(), signal.SIGKILL)

    outputs.atomic_write_bytes = write_then_die
    from fluxnb.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigkill_between_png_and_manifest_then_resume_adopts_the_png(tiny_model, outputs_dir: Path, tmp_path: Path):
    script = tmp_path / "kill_after_png.py"
    script.write_text(KILL_AFTER_PNG, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "3", "generate", "--prompt", PROMPTS[0], *BATCH],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr
    (run_dir,) = outputs_dir.iterdir()
    on_disk = {p.name: p.read_bytes() for p in run_dir.glob("*.png")}
    listed = [e["file"] for e in fluxnb.read_manifest(run_dir)["images"]]
    assert len(on_disk) == 3 and len(listed) == 2  # the third PNG is there, its manifest line is not
    done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run_dir}: 3 image(s) already done" in done.stdout  # adopted, not made again
    manifest = consistent(run_dir)
    assert sorted(i["seed"] for i in manifest["images"]) == [100, 101, 102, 103]
    assert len(list(run_dir.glob("*.png"))) == 4 and not (run_dir / SET_ASIDE).exists()
    for name, data in on_disk.items():
        assert (run_dir / name).read_bytes() == data


def test_truncated_png_is_set_aside_said_and_made_again(tiny_model, outputs_dir: Path):
    done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--prompt", "a fox", "--steps", "2",
                           "--width", "64", "--height", "64", "--num-images", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (run_dir,) = outputs_dir.iterdir()
    victim = sorted(run_dir.glob("*.png"))[1]
    complete = victim.read_bytes()
    pixels = np.asarray(Image.open(victim))
    victim.write_bytes(complete[: len(complete) // 2])  # a copy cut short, a full disk outside fluxnb...
    said = []
    for _ in (1, 2):  # the second resume finds nothing to do, and no error
        done = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        said.append(done.stderr)
    told = f"fluxnb: set aside {victim} -> {SET_ASIDE}/{victim.name}: listed in the manifest but is truncated"
    assert told in said[0]
    assert "set aside" not in said[1]
    manifest = consistent(run_dir)
    (note,) = manifest["set_aside"]
    assert note["file"] == victim.name and note["moved_to"] == f"{SET_ASIDE}/{victim.name}"
    assert "is truncated" in note["why"] and "made again" in note["why"]
    assert (run_dir / SET_ASIDE / victim.name).read_bytes() == complete[: len(complete) // 2]  # kept, not deleted
    assert np.array_equal(np.asarray(Image.open(victim)), pixels)  # made again: same item, same pixels
    assert len(manifest["images"]) == 2


def test_orphan_png_is_set_aside_never_deleted(tiny_model, outputs_dir: Path):
    run = fluxnb.RunFolder.create("generate")
    run.record(model={"name": "flux-tiny"}, parameters={})
    stranger = run.path / "0000-t2i-seed0-00000000.png"
    Image.new("RGB", (8, 8), "red").save(stranger)  # not fluxnb's: no metadata
    data = stranger.read_bytes()
    run.close()
    reopened = fluxnb.RunFolder.open(run.path)
    (note,) = reopened.manifest["set_aside"]
    assert note["why"] == "not listed in the manifest and carries no fluxnb metadata"
    assert not stranger.exists() and (run.path / SET_ASIDE / stranger.name).read_bytes() == data
    assert fluxnb.read_manifest(run.path)["set_aside"] == [note]


def test_lock_is_released_by_the_kernel_when_the_holder_dies(tmp_path: Path):
    """A SIGKILLed writer never blocks the next one: the OS drops its lock."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, fluxnb; "
                               f"r = fluxnb.RunFolder.create('generate', output_dir={str(run_dir)!r}); "
                               "r.record(model={'name': 'flux-tiny'}, parameters={'prompts': ['a fox']}); "
                               "print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        blocked = subprocess.run([sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run_dir)],
                                 capture_output=True, text=True, timeout=300)
        assert blocked.returncode == 2 and f"being written by process {holder.pid}" in blocked.stderr
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    reopened = fluxnb.RunFolder.open(run_dir)  # the dead holder's lock is gone
    assert reopened.manifest["resumed"] == 1 and fluxnb.read_manifest(run_dir)["status"] == "running"


MEASURE_RSS = textwrap.dedent("""
    import ctypes, gc, json
    import psutil
    import fluxnb

    libc = ctypes.CDLL("libc.so.6")

    def settled_rss():  # what the process holds, not what the allocator keeps for reuse
        gc.collect()
        libc.malloc_trim(0)
        return psutil.Process().memory_info().rss

    model = fluxnb.load_model("flux-tiny", device="cpu", progress=False)
    request = fluxnb.make_request(model.spec, prompt=["a fox", "a cat"], num_images=12, steps=1, width=256,
                                  height=256)
    run = fluxnb.RunFolder.create("rss")
    rss = []
    images = fluxnb.generate(model, request, run, progress=False, on_image=lambda image: rss.append(settled_rss()))
    reopened = fluxnb.RunFolder.open(run.path)
    before = settled_rss()
    again = fluxnb.generate(model, request, reopened, progress=False)  # a resume of a finished run
    print(json.dumps({"rss": rss, "images": len(images), "resumed": len(again),
                      "resume_growth": settled_rss() - before}))
""")


def test_batch_memory_is_flat_in_the_number_of_images(tiny_cache, tmp_path: Path):
    """24 images of 256x256 in a real process, RSS read after each (allocator caches trimmed): a batch that kept
    its pixels grows by about 270 KiB per image here; one that keeps paths and metadata by about 16 KiB."""
    script = tmp_path / "measure.py"
    script.write_text(MEASURE_RSS, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FLUXNB_OUTPUTS": str(tmp_path / "out")})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == result["resumed"] == 24
    rss = result["rss"]
    per_image = (rss[-1] - rss[3]) / (len(rss) - 4)  # after warm-up (first-call caches)
    assert per_image < 64 * 2**10, f"RSS grew by {per_image / 2**10:.0f} KiB per image"
    assert result["resume_growth"] < 1 * 2**20, "a resume must not load the finished images"
