"""Ray without a shared disk (issue 26): a real 2-node Ray cluster on this machine, two `ray start` processes with
their own working folders, HOMEs, temp dirs and caches. The worker node runs in a mount namespace where the
command's folder (run folder, init image) and the fluxnb checkout are hidden under empty tmpfs mounts: its actors
can only get the request's files, the images' way back and fluxnb itself through Ray (object store, runtime_env).
The head node has no CPU for actors, so every actor runs on the worker node.

Also: warm actors (`--keep-warm`) reused by the next command, listed and stopped by `fluxnb workers`, and ended by
their idle timeout; an actor SIGKILLed mid-image (its item redone) and a command SIGKILLed mid-batch (a resume
finishes it, nothing made twice)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fluxnb
from fluxnb.runs.outputs import image_file_name
from tests.waiting import wait_for, wait_for_images

pytest.importorskip("ray", reason="the ray extra is installed in the default test lane only (requirements/extras.txt)")

RAY = str(Path(sys.executable).parent / "ray")
BATCH = ["--model", "flux-tiny", "--steps", "12", "--width", "64", "--height", "64", "--seed", "5"]


def can_hide_folders() -> bool:
    """A private mount namespace (root and util-linux's unshare): the worker node's view without the command's
    folders. Where there is none, the nodes still have their own folders and the actors are given no path."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"]).returncode == 0


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # the command's environment: the cluster's token
    driver: Path  # the command's own folder (hidden from the worker node)
    groups: list[int]  # the process groups of the two `ray start`s
    hidden: bool

    def fluxnb(self, *args: str, **popen) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "fluxnb.cli", *args], env=self.env, cwd=self.driver,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        process = self.fluxnb(*args)
        out, err = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_start(args: list[str], home: Path, env: dict[str, str], hide: list[Path]) -> int:
    """`ray start ARGS` as a node with its own HOME, cache and working folder; its daemons keep the process group
    of this `ray start` (returned, to end them). `hide`: folders mounted over with an empty tmpfs for this node."""
    home.mkdir(parents=True)
    node_env = {**env, "HOME": str(home), "FLUXNB_CACHE": str(home / "cache"), "TMPDIR": str(home)}
    command = [RAY, "start", *args, "--temp-dir", str(home / "t"), "--disable-usage-stats"]
    if hide:
        mounts = " && ".join(f"mount -t tmpfs none '{folder}'" for folder in hide)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh",
                   *command]
    started = subprocess.run(command, cwd=home, env=node_env, capture_output=True, text=True, timeout=120,
                             start_new_session=True)
    assert started.returncode == 0, started.stdout + started.stderr
    return int(subprocess.check_output(["ps", "-o", "pgid=", "-p", str(_daemon(home))]).strip())


def _daemon(home: Path) -> int:
    """The pid of the node's raylet (its command line names the node's temp dir)."""
    found = subprocess.run(["pgrep", "-f", f"raylet.*{home / 't'}"], capture_output=True, text=True).stdout.split()
    assert found, f"no raylet under {home}"
    return int(found[0])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    driver = tmp_path_factory.mktemp("driver")
    base = Path(tempfile.mkdtemp(prefix="fxr-", dir="/tmp"))  # short: Ray's socket paths live under the nodes' homes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))  # the cluster's own secret
    port = _free_port()
    hidden = can_hide_folders()
    groups = [_ray_start(["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false"],
                         base / "head", env, [])]
    try:
        hide = [driver, Path(fluxnb.__file__).parent] if hidden else []
        groups.append(_ray_start(["--address", f"127.0.0.1:{port}", "--num-cpus", "2"], base / "node", env, hide))
        if hidden:  # the worker node really does not see the command's folder
            mounts = Path(f"/proc/{_daemon(base / 'node')}/mountinfo").read_text()
            assert f" {driver} " in mounts and f" {Path(fluxnb.__file__).parent} " in mounts
        yield Cluster(f"127.0.0.1:{port}", env, driver, groups, hidden)
    finally:
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _pids(run_dir: Path) -> set[int]:
    return {entry["parallel"]["pid"] for entry in fluxnb.read_manifest(run_dir)["images"]}


def _run_dir(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(result.stdout.rsplit("run folder: ", 1)[1].strip())


def _in_mount_namespace_of_worker_node(pid: int, cluster: Cluster) -> bool:
    return f" {cluster.driver} " in Path(f"/proc/{pid}/mountinfo").read_text()


def test_a_batch_with_an_init_image_on_a_node_that_sees_no_file_of_the_command_and_warm_actors_reused(cluster):
    assert cluster.run("workers", "--ray", cluster.address, "--stop").returncode == 0  # no warm actor before
    init = cluster.driver / "init.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    first = _run_dir(cluster.run("generate", *BATCH, "--prompt", "a fox", "--prompt", "a boat", "--num-images", "2",
                                 "--init-image", str(init), "--strength", "0.7", "--ray", cluster.address,
                                 "--gpus", "2", "--keep-warm", "300", "--output-dir", str(cluster.driver / "out")))
    manifest = fluxnb.read_manifest(first)
    assert manifest["status"] == "complete" and sorted(e["index"] for e in manifest["images"]) == [0, 1, 2, 3]
    assert sorted(e["file"] for e in manifest["images"]) == sorted(p.name for p in first.glob("*.png"))
    assert all(e["init_image"] == str(init) and e["file"] == image_file_name(e) for e in manifest["images"])
    actors = _pids(first)
    assert len(actors) == 2 and os.getpid() not in actors
    if cluster.hidden:
        assert all(_in_mount_namespace_of_worker_node(pid, cluster) for pid in actors)
    assert manifest["parallel"]["launches"][0]["warm_workers"] == 0

    # the next command: the same actors, no load; one of them SIGKILLed mid-batch, its item done by the other
    process = cluster.fluxnb("generate", *BATCH, "--prompt", "a lighthouse", "--num-images", "6", "--ray",
                             cluster.address, "--gpus", "2", "--output-dir", str(cluster.driver / "again"))
    run_dir = wait_for_images(cluster.driver / "again", 1, process)
    victim = next(iter(_pids(run_dir) or actors))
    os.kill(victim, signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete" and sorted(e["index"] for e in manifest["images"]) == list(range(6))
    assert manifest["parallel"]["launches"][0]["warm_workers"] == 2
    assert _pids(run_dir) <= actors  # made by the warm actors: nothing loaded again
    assert manifest["parallel"]["launches"][0]["workers_lost"] == 1 and "a Ray worker died" in out


def test_a_command_killed_mid_batch_is_resumed_on_the_cluster_nothing_made_twice(cluster):
    process = cluster.fluxnb("generate", *BATCH, "--prompt", "a red fox", "--num-images", "8", "--ray",
                             cluster.address, "--gpus", "2", "--output-dir", str(cluster.driver / "killed"))
    run_dir = wait_for_images(cluster.driver / "killed", 2, process)
    process.kill()  # the command: the only writer of the run folder
    process.communicate(timeout=60)
    before = {p.name: p.stat().st_ino for p in run_dir.glob("*.png")}
    assert 2 <= len(before) < 8
    resumed = cluster.run("generate", "--resume", str(run_dir), "--ray", cluster.address, "--gpus", "2")
    assert _run_dir(resumed) == run_dir
    manifest = fluxnb.read_manifest(run_dir)
    assert manifest["status"] == "complete" and sorted(e["index"] for e in manifest["images"]) == list(range(8))
    assert sorted(e["file"] for e in manifest["images"]) == sorted(p.name for p in run_dir.glob("*.png"))
    assert {name: (run_dir / name).stat().st_ino for name in before} == before  # nothing made twice


def test_warm_workers_are_listed_stopped_and_end_after_their_idle_time(cluster):
    assert cluster.run("workers", "--ray", cluster.address, "--stop").returncode == 0
    made = _run_dir(cluster.run("generate", *BATCH, "--prompt", "a crane", "--num-images", "2", "--ray",
                                cluster.address, "--gpus", "2", "--keep-warm", "600", "--output-dir",
                                str(cluster.driver / "listed")))
    listing = cluster.run("workers", "--ray", cluster.address, "--json")
    assert listing.returncode == 0, listing.stderr
    workers = json.loads(listing.stdout[listing.stdout.index("["):])
    assert sorted(w["pid"] for w in workers) == sorted(_pids(made))
    assert {w["model"] for w in workers} == {"flux-tiny"} and {w["keep_warm"] for w in workers} == {600}
    stopped = cluster.run("workers", "--ray", cluster.address, "--stop")
    assert "stopped 2 warm worker(s)" in stopped.stdout
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in _pids(made)), seconds=60,
             what="the stopped actors' processes to end")

    idle = _run_dir(cluster.run("generate", *BATCH, "--prompt", "a crane", "--num-images", "2", "--ray",
                                cluster.address, "--gpus", "2", "--keep-warm", "2", "--output-dir",
                                str(cluster.driver / "idle")))
    assert _pids(idle).isdisjoint(_pids(made))  # new actors: the stopped ones are gone
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in _pids(idle)), seconds=60,
             what="the warm actors to end after 2 idle seconds")
    assert "no warm workers" in cluster.run("workers", "--ray", cluster.address).stdout


def test_an_inpaint_request_crosses_to_the_worker_node_with_its_mask_and_makes_the_local_images(cluster):
    """Issue 24's modes hold on Ray: the picture and the mask travel through the object store to a node that cannot
    see them, and the images are those the same request makes without Ray (the CPU is deterministic)."""
    assert cluster.run("workers", "--ray", cluster.address, "--stop").returncode == 0  # the node's CPUs free
    picture, mask = cluster.driver / "room.png", cluster.driver / "hole.png"
    Image.new("RGB", (64, 64), (30, 120, 200)).save(picture)
    hole = Image.new("L", (64, 64), 0)
    hole.paste(255, (16, 16, 48, 48))
    hole.save(mask)
    edit = ["generate", "--model", "flux-tiny-fill", "--mode", "inpaint", "--init-image", str(picture), "--mask",
            str(mask), "--prompt", "a red sofa", "--steps", "4", "--seed", "3", "--num-images", "2"]
    remote = _run_dir(cluster.run(*edit, "--ray", cluster.address, "--gpus", "2", "--keep-warm", "120",
                                  "--output-dir", str(cluster.driver / "inpaint-ray")))  # warm: their pids stay
    local = _run_dir(cluster.run(*edit, "--output-dir", str(cluster.driver / "inpaint-local")))
    by_index = lambda run: sorted(fluxnb.read_manifest(run)["images"], key=lambda e: e["index"])  # noqa: E731
    remote_images, local_images = by_index(remote), by_index(local)
    assert [e["index"] for e in remote_images] == [0, 1] == [e["index"] for e in local_images]
    mask_sha = hashlib.sha256(mask.read_bytes()).hexdigest()
    assert all(e["mode"] == "inpaint" and e["mask"] == str(mask) and e["mask_sha256"] == mask_sha
               for e in remote_images)
    if cluster.hidden:
        assert all(_in_mount_namespace_of_worker_node(e["parallel"]["pid"], cluster) for e in remote_images)
    assert cluster.run("workers", "--ray", cluster.address, "--stop").returncode == 0
    for mine, theirs in zip(remote_images, local_images, strict=True):
        assert mine["file"] == theirs["file"]
        with Image.open(remote / mine["file"]) as a, Image.open(local / theirs["file"]) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"image {mine['index']} differs from the local one"
