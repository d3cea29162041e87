"""The L4 host rehearsal: the user's own commands at full size, inside a Workbench g2-standard-8's envelope.

What a user of the reference host types, run by the installed fluxnb (the wheel, in a venv outside the checkout),
on 8 CPUs (taskset), with the GPU memory limited the way an L4 limits it (FLUXNB_GPU_MEMORY_LIMIT=l4: 23034 MiB as
NVML counts the process, CUDA context included), on full-size synthetic weights (1024x1024, 28 steps) placed in a
Hugging Face cache on a RAM disk, so that `fluxnb generate --model NAME` and `fluxnb run 01_text_to_image -p model
NAME` load them exactly as they would load the downloaded model:

  flux-dev-torchao-fp8: generate (cold compile cache), generate (warm), generate (warm, no limit: the speed
                        baseline), run 01_text_to_image (warm)
  flux-dev-bnb-8bit:    generate, generate (no limit), run 01_text_to_image

For each run: seconds from the command's start to its first image saved, seconds per image (the second image, after
the first paid the compile), peak host RSS of the process tree and peak GPU memory as NVML reports it (sampled
every 50 ms), and the command's own phase figures (load, compile, per image). The time to read the weights from a
disk instead of the RAM disk is measured apart (a shard copied to disk, caches dropped, read back). Results go to
OUT/rehearsal.json after every run (a killed rehearsal keeps what finished) and a table at the end.

  python scripts/l4_rehearsal.py --out DIR [--fluxnb PATH] [--models fp8,bnb] [--tiny]

--models: which plans run (fp8, bnb, or both; a call of the device tool has 10 minutes: one each, on the same warm
machine, finds the checkpoints already built in its RAM disk).

--tiny: the same orchestration on a CPU with flux-tiny (64x64, 4 steps) for both models, no GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

L4_LIMIT = "l4"
LIMIT_ENV = "FLUXNB_GPU_MEMORY_LIMIT"
L4_MIB = 23034
TARGETS = {"peak_rss_gib": 28.0, "nvml_peak_gib": 22.5, "speed_loss": 0.05, "warm_first_image_s": 25.0}
CPUS = "0-7"  # a g2-standard-8 has 8 vCPUs
GIB = 2**30
# hub ids of the entries: the synthetic checkpoints are placed in the HF cache under these, so that the user's
# commands (no --checkpoint) find them as they would find the downloaded models
HUB_IDS = {"bf16": "black-forest-labs/FLUX.1-dev", "bnb-8bit": "diffusers/FLUX.1-dev-bnb-8bit"}
SNAPSHOT = "0" * 40


class Sampler(threading.Thread):
    """Peaks of a process tree's RSS and of GPU memory as NVML reports it, and the first PNG's time.

    GPU memory is read two ways: the whole GPU's `used` (less what it showed before the command started:
    `idle_gpu`), and the sum over the tree's processes of NVML's per-process figure (None where NVML cannot name
    them, e.g. another PID namespace)."""

    def __init__(self, pid: int, watch: Path, earlier: set[Path], start: float, period: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.watch, self.earlier, self.start_time, self.period = pid, watch, earlier, start, period
        self.peak_rss = 0
        self.peak_gpu = None
        self.peak_processes_gpu = None
        self.idle_gpu = None
        self.first_png = None
        self.done = threading.Event()
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
            self.peak_gpu = 0
            self.idle_gpu = int(pynvml.nvmlDeviceGetMemoryInfo(self._nvml[1]).used)
        except Exception:  # noqa: BLE001 - no NVML (a CPU dry run): no GPU figures
            self._nvml = None

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _processes_gpu(self, pids: set[int]) -> int | None:
        pynvml, handle = self._nvml
        mine = [p for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in pids]
        return sum(int(p.usedGpuMemory or 0) for p in mine) if mine else None

    def _tree_rss(self, procs: list[psutil.Process]) -> int:
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _new_png(self) -> bool:
        """A PNG in a run folder this command made (not in one of an earlier run)."""
        folders = [d for d in self.watch.iterdir() if d not in self.earlier] if self.watch.is_dir() else []
        return any(any(folder.rglob("*.png")) for folder in folders)

    def run(self) -> None:
        while not self.done.is_set():
            procs = self._tree()
            self.peak_rss = max(self.peak_rss, self._tree_rss(procs))
            if self._nvml:
                pynvml, handle = self._nvml
                self.peak_gpu = max(self.peak_gpu, int(pynvml.nvmlDeviceGetMemoryInfo(handle).used))
                used = self._processes_gpu({p.pid for p in procs})
                if used is not None:
                    self.peak_processes_gpu = max(self.peak_processes_gpu or 0, used)
            if self.first_png is None and self._new_png():
                self.first_png = time.perf_counter() - self.start_time
            time.sleep(self.period)


def monitored(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict:
    """Run one command on CPUS, sample it, and read its run folder afterwards."""
    outputs = cwd / "outputs"
    before = set(outputs.iterdir()) if outputs.is_dir() else set()
    taskset = ["taskset", "-c", CPUS] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 8 else []
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen([*taskset, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(process.pid, outputs, before, start)
        sampler.start()
        for line in process.stdout:  # each line with the seconds since the command started: where the time goes
            out.write(f"[{time.perf_counter() - start:7.2f}] {line}")
        process.wait()
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - start
    result = {"argv": argv[1:], "returncode": process.returncode, "wall_s": round(wall, 2),
              "first_image_s": round(sampler.first_png, 2) if sampler.first_png is not None else None,
              "peak_rss_gib": round(sampler.peak_rss / GIB, 2),
              "nvml_peak_gib": round(sampler.peak_gpu / GIB, 2) if sampler.peak_gpu is not None else None,
              "nvml_idle_gib": round(sampler.idle_gpu / GIB, 2) if sampler.idle_gpu is not None else None,
              "nvml_process_peak_gib": (round(sampler.peak_processes_gpu / GIB, 2)
                                        if sampler.peak_processes_gpu is not None else None),
              "log": log.name}
    new = sorted(set(outputs.iterdir()) - before) if outputs.is_dir() else []
    if new:
        manifest = json.loads((new[-1] / "manifest.json").read_text(encoding="utf-8"))
        images = manifest.get("images", [])
        report = manifest.get("load_report") or {}
        result.update(run_folder=new[-1].name, status=manifest.get("status"), images=len(images),
                      load_s=round(report.get("load_seconds", 0.0), 2),
                      image_s=[img.get("seconds") for img in images],
                      compile_s=[(img.get("compile") or {}).get("seconds") for img in images],
                      torch_peak_reserved_gib=[round(img["peak_memory"].get("peak_reserved_bytes", 0) / GIB, 2)
                                               for img in images if "peak_memory" in img],
                      limit=(images[0]["peak_memory"].get("limit") if images else None),
                      notes=[n for n in report.get("notes", []) if "GPU memory limited" in n or "compile cache" in n])
    return result


def hub_cache(hf_home: Path, checkpoints: dict[str, Path]) -> None:
    """Place each synthetic checkpoint in the HF cache under its entry's hub id (a snapshot that links to it)."""
    for kind, folder in checkpoints.items():
        repo = hf_home / "hub" / ("models--" + HUB_IDS[kind].replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(SNAPSHOT, encoding="utf-8")
        (repo / "snapshots").mkdir(exist_ok=True)
        link = repo / "snapshots" / SNAPSHOT
        if not link.exists():
            link.symlink_to(folder, target_is_directory=True)


def build_checkpoints(python: str, env: dict[str, str], tiny: bool, log: Path, kinds: list[str]) -> dict[str, Path]:
    """The synthetic checkpoints `kinds` (bf16, bnb-8bit), built once in FLUXNB_SYNTHETIC (a warm machine keeps
    them: a later call finds them)."""
    code = ("import json, sys; from fluxnb.models.synthetic import ensure_synthetic_checkpoint as e; "
            "from fluxnb.models.tiny import TINY_DIMS; "
            "d = TINY_DIMS if sys.argv[1] == 'tiny' else None; dev = 'cpu' if d else 'cuda'; "
            "print(json.dumps({k: str(e(k, dims=d, device=dev)) for k in sys.argv[2:]}))")
    start = time.perf_counter()
    done = subprocess.run([python, "-c", code, "tiny" if tiny else "full", *kinds], env=env, capture_output=True,
                          text=True)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode:
        raise SystemExit(f"building the synthetic checkpoints failed:\n{done.stderr[-3000:]}")
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"checkpoints built in {time.perf_counter() - start:.0f} s: {paths}", flush=True)
    return {k: Path(v) for k, v in paths.items()}


def disk_read(checkpoint: Path, scratch: Path, sample: int = 4 * GIB) -> dict:
    """The rate of reading weights from a disk with the page cache dropped (the first `sample` bytes of the largest
    weights file, copied to the disk), and the checkpoint's read time at that rate: the load from a disk instead of
    a RAM disk, measured apart."""
    biggest = max(checkpoint.rglob("*.safetensors"), key=lambda p: p.stat().st_size)
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / biggest.name
    with open(biggest, "rb") as source, open(copy, "wb") as target:
        left = sample
        while left > 0 and (chunk := source.read(min(left, 64 * 2**20))):
            target.write(chunk)
            left -= len(chunk)
    os.sync()
    dropped = True
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        dropped = False
    start = time.perf_counter()
    with open(copy, "rb") as handle:
        while handle.read(64 * 2**20):
            pass
    seconds = time.perf_counter() - start
    size = copy.stat().st_size
    copy.unlink()
    total = sum(p.stat().st_size for p in checkpoint.rglob("*.safetensors"))
    return {"file": biggest.name, "bytes": size, "seconds": round(seconds, 2),
            "gb_per_s": round(size / seconds / 1e9, 2), "page_cache_dropped": dropped, "checkpoint_bytes": total,
            "checkpoint_read_s_at_this_rate": round(total / (size / seconds), 1), "disk": str(scratch)}


def profile_table(path: Path, rows: int = 45) -> str:
    """The profile's functions by cumulative seconds (the warm start's phases: imports, load, compile, steps)."""
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(str(path), stream=text).sort_stats("cumulative").print_stats(rows)
    return text.getvalue()


def save(out: Path, results: dict) -> None:
    (out / "rehearsal.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


def table(results: dict) -> str:
    rows = ["| run | limit | first image (s from start) | s/image | load s | peak RSS GiB | NVML peak GiB (GPU / "
            "processes) |", "|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        per_image = r.get("image_s") or []
        steady = per_image[-1] if per_image else None
        rows.append(f"| {name} | {r.get('limit_env') or 'none'} | {r.get('first_image_s')} | {steady} | "
                    f"{r.get('load_s')} | {r.get('peak_rss_gib')} | {r.get('nvml_peak_gib')} / "
                    f"{r.get('nvml_process_peak_gib')} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fluxnb", default=shutil.which("fluxnb"), help="the installed fluxnb command")
    parser.add_argument("--models", default="fp8,bnb", help="the plans to run: fp8, bnb or both (fp8,bnb)")
    parser.add_argument("--profile", action="store_true", help="one more warm float8 start under cProfile")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: flux-tiny, tiny synthetic dimensions")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fluxnb = Path(args.fluxnb).absolute()
    python = str(fluxnb.parent / "python")
    base = Path(os.environ.get("REHEARSAL_DIR", "/tmp/l4-rehearsal"))
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() and not args.tiny else base
    work, hf_home = base / "work", base / "hf-home"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "FLUXNB_SYNTHETIC": str(shm / "fluxnb-synthetic"), "FLUXNB_CACHE": str(base / "fluxnb-cache"),
           "PYTHONUNBUFFERED": "1", "HF_TOKEN": "hf_rehearsal_offline_never_sent"}  # the gated entry's token check
    for key in ("PYTHONPATH", "FLUXNB_OUTPUTS", "FLUXNB_CONFIG", LIMIT_ENV):
        env.pop(key, None)
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": CPUS, "limit": f"{L4_LIMIT} "
               f"({L4_MIB} MiB)", "targets": TARGETS, "runs": {}}
    results["machine"] = json.loads(subprocess.run(
        [python, "-c", "import json, torch, diffusers, transformers, platform; print(json.dumps({'python': "
         "platform.python_version(), 'torch': torch.__version__, 'diffusers': diffusers.__version__, "
         "'transformers': transformers.__version__, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() "
         "else None}))"], env=env, capture_output=True, text=True, check=True).stdout)
    models = args.models.split(",")
    kinds = ["bf16"] * ("fp8" in models) + ["bnb-8bit"] * ("bnb" in models and not args.tiny)
    checkpoints = build_checkpoints(python, env, args.tiny, out / "build.log", kinds or ["bf16"])
    if not args.tiny:
        hub_cache(hf_home, checkpoints)
    size = [] if not args.tiny else ["--width", "64", "--height", "64", "--steps", "4"]
    size_p = [] if not args.tiny else ["-p", "width", "64", "-p", "height", "64", "-p", "steps", "4"]
    plans = {
        "flux-dev-torchao-fp8": [("generate cold", True, "generate"), ("generate warm", True, "generate"),
                                 ("generate warm, no limit", False, "generate"), ("run 01 warm", True, "run"),
                                 *([("generate warm, profiled", True, "profile")] if args.profile else [])],
        "flux-dev-bnb-8bit": [("generate", True, "generate"), ("generate, no limit", False, "generate"),
                              ("run 01", True, "run")],
    }
    wanted = {"fp8": "flux-dev-torchao-fp8", "bnb": "flux-dev-bnb-8bit"}
    plans = {model: steps for model, steps in plans.items() if model in {wanted[m] for m in models}}
    for model, steps in plans.items():
        name = "flux-tiny" if args.tiny else model
        for label, limited, command in steps:
            run_env = {**env, **({LIMIT_ENV: L4_LIMIT} if limited and not args.tiny else {})}
            profile = out / f"{model}-warm.prof"
            if command in ("generate", "profile"):
                argv = [str(fluxnb), "generate", "--model", name, "--prompt", "a lighthouse on a cliff at dawn",
                        "--num-images", "2", *size]
                if command == "profile":  # where a warm start's seconds go, function by function (cProfile)
                    argv = [python, "-m", "cProfile", "-o", str(profile), "-m", "fluxnb.cli", *argv[1:]]
            else:
                argv = [str(fluxnb), "run", "01_text_to_image", "-p", "model", name, "-p", "num_images", "1",
                        *size_p]
            key = f"{model}: {label}"
            print(f"== {key}", flush=True)
            log = out / (key.replace(": ", "-").replace(", ", "-").replace(" ", "_") + ".log")
            result = monitored(argv, work, run_env, log)
            result["limit_env"] = run_env.get(LIMIT_ENV)
            results["runs"][key] = result
            if command == "profile" and profile.is_file():
                (out / f"{model}-warm-profile.txt").write_text(profile_table(profile), encoding="utf-8")
            save(out, results)
            print(json.dumps(result), flush=True)
    if not args.tiny:
        results["disk_read"] = {kind: disk_read(path, base / "disk") for kind, path in checkpoints.items()}
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(out, results)
    print(table(results))
    return 0 if all(r["returncode"] == 0 for r in results["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
