"""A run folder that cannot outgrow itself, and resumes that refuse what changed (issue 22, classes 2, 3, 5, 6).

- the cost of listing an image does not grow with the batch (bytes written to the manifest, counted: not timed);
- a request is bounded at validation (images, and the manifest bytes it will need), with the numbers;
- a tampered manifest or run record is refused with what is wrong (exit 2), never a traceback;
- a resume whose init image or LoRA file changed is refused, naming the file;
- a bad --checkpoint, an unwritable cache: one message, no run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import fluxnb
from fluxnb.cli import main
from fluxnb.core.userfiles import MAX_MANIFEST_BYTES
from fluxnb.models.params import MANIFEST_BUDGET, MAX_IMAGES_PER_REQUEST, manifest_estimate
from fluxnb.runs import outputs
from fluxnb.runs.outputs import MANIFEST, MANIFEST_LOG, RunFolder
from fluxnb.runs.runner import RUN_RECORD
from tests.cli_errors import refused

# ---------------------------------------------------------------- class 2: the manifest's cost per image


def _listing_bytes(monkeypatch, images: int, tmp_path: Path) -> tuple[int, RunFolder]:
    """Bytes written to manifest.json and its log while `images` images are saved into a new run folder."""
    written = [0]
    atomic, append = outputs.atomic_write_bytes, outputs.append_line

    def counted_atomic(path, data):
        if Path(path).name == MANIFEST:
            written[0] += len(data)
        return atomic(path, data)

    def counted_append(path, line):
        written[0] += len(line)
        return append(path, line)

    monkeypatch.setattr(outputs, "atomic_write_bytes", counted_atomic)
    monkeypatch.setattr(outputs, "append_line", counted_append)
    run = RunFolder.create("many", base=tmp_path / f"batch-{images}")
    picture = Image.new("RGB", (4, 4))
    for i in range(images):  # about 1 KB of metadata per entry, like a real image's
        run.save_image(picture, {"index": i, "seed": i, "prompt": f"prompt {i} " + "x" * 600, "steps": 28,
                                 "versions": {"torch": "2.13.0", "diffusers": "0.42.1"}, "seconds": 1.0})
    monkeypatch.undo()
    return written[0], run


def test_listing_an_image_costs_the_same_however_long_the_batch(monkeypatch, tmp_path: Path):
    """Rewriting the whole manifest after each image cost a batch of n images n^2/2 entries (78 MB manifests were
    seen); now the entries go to a log beside it, compacted once the log is as large as the manifest."""
    short, _ = _listing_bytes(monkeypatch, 400, tmp_path)
    long, run = _listing_bytes(monkeypatch, 1200, tmp_path)
    assert long / 1200 <= 1.1 * short / 400, (short / 400, long / 1200)  # per image: not growing
    manifest = fluxnb.read_manifest(run.path)  # the log's entries are read back
    assert [e["index"] for e in manifest["images"]] == list(range(1200))
    assert (run.path / MANIFEST_LOG).is_file()  # this large a batch is being listed through the log
    run.finish()  # compacted: manifest.json alone holds every entry
    assert not (run.path / MANIFEST_LOG).exists()
    assert len(json.loads((run.path / MANIFEST).read_text("utf-8"))["images"]) == 1200
    run.close()
    reopened = RunFolder.open(run.path)  # and a resume finds them all
    assert len(reopened.manifest["images"]) == 1200


def test_a_torn_log_line_is_skipped_and_its_image_adopted(monkeypatch, tmp_path: Path):
    _, run = _listing_bytes(monkeypatch, 700, tmp_path)
    run.close()
    log = run.path / MANIFEST_LOG
    lines = log.read_bytes().splitlines()
    log.write_bytes(b"\n".join(lines[:-1]) + b"\n" + lines[-1][: len(lines[-1]) // 2])  # a kill mid-append
    assert len(fluxnb.read_manifest(run.path)["images"]) == 699  # the torn line is not an entry
    reopened = RunFolder.open(run.path)  # its PNG is complete: adopted from its own metadata
    assert len(reopened.manifest["images"]) == 700 and not reopened.manifest.get("set_aside")


# ---------------------------------------------------------------- class 6: a request's size, at validation


def test_a_request_larger_than_a_run_is_refused_with_its_numbers(tiny_spec):
    with pytest.raises(fluxnb.RequestError) as info:  # 16.4 M images: counted, never expanded
        fluxnb.make_request(tiny_spec, prompt=[f"p {i}" for i in range(1000)], num_images=64,
                            sweep={"steps": list(range(1, 17)), "guidance_scale": [1 + i / 4 for i in range(16)]})
    assert str(info.value).startswith("parameter `num_images`: this request makes 16,384,000 images (1,000 prompt(s) "
                                      "x 64 image(s) x 256 sweep point(s)); one run makes at most 10,000.")
    assert "split it into 1639 runs or more" in str(info.value)
    fluxnb.make_request(tiny_spec, prompt=[f"p {i}" for i in range(100)], num_images=64, steps=1)  # 6,400: fine


def test_a_request_whose_manifest_would_outgrow_the_read_limit_is_refused(tiny_spec):
    with pytest.raises(fluxnb.RequestError, match=r"parameter `prompt`: this request's manifest would hold about "
                       r"\d+\.\d MiB \(100 prompt\(s\) x 64 image\(s\), with their prompts\); one run folder's "
                       r"manifest holds at most 48 MiB"):
        fluxnb.make_request(tiny_spec, prompt=["a fox " * 4000] * 100, num_images=64)


def test_the_manifest_estimate_bounds_a_real_manifest(tiny_model, tiny_spec, tmp_path: Path):
    """The estimate is an upper bound on what the request's images really write (with a LoRA and a sweep), so the
    largest accepted request stays under the read limit."""
    from fluxnb.models.synthetic_lora import build_lora

    adapter = build_lora(tiny_model.pipe.transformer, tmp_path / "style.safetensors")
    request = fluxnb.make_request(tiny_spec, prompt=["a lighthouse at dusk, 灯台", "a fox"], num_images=2,
                                  loras=[f"{adapter}:0.8"], sweep={"steps": [1, 2]}, width=32, height=32)
    run = RunFolder.create("estimate")
    run.record(model={"name": "flux-tiny"}, parameters=request.to_dict())
    fluxnb.generate(tiny_model, request, run, progress=False)
    run.finish()
    written = (run.path / MANIFEST).stat().st_size
    assert written < manifest_estimate(request) < 4 * written
    assert MAX_IMAGES_PER_REQUEST * manifest_estimate(request) / 8 < MAX_MANIFEST_BYTES  # the cap leaves room
    assert MANIFEST_BUDGET < MAX_MANIFEST_BYTES


# ---------------------------------------------------------------- class 5: tampered manifests and run records


def _real_run(capsys) -> Path:
    assert main(["generate", "--prompt", "a fox", "--num-images", "2", "--steps", "1", "--width", "32",
                 "--height", "32"]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


TAMPERED = {  # name -> (edit of the parsed manifest, or raw text; a text the refusal must hold)
    "deep nesting": (lambda m: None, "nested too deep"),
    "5,000-digit seed": (lambda m: None, "is not valid JSON"),
    "index as text": (lambda m: m["images"][0].update(index="0"), "images[0].index must be a non-negative integer"),
    "index as a list": (lambda m: m["images"][0].update(index=[0]), "images[0].index must be a non-negative"),
    "negative index": (lambda m: m["images"][0].update(index=-1), "images[0].index must be a non-negative"),
    "seed as text": (lambda m: m["images"][0].update(seed="7"), "images[0].seed is a JSON str"),
    "prompt as a number": (lambda m: m["images"][0].update(prompt=5), "images[0].prompt is a JSON int"),
    "sweep as text": (lambda m: m["images"][0].update(sweep="x"), "images[0].sweep is a JSON str"),
    "file outside": (lambda m: m["images"][0].update(file="../x.png"), "is not a plain file name"),
    "images missing": (lambda m: m.pop("images"), None),
    "failures as text": (lambda m: m.update(failures="x"), "`failures` is not a list"),
    "failure without an integer index": (lambda m: m.update(failures=[{"index": "a"}]), "failures[0] is not"),
    "model as text": (lambda m: m.update(model="flux-tiny"), "`model` is a JSON str"),
    "model name as a number": (lambda m: m["model"].update(name=5), "`model.name` is not a name"),
    "model without a name": (lambda m: m["model"].pop("name"), "holds no generate parameters"),
    "parameters as a list": (lambda m: m.update(parameters=[]), "`parameters` is a JSON list"),
    "parameters without prompts": (lambda m: m["parameters"].pop("prompts"), "the stored request has no prompts"),
    "parameters with an unknown key": (lambda m: m["parameters"].update(colour=1), "unknown keys colour"),
    "a huge seed in parameters": (lambda m: m["parameters"].update(seed=10**300), "parameter `seed`"),
    "job as a number": (lambda m: m.update(job=5), "`job` is a JSON int"),
    "set_aside as text": (lambda m: m.update(set_aside="x"), "`set_aside` is a JSON str"),
    "top level a list": (lambda m: None, "the top level is a JSON list"),
}


@pytest.mark.parametrize("variant", sorted(TAMPERED))
def test_a_tampered_manifest_is_refused_or_resumed_never_a_traceback(capsys, variant: str):
    run = _real_run(capsys)
    (run / sorted(p.name for p in run.glob("*.png"))[-1]).unlink()  # something left to make
    path = run / MANIFEST
    edit, text = TAMPERED[variant]
    if variant == "deep nesting":
        path.write_text(json.dumps({"job": "generate"})[:-1] + ', "images": ' + _nest(100_000) + "}")
    elif variant == "5,000-digit seed":
        path.write_text(path.read_text().replace('"seed": 0', '"seed": ' + "9" * 5000, 1))
    elif variant == "top level a list":
        path.write_text("[1, 2]")
    else:
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))
    code = main(["generate", "--resume", str(run)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if text is None:  # tolerable: the run is resumed
        assert code == 0, err
    else:
        assert code == 2 and err.startswith("fluxnb: error: ") and text in err, err


def test_a_run_record_that_is_too_large_or_too_deep_is_refused(capsys, outputs_dir: Path):
    assert main(["run", "01_text_to_image", "-p", "steps", "1", "-p", "width", "32", "-p", "height", "32"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    record = run / RUN_RECORD
    with open(record, "r+b") as handle:  # 300 MB, sparse: refused by its size, never read
        handle.truncate(300 * 2**20)
    refused(capsys, ["run", "01_text_to_image", "--resume", str(run)], f"{record} is 314,572,800 bytes, larger than "
            f"the {MAX_MANIFEST_BYTES:,} fluxnb writes")
    record.write_text('{"notebook": "01_text_to_image", "parameters": ' + _nest(100_000) + "}")
    refused(capsys, ["run", "01_text_to_image", "--resume", str(run)], f"{record} is nested too deep")


# ---------------------------------------------------------------- class 3: inputs that changed before a resume


def _picture(path: Path, color: str) -> Path:
    Image.new("RGB", (48, 32), color).save(path)
    return path


def test_a_changed_init_image_stops_the_resume_with_what_changed(capsys, tmp_path: Path):
    start = _picture(tmp_path / "start.png", "red")
    assert main(["generate", "--prompt", "hills", "--init-image", str(start), "--num-images", "3", "--steps", "2",
                 "--width", "32", "--height", "32"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    (run / sorted(p.name for p in run.glob("*.png"))[-1]).unlink()
    _picture(start, "blue")  # edited before the resume: would mix two starting pictures
    refused(capsys, ["generate", "--resume", str(run)], f"parameter `init_image`: the run in {run} was started from "
            f"other file contents than are there now ({start}: SHA-256 ", "when the run started, ",
            "Fix: put the original files back to resume, or start a new run")
    assert len(list(run.glob("*.png"))) == 2  # nothing made
    _picture(start, "red")  # the original back: the resume goes on
    assert main(["generate", "--resume", str(run)]) == 0
    assert len(fluxnb.read_manifest(run)["images"]) == 3


def test_a_replaced_lora_stops_the_resume(capsys, tiny_model, tmp_path: Path):
    from fluxnb.models.synthetic_lora import build_lora

    adapter = build_lora(tiny_model.pipe.transformer, tmp_path / "style.safetensors", seed=1)
    assert main(["generate", "--model", "flux-tiny", "--prompt", "a fox", "--num-images", "3", "--steps", "1",
                 "--width", "32", "--height", "32", "--lora", str(adapter)]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    (run / sorted(p.name for p in run.glob("*.png"))[-1]).unlink()
    build_lora(tiny_model.pipe.transformer, adapter, seed=2)  # another adapter at the same path
    refused(capsys, ["generate", "--resume", str(run)], f"parameter `loras`: the run in {run} was started from other "
            f"file contents", f"{adapter}: SHA-256 ")
    assert len(fluxnb.read_manifest(run)["images"]) == 2  # used to make every image again, adapters mixed


def test_a_notebook_resume_with_a_changed_init_image_is_refused_before_the_kernel(capsys, tmp_path: Path):
    start = _picture(tmp_path / "start.png", "red")
    assert main(["run", "02_image_to_image", "-p", "init_image", str(start), "-p", "steps", "2", "-p", "width", "32",
                 "-p", "height", "32", "-p", "num_images", "2"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    _picture(start, "green")
    refused(capsys, ["run", "02_image_to_image", "--resume", str(run)], "parameter `init_image`: the run in",
            f"{start}: SHA-256 ")


# ---------------------------------------------------------------- class 5: a bad --checkpoint, an unwritable cache


@pytest.mark.parametrize("kind", ["missing", "empty folder", "a file"])
def test_a_bad_checkpoint_is_refused_before_any_run_folder(capsys, tmp_path: Path, outputs_dir: Path, kind: str):
    checkpoint = tmp_path / "weights"
    if kind == "empty folder":
        checkpoint.mkdir()
    elif kind == "a file":
        checkpoint.write_text("x")
    text = {"missing": "does not exist", "empty folder": "holds no model_index.json", "a file": "is a file, not"}
    refused(capsys, ["generate", "--prompt", "x", "--model", "flux-tiny", "--checkpoint", str(checkpoint)],
            f"checkpoint {checkpoint} {text[kind]}", "Fix: give the folder of a checkpoint in the hub layout")
    assert not outputs_dir.exists() or not any(outputs_dir.iterdir())  # nothing created


def test_an_unwritable_cache_is_named_with_the_fix(tmp_path: Path):
    """A read-only FLUXNB_CACHE (real permissions: the process runs as `nobody` where the tests run as root)."""
    import subprocess
    import sys

    base = Path(tempfile.mkdtemp(prefix="fluxnb-ro-"))  # outside pytest's 0700 folders: `nobody` can reach it
    os.chmod(base, 0o755)
    cache = base / "cache"
    cache.mkdir()
    os.chmod(cache, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    work = base / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.getuid() == 0 else []
    env = {**os.environ, "FLUXNB_CACHE": str(cache), "FLUXNB_OUTPUTS": str(work / "outputs"), "HOME": str(work),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(fluxnb.__file__).parent.parent),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*prefix, sys.executable, "-m", "fluxnb.cli", "generate", "--model", "flux-tiny", "--prompt",
                           "x", "--steps", "1"], capture_output=True, text=True, timeout=300, env=env, cwd=work)
    os.chmod(cache, 0o755)
    shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 2, done.stderr
    assert f"cannot build the embedded tiny model in {cache}" in done.stderr and "Traceback" not in done.stderr
    assert "Fix: point FLUXNB_CACHE at a folder you can write" in done.stderr
