"""LoRA adapter files as a request names them: found, read, recognised as FLUX LoRAs, fingerprinted.

Checked before any model loads, so that a wrong file costs a second, not a 17 GB load and a failed batch. Only the
safetensors header is read (keys and shapes), never the weights. What a file must look like is what diffusers'
FLUX LoRA loader accepts: the diffusers/PEFT layout (`transformer.<module>.lora_A.weight`), and the Kohya,
ComfyUI and BFL layouts (`lora_unet_double_blocks_...lora_down.weight`, `diffusion_model.double_blocks...`) that
diffusers converts on load.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.environment import package_version
from ..core.errors import RequestError
from ..core.hub import hf_cache_dir, hf_token
from ..core.userfiles import describe_path

PARAMETER = "loras"
# Compiled models pad every adapter to this rank once (diffusers' enable_lora_hotswap default target_rank), so that
# later adapters swap in without recompiling; FLUX LoRAs are commonly rank 4-128.
HOTSWAP_RANK = 128
MIN_PEFT = "0.15.0"  # hotswap_adapter_from_state_dict / prepare_model_for_compiled_hotswap
# FLUX transformer blocks as the diffusers, Kohya and BFL/ComfyUI layouts name them.
FLUX_HINTS = ("transformer_blocks", "double_blocks", "single_blocks")
# Stable Diffusion 1.x/2.x/XL LoRAs: UNet down/mid/up blocks (their attentions hold "transformer_blocks" too), SGM's
# input/output/middle blocks, diffusers' `unet.` prefix, SDXL's second text encoder (lora_te2_; FLUX files use te1 for
# CLIP and te3 for T5). FLUX's transformer has none of these, so one such key marks the file as SD.
SD_PATTERN = re.compile(r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block|^unet\.|"
                        r"lora_te2_)")
LORA_PATTERN = re.compile(r"(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)")
# owner/name, or owner/name/path/in/repo.safetensors (a two-part path ending in .safetensors is a local file)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/(?![\w.-]+\.safetensors$)[\w.-]+(/[\w./-]+\.safetensors)?$")


@dataclass(frozen=True)
class LoraChoice:
    """One adapter of a request, checked.

    Attributes:
        path: where it was given (a path with the home folder written as `~`, or a hub id); resume reads it back.
        name: the adapter's name in the pipeline (diffusers' adapter_name), unique in the request.
        scale: its weight (0 = off; 1 = as trained).
        file: the file's name (no folder), for metadata.
        sha256: the file's SHA-256, so that an image names exactly which adapter made it.
        layout: "diffusers", "kohya" or "bfl" (ComfyUI/BFL names); the last two are converted by diffusers on load.
        rank: the largest LoRA rank in the file (compiled models pad adapters to a fixed rank).
    """

    path: str
    name: str
    scale: float
    file: str
    sha256: str
    layout: str
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, scale: float | None = None) -> dict[str, Any]:
        """What an image's metadata says about the adapter: file name, fingerprint, scale (no path, no token)."""
        return {"name": self.name, "file": self.file, "sha256": self.sha256,
                "scale": self.scale if scale is None else scale}


def _fail(where: str, problem: str, fix: str) -> RequestError:
    return RequestError(PARAMETER, f"{where}: {problem}", fix=fix)


def check_scale(where: str, value: Any) -> float:
    """A finite number (negative values invert an adapter, as diffusers allows); 0 switches it off."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"scale must be a finite number, got {value!r}",
                    "give a number such as 1.0 (as trained), 0.5 (weaker) or 0 (off).")
    return float(value)


def _home_relative(file: Path) -> str:
    """The path as given, with the home folder written as `~` (no absolute home path in manifests)."""
    text = str(file)
    home = str(Path.home())
    return "~" + text[len(home):] if text == home or text.startswith(home + "/") else text


def resolve_file(source: str) -> tuple[Path, str]:
    """The local file of a path or hub id (`owner/name` or `owner/name/file.safetensors`), and how to record it."""
    file = Path(source).expanduser()
    if file.is_file():
        return file, _home_relative(file)
    problem = describe_path(file)
    if file.exists() and not file.is_dir() and problem:  # a pipe, a device, unreadable: named as what it is
        raise _fail(f"LoRA file {source!r}", problem, "give the path of a .safetensors LoRA file.")
    if file.is_dir():
        found = sorted(file.glob("*.safetensors"))
        if len(found) == 1:
            return found[0], _home_relative(found[0])
        raise _fail(f"LoRA {source!r}", f"is a folder with {len(found)} .safetensors files",
                    "give the path of the one .safetensors file to load.")
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download, list_repo_files

        repo, _, weight = source.partition("/")[2].partition("/")
        repo = source.split("/")[0] + "/" + repo
        try:
            if not weight:
                names = [n for n in list_repo_files(repo, token=hf_token()) if n.endswith(".safetensors")]
                if len(names) != 1:
                    raise _fail(f"LoRA {source!r}", f"the hub repository holds {len(names)} .safetensors files",
                                f"name one: {repo}/<file>.safetensors ({', '.join(names[:5])}).")
                weight = names[0]
            return Path(hf_hub_download(repo, weight, token=hf_token(), cache_dir=hf_cache_dir())), source
        except RequestError:
            raise
        except Exception as exc:  # offline, not found, gated: all mean "no file"; the reason is shown
            raise _fail(f"LoRA file {source!r}", "does not exist here (relative paths are taken from the working "
                        f"directory), and as a hub id the hub could not provide it ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                        "give the path of a local .safetensors file, or download it first where there is network "
                        "(`huggingface-cli download OWNER/NAME`).") from None
    raise _fail(f"LoRA file {source!r}", "does not exist",
                "give the path of a .safetensors LoRA file (relative paths are taken from the working directory), "
                "or a hub id such as owner/name/file.safetensors.")


def read_keys(file: Path, where: str) -> dict[str, list[int]]:
    """Tensor names and shapes from the safetensors header; a clear error for any other kind of file."""
    from safetensors import SafetensorError, safe_open

    if file.suffix.lower() != ".safetensors":
        raise _fail(where, f"is a {file.suffix or 'suffix-less'} file, not a .safetensors LoRA (pickled .ckpt/.pt/"
                    ".bin files can run code when loaded and are not accepted)",
                    "use the adapter's .safetensors file.")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        truncated = "not fully covered" in str(exc) or "incomplete" in str(exc) or _header_cut(file)
        problem = ("is truncated (the file is shorter than its header says: an interrupted download or copy)"
                   if truncated else f"cannot be read as safetensors ({exc})")
        raise _fail(where, problem, "download or copy the file again, and check its size against the source.") \
            from None


def _header_cut(file: Path) -> bool:
    """The file ends inside its own JSON header (the first 8 bytes give the header's length)."""
    with open(file, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        return True
    length = int.from_bytes(head, "little")
    return length < 100 * 2**20 and file.stat().st_size < 8 + length


def classify(keys: dict[str, list[int]], where: str) -> tuple[str, int]:
    """("diffusers" | "kohya", rank) of a FLUX LoRA; a clear error for anything else."""
    lora_keys = [k for k in keys if LORA_PATTERN.search(k)]
    if not lora_keys:
        sample = ", ".join(list(keys)[:3]) or "none"
        raise _fail(where, f"is not a LoRA adapter: none of its {len(keys)} tensors is a LoRA weight (lora_A/lora_B "
                    f"or lora_down/lora_up; first names: {sample})",
                    "give a LoRA .safetensors file; a full model checkpoint belongs in model_config.yaml.")
    sd_keys = [k for k in lora_keys if SD_PATTERN.search(k)]
    if sd_keys:
        raise _fail(where, f"is a LoRA for Stable Diffusion (1.x/2.x/XL), not for FLUX: its layers are UNet "
                    f"blocks ({sd_keys[0]})", "use a LoRA trained for FLUX.1-dev.")
    if not any(h in k for k in lora_keys for h in FLUX_HINTS):
        raise _fail(where, f"is a LoRA for another model: none of its layers is a FLUX transformer block "
                    f"(e.g. {lora_keys[0]})", "use a LoRA trained for FLUX.1-dev.")
    if any(k.startswith(("lora_unet_", "lora_te")) or "lora_down" in k for k in lora_keys):
        layout = "kohya"
    elif any("double_blocks" in k or "single_blocks" in k for k in lora_keys):
        layout = "bfl"  # ComfyUI / BFL module names (diffusion_model.double_blocks...), converted by diffusers
    else:
        layout = "diffusers"
    ranks = [shape[0] for k, shape in keys.items() if re.search(r"(lora_A|lora_down|lora\.down)", k) and shape]
    return layout, max(ranks, default=0)


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_peft() -> None:
    """diffusers loads LoRAs through PEFT; a clear message when it is missing or too old."""
    from packaging.version import Version

    version = package_version("peft")
    if version is None or Version(version) < Version(MIN_PEFT):
        found = "not installed" if version is None else f"peft {version} is installed"
        raise RequestError(PARAMETER, f"LoRA adapters are loaded by diffusers through PEFT, which is {found}.",
                           fix=f"`pip install 'peft>={MIN_PEFT}'` (the lock files pin it), or leave loras unset.")


def _one(item: Any, position: int) -> dict[str, Any]:
    """A dict {path, scale, name} from a dict or a "PATH[:SCALE]" string."""
    if isinstance(item, (str, Path)):
        text = str(item)
        path, sep, tail = text.rpartition(":")
        if not sep or not path or "/" in tail or tail.endswith(".safetensors"):
            return {"path": text, "scale": 1.0}
        try:
            return {"path": path, "scale": float(tail)}
        except ValueError:
            raise _fail(f"LoRA file {path!r}", f"scale must be a finite number, got {tail!r}",
                        "write PATH:SCALE with a number, e.g. style.safetensors:0.8.") from None
    if isinstance(item, dict):
        unknown = set(item) - {"path", "scale", "name", "file", "sha256", "layout", "rank"}
        if unknown or "path" not in item:
            raise RequestError(PARAMETER, f"item {position} must have a `path` (and optionally `scale`, `name`), "
                               f"got keys {sorted(item)}.", fix="e.g. loras=[{'path': 'style.safetensors', "
                               "'scale': 0.8}].")
        return item
    raise RequestError(PARAMETER, f"item {position} must be a path, 'PATH:SCALE' or a dict, got {item!r}.",
                       fix="e.g. loras=['style.safetensors:0.8'].")


def check_loras(value: Any) -> tuple[LoraChoice, ...]:
    """Every adapter of a request found, recognised and fingerprinted, or one error naming the file and the fix."""
    if value in (None, (), []):
        return ()
    items = [value] if isinstance(value, (str, Path, dict)) else value
    if not isinstance(items, (list, tuple)):
        raise RequestError(PARAMETER, f"must be a list of adapters, got {value!r}.",
                           fix="e.g. loras=[{'path': 'style.safetensors', 'scale': 0.8}].")
    require_peft()
    choices: list[LoraChoice] = []
    for position, raw in enumerate(items):
        item = _one(raw, position)
        source = item["path"]
        if not isinstance(source, (str, Path)) or not str(source).strip():
            raise RequestError(PARAMETER, f"item {position}: path must be a file path or hub id, got {source!r}.",
                               fix="e.g. loras=['style.safetensors'].")
        where = f"LoRA file {str(source)!r}"
        scale = check_scale(where, item.get("scale", 1.0))
        file, recorded = resolve_file(str(source))
        where = f"LoRA file {str(file)!r}"
        layout, rank = classify(read_keys(file, where), where)
        name = item.get("name") or re.sub(r"[^A-Za-z0-9_]+", "_", file.stem).strip("_") or f"lora{position}"
        if not isinstance(name, str) or any(c.name == name for c in choices):
            raise RequestError(PARAMETER, f"adapter name {name!r} (item {position}) is used twice.",
                               fix="give each adapter its own `name`.")
        choices.append(LoraChoice(recorded, name, scale, file.name, sha256_of(file), layout, rank))
    return tuple(choices)


def local_path(choice: LoraChoice) -> str:
    """The file to load: the recorded path with `~` expanded, or the hub cache's copy of a hub id."""
    return str(resolve_file(choice.path)[0])
