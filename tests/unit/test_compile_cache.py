"""The persistent compile cache: real processes compile the tiny model's blocks; the second finds the first's work.

Inductor compiles on the CPU here, so the structural fact (FX graph cache hits instead of misses, the folder warm
before the load) is asserted on real files, not a timing.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fluxnb.cli import main
from fluxnb.core.errors import InputError
from fluxnb.models import compile_cache
from tests.paths import REPO_ROOT


def _child(key: str) -> dict:
    """A fresh process (the session's tiny checkpoint, the compile cache folder of `key`), importing the same fluxnb
    as this one (installed, or from PYTHONPATH on the GPU lane)."""
    env = dict(os.environ)
    for name in (compile_cache.ENV_INDUCTOR, compile_cache.ENV_TRITON, "FLUXNB_COMPILE_CACHE_SET"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "unit" / "compile_child.py"), key], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_finds_the_cache_warm_and_hits_it(tmp_path, capsys):
    key = f"test-{uuid.uuid4().hex[:8]}"
    first = _child(key)
    assert first["state"]["managed"] and not first["state"]["warm"]
    assert first["misses"] > 0 and first["hits"] == 0
    assert Path(first["state"]["path"]) == compile_cache.compile_root() / key
    second = _child(key)
    assert second["state"]["path"] == first["state"]["path"]
    assert second["state"]["warm"] and second["state"]["entries"] > 0
    assert second["hits"] == first["misses"] and second["misses"] == 0  # every compiled graph read back

    folder = next(f for f in compile_cache.describe()["folders"] if f["key"] == key)
    assert folder["entries"] == second["state"]["entries"] and folder["bytes"] > 0
    assert main(["cache", "--key", key]) == 0
    assert f"{key}: " in capsys.readouterr().out
    assert main(["cache", "--clear", "--key", key]) == 0
    assert first["state"]["path"] in capsys.readouterr().out
    assert not Path(first["state"]["path"]).exists()
    assert key not in {f["key"] for f in compile_cache.describe()["folders"]}


def test_key_names_torch_triton_and_gpu():
    key = compile_cache.cache_key("NVIDIA H100 80GB HBM3", (9, 0))
    assert key.startswith("torch") and "-triton" in key and key.endswith("nvidia-h100-80gb-hbm3-sm90")
    assert compile_cache.cache_key("NVIDIA L4", (8, 9)) != key


def test_a_user_cache_dir_is_kept_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_INDUCTOR, str(tmp_path / "mine"))
    monkeypatch.delenv("FLUXNB_COMPILE_CACHE_SET", raising=False)
    state = compile_cache.activate(tmp_path)
    assert (state.managed, state.key, state.warm) == (False, "user", False)
    assert os.environ[compile_cache.ENV_INDUCTOR] == str(tmp_path / "mine")


def test_activate_points_inductor_and_triton_at_the_keyed_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_INDUCTOR, raising=False)
    monkeypatch.delenv(compile_cache.ENV_TRITON, raising=False)
    monkeypatch.delenv("FLUXNB_COMPILE_CACHE_SET", raising=False)
    (tmp_path / "compile" / compile_cache.cache_key() / "fxgraph" / "ab").mkdir(parents=True)
    (tmp_path / "compile" / compile_cache.cache_key() / "fxgraph" / "ab" / "entry").write_text("x")
    state = compile_cache.activate(tmp_path)
    assert state.warm and state.entries == 1 and "warm" in state.note()
    assert os.environ[compile_cache.ENV_INDUCTOR] == state.path
    assert os.environ[compile_cache.ENV_TRITON] == str(Path(state.path) / "triton")
    compile_cache.record_warm(state.path, "flux-dev-torchao-fp8", None, 1024, 1024)
    assert list(compile_cache.warm_index(state.path)) == ["flux-dev-torchao-fp8 1024x1024"]
    with pytest.raises(InputError, match=f"(?s)compile cache key .no-such-key. is not one of the folders in "
                       f".*use one of: {compile_cache.cache_key()}"):
        compile_cache.clear(tmp_path, key="no-such-key")
    assert Path(state.path).exists()


@pytest.mark.parametrize("folder", ["missing"])
def test_clear_of_nothing_is_nothing(tmp_path, folder):
    assert compile_cache.clear(tmp_path / folder) == []


@pytest.mark.stack  # in both lanes: end to end on the guide's own line too
def test_a_compiled_entry_loads_with_the_cache_and_records_its_warm_size(tiny_spec, monkeypatch):
    """load_model sets the cache up before compiling; the image's metadata says where it is; the size it compiled
    is recorded for the doctor."""
    import dataclasses

    import fluxnb

    for name in (compile_cache.ENV_INDUCTOR, compile_cache.ENV_TRITON, "FLUXNB_COMPILE_CACHE_SET"):
        monkeypatch.delenv(name, raising=False)
    spec = dataclasses.replace(tiny_spec, compile=True)
    model = fluxnb.load_model(spec, device="cpu", progress=False)
    state = model.report.compile_cache
    assert state["managed"] and Path(state["path"]) == compile_cache.cache_dir()
    assert os.environ[compile_cache.ENV_INDUCTOR] == state["path"]
    assert any("transformer blocks wrapped in torch.compile" in note for note in model.report.notes)
    request = fluxnb.make_request(spec, prompt="a cat", steps=2, width=32, height=32)
    image = fluxnb.generate(model, request, progress=False)[0]
    assert image.metadata["compile"]["new_graphs"] > 0
    assert image.metadata["speed"]["compile_cache"] == state
    assert "flux-tiny 32x32" in compile_cache.warm_index(state["path"])
    assert compile_cache.count_entries(state["path"]) > 0


def test_compile_vae_compiles_the_decoder_alone_and_keeps_the_image(tiny_model, tiny_spec, monkeypatch):
    """`compile_vae: true` (both float8 entries): the VAE decoder is compiled with its convolutions in
    channels_last, the encoder (image-to-image) stays eager, and the decoded image is the eager model's. The blocks'
    graphs come from the cache the test above filled (same file, same worker), so mostly the decoder compiles here."""
    import dataclasses

    import numpy as np
    import torch

    import fluxnb
    from fluxnb.core.compat import compiled_call

    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    spec = dataclasses.replace(tiny_spec, compile=True, compile_vae=True)
    model = fluxnb.load_model(spec, device="cpu", progress=False)
    vae = model.pipe.vae
    assert compiled_call(vae.decoder) is not None and compiled_call(vae.encoder) is None
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any("the VAE decoder is torch.compiled" in note for note in model.report.notes), model.report.notes
    request = fluxnb.make_request(spec, prompt="a cat", steps=2, width=32, height=32)
    compiled = np.asarray(fluxnb.generate(model, request, progress=False)[0].image, dtype=int)
    eager = np.asarray(fluxnb.generate(tiny_model, request, progress=False)[0].image, dtype=int)
    assert compiled.shape == eager.shape == (32, 32, 3)
    assert np.abs(compiled - eager).max() <= 1
