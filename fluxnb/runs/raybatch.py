"""Many hosts: the same batch on a Ray cluster, one actor per GPU holding a loaded pipeline (`--ray ADDRESS`).

The launching process is the owner, as with torchrun (fluxnb.runs.dataparallel): it holds the run folder's lock, hands
out the missing items one at a time to idle actors, and is the only process that reads or writes the run folder.
Nothing is shared through a disk: the request's input files (init image, LoRA files) go to the actors through Ray's
object store, each finished image (pixels and metadata) comes back the same way, and the actors import the fluxnb
of the launching process, shipped by Ray's runtime_env (py_modules), not a checkout path. An actor that dies (its
process killed, its host lost) has its item handed to another actor; when no actor is left, the owner lists the
missing images and how to resume.

Warm workers (`--keep-warm SECONDS`, on a cluster that outlives the command: `ray start --head`, `--ray auto`):
the actors stay alive after the batch, named by what they loaded, so the next batch of the same model skips the
load; each ends itself after SECONDS without work, and `fluxnb workers --ray ADDRESS --stop` ends them at once.
Ray is an optional extra (`pip install "fluxnb[ray]"`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..core.errors import FluxnbError, GenerationFailed, RequestError
from ..core.packaged import PACKAGE_DIR  # the fluxnb the actors run (runtime_env py_modules ships this folder)
from ..models.config import ModelConfig, ModelSpec, load_config
from ..models.editing import PICTURE_INPUTS
from ..models.loading import load_model
from ..models.params import request_from_dict
from ..models.selection import resolve_model
from .dataparallel import DataParallelIncomplete
from .generation import generate
from .outputs import RunFolder, image_file_name
from .shards import pending_indexes

LOCAL = "local"  # `--ray local`: start a Ray cluster on this machine for the run
NAMESPACE = "fluxnb"  # the Ray namespace of fluxnb's named (warm) actors
# Settings that travel to the actors; not a token (give the cluster its own secret), not a path on this host (the
# model config travels as its content; caches are each node's own).
LOCAL_PATHS = ("FLUXNB_CONFIG", "FLUXNB_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN_PATH")


class RayUnavailable(FluxnbError):
    """Ray is not installed, or the cluster cannot be reached."""


@dataclasses.dataclass(frozen=True)
class LoadOrder:
    """What an actor loads; its key names warm actors, so a batch finds the ones that hold the same pipeline."""

    spec: ModelSpec
    checkpoint: str | None
    device: str
    config: ModelConfig

    def key(self) -> str:
        text = repr((code_digest(), self.spec, self.checkpoint, self.device))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """The SHA-256 of fluxnb's code: a warm actor runs the code it was started with, so a changed fluxnb is a new
    key (its actors are not reused). Read once per process: the code a process runs does not change under it."""
    digest = hashlib.sha256()
    for module in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(module.relative_to(PACKAGE_DIR)).encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()


class _Sink:
    """What generation.generate() writes into inside an actor: the images and failures, kept in memory for the
    owner (an actor writes no file of the run)."""

    path = None
    resumed_parameters = None  # the launching command checked the run's input files (params.refuse_changed_inputs)

    def __init__(self, placement: dict[str, Any]):
        self.placement = placement
        self.manifest: dict[str, Any] = {"images": [], "failures": []}  # nothing to skip: the owner sends only
        self.images: list[tuple[Any, dict[str, Any]]] = []  # missing items

    def save_image(self, image, metadata: dict[str, Any]) -> Path:
        metadata["parallel"] = dict(self.placement)
        self.images.append((image, metadata))
        return Path(image_file_name(metadata))  # the name the owner will give it

    def record_failure(self, failure: dict[str, Any]) -> None:
        self.manifest["failures"].append({**failure, "parallel": dict(self.placement)})

    def record(self, **fields: Any) -> None:
        pass  # run-level status belongs to the owner


class Worker:
    """One Ray actor: a loaded pipeline on its GPU (Ray sets CUDA_VISIBLE_DEVICES: it is cuda:0) or on the CPU.

    keep_warm: seconds without work after which a warm (named, detached) actor ends itself; None: it lives as long
    as the command that made it.
    """

    def __init__(self, order: LoadOrder, worker: int, keep_warm: float | None = None):
        import torch

        start = time.perf_counter()
        self.order = order
        self.model = load_model(order.spec, checkpoint=order.checkpoint, device=order.device, config=order.config,
                                progress=False)
        device = order.device
        self.placement = {"mode": "ray", "worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
                          "device": "cuda:0" if device == "cuda" else "cpu",
                          "physical_gpu": os.environ.get("CUDA_VISIBLE_DEVICES") if device == "cuda" else None,
                          "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                          "load_seconds": round(time.perf_counter() - start, 3)}
        self.inputs = Path(tempfile.mkdtemp(prefix="fluxnb-inputs-"))  # this node's copies of the input files
        self.copies: dict[str, str] = {}
        self.keep_warm, self.images_made, self.idle_since = keep_warm, 0, time.time()
        self.timer: threading.Timer | None = None
        self._arm()

    def describe(self) -> dict[str, Any]:
        """What `fluxnb workers` lists."""
        return {"model": self.order.spec.name, "checkpoint": self.order.checkpoint, **self.placement,
                "keep_warm": self.keep_warm, "images_made": self.images_made,
                "idle_seconds": round(time.time() - self.idle_since, 1)}

    def make(self, parameters: dict[str, Any], files: dict[str, Any], index: int, reason: str | None
             ) -> dict[str, Any]:
        """Generate item `index` of the request `parameters`; return its image and metadata (or its failure).

        files: each input file's path on the owner's host -> its content in the object store (a ray.ObjectRef).
        """
        self._disarm()
        try:
            request = request_from_dict(self.order.spec, self._localize(parameters, files))
            sink = _Sink(self.placement)
            try:
                generate(self.model, request, sink, progress=False, model_reason=reason, only=[index])
            except GenerationFailed:
                pass  # out of memory: the failure is in sink.manifest["failures"]
            for _image, metadata in sink.images:  # the owner's paths, so the image is named as on one host
                metadata.update({name: parameters[name] for name in PICTURE_INPUTS if name in metadata})
            self.images_made += len(sink.images)
            return {"images": sink.images, "failures": sink.manifest["failures"]}
        finally:
            self._arm()

    def _localize(self, parameters: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        """The request with its input files' paths replaced by this node's copies of their content."""
        import ray

        def here(path: str) -> str:
            ref = files[path]
            if ref.hex() not in self.copies:
                target = self.inputs / f"{len(self.copies)}-{Path(path).name}"
                target.write_bytes(ray.get(ref))
                self.copies[ref.hex()] = str(target)
            return self.copies[ref.hex()]

        local = dict(parameters)
        for name in PICTURE_INPUTS:
            if local.get(name):
                local[name] = here(local[name])
        local["loras"] = [{**lora, "path": here(lora["path"])} for lora in local.get("loras") or []]
        return local

    def _arm(self) -> None:
        """Start the idle clock of a warm actor: after keep_warm seconds without a call, the process ends."""
        self.idle_since = time.time()
        if self.keep_warm:
            self.timer = threading.Timer(self.keep_warm, os._exit, args=(0,))
            self.timer.daemon = True
            self.timer.start()

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def input_files(parameters: dict[str, Any]) -> list[str]:
    """The paths of the request's input files on this host: its pictures and its LoRA files."""
    paths = [parameters[name] for name in PICTURE_INPUTS if parameters.get(name)]
    return paths + [lora["path"] for lora in parameters.get("loras") or []]


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray, an optional extra that is not installed",
                             fix='pip install "fluxnb[ray]" (or pip install -r requirements/extras.txt)') from None
    return ray


def connect(address: str, workers: int, device: str) -> Any:
    """ray.init: a local cluster sized for the run (`local`), or an existing one (`auto`, `ray://HOST:10001`)."""
    ray = _ray()
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("FLUXNB_", "HF_")) and "TOKEN" not in k and k not in LOCAL_PATHS}
    runtime_env = {"env_vars": env, "py_modules": [str(PACKAGE_DIR)]}  # this process's fluxnb, whatever each node has
    kwargs: dict[str, Any] = {"runtime_env": runtime_env, "namespace": NAMESPACE, "log_to_driver": True}
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


def check_keep_warm(address: str | None, keep_warm: float | None) -> None:
    """--keep-warm needs a cluster that outlives the command: refused with --ray local or without --ray."""
    if keep_warm is None:
        return
    if address is None or address == LOCAL:
        raise RequestError("keep-warm", "keeps Ray actors loaded after the batch, on a cluster that outlives the "
                           f"command; {'--ray local ends its cluster with the command' if address else 'no --ray'}.",
                           fix="start a cluster once (ray start --head) and pass --ray auto --keep-warm SECONDS")
    if not keep_warm > 0:
        raise RequestError("keep-warm", f"must be a number of seconds above 0, got {keep_warm}.",
                           fix="--keep-warm 600 (ten idle minutes, then the actors end themselves)")


def warm_names(ray: Any, order: LoadOrder | None = None) -> list[str]:
    """The names of fluxnb's live warm actors on the cluster (those holding `order`'s pipeline, if given)."""
    prefix = f"fluxnb-{order.key()}-" if order else "fluxnb-"
    return sorted(n for n in ray.util.list_named_actors() if n.startswith(prefix))


def gather_workers(ray: Any, order: LoadOrder, count: int, keep_warm: float | None) -> tuple[list[Any], int]:
    """`count` actors holding `order`'s pipeline: the warm ones first, new ones for the rest (named and detached
    with keep_warm, so they outlive this command). Returns (actors, how many were warm)."""
    options = {"num_gpus": 1} if order.device == "cuda" else {"num_cpus": 1}
    actor_class = ray.remote(**options, max_restarts=0)(Worker)
    prefix = f"fluxnb-{order.key()}-"
    listed = warm_names(ray, order)
    actors = []
    for name in listed[:count]:
        try:
            actors.append(ray.get_actor(name))
        except ValueError:
            continue  # it ended (its idle time ran out) since it was listed: a new one takes its place
    warm = len(actors)
    numbers = (n for n in range(10**6) if f"{prefix}{n}" not in listed)
    for number in (next(numbers) for _ in range(count - warm)):
        named = {"name": f"{prefix}{number}", "lifetime": "detached"} if keep_warm else {}
        actors.append(actor_class.options(**named).remote(order, number, keep_warm))
    return actors, warm


def run_on_ray(run: RunFolder, *, address: str, asked: str | None, total: int, config: str | Path | None = None,
               keep_warm: float | None = None, log=print) -> dict[str, Any]:
    """Make the run's missing items on Ray actors; the caller holds `run` and has recorded model and parameters."""
    import torch

    start = time.perf_counter()
    check_keep_warm(address, keep_warm)
    pending = pending_indexes(run.path, run.manifest, total)
    device_hint = "cuda" if torch.cuda.is_available() or address != LOCAL else "cpu"
    ray = connect(address, int(asked) if asked and str(asked).isdigit() else 2, device_hint)
    try:
        workers, device = plan_workers(asked, ray, device_hint)
        cfg = load_config(config)
        model = run.manifest["model"]
        order = LoadOrder(resolve_model(model["name"], cfg).spec, model.get("checkpoint"), device, cfg)
        launches = run.manifest.setdefault("parallel", {}).setdefault("launches", [])
        launch = {"launch": len(launches), "mode": "ray", "address": address, "world_size": workers,
                  "device": device, "pending": len(pending), "keep_warm": keep_warm}
        launches.append(launch)
        run.record(status="running")
        actors, launch["warm_workers"] = gather_workers(ray, order, workers, keep_warm)
        job = {"parameters": run.manifest["parameters"], "reason": model.get("reason"),
               "files": {path: ray.put(Path(path).read_bytes()) for path in input_files(run.manifest["parameters"])}}
        lost = _dispatch(ray, run, pending, actors, job, log)
        launch.update(wall_seconds=round(time.perf_counter() - start, 3), workers_lost=lost)
    finally:
        ray.shutdown()  # ends the actors this command made, not the warm (detached) ones
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


def _dispatch(ray, run: RunFolder, pending: list[int], idle: list[Any], job: dict[str, Any], log) -> int:
    """Hand items to idle actors until none is left; an item whose actor died goes back to the queue. Each image
    comes back to this process, which writes it into the run folder."""
    queue, inflight, lost = deque(pending), {}, 0
    while queue or inflight:
        while idle and queue:
            actor, index = idle.pop(), queue.popleft()
            inflight[actor.make.remote(job["parameters"], job["files"], index, job["reason"])] = (actor, index)
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
        for image, metadata in result["images"]:
            path = run.save_image(image, metadata)  # a bounded cost per image (RunFolder's manifest log)
            log(f"worker {metadata['parallel']['worker']}: {path}", flush=True)
        if result["failures"]:
            run.manifest["failures"] += result["failures"]
            run.record()
        idle.append(actor)
    return lost


def list_warm_workers(address: str) -> list[dict[str, Any]]:
    """What each warm actor on the cluster holds (model, host, pid, images made, idle time)."""
    ray = connect(address, 0, "cpu")
    try:
        return [{"name": name, **ray.get(ray.get_actor(name).describe.remote())} for name in warm_names(ray)]
    finally:
        ray.shutdown()


def stop_warm_workers(address: str) -> list[str]:
    """End every warm actor on the cluster now (their memory and GPUs are free again); returns their names."""
    ray = connect(address, 0, "cpu")
    try:
        names = warm_names(ray)
        for name in names:
            ray.kill(ray.get_actor(name))
        return names
    finally:
        ray.shutdown()
