"""Sharding, process planning, context-parallel refusals and the owner's merge of rank parts (real processes)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fluxnb.core.errors import RequestError
from fluxnb.models.backends import get_backend
from fluxnb.runs.contextparallel import check_context_parallel, context_parallel_available
from fluxnb.runs.dataparallel import plan_processes
from fluxnb.runs.outputs import RunFolder, image_file_name, read_manifest
from fluxnb.runs.shards import PARTS_DIR, RankPart, merge_parts, pending_indexes, shard


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 10_000), max_size=300), st.integers(1, 17))
def test_shards_are_deterministic_disjoint_complete_and_balanced(pending, world):
    items = list(pending)
    shards = [shard(items, world, rank) for rank in range(world)]
    assert shards == [shard(list(reversed(items)), world, rank) for rank in range(world)]  # order of input: none
    flat = [index for part in shards for index in part]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    sizes = [len(part) for part in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard([1, 2, 3], 2, 2)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 1000))
def test_file_names_and_seeds_do_not_depend_on_the_number_of_ranks(tmp_path_factory, prompts, per_prompt, seed):
    """An item's name comes from its index, seed and parameters only: ranks of launches of 1, 2, 3 and 5 processes
    (each writing its shard through RankPart, which adds its rank to the metadata) name every image alike."""
    items = [(p * per_prompt + k, f"prompt {p}", seed + k) for p in range(prompts) for k in range(per_prompt)]
    names = {}
    for world in (1, 2, 3, 5):
        folder = tmp_path_factory.mktemp(f"world{world}")
        for rank in range(world):
            part = RankPart(folder, 0, rank, world, {"rank": rank, "world_size": world}, [])
            for index in shard([index for index, _, _ in items], world, rank):
                _, prompt, item_seed = items[index]
                part.save_image(Image.new("RGB", (8, 8)), {"index": index, "prompt": prompt, "seed": item_seed,
                                                           "steps": 2, "mode": "text-to-image"})
        names[world] = sorted(p.name for p in folder.glob("*.png"))
    assert len(names[1]) == len(items) and all(names[world] == names[1] for world in (2, 3, 5)), names


def test_an_items_file_name_is_stable_across_versions():
    """The name scheme is part of the run folder's format: a resume by a later fluxnb finds the images of an earlier
    one by it. Pinned: the name fluxnb gives today (a change would strand the images of older run folders)."""
    assert image_file_name({"index": 3, "prompt": "a red fox", "seed": 7, "steps": 2, "mode": "text-to-image"}) == \
        "0003-t2i-seed7-15183458.png"


def test_plan_processes_uses_what_the_host_has_and_says_so():
    assert plan_processes("all", 4) == (4, "cuda", None)
    assert plan_processes("2", 4) == (2, "cuda", None)
    n, device, note = plan_processes("8", 2)
    assert (n, device) == (2, "cuda") and note == "asked for 8 GPUs, this host has 2: using 2"
    n, device, note = plan_processes("2", 0)
    assert (n, device) == (2, "cpu") and "no CUDA GPU" in note and "gloo" in note
    assert plan_processes("all", 0)[:2] == (2, "cpu")
    with pytest.raises(RequestError, match="--gpus 'two' is not a number of GPUs") as err:
        plan_processes("two", 2)
    assert err.value.fix == "--gpus 2, or --gpus all"
    with pytest.raises(RequestError, match="outside 1..64"):
        plan_processes("0", 2)


def test_context_parallel_refusals_name_the_reason():
    bf16, bnb = get_backend("flux-bf16"), get_backend("flux-bnb-8bit")
    missing = context_parallel_available()
    with pytest.raises(RequestError) as err:
        check_context_parallel("ulysses", 2, "cpu", bf16, False)
    if missing:  # the guide's stack (diffusers 0.34): no context parallelism at all
        assert "has no context parallelism" in str(err.value) and "data parallel" in err.value.fix
        return
    assert "needs CUDA GPUs" in str(err.value) and "gloo" in str(err.value)
    with pytest.raises(RequestError, match="bitsandbytes-quantized models have had bugs on devices other than cuda:0"):
        check_context_parallel("ulysses", 2, "cuda", bnb, False)
    with pytest.raises(RequestError, match="compile: true"):
        check_context_parallel("ring", 2, "cuda", bf16, True)
    with pytest.raises(RequestError, match="this run has 1 process"):
        check_context_parallel("ulysses", 1, "cuda", bf16, False)
    with pytest.raises(RequestError, match="not a context-parallel mode"):
        check_context_parallel("pipeline", 2, "cuda", bf16, False)
    check_context_parallel("ulysses", 2, "cuda", bf16, False)  # the supported combination passes


def _metadata(index: int) -> dict:
    return {"index": index, "prompt": f"p{index}", "seed": index, "mode": "text-to-image", "steps": 2}


def _rank_writer(run_dir: str, rank: int, world: int, total: int, merges, merged) -> None:
    """A real rank: writes its shard's PNGs and its part, its k-th image only once the owner has merged k times
    (a lockstep on a condition, not a sleep: every merge overlaps the ranks' writing, however loaded the machine)."""
    part = RankPart(run_dir, 0, rank, world, {"rank": rank, "world_size": world}, [])
    for k, index in enumerate(shard(list(range(total)), world, rank)):
        with merged:
            assert merged.wait_for(lambda k=k: merges.value >= k, timeout=120), "the owner stopped merging"
        part.save_image(Image.new("RGB", (8, 8), (index, rank, 0)), _metadata(index))
    part.record(status="complete")


def test_owner_merges_concurrent_rank_parts_without_lost_updates(tmp_path):
    run = RunFolder.create("generate", base=tmp_path)
    world, total = 4, 40
    context = multiprocessing.get_context("spawn")
    merges, merged = context.Value("i", 0), context.Condition()
    ranks = [context.Process(target=_rank_writer, args=(str(run.path), r, world, total, merges, merged))
             for r in range(world)]
    for process in ranks:
        process.start()
    while any(process.is_alive() for process in ranks):
        merge_parts(run, delete=False)  # the owner merges while the ranks write
        assert isinstance(json.loads((run.path / "manifest.json").read_text()), dict)  # always whole
        with merged:
            merges.value += 1
            merged.notify_all()
    assert all(process.exitcode == 0 for process in ranks)
    merge_parts(run, delete=True)
    manifest = read_manifest(run.path)
    files = [entry["file"] for entry in manifest["images"]]
    assert len(files) == len(set(files)) == total
    assert sorted(entry["index"] for entry in manifest["images"]) == list(range(total))
    assert sorted(files) == sorted(p.name for p in run.path.glob("*.png"))
    assert all(entry["parallel"]["rank"] == entry["index"] % world for entry in manifest["images"])
    assert not list((run.path / PARTS_DIR).iterdir())  # merged parts are deleted after the manifest holds them
    assert pending_indexes(run.path, manifest, total + 2) == [total, total + 1]
    run.close()


def test_a_part_whose_png_is_missing_or_truncated_is_not_listed(tmp_path):
    run = RunFolder.create("generate", base=tmp_path)
    part = RankPart(run.path, 0, 0, 1, {"rank": 0, "world_size": 1}, [])
    kept = part.save_image(Image.new("RGB", (8, 8)), _metadata(0))
    gone = part.save_image(Image.new("RGB", (8, 8)), _metadata(1))
    cut = part.save_image(Image.new("RGB", (8, 8)), _metadata(2))
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[:40])
    assert merge_parts(run, delete=True) == 1
    assert [entry["file"] for entry in run.manifest["images"]] == [kept.name]
    assert pending_indexes(run.path, run.manifest, 3) == [1, 2]
    run.close()
    Path(cut).unlink()


def test_doctor_says_which_multi_gpu_modes_a_host_can_use():
    from fluxnb.doctor.checks import check_environment, multi_gpu_modes

    four = multi_gpu_modes(4, None, ray=True)
    assert four[0].startswith("data parallel: fluxnb generate --gpus 4")
    assert "--gpus 4 --parallel ulysses" in four[1] and four[2].startswith("many hosts: fluxnb generate --ray")
    old = multi_gpu_modes(2, "diffusers 0.34.0 has no context parallelism", ray=False)
    assert old[1] == "one image on several GPUs: not with this diffusers (diffusers 0.34.0 has no context parallelism)"
    assert len(old) == 2
    assert multi_gpu_modes(1, None, ray=False)[0].startswith("one GPU: the multi-GPU modes need 2+ GPUs")
    row = check_environment("flux-tiny").row("multi-GPU")  # this machine: no GPU
    assert row.status == "ok" and row.found.startswith("0 GPU(s). Modes: no GPU: the multi-GPU modes need 2+ GPUs")
