"""The Hugging Face hub as fluxnb sees it: offline mode, the cache, the token, reachability, damaged files.

Every answer comes from huggingface_hub itself (its constants, cache look-up and login), so fluxnb agrees with
what the hub will actually do: offline mode is huggingface_hub's own flag, which HF_HUB_OFFLINE and
TRANSFORMERS_OFFLINE both set (read once, when huggingface_hub is imported).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants


def offline_mode() -> bool:
    """huggingface_hub is in offline mode: nothing will be downloaded."""
    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """Where hub downloads go (HF_HUB_CACHE, or HF_HOME/hub)."""
    return Path(constants.HF_HUB_CACHE)


def cache_folder(repo_id: str) -> Path:
    """The folder of one model repo in the hub cache (what to delete to download it again)."""
    from huggingface_hub.file_download import repo_folder_name

    return hf_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")


def is_cached(repo_id: str) -> bool:
    """A snapshot of `repo_id` (its model_index.json) is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json", cache_dir=hf_cache_dir()), str)


def hub_reachable(repo_id: str) -> tuple[bool, str]:
    """Whether the hub answers for `repo_id` now (5 s at most), and why not."""
    from huggingface_hub import model_info

    if offline_mode():
        return False, "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)"
    try:
        model_info(repo_id, timeout=5)
    except Exception as exc:  # any network/HTTP failure means "cannot download now"; the reason is reported
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return True, ""


def hf_token() -> str | None:
    """The token from HF_TOKEN or the saved `huggingface_hub` login; never a parameter, never logged."""
    from huggingface_hub import get_token

    return get_token()


def find_corrupt_weights(source: str) -> tuple[Path, str] | None:
    """The first .safetensors file of a local folder or cached hub snapshot that cannot be opened, and why."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError
    from safetensors import SafetensorError, safe_open

    folder = Path(source)
    if not folder.is_dir():
        try:
            folder = Path(snapshot_download(source, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError):  # not cached, or not a repo id: nothing to inspect
            return None
    for file in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            return file, str(exc)
    return None
