"""The bench's batch throughput (fluxnb.bench.batch) on the real tiny FLUX: the batched prompt encoding must give
each prompt the image that a plain one-prompt pipeline call with the same seed gives."""

from __future__ import annotations

import numpy as np
import torch

from fluxnb.bench.batch import batch_prompts, run_batch

PROMPTS = ["a lighthouse at dawn", "a red bicycle", "a bowl of cherries"]
SIZE, STEPS, SEED = 64, 2, 11


def test_batched_encoding_gives_each_prompt_its_own_image(tiny_model):
    pipe = tiny_model.pipe
    seen = {}
    figures = run_batch(pipe, prompts=PROMPTS, seed=SEED, width=SIZE, height=SIZE, steps=STEPS, guidance_scale=3.5,
                        max_sequence_length=32, device="cpu", offload_t5=False,
                        on_image=lambda i, image: seen.__setitem__(i, np.asarray(image)))
    assert sorted(seen) == [0, 1, 2]
    with torch.inference_mode():
        for i, prompt in enumerate(PROMPTS):  # the independent expectation: diffusers' own one-prompt call
            alone = pipe(prompt=prompt, num_inference_steps=STEPS, guidance_scale=3.5, width=SIZE, height=SIZE,
                         max_sequence_length=32, generator=torch.Generator("cpu").manual_seed(SEED + i)).images[0]
            difference = np.abs(seen[i].astype(int) - np.asarray(alone).astype(int)).max()
            assert difference == 0, f"prompt {i}: batched encoding changed its image (max pixel diff {difference})"
    assert not np.array_equal(seen[0], seen[1])  # distinct prompts and seeds: distinct images
    assert figures["images"] == 3 and figures["text_encoding"].startswith("batched")
    assert 0 < figures["text_encoding_seconds"] < figures["seconds"]
    assert 0 <= figures["offload_seconds"] < figures["seconds"] - figures["text_encoding_seconds"]


def test_batch_prompts_are_distinct_so_none_is_encoded_twice():
    prompts = batch_prompts("a cat", 4)
    assert prompts[0] == "a cat" and len(set(prompts)) == 4
