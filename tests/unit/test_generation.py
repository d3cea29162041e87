"""Generation on the real tiny FLUX: determinism, per-image metadata in PNG and manifest, run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fluxnb
from fluxnb.models.params import IMAGE_TO_IMAGE
from fluxnb.runs.outputs import MANIFEST, RunFolder, atomic_write_bytes, new_run_dir

pytestmark = pytest.mark.stack  # in both lanes: the pipelines generate on both lines


def _pixels(result) -> np.ndarray:
    return np.asarray(result.image)


def test_same_seed_same_image_other_seed_other_image(tiny_model, tiny_spec):
    request = fluxnb.make_request(tiny_spec, prompt="a red fox", seed=5, steps=3)
    first = fluxnb.generate(tiny_model, request, progress=False)[0]
    again = fluxnb.generate(tiny_model, request, progress=False)[0]
    other = fluxnb.generate(tiny_model, fluxnb.make_request(tiny_spec, prompt="a red fox", seed=6, steps=3),
                            progress=False)[0]
    assert np.array_equal(_pixels(first), _pixels(again))
    assert not np.array_equal(_pixels(first), _pixels(other))
    # image k of a batch equals the same seed generated alone
    batch = fluxnb.generate(tiny_model, fluxnb.make_request(tiny_spec, prompt="a red fox", seed=5, steps=3,
                                                            num_images=2), progress=False)
    assert np.array_equal(_pixels(batch[0]), _pixels(first))
    assert np.array_equal(_pixels(batch[1]), _pixels(other))


def test_run_folder_png_metadata_and_manifest(tiny_model, tiny_spec, outputs_dir: Path):
    request = fluxnb.make_request(tiny_spec, prompt=["a red fox", "붉은 여우, 수채화"], num_images=2, seed=3, steps=2,
                                  width=96, height=64, guidance_scale=4.0)
    run = RunFolder.create("test")
    results = fluxnb.generate(tiny_model, request, run, progress=False, model_reason="chosen by name")
    run.finish()
    assert run.path.parent == outputs_dir
    manifest = fluxnb.read_manifest(run.path)
    assert manifest["status"] == "complete"
    assert [entry["file"] for entry in manifest["images"]] == [Path(r.path).name for r in results]
    assert [entry["seed"] for entry in manifest["images"]] == [3, 4, 3, 4]
    for result, entry in zip(results, manifest["images"], strict=True):
        from_png = fluxnb.read_png_metadata(result.path)
        assert from_png == {k: v for k, v in entry.items() if k != "file"}
        assert result.image.size == (96, 64)
        assert from_png["steps"] == 2 and from_png["guidance_scale"] == 4.0
        assert from_png["model"]["name"] == "flux-tiny" and "random weights" in from_png["model"]["weights"]
        assert from_png["versions"]["diffusers"] and from_png["device"]["device"] == "cpu"
        assert from_png["seconds"] > 0 and from_png["peak_memory"]["peak_rss_bytes"] > 0
        assert set(from_png["backend"]) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    assert manifest["images"][2]["prompt"] == "붉은 여우, 수채화"
    assert not list(run.path.glob(".*.tmp"))


def test_image_to_image(tiny_model, tiny_spec, tmp_path: Path):
    from PIL import Image

    picture = tmp_path / "init.png"
    Image.new("RGB", (200, 120), (30, 90, 200)).save(picture)
    request = fluxnb.make_request(tiny_spec, prompt="a lake", init_image=picture, strength=0.5, steps=4,
                                  mode=IMAGE_TO_IMAGE)
    result = fluxnb.generate(tiny_model, request, progress=False)[0]
    assert result.image.size == (64, 64)
    assert result.metadata["mode"] == IMAGE_TO_IMAGE and result.metadata["strength"] == 0.5
    assert result.metadata["init_image"] == str(picture)


def test_run_folders_never_collide_or_overwrite(outputs_dir: Path):
    folders = {new_run_dir("same-job") for _ in range(3)}
    assert len(folders) == 3 and all(f.is_dir() for f in folders)
    taken = RunFolder.create("x")
    with pytest.raises(fluxnb.FluxnbError, match="already holds a run"):
        RunFolder.create("x", output_dir=taken.path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch):
    import errno
    import os

    target = tmp_path / MANIFEST
    atomic_write_bytes(target, b'{"ok": 1}')

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b'{"ok": 2}')
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary file left behind


def test_compiled_blocks_compile_once_and_the_metadata_says_which_image_paid(tiny_spec):
    """Regional torch.compile on the CPU (the tiny model, real inductor): the first image compiles, the next reuses.

    The same accounting runs on the GPU lane with the shipped compiled entry (tests/gpu/test_gpu.py)."""
    import torch

    from fluxnb.models.backends import get_backend
    from fluxnb.models.backends.base import compile_blocks
    from fluxnb.ui.display import timing_summary

    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    if not hasattr(model.pipe.transformer, "compile_repeated_blocks"):
        pytest.skip("diffusers < 0.35 has no regional compilation (the guide lane); compiled entries need >= 0.36")
    torch._dynamo.reset()
    try:
        blocks = model.pipe.transformer.transformer_blocks, model.pipe.transformer.single_transformer_blocks
        assert compile_blocks(model.pipe.transformer, get_backend(tiny_spec.type)) == sum(len(b) for b in blocks)
        first, second = fluxnb.generate(model, fluxnb.make_request(tiny_spec, prompt="a cat", steps=2, num_images=2),
                                        progress=False)
    finally:
        torch._dynamo.reset()
    assert first.metadata["compile"]["new_graphs"] == 2  # one graph per block type (double, single): no recompile
    assert 0 < first.metadata["compile"]["seconds"] <= first.metadata["seconds"]
    assert second.metadata["compile"] == {"new_graphs": 0, "seconds": 0.0}
    summary = timing_summary([first, second]).splitlines()
    assert "of torch.compile (first image at this size)" in summary[0] and "torch.compile" not in summary[1]


def transformer_inputs(cfg, g, dtype=None) -> dict:
    """One forward's inputs for the tiny transformer: 16 image and 8 text tokens (float ones in `dtype` if given)."""
    import torch

    def cast(t):
        return t if dtype is None else t.to(dtype)

    return dict(hidden_states=cast(torch.randn(1, 16, cfg.in_channels, generator=g)),
                encoder_hidden_states=cast(torch.randn(1, 8, cfg.joint_attention_dim, generator=g)),
                pooled_projections=cast(torch.randn(1, cfg.pooled_projection_dim, generator=g)),
                timestep=cast(torch.tensor([0.5])), guidance=cast(torch.tensor([3.5])) if cfg.guidance_embeds else None,
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)


def test_regional_compile_single_blocks_share_one_graph_and_keep_the_output(tiny_model):
    """The first single block gets its inputs re-strided like the others' (outside the compiled call), so one graph
    serves all single blocks; the output matches eager, called with keywords (diffusers) or positionally."""
    import copy

    import torch
    from torch._dynamo.utils import counters

    from fluxnb.models.backends.base import compile_regionally

    transformer = tiny_model.pipe.transformer
    if not hasattr(transformer, "compile_repeated_blocks"):
        pytest.skip("diffusers < 0.35 has no regional compilation (the guide lane); compiled entries need >= 0.36")
    compiled = copy.deepcopy(transformer)
    g = torch.Generator().manual_seed(0)
    cfg = transformer.config
    inputs = transformer_inputs(cfg, g)
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_regionally(compiled)
        with torch.inference_mode():
            expected = transformer(**inputs)[0]
            got = compiled(**inputs)[0]
            graphs = counters["stats"]["unique_graphs"]
            width = cfg.num_attention_heads * cfg.attention_head_dim
            shapes = ((1, 16, width), (1, 8, width), (1, width))
            image, text, temb = (torch.randn(*shape, generator=g) for shape in shapes)
            block = compiled.single_transformer_blocks[0]
            by_keyword = block(hidden_states=image, encoder_hidden_states=text, temb=temb)
            positional = block(image, text, temb)
    finally:
        torch._dynamo.reset()
    assert graphs == 2
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    for a, b in zip(by_keyword, positional, strict=True):
        torch.testing.assert_close(a, b)


def test_eager_images_record_no_compile(tiny_model, tiny_spec):
    (image,) = fluxnb.generate(tiny_model, fluxnb.make_request(tiny_spec, prompt="a cat", steps=1), progress=False)
    assert image.metadata["compile"] == {"new_graphs": 0, "seconds": 0.0}


def test_out_of_memory_advice_names_t5_offload_where_the_entry_can_use_it(tiny_model, tiny_spec, config):
    import dataclasses

    from fluxnb.runs.generation import out_of_memory_advice

    request = fluxnb.make_request(tiny_spec, prompt="a cat", steps=1)
    fast = dataclasses.replace(tiny_model, spec=config.get("flux-dev-torchao-int8dq"))
    advice = out_of_memory_advice(request, fast)
    assert "`offload_text_encoder: true` in the flux-dev-torchao-int8dq entry" in advice
    assert "Memory was freed" in advice
    assert "offload_text_encoder" not in out_of_memory_advice(request, tiny_model)
    offloaded = dataclasses.replace(fast, spec=dataclasses.replace(fast.spec, offload_text_encoder=True))
    assert "offload_text_encoder" not in out_of_memory_advice(request, offloaded)


def test_a_batch_keeps_paths_and_metadata_and_a_resume_reads_no_pixels(tiny_model, tiny_spec, monkeypatch):
    request = fluxnb.make_request(tiny_spec, prompt=["a fox", "a cat"], num_images=2, steps=1, width=64, height=64)
    run = RunFolder.create("lazy")
    made = fluxnb.generate(tiny_model, request, run, progress=False)
    assert all(image._pixels is None and Path(image.path).is_file() for image in made)
    assert [Path(image.path).name for image in made] == [entry["file"] for entry in run.manifest["images"]]
    reopened = RunFolder.open(run.path)  # checks each PNG's chunks (complete? fluxnb's?), decodes no pixels
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    again = fluxnb.generate(tiny_model, request, reopened, progress=False)
    assert [image.path for image in again] == [image.path for image in made]
    assert opened == []  # the resume listed the finished images without opening any
    assert np.array_equal(np.asarray(again[0].image), np.asarray(real_open(made[0].path).convert("RGB")))
    assert len(opened) == 1  # pixels are read when asked for, from the PNG


def test_a_long_prompt_is_said_once_with_the_token_counts(tiny_model, tiny_spec, capfd):
    prompt = "a red fox in the snow " * 4600  # about 100,000 characters
    request = fluxnb.make_request(tiny_spec, prompt=prompt, steps=1, width=64, height=64, num_images=2)
    fluxnb.generate(tiny_model, request, progress=False)
    err = capfd.readouterr().err
    (note,) = [line for line in err.splitlines() if line.startswith("note: prompt 1")]
    assert re.search(r"CLIP reads its first 77 of \d{5,} tokens; T5 reads its first \d+ of \d{5,} tokens", note)
    assert "truncated because" not in err and len(err) < 2000


def test_grid_of_a_long_batch_draws_a_bounded_number_of_images(tiny_model, tiny_spec):
    from fluxnb.ui.display import MAX_GRID_IMAGES, show_grid

    request = fluxnb.make_request(tiny_spec, prompt="a fox", steps=1, width=32, height=32, num_images=20)
    images = fluxnb.generate(tiny_model, request, RunFolder.create("grid"), progress=False)
    figure = show_grid(images)
    assert len(figure.axes) == MAX_GRID_IMAGES
    assert figure._suptitle.get_text() == f"the first {MAX_GRID_IMAGES} of 20 images (all 20 are in the run folder)"


def test_on_step_reports_each_step_and_stop_ends_after_the_current_image(tiny_model, tiny_spec):
    """The live progress of the widget form: (steps done, steps) per step; Stop asked before each image."""
    request = fluxnb.make_request(tiny_spec, prompt="a red fox", seed=1, steps=4, num_images=3)
    run = RunFolder.create("test")
    steps: list[tuple[int, int]] = []
    made: list = []

    def stop() -> bool:
        return len(made) == 2  # the person pressed Stop while the second image was being made

    results = fluxnb.generate(tiny_model, request, run, progress=False, on_step=lambda k, n: steps.append((k, n)),
                              on_image=made.append, stop=stop)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] * 2
    assert [r.metadata["seed"] for r in results] == [1, 2]
    manifest = fluxnb.read_manifest(run.path)
    assert [entry["seed"] for entry in manifest["images"]] == [1, 2]
    assert sorted(p.name for p in run.path.glob("*.png")) == sorted(e["file"] for e in manifest["images"])


def test_on_step_counts_the_steps_image_to_image_runs(tiny_model, tiny_spec):
    request = fluxnb.make_request(tiny_spec, prompt="hills", steps=10, strength=0.5, mode=IMAGE_TO_IMAGE,
                                  init_image=fluxnb.SAMPLE_INIT_IMAGE, width=64, height=64)
    steps: list[tuple[int, int]] = []
    fluxnb.generate(tiny_model, request, progress=False, on_step=lambda k, n: steps.append((k, n)))
    assert steps == [(k, 5) for k in range(1, 6)]


def test_compile_options_scope_a_records_inductor_settings_to_its_own_compile(tiny_model):
    """A record's inductor settings (the int8 dynamic type's fused rescale) go to its own torch.compile call,
    merged with the mode's options, and leave the process-wide inductor config alone; a real CPU compile of the tiny
    transformer with such settings runs and matches eager."""
    import copy
    import dataclasses

    import torch
    import torch._inductor.config as inductor_config

    from fluxnb.models.backends import get_backend
    from fluxnb.models.backends.base import compile_blocks, compile_options

    int8 = get_backend("flux-torchao-int8dq")
    assert compile_options(int8) == {"options": {"force_fuse_int_mm_with_mul": True}}
    tuned = compile_options(int8, "max-autotune-no-cudagraphs")["options"]
    assert tuned == {"max_autotune": True, "coordinate_descent_tuning": True, "force_fuse_int_mm_with_mul": True}
    assert compile_options(get_backend("flux-bf16"), "max-autotune-no-cudagraphs") == {
        "mode": "max-autotune-no-cudagraphs"}
    assert compile_options(get_backend("flux-bf16")) == {}

    transformer = tiny_model.pipe.transformer
    if not hasattr(transformer, "compile_repeated_blocks"):
        pytest.skip("diffusers < 0.35 has no regional compilation (the guide lane); compiled entries need >= 0.36")
    settings = dataclasses.replace(get_backend("flux-tiny"), options={"inductor": {"coordinate_descent_tuning": True}})
    compiled = copy.deepcopy(transformer)
    inputs = transformer_inputs(transformer.config, torch.Generator().manual_seed(1))
    before = inductor_config.coordinate_descent_tuning
    torch._dynamo.reset()
    try:
        compile_blocks(compiled, settings)
        with torch.inference_mode():
            torch.testing.assert_close(compiled(**inputs)[0], transformer(**inputs)[0], rtol=2e-2, atol=2e-2)
    finally:
        torch._dynamo.reset()
    assert inductor_config.coordinate_descent_tuning == before
