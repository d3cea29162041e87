"""Nothing outside fluxnb's own folders is touched (README "Guarantees"): every command that deletes, moves or writes
is tried through a path or a symbolic link that leads out of its folder, at a `victim` folder that must come out
exactly as it went in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fluxnb.cli import main
from fluxnb.core.errors import InputError
from fluxnb.core.files import own_folder
from fluxnb.models import compile_cache
from fluxnb.models.synthetic import remove_synthetic_checkpoint, synthetic_dir
from fluxnb.models.tiny import TINY_DIMS
from fluxnb.runs.outputs import LOCK_FILE, SET_ASIDE
from fluxnb.runs.shards import PARTS_DIR
from tests.cli_errors import refused


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder that is not fluxnb's, with a file in it."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "keep.txt").write_text("the user's file", encoding="utf-8")
    return folder


def untouched(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["keep.txt"] and \
        (folder / "keep.txt").read_text(encoding="utf-8") == "the user's file"



def finished_run(capsys) -> Path:
    """A real run folder of `fluxnb generate` (tiny model, one small image)."""
    assert main(["generate", "--prompt", "a fox", "--steps", "1", "--width", "32", "--height", "32"]) == 0
    out = capsys.readouterr().out
    return Path(out.strip().splitlines()[-1].removeprefix("run folder: "))


# ---------------------------------------------------------------- fluxnb cache --clear


def test_cache_clear_removes_only_the_folders_it_lists(capsys, tmp_path: Path, victim: Path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLUXNB_CACHE", str(cache))
    key = compile_cache.cache_key()
    (cache / "compile" / key / "fxgraph").mkdir(parents=True)
    (cache / "compile" / key / "fxgraph" / "entry").write_text("x")
    (cache / "compile" / "link").symlink_to(victim)  # a "key" that leads out of the cache
    for bad in (str(victim), "..", "../..", "link", f"{key}/fxgraph", "no-such-key"):
        refused(capsys, ["cache", "--clear", "--key", bad], f"compile cache key {bad!r} is not one of the folders in "
                f"{cache / 'compile'}", f"Fix: use one of: {key}")
        assert untouched(victim) and (cache / "compile" / key / "fxgraph" / "entry").is_file()
    assert main(["cache", "--json"]) == 0
    assert [f["key"] for f in json.loads(capsys.readouterr().out)["folders"]] == [key]  # the link is not listed
    assert main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out == f"removed:\n  {cache / 'compile' / key}\n"
    assert untouched(victim) and (cache / "compile" / "link").is_symlink()  # not followed, not removed


def test_a_compile_cache_folder_that_is_a_link_is_refused(tmp_path: Path, victim: Path):
    (tmp_path / "compile").symlink_to(victim)
    with pytest.raises(InputError, match="the compile cache folder .* is a symbolic link"):
        compile_cache.activate(tmp_path)
    with pytest.raises(InputError, match="is a symbolic link"):
        compile_cache.clear(tmp_path)
    assert untouched(victim)


# ---------------------------------------------------------------- resuming a run folder


@pytest.mark.parametrize("command", [["generate", "--resume"], ["run", "01_text_to_image", "--resume"]])
def test_a_lock_file_that_is_a_link_is_not_followed(capsys, victim: Path, command: list[str]):
    run = finished_run(capsys)
    (run / LOCK_FILE).unlink()
    (run / LOCK_FILE).symlink_to(victim / "keep.txt")  # the old code truncated and rewrote the file it points at
    refused(capsys, [*command, str(run)], f"the run folder's lock file {run / LOCK_FILE} is a symbolic link (to "
            f"{victim / 'keep.txt'}); fluxnb writes only into files and folders it made itself")
    assert untouched(victim)


def test_a_set_aside_folder_that_is_a_link_is_refused(capsys, victim: Path):
    run = finished_run(capsys)
    (run / "stray.png").write_bytes(b"not a png")  # a resume sets aside what it cannot account for
    (run / SET_ASIDE).symlink_to(victim)
    refused(capsys, ["generate", "--resume", str(run)], f"the run folder's set-aside folder {run / SET_ASIDE} is a "
            "symbolic link", "Fix: remove the link")
    assert untouched(victim) and (run / "stray.png").read_bytes() == b"not a png"  # nothing moved out


def test_a_parts_folder_that_is_a_link_is_refused(capsys, victim: Path):
    run = finished_run(capsys)
    (victim / "000-rank0.json").write_text("{}", encoding="utf-8")  # looks like a rank's part: merged, then deleted
    (run / PARTS_DIR).symlink_to(victim)
    refused(capsys, ["generate", "--resume", str(run)], f"the run folder's parts folder {run / PARTS_DIR} is a "
            "symbolic link")
    assert sorted(p.name for p in victim.iterdir()) == ["000-rank0.json", "keep.txt"]


# ---------------------------------------------------------------- the bench's checkpoint cleanup


def test_the_bench_cleanup_removes_only_a_checkpoint_folder_it_built(tmp_path: Path, victim: Path):
    folder = synthetic_dir("bf16", tmp_path, TINY_DIMS)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(victim)
    with pytest.raises(InputError, match=f"synthetic checkpoint {folder.name!r} is not one of the folders"):
        remove_synthetic_checkpoint("bf16", tmp_path, TINY_DIMS)
    assert untouched(victim) and folder.is_symlink()
    folder.unlink()
    (folder / "transformer").mkdir(parents=True)  # a real one is removed
    remove_synthetic_checkpoint("bf16", tmp_path, TINY_DIMS)
    assert not folder.exists()


# ---------------------------------------------------------------- fluxnb notebooks DIR


def test_the_notebook_copy_never_writes_through_a_link(capsys, tmp_path: Path, victim: Path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "01_text_to_image.ipynb").symlink_to(victim / "keep.txt")
    refused(capsys, ["notebooks", str(folder)], f"{folder / '01_text_to_image.ipynb'} (a symbolic link)",
            "Nothing was copied, so your edits are kept")
    assert untouched(victim) and [p.name for p in folder.iterdir()] == ["01_text_to_image.ipynb"]


# ---------------------------------------------------------------- the rule itself (fluxnb.core.files)


def test_own_folder_refuses_names_that_leave_the_parent_and_links(tmp_path: Path, victim: Path):
    for name in ("..", ".", "a/b", "", str(victim)):
        with pytest.raises(InputError, match="is not a plain folder name"):
            own_folder(tmp_path, name)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists but is not a folder"):
        own_folder(tmp_path, "file")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(InputError, match="is a symbolic link"):
        own_folder(tmp_path, "link")
    assert own_folder(tmp_path, "new").is_dir() and not os.path.islink(tmp_path / "new")
