"""Hostile and careless input, each case with real files: one message (what, which file, the fix), exit status 2,
no traceback, nothing unbounded (alias bombs, huge files, /dev/zero)."""

from __future__ import annotations

import builtins
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fluxnb
from fluxnb.cli import main
from fluxnb.core.errors import KnowledgeError
from fluxnb.core.userfiles import MAX_DEPTH, load_yaml, parse_yaml
from fluxnb.knowledge.base import KNOWLEDGE_FILE, load_knowledge, parse_knowledge
from fluxnb.models.images import load_image_file
from fluxnb.models.params import read_prompts_file
from fluxnb.runs.outputs import MANIFEST
from fluxnb.runs.runner import RUN_RECORD, parse_cli_value, read_parameters_file

# 234 bytes that expand to 9**9 (387 million) strings: refused, never expanded, not even in the message
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


def fails_with(capsys, argv: list[str], *texts: str, code: int = 2) -> str:
    """Run the CLI in this process; assert the exit status, one error block and each text in it."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("fluxnb: error: ") and "Traceback" not in err, err
    for text in texts:
        assert text in err, err
    return err


# ---------------------------------------------------------------- YAML limits (fluxnb.core.userfiles)


def test_alias_bomb_is_refused_quickly_everywhere(capsys, tmp_path: Path, monkeypatch):
    """Refused while counting, never expanded: the count visits each distinct node once (memoized), a few hundred
    steps for a document of 387 million expanded strings (counted, not timed: a loaded machine changes nothing)."""
    from fluxnb.core import userfiles

    steps = []
    counting = userfiles._expanded_size
    monkeypatch.setattr(userfiles, "_expanded_size", lambda *args: steps.append(1) or counting(*args))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB, encoding="utf-8")
    err = fails_with(capsys, ["run", "01_text_to_image", "-f", str(bomb)],
                     f"parameters file {bomb}: aliases that expand to more than 100,000 nodes (an alias bomb?)")
    assert len(err) < 500  # the message never expands the document
    err = fails_with(capsys, ["generate", "--prompts", str(bomb)], f"prompts file {bomb}: aliases that expand")
    assert len(err) < 500
    err = fails_with(capsys, ["doctor", "--config", str(bomb)], "aliases that expand to more than 100,000 nodes")
    assert 0 < len(steps) < 3 * 1000  # three documents; an unmemoized count takes over 100,000 steps for each
    assert parse_cli_value(ALIAS_BOMB) == ALIAS_BOMB  # -p: taken as the plain text it is, unexpanded


def test_yaml_limits_depth_duplicates_recursion_and_size(tmp_path: Path):
    with pytest.raises(fluxnb.FluxnbError, match=f"nesting deeper than {MAX_DEPTH} levels at line 1"):
        parse_yaml("[" * 5000 + "]" * 5000, "x")
    with pytest.raises(fluxnb.FluxnbError, match=r"duplicate key 'steps' \(first at line 1; YAML would silently"):
        parse_yaml("steps: 4\nwidth: 64\nsteps: 8\n", "x")
    with pytest.raises(fluxnb.FluxnbError, match="a recursive alias"):
        parse_yaml("&a [1, *a]", "x")
    assert parse_yaml("base: &b {steps: 4}\nrun:\n  <<: *b\n  width: 64\n", "x") == {
        "base": {"steps": 4}, "run": {"steps": 4, "width": 64}}  # merge keys are not duplicates
    big = tmp_path / "big.yaml"
    big.write_text("prompt: " + "x" * 600_000 + "\n", encoding="utf-8")
    with pytest.raises(fluxnb.FluxnbError, match=f"parameters file {big} is 600,009 bytes; the limit is 524,288"):
        read_parameters_file(big)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("steps: 4\nprompt: café\n".encode("latin-1"), "is not UTF-8: byte 0xe9 at line 2"),
        ("steps: 4\n".encode("utf-16"), "is UTF-16 encoded; fluxnb reads UTF-8"),
        (("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 40))).encode(), "nesting deeper than 32 levels"),
        (b"steps: 4\nsteps: 8\n", "duplicate key 'steps'"),
        (b"- a\n- b\n", "must hold a mapping of NAME: VALUE, got list"),
    ],
)
def test_parameters_files_that_are_not_usable(capsys, tmp_path: Path, content: bytes, text: str):
    file = tmp_path / "params.yaml"
    file.write_bytes(content)
    fails_with(capsys, ["run", "01_text_to_image", "-f", str(file)], f"parameters file {file}", text, "Fix: ")


def test_parameters_file_that_is_a_directory_a_device_or_a_loop(capsys, tmp_path: Path):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    for path, text in ((tmp_path, "is a directory, not a file"), (Path("/dev/zero"), "is a device"),
                       (loop, "is a symbolic link loop")):
        fails_with(capsys, ["run", "01_text_to_image", "-f", str(path)], f"parameters file {path} {text}")


def test_model_config_not_utf8_or_huge_is_one_config_error(capsys, tmp_path: Path, monkeypatch):
    from fluxnb.core import userfiles

    opened: list[Path] = []  # the files fluxnb.core.userfiles opens (counted, not timed)
    monkeypatch.setattr(userfiles, "open", lambda file, *args, **kwargs: opened.append(Path(file)) or
                        builtins.open(file, *args, **kwargs), raising=False)
    config = tmp_path / "model_config.yaml"
    config.write_bytes(b"models:\n  caf\xe9: {}\n")
    fails_with(capsys, ["generate", "--prompt", "a fox", "--config", str(config)],
               f"{config} is not a valid fluxnb model config", "is not UTF-8: byte 0xe9 at line 2")
    assert config in opened  # the control: a small file is read
    opened.clear()
    config.write_bytes(b"models: {}\n" + b"# padding\n" * 1_000_000)  # 10 MB: refused unread
    fails_with(capsys, ["generate", "--prompt", "a fox", "--config", str(config)], "the limit is 524,288 bytes")
    assert config not in opened


def test_prompts_files_are_bounded(tmp_path: Path):
    many = tmp_path / "many.txt"
    many.write_text("".join(f"prompt {i}\n" for i in range(1001)), encoding="utf-8")
    with pytest.raises(fluxnb.RequestError, match="holds 1,001 prompts; the limit is 1,000 per run"):
        read_prompts_file(many)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("un caf\xe9\n".encode("latin-1"))
    with pytest.raises(fluxnb.RequestError, match="parameter `prompts`: prompts file .* is not UTF-8"):
        read_prompts_file(latin)


# ---------------------------------------------------------------- model config: values out of what FLUX can do


def test_config_refuses_non_finite_guidance_and_uncapped_limits(tmp_path: Path):
    base = fluxnb.load_config().path
    text = Path(base).read_text(encoding="utf-8")
    for old, new, expected in (
        ("guidance_scale: 3.5", "guidance_scale: .nan", "guidance_scale: must be a finite number > 0, got nan"),
        ("guidance_scale: 3.5", "guidance_scale: .inf", "guidance_scale: must be a finite number > 0, got inf"),
        ("max_steps: 50", "max_steps: 1000000000", "max_steps: must be between 1 and 1000 (the flow-matching"),
        ("max_size: [2048, 2048]", "max_size: [100000, 2048]", "width 100000 is above 2048 (FLUX.1 is made for"),
    ):
        assert old in text, old
        config = tmp_path / "model_config.yaml"
        config.write_text(text.replace(old, new, 1), encoding="utf-8")
        with pytest.raises(fluxnb.ConfigError) as info:
            fluxnb.load_config(config)
        assert expected in str(info.value)


# ---------------------------------------------------------------- run folders and notebooks given to resume


def generate_folder(tmp_path: Path, manifest) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (run / MANIFEST).write_bytes(data)
    return run


@pytest.mark.parametrize(
    ("manifest", "text"),
    [
        ([1, 2], "is not a fluxnb manifest: the top level is a JSON list, not an object"),
        ({"job": "generate", "images": [1, 2]}, "images[0] is a JSON int, not an object"),
        ({"job": "generate", "images": [{"seed": 1}]}, 'images[0] has no "file" name'),
        ({"job": "generate", "images": [{"file": "../../etc/passwd"}]}, "is not a plain file name in the run folder"),
        ('{"job": "caf\xe9"}'.encode("latin-1"), "manifest.json is not UTF-8: byte 0xe9"),
        (b'{"job": ', "is not valid JSON"),
    ],
)
def test_damaged_manifests_are_named(capsys, tmp_path: Path, manifest, text):
    run = generate_folder(tmp_path, manifest)
    fails_with(capsys, ["generate", "--resume", str(run)], str(run / MANIFEST), text, "Fix: restore manifest.json")


def test_resume_of_a_file_or_a_missing_folder(capsys, tmp_path: Path):
    file = tmp_path / "a-file"
    file.write_text("x", encoding="utf-8")
    fails_with(capsys, ["generate", "--resume", str(file)], f"{file} is a file, not a run folder")
    fails_with(capsys, ["run", "01_text_to_image", "--resume", str(file)], f"{file} is a file, not a run folder")
    missing = tmp_path / "nope"
    fails_with(capsys, ["generate", "--resume", str(missing)], f"run folder {missing} does not exist")
    fails_with(capsys, ["generate", "--resume", str(tmp_path)], f"{tmp_path} is not a run folder (manifest.json")


def test_resume_of_a_read_only_folder(tmp_path: Path):
    """Real permissions: as root the folder is handed to `nobody`, who cannot write it (root could)."""
    base = Path(tempfile.mkdtemp(prefix="fluxnb-ro-"))
    os.chmod(base, 0o755)
    run = base / "run"
    run.mkdir()
    (run / MANIFEST).write_text(json.dumps({"job": "generate", "model": {"name": "flux-tiny"},
                                            "parameters": {"prompts": ["a fox"]}, "images": []}), encoding="utf-8")
    os.chmod(run / MANIFEST, 0o444)
    os.chmod(run, 0o555)
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.getuid() == 0 else []
    done = subprocess.run([*prefix, sys.executable, "-m", "fluxnb.cli", "generate", "--resume", str(run)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                              str(Path(fluxnb.__file__).parent.parent), os.environ.get("PYTHONPATH")]))})
    os.chmod(run, 0o755)
    assert done.returncode == 2, done.stderr
    assert (f"fluxnb: error: cannot write the run folder's lock file {run / '.fluxnb-writer.lock'}: Permission denied "
            "(the folder is read-only)") in done.stderr
    assert "Fix: make the folder writable" in done.stderr and "Traceback" not in done.stderr


def test_resume_refuses_new_parameters_and_other_commands_folders(capsys, tmp_path: Path):
    generate_run = generate_folder(tmp_path, {"job": "generate", "model": {"name": "flux-tiny"},
                                              "parameters": {"prompts": ["a fox"]}, "images": []})
    fails_with(capsys, ["generate", "--resume", str(generate_run), "--seed", "5"],
               "parameter `seed`: --resume finishes the run's original request exactly; --seed would change it",
               f"Fix: fluxnb generate --resume {generate_run} (engine options such as --gpus may stay)")
    fails_with(capsys, ["generate", "--resume", str(generate_run), "--prompts", "p.txt", "--steps", "3"],
               "--prompts, --steps would change it")
    fails_with(capsys, ["run", "01_text_to_image", "--resume", str(generate_run)],
               f"{generate_run} was made by fluxnb generate, not by `fluxnb run 01_text_to_image`",
               f"Fix: fluxnb generate --resume {generate_run}")
    notebook_run = tmp_path / "nb"
    notebook_run.mkdir()
    (notebook_run / MANIFEST).write_text(json.dumps({"job": "01_text_to_image", "images": []}), encoding="utf-8")
    (notebook_run / RUN_RECORD).write_text(json.dumps({"notebook": "01_text_to_image",
                                                       "parameters": {"steps": 2, "prompt": "a fox"}}))
    fails_with(capsys, ["generate", "--resume", str(notebook_run)],
               "was made by `fluxnb run 01_text_to_image`, not by fluxnb generate",
               f"Fix: fluxnb run 01_text_to_image --resume {notebook_run}")
    fails_with(capsys, ["run", "01_text_to_image", "--resume", str(notebook_run), "-p", "steps", "3"],
               "parameter `steps`: --resume finishes the original request exactly, and steps='3' (the run has '2')")
    fails_with(capsys, ["run", "01_text_to_image", "--resume", str(notebook_run), "-p", "width", "64"],
               "width='64' (the run left it at the notebook's default)")
    fails_with(capsys, ["run", "02_image_to_image", "--resume", str(notebook_run)],
               "was made by `fluxnb run 01_text_to_image`, not 02_image_to_image")


def test_truncated_executed_notebook_on_resume(capsys, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST).write_text(json.dumps({"job": "01_text_to_image", "images": []}), encoding="utf-8")
    executed = run / "01_text_to_image.ipynb"
    executed.write_text('{"cells": [{"cell_type": "code", "sou', encoding="utf-8")
    fails_with(capsys, ["run", "01_text_to_image", "--resume", str(run)],
               f"the executed notebook {executed} is damaged", "It is kept as it is.", "Fix: start a new run")
    assert executed.read_text(encoding="utf-8").endswith('"sou')


def test_corrupt_notebook_and_unknown_kernel(capsys, tmp_path: Path, outputs_dir: Path):
    notebook = tmp_path / "broken.ipynb"
    notebook.write_text('{"cells": [', encoding="utf-8")
    fails_with(capsys, ["run", str(notebook)], f"notebook {notebook} cannot be read as a Jupyter notebook",
               "Fix: restore it")
    fails_with(capsys, ["run", "01_text_to_image", "--kernel", "nope"],
               "--kernel 'nope' is not an installed Jupyter kernel. Installed: ", "python3")
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())


# ---------------------------------------------------------------- init images


def png_claiming(path: Path, width: int, height: int) -> None:
    """A small real PNG whose header claims width x height (what a decompression bomb looks like)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_init_images_that_are_not_usable(capsys, tmp_path: Path):
    bomb = tmp_path / "bomb.png"
    png_claiming(bomb, 30000, 30000)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    for path, text in ((bomb, "is too large to decode safely"), (Path("/dev/zero"), "is a device"),
                       (tmp_path, "is a directory, not a file"), (loop, "is a symbolic link loop")):
        fails_with(capsys, ["generate", "--prompt", "a fox", "--init-image", str(path)],
                   f"parameter `init_image`: {str(path)!r} {text}" if path != bomb else text)
    big = tmp_path / "big.png"
    png_claiming(big, 10000, 8000)  # under PIL's bomb limit, above fluxnb's
    fails_with(capsys, ["generate", "--prompt", "a fox", "--init-image", str(big)],
               "is 10000x8000 pixels (80 megapixels); the limit is 64 megapixels")


def test_init_image_16_bit_and_exif_orientation(tmp_path: Path):
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)).save(sixteen)  # mid-grey, 16-bit
    with Image.open(sixteen) as raw:
        assert raw.mode.startswith("I")  # what PIL hands over; convert("RGB") would clip it to white
    pixels = np.asarray(load_image_file("init_image", sixteen))
    assert pixels.shape == (16, 16, 3) and np.all(pixels == 128)
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (40, 20), "white").save(photo, exif=exif)
    assert load_image_file("init_image", photo).size == (20, 40)


# ---------------------------------------------------------------- doctor --versions


@pytest.mark.parametrize(
    ("versions", "text"),
    [("=1.0", "'=1.0' is not NAME=VERSION"), ("", "--versions is empty"),
     ("diffusers>=0.35", "'diffusers>=0.35' is not NAME=VERSION"),
     ("difusers=0.35", "'difusers' is not a package the knowledge base knows (did you mean diffusers?)"),
     ("diffusers=" + "1" * 5000, "is not NAME=VERSION"), ("diffusers=soon", "diffusers='soon' is not a valid")],
)
def test_doctor_versions_refuses_what_is_not_name_equals_version(capsys, versions: str, text: str):
    err = fails_with(capsys, ["doctor", "--versions", versions], text, "Fix: give NAME=VERSION pairs")
    assert len(err) < 600


# ---------------------------------------------------------------- fluxnb diagnose: bounded input, linear patterns


def test_diagnose_reads_a_bounded_tail_of_an_endless_device(capsys):
    assert main(["diagnose", "/dev/zero"]) == 1  # an unbounded read would never return
    err = capsys.readouterr().err
    assert "stopped reading after 268,435,456 bytes (the input does not end)" in err


def test_diagnose_searches_the_tail_of_a_large_file(capsys, tmp_path: Path):
    log = tmp_path / "log.txt"
    log.write_bytes(b"x" * (6 * 2**20) + b"\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate\n")
    assert main(["diagnose", str(log)]) == 0
    out = capsys.readouterr()
    assert "cuda-out-of-memory" in out.out and "its last 4,194,304 were searched" in out.err


MAX_SYMPTOM_WIDTH = 4096  # characters; the knowledge base's widest symptom spans 486


def test_every_symptom_pattern_is_linear_in_its_input():
    """A complexity check, not a timing (a loaded machine changes nothing): every symptom pattern matches at most
    MAX_SYMPTOM_WIDTH characters (the regex parser's own width bound), so a match attempt at one position of a log
    reads a bounded stretch of it, and a search is linear in the log's length. A `.*` has no bound: refused here."""
    try:  # the stdlib's own regex parser: the only place a pattern's width is known
        from re import _parser
    except ImportError:  # Python 3.10
        import sre_parse as _parser

    for entry in load_knowledge().entries:
        for pattern in entry.symptoms:
            low, high = _parser.parse(pattern.pattern).getwidth()
            assert high <= MAX_SYMPTOM_WIDTH, f"{entry.id}: {pattern.pattern!r} can match {high:,} characters"


def test_unbounded_symptom_patterns_are_refused(tmp_path: Path):
    data = load_yaml(Path(fluxnb.__file__).parent / KNOWLEDGE_FILE, "knowledge")
    data["entries"][0]["symptoms"] = ["Some weights of .* were not used"]
    with pytest.raises(KnowledgeError, match=r"repeats without bound \(\*, \+ or \{n,\}\)"):
        parse_knowledge(data)
