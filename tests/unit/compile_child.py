"""Child process of test_compile_cache: compiles the tiny model's blocks with fluxnb's persistent compile cache and
prints what inductor's counters saw (run as a script: a fresh process is the point)."""

import json
import sys

import torch


def main() -> None:
    from torch._dynamo.utils import counters

    import fluxnb
    from fluxnb.models import compile_cache

    state = compile_cache.activate(key=sys.argv[1])  # a test's own key: the session cache stays untouched
    model = fluxnb.load_model("flux-tiny", device="cpu", progress=False)
    model.pipe.set_progress_bar_config(disable=True)
    transformer = model.pipe.transformer
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.compile()  # regional compile, as compile_repeated_blocks does (which the guide's diffusers lacks)
    model.pipe("a cat", num_inference_steps=2, width=32, height=32, output_type="latent",
               generator=torch.Generator().manual_seed(0))
    print(json.dumps({"state": state.to_dict(), "hits": counters["inductor"]["fxgraph_cache_hit"],
                      "misses": counters["inductor"]["fxgraph_cache_miss"],
                      "graphs": counters["stats"]["unique_graphs"]}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
