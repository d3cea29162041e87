"""CPU stand-in for choosing a TaylorSeer forecast window (issue 25): the final-latent error of each setting against
the same model uncached, on a synthetic FLUX of full depth (19 double + 38 single blocks) at a quarter of the width
(4 heads of 128), float32, 256x256, 28 steps. Ranks settings before a GPU run; the GPU bench measures the real ones.

    python scripts/taylorseer_window_probe.py taylorseer@2 taylorseer@2:until=18 > probe.jsonl
"""

from __future__ import annotations

import json
import sys
import time

import torch

from fluxnb.models.step_cache import hook_config, parse_cache
from fluxnb.models.synthetic import build_synthetic_pipeline, scaled_dims


def main(settings: list[str]) -> None:
    dims = scaled_dims(layers=19, single_layers=38, t5_layers=1, clip_layers=1)
    dims["transformer"].update(num_attention_heads=4)
    pipe = build_synthetic_pipeline(device="cpu", dims=dims).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def latents():
        return pipe("a cat", height=256, width=256, num_inference_steps=28, guidance_scale=3.5, max_sequence_length=64,
                    generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images.float()

    reference = latents()
    for text in settings:
        setting = parse_cache(text)
        pipe.transformer.enable_cache(hook_config(setting))
        start = time.perf_counter()
        out = latents()
        pipe.transformer.disable_cache()
        print(json.dumps({"setting": setting.text, "computed": setting.computed_steps(28),
                          "latent_rel_error": round(float((out - reference).norm() / reference.norm()), 4),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
