"""Data parallel on one host: one full pipeline per GPU, the batch's items sharded over the ranks, one run folder.

`fluxnb generate --gpus N|all` is the owner: it holds the run folder's lock for the whole run, launches N ranks
through torchrun (torch.distributed.run, part of torch), merges their manifest parts into manifest.json while they
run and after they exit (fluxnb.runs.shards), and says which images are missing and how to resume when a rank died.
Each rank (`python -m fluxnb.runs.dataparallel`, started by torchrun) sees only its own GPU (CUDA_VISIBLE_DEVICES set
from LOCAL_RANK before CUDA starts, so quantized weights always live on cuda:0), joins the process group (NCCL on
GPUs, gloo on CPUs), loads the model, and makes its shard of the still-missing items with generation.generate().
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import FluxnbError, GenerationFailed, InputError, RequestError
from ..models.config import load_config
from ..models.loading import load_model
from ..models.params import request_from_dict
from ..models.selection import resolve_model
from .contextparallel import MODES as CONTEXT_MODES
from .contextparallel import check_context_parallel, enable_context_parallel
from .generation import generate
from .outputs import LOCK_TOKEN_ENV, RunFolder, RunLock, lock_holder, read_manifest
from .shards import RankPart, merge_parts, pending_indexes, shard

MODULE = "fluxnb.runs.dataparallel"
POLL_SECONDS = 1.0
DATA = "data"  # the default mode: each rank makes its own shard of the items
CPU_PROCESSES_FOR_ALL = 2  # `--gpus all` on a host without a GPU: the CPU demonstration (gloo, two processes)


class DataParallelIncomplete(FluxnbError):
    """Some images of a data-parallel batch are missing (a rank died or failed); the others are kept."""


def plan_processes(asked: str | int, gpu_count: int) -> tuple[int, str, str | None]:
    """(processes, device, note) for `--gpus ASKED` on a host with `gpu_count` GPUs.

    Fewer GPUs than asked: says so and uses what there is; none: CPU processes (gloo), as many as asked.
    """
    if isinstance(asked, str) and asked.strip().lower() == "all":
        if gpu_count:
            return gpu_count, "cuda", None
        return CPU_PROCESSES_FOR_ALL, "cpu", (f"this host has no CUDA GPU: running {CPU_PROCESSES_FOR_ALL} CPU "
                                              "processes (gloo) instead")
    try:
        wanted = int(asked)
    except (TypeError, ValueError):
        raise RequestError("gpus", f"--gpus {asked!r} is not a number of GPUs", fix="--gpus 2, or --gpus all") from None
    if wanted < 1 or wanted > 64:
        raise RequestError("gpus", f"--gpus {wanted} is outside 1..64", fix="--gpus 2, or --gpus all")
    if gpu_count == 0:
        return wanted, "cpu", (f"asked for {wanted} GPU(s), this host has no CUDA GPU: running {wanted} CPU "
                               "process(es) (gloo)")
    if wanted > gpu_count:
        return gpu_count, "cuda", f"asked for {wanted} GPUs, this host has {gpu_count}: using {gpu_count}"
    return wanted, "cuda", None


def torchrun_command(processes: int, module: str, args: list[str]) -> list[str]:
    """torchrun (torch.distributed.run) on this host: a free rendezvous port, no restarts (a dead rank ends the
    launch; the owner then lists what is missing)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "--max-restarts=0", "-m", module, *args]


def missing_message(run: RunFolder, missing: list[int], processes: int, rc: int) -> tuple[str, str]:
    failures = {f.get("index"): f for f in run.manifest.get("failures", [])}
    shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
    reasons = [f"image {i}: {failures[i].get('error')}" for i in missing[:3] if i in failures]
    text = (f"{len(missing)} image(s) of the batch are missing (item indexes {shown}); "
            f"{len(run.manifest['images'])} finished and kept in {run.path}. torchrun exited with code {rc}"
            + (f" ({'; '.join(reasons)})" if reasons else " (a rank died or was killed)") + ".")
    fix = (f"fluxnb generate --resume {run.path} --gpus {processes} (any number of GPUs finishes exactly the "
           "missing ones)")
    return text, fix


def run_data_parallel(run: RunFolder, *, processes: int, device: str, total: int, config: str | Path | None = None,
                      mode: str = DATA, log=print) -> dict[str, Any]:
    """Make the run's missing items with `processes` ranks; the caller holds `run` (its lock) and has recorded the
    model and parameters. mode: "data" (items sharded over the ranks) or a context-parallel mode (every rank works
    on every image: fluxnb.runs.contextparallel). Returns the launch record; raises DataParallelIncomplete when images
    are missing."""
    merge_parts(run, delete=True)  # a killed launch's leftover parts first
    pending = pending_indexes(run.path, run.manifest, total)
    launches = run.manifest.setdefault("parallel", {}).setdefault("launches", [])
    launch = {"launch": len(launches), "mode": mode, "world_size": processes, "device": device,
              "host": socket.gethostname(),
              "pending": len(pending), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    launches.append(launch)
    run.record(status="running")
    if not pending:
        launch.update(returncode=0, wall_seconds=0.0)
        run.finish()
        return launch
    args = [str(run.path), "--launch", str(launch["launch"]), "--device", device, "--mode", mode]
    if config is not None:
        args += ["--config", str(config)]
    # the ranks import the installed fluxnb, like any program (README "The product is the wheel")
    env = {**os.environ, LOCK_TOKEN_ENV: run._lock.token or os.environ.get(LOCK_TOKEN_ENV, "")}
    log(f"launching {processes} {'GPU' if device == 'cuda' else 'CPU'} rank(s) for {len(pending)} image(s): "
        f"{' '.join(torchrun_command(processes, MODULE, args)[1:4])} ...", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(torchrun_command(processes, MODULE, args), env=env)
    try:
        while process.poll() is None:
            time.sleep(POLL_SECONDS)
            merge_parts(run, delete=False)
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finally:
        launch.update(returncode=process.returncode, wall_seconds=round(time.perf_counter() - start, 3))
        merge_parts(run, delete=True)
        run.account_for_files()  # a rank killed between its PNG and its part line: the PNG is adopted
    missing = pending_indexes(run.path, run.manifest, total)
    if missing or process.returncode != 0:
        run.record(status="incomplete", error=f"{len(missing)} image(s) missing after launch {launch['launch']}")
        if missing:
            text, fix = missing_message(run, missing, processes, process.returncode)
            raise DataParallelIncomplete(text, fix=fix)
        raise DataParallelIncomplete(f"torchrun exited with code {process.returncode} although every image is "
                                     f"there; see the ranks' logs above. Run folder: {run.path}")
    run.finish()
    return launch


def map_local_gpu() -> str | None:
    """Give this rank only its own GPU (CUDA_VISIBLE_DEVICES) before CUDA starts; return the physical GPU id."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v.strip()] if visible else None
    if ids is None:
        ids = [str(i) for i in range(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))]
    if local_rank >= len(ids):
        raise FluxnbError(f"rank with LOCAL_RANK {local_rank} has no GPU: CUDA_VISIBLE_DEVICES lists {len(ids)}",
                          fix="run with --gpus at most the number of visible GPUs")
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise FluxnbError("CUDA started before this rank chose its GPU; each rank must see only its own GPU",
                          fix="report this as a bug: nothing may use CUDA before fluxnb.runs.dataparallel.rank_main")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank]
    return ids[local_rank]


def owner_alive(run_dir: str | Path) -> bool:
    """Whether the process that launched this rank still holds the run folder: its lock is held, and by the holder
    whose token this launch was given (LOCK_TOKEN_ENV). torchrun starts each rank in its own session, so a rank
    outlives a SIGKILLed owner; a resume started at once then holds the lock under another token, and a rank that
    only asked "is the lock held?" took that resume for its owner and made its items too. Asked before the load,
    after it and at every denoising step. (A shared lock taken for an instant: a resume that tries to lock at that
    very instant is refused as busy and can simply be run again.)"""
    holder = lock_holder(run_dir)
    return holder is not None and holder.get("token") == os.environ.get(LOCK_TOKEN_ENV)


class OwnerGone(FluxnbError):
    """The launching process died: this rank stops (its finished images are kept for a resume)."""


def _owner_gone(run_dir: str | Path) -> OwnerGone:
    return OwnerGone(f"the process that launched this rank no longer holds {run_dir}; stopping",
                     fix=f"fluxnb generate --resume {run_dir} --gpus N")


def stop_when_owner_gone(run_dir: str | Path):
    """A diffusers callback_on_step_end that raises OwnerGone once this rank's launcher no longer holds the lock."""

    def check(pipe, step, timestep, callback_kwargs):
        if not owner_alive(run_dir):
            raise _owner_gone(run_dir)
        return callback_kwargs

    return check


def _placement(device: str, physical: str | None, split: bool) -> dict[str, Any]:
    """Which rank, host and device made an image: copied into its metadata (`parallel`)."""
    import torch

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    index = torch.cuda.current_device() if device == "cuda" else None
    return {"mode": "context" if split else DATA, "rank": rank, "world_size": world,
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "host": socket.gethostname(),
            "device": f"cuda:{index}" if device == "cuda" else "cpu", "physical_gpu": physical if device == "cuda"
            else None, "device_name": torch.cuda.get_device_name(index) if device == "cuda" else "cpu",
            "backend": torch.distributed.get_backend(), "pid": os.getpid()}


def rank_main(argv: list[str] | None = None) -> int:
    """One rank: its GPU, the process group, the model, its shard of the missing items, its part."""
    parser = argparse.ArgumentParser(prog=MODULE)
    parser.add_argument("run_dir")
    parser.add_argument("--launch", type=int, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--config")
    parser.add_argument("--mode", choices=(DATA, *CONTEXT_MODES), default=DATA)
    args = parser.parse_args(argv)
    split = args.mode != DATA  # context parallel: every rank sees every GPU and uses cuda:LOCAL_RANK
    physical = map_local_gpu() if args.device == "cuda" and not split else os.environ.get("LOCAL_RANK", "0")
    import torch

    if args.device == "cuda":
        torch.cuda.set_device(int(physical) if split else 0)
    torch.distributed.init_process_group(backend="nccl" if args.device == "cuda" else "gloo")
    lock = RunLock.acquire(args.run_dir)  # under the owner's lock (its token), or refused
    if lock.token is not None:  # the lock was free: the owner is gone, so no one would merge this rank's work
        lock.release()
        raise InputError(f"{args.run_dir} has no owner (the launching process is gone)",
                         fix=f"fluxnb generate --resume {args.run_dir} --gpus N")
    manifest = read_manifest(args.run_dir)
    config = load_config(args.config)
    choice = resolve_model(manifest["model"]["name"], config)
    request = request_from_dict(choice.spec, manifest["parameters"])
    pending = pending_indexes(args.run_dir, manifest, len(request.points()))
    placement = _placement(args.device, physical, split)
    mine = pending if split else shard(pending, placement["world_size"], placement["rank"])
    # context parallel: rank 0 writes the images, the other ranks compute with it and write nothing
    writes = not split or placement["rank"] == 0
    part = RankPart(args.run_dir, args.launch, placement["rank"], placement["world_size"], placement,
                    manifest["images"])
    part.record(shard=mine)
    start = time.perf_counter()
    try:
        model = load_model(choice.spec, checkpoint=manifest["model"].get("checkpoint"), device=args.device,
                           config=config, progress=False)
        part.record(load_seconds=round(time.perf_counter() - start, 3), load_report=model.report.to_dict())
        if not owner_alive(args.run_dir):  # the owner died while this rank loaded: a resume may be writing now
            raise _owner_gone(args.run_dir)
        if split:
            check_context_parallel(args.mode, placement["world_size"], args.device, model.backend,
                                   bool(model.spec.compile))
            if model.report.offload != "none":
                raise RequestError("parallel", f"--parallel {args.mode}: the model is offloaded to the CPU on this "
                                   "GPU, so no rank holds it whole", fix="a GPU with room for the whole model")
            placement["context_parallel"] = enable_context_parallel(model.pipe, args.mode, placement["world_size"])
            part.record(context_parallel=placement["context_parallel"])
        torch.distributed.barrier()  # every rank loaded: generation starts together (throughput without load)
        part.record(generate_started=time.time())
        generate(model, request, part if writes else None, progress=False, model_reason=manifest["model"].get("reason"),
                 only=mine, callback_on_step_end=stop_when_owner_gone(args.run_dir),
                 on_image=lambda image: print(f"rank {placement['rank']}: {image.path}", flush=True))
    except GenerationFailed as exc:  # out of memory on some items: recorded in the part; exit 0 so that torchrun
        # does not stop the other ranks, and the owner lists these items as missing, with their errors
        part.record(status="incomplete", error=str(exc).splitlines()[0], generate_finished=time.time())
        torch.distributed.destroy_process_group()
        return 0
    except BaseException as exc:
        part.record(status="failed", error=f"{type(exc).__name__}: {str(exc)[:500]}", generate_finished=time.time())
        raise
    part.record(status="complete", generate_finished=time.time())
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main())
