"""Many hosts: the same batch on a Ray cluster, one actor per GPU holding a loaded pipeline (`--ray ADDRESS`).

The launching process is the owner, as with torchrun (fluxnb.dataparallel): it holds the run folder's lock, hands
out the missing items one at a time to idle actors, and is the only process that writes manifest.json. An actor
writes only its images (atomically, named by their request item) into the run folder, which must therefore be on
storage every host sees at the same path (a shared file system such as a GCS FUSE mount or Filestore). An actor
that dies (its process killed, its host lost) has its item handed to another actor; when no actor is left, the
owner lists the missing images and how to resume. Ray is an optional extra (`pip install -e ".[ray]"`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from .config import load_config
from .dataparallel import DataParallelIncomplete
from .errors import FluxnbError, GenerationFailed
from .generation import generate
from .loading import load_model
from .outputs import RunFolder, read_manifest
from .params import request_from_dict
from .selection import resolve_model
from .shards import pending_indexes

LOCAL = "local"  # `--ray local`: start a Ray cluster on this machine for the run


class RayUnavailable(FluxnbError):
    """Ray is not installed, or the cluster cannot be reached."""


class _Sink:
    """What generation.generate() writes into inside an actor: the PNGs (RunFolder.write_png), kept lines."""

    resumed_parameters = None  # the launching command checked the run's input files (params.refuse_changed_inputs)

    def __init__(self, run_dir: str, placement: dict[str, Any]):
        self.path = Path(run_dir)
        self.placement = placement
        self.manifest: dict[str, Any] = {"images": [], "failures": []}

    def save_image(self, image, metadata: dict[str, Any]) -> Path:
        metadata["parallel"] = dict(self.placement)
        path = RunFolder.write_png(self.path, image, metadata)
        self.manifest["images"].append({"file": path.name, **metadata})
        return path

    def record_failure(self, failure: dict[str, Any]) -> None:
        self.manifest["failures"].append({**failure, "parallel": dict(self.placement)})

    def record(self, **fields: Any) -> None:
        pass  # run-level status belongs to the owner


class Worker:
    """One Ray actor: a loaded pipeline on its GPU (Ray sets CUDA_VISIBLE_DEVICES: it is cuda:0) or on the CPU."""

    def __init__(self, run_dir: str, worker: int, device: str, config: str | None):
        import torch

        manifest = read_manifest(run_dir)
        cfg = load_config(config)
        choice = resolve_model(manifest["model"]["name"], cfg)
        self.run_dir = run_dir
        self.request = request_from_dict(choice.spec, manifest["parameters"])
        self.reason = manifest["model"].get("reason")
        start = time.perf_counter()
        self.model = load_model(choice.spec, checkpoint=manifest["model"].get("checkpoint"), device=device,
                                config=cfg, progress=False)
        self.placement = {"mode": "ray", "worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
                          "device": "cuda:0" if device == "cuda" else "cpu",
                          "physical_gpu": os.environ.get("CUDA_VISIBLE_DEVICES") if device == "cuda" else None,
                          "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                          "load_seconds": round(time.perf_counter() - start, 3)}

    def make(self, index: int) -> dict[str, Any]:
        """Generate item `index` into the run folder; return its manifest line (or its failure)."""
        sink = _Sink(self.run_dir, self.placement)
        try:
            generate(self.model, self.request, sink, progress=False, model_reason=self.reason, only=[index])
        except GenerationFailed:
            pass  # out of memory: the failure is in sink.manifest["failures"]
        return sink.manifest


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray, an optional extra that is not installed",
                             fix='pip install -e ".[ray]" (or pip install -r requirements/extras.txt)') from None
    return ray


def connect(address: str, workers: int, device: str) -> Any:
    """ray.init: a local cluster sized for the run (`local`), or an existing one (`auto`, `ray://HOST:10001`)."""
    ray = _ray()
    # fluxnb's and the hub's settings travel to the actors; a token never does (give the cluster its own secret).
    # The actors import the fluxnb installed on their node, never a checkout path.
    env = {k: v for k, v in os.environ.items() if k.startswith(("FLUXNB_", "HF_")) and "TOKEN" not in k}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    if address == LOCAL:
        temp_dir = tempfile.mkdtemp(prefix="fluxnb-ray-")  # short: Ray's socket paths live under it
        kwargs.update(num_cpus=max(workers, 1) if device == "cpu" else None, include_dashboard=False,
                      object_store_memory=80 * 2**20, _temp_dir=temp_dir)
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except Exception as exc:
        raise RayUnavailable(f"cannot start or reach the Ray cluster {address!r}: {type(exc).__name__}: {exc}",
                             fix="--ray local (a cluster on this machine), --ray auto on a cluster node, or "
                             "--ray ray://HEAD:10001") from None
    if address == LOCAL:
        watch_local_cluster(temp_dir)
    return ray


# The local cluster's watchdog: a process of its own that blocks until the command has exited (its pidfd, or a
# poll where there is none), then ends the cluster's processes it was given (the GCS, the raylet, Ray's agents:
# the command's descendants once ray.init returned; each only if its start time is unchanged, so a pid reused
# since is left alone) and removes the cluster's temporary folder. A SIGKILLed command runs no atexit: without
# this, Ray's agents lingered a minute after it (issue 22). After a normal exit, ray.shutdown() has stopped them.
WATCHDOG = """
import os, select, shutil, signal, sys, time
pid, folder = int(sys.argv[1]), sys.argv[2]
cluster = [tuple(map(int, member.split(":"))) for member in sys.argv[3:]]
try:
    handle = os.pidfd_open(pid)
    select.select([handle], [], [])
except (AttributeError, OSError):
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.5)
for member, started in cluster:
    try:
        with open(f"/proc/{member}/stat") as stat:
            if int(stat.read().rsplit(")", 1)[1].split()[19]) == started:  # not a later process under a reused pid
                os.kill(member, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
shutil.rmtree(folder, ignore_errors=True)
"""


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] state, [1] parent pid, [19] start time."""
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[tuple[int, int]]:
    """The processes below `pid` (read from /proc: children, their children...), as (pid, start time)."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat_fields(entry)
                parents.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def watch_local_cluster(temp_dir: str) -> None:
    """Start the watchdog (WATCHDOG) of the local cluster ray.init just started under this process."""
    subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), temp_dir,
                      *(f"{pid}:{started}" for pid, started in descendants(os.getpid()))], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def plan_workers(asked: str | None, ray: Any, device_hint: str) -> tuple[int, str]:
    """(actors, device): --gpus N actors (all: every GPU of the cluster); CPU actors where the cluster has no GPU."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = "cuda" if gpus and device_hint == "cuda" else "cpu"
    if asked is None or str(asked).lower() == "all":
        return (gpus if device == "cuda" else 2), device
    return int(asked), device


def run_on_ray(run: RunFolder, *, address: str, asked: str | None, total: int, config: str | Path | None = None,
               log=print) -> dict[str, Any]:
    """Make the run's missing items on Ray actors; the caller holds `run` and has recorded model and parameters."""
    import torch

    pending = pending_indexes(run.path, run.manifest, total)
    device_hint = "cuda" if torch.cuda.is_available() or address != LOCAL else "cpu"
    ray = connect(address, int(asked) if asked and str(asked).isdigit() else 2, device_hint)
    try:
        workers, device = plan_workers(asked, ray, device_hint)
        launches = run.manifest.setdefault("parallel", {}).setdefault("launches", [])
        launch = {"launch": len(launches), "mode": "ray", "address": address, "world_size": workers,
                  "device": device, "pending": len(pending)}
        launches.append(launch)
        run.record(status="running")
        start = time.perf_counter()
        lost = _dispatch(ray, run, pending, workers, device, config, log)
        launch.update(wall_seconds=round(time.perf_counter() - start, 3), workers_lost=lost)
    finally:
        ray.shutdown()
    run.manifest["images"].sort(key=lambda e: e.get("index", 0))  # in item order, once the launch is over
    missing = pending_indexes(run.path, run.manifest, total)
    if missing:
        run.record(status="incomplete")
        raise DataParallelIncomplete(
            f"{len(missing)} image(s) of the batch are missing (item indexes "
            f"{', '.join(map(str, missing[:20]))}); {len(run.manifest['images'])} finished and kept in {run.path}; "
            f"{lost} Ray worker(s) died and no worker was left.",
            fix=f"fluxnb generate --resume {run.path} --ray {address} (or --gpus N: any engine finishes them)")
    run.finish()
    return launch


def _dispatch(ray, run: RunFolder, pending: list[int], workers: int, device: str, config, log) -> int:
    """Hand items to idle actors until none is left; an item whose actor died goes back to the queue."""
    options = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
    actor_class = ray.remote(**options, max_restarts=0)(Worker)
    idle = [actor_class.remote(str(run.path), i, device, str(config) if config else None) for i in range(workers)]
    queue, inflight, lost = deque(pending), {}, 0
    while queue or inflight:
        while idle and queue:
            actor, index = idle.pop(), queue.popleft()
            inflight[actor.make.remote(index)] = (actor, index)
        if not inflight:
            break  # no actor left
        ready, _ = ray.wait(list(inflight), num_returns=1)
        actor, index = inflight.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            lost += 1
            queue.appendleft(index)
            log(f"a Ray worker died ({type(exc).__name__}); image {index} goes to another worker", flush=True)
            continue
        except ray.exceptions.RayTaskError as exc:  # fluxnb's own error in an actor (a LoRA that does not fit):
            if isinstance(exc.cause, FluxnbError):  # shown as it is, not as Ray's wrapper
                raise exc.cause from None
            raise
        entries = [entry for entry in result["images"] if (run.path / entry["file"]).is_file()]
        for entry in entries:
            log(f"worker {entry['parallel']['worker']}: {run.path / entry['file']}", flush=True)
        if result["failures"]:
            run.manifest["failures"] += result["failures"]
            run.record()
        run.add_images(entries)  # a bounded cost per image (RunFolder's manifest log)
        idle.append(actor)
    return lost
