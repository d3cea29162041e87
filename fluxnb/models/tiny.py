"""The embedded `flux-tiny` checkpoint: FLUX.1-dev's architecture in miniature, random weights.

Built on first use from the real diffusers/transformers classes and real tokenizers (trained offline
from a few sentences), saved with `save_pretrained`, then loaded by the same `from_pretrained` path as
the hub models. Weights are random, so pictures are noise: it proves the plumbing, not the art.

The cache folder is keyed by the transformers and diffusers major.minor lines, because a checkpoint
saved by transformers 5 silently loads with random CLIP weights under 4.x (knowledge entry
transformers5-checkpoint-on-4x in fluxnb/knowledge.yaml).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .tasks import TASKS, TEXT_TO_IMAGE, pipeline_class

TINY_SEED = 20251122  # the guide's date: the same weights on every machine with the same library lines
BUILD_MARKER = "fluxnb_tiny.json"

# Words for the tokenizers' vocabularies (prompts outside them still tokenize, character by character).
_CORPUS = """
a photo of a cat sitting on a red chair in the sun
a watercolor painting of a lighthouse at dusk with waves and birds
an astronaut riding a horse on the moon, highly detailed, digital art
a bowl of ramen with eggs and green onions, studio lighting
portrait of an old man with a white beard, oil painting, dramatic light
a futuristic city skyline at night with neon signs and flying cars
a small wooden cabin in a snowy forest under the northern lights
a red fox in the snow, watercolor, soft colors, morning mist
mountains and a lake at sunrise, reflections, calm water, pine trees
a robot reading a book in a library, warm light, cinematic
""".strip().splitlines()


def cache_root(root: str | Path | None = None) -> Path:
    """Where fluxnb builds its checkpoints: `root`, else FLUXNB_CACHE, else ~/.cache/fluxnb."""
    return Path(root or os.environ.get("FLUXNB_CACHE") or Path.home() / ".cache" / "fluxnb")


def library_lines() -> str:
    """The transformers and diffusers lines that write (and can load) a checkpoint: part of its folder name."""
    import diffusers
    import transformers

    def line(version: str) -> str:
        return ".".join(version.split(".")[:2])

    return f"transformers{line(transformers.__version__)}-diffusers{line(diffusers.__version__)}"


def tiny_cache_dir(root: str | Path | None = None, task: str = TEXT_TO_IMAGE) -> Path:
    """Where the tiny checkpoint of `task` (flux-tiny; flux-tiny-fill...) for the installed library lines lives."""
    name = "flux-tiny" if task == TEXT_TO_IMAGE else f"flux-tiny-{task}"
    return cache_root(root) / f"{name}-{library_lines()}"


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _clip_tokenizer_files(folder: Path) -> None:
    """A byte-level BPE vocabulary in CLIP's format (vocab.json + merges.txt): bytes plus the corpus words."""
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    merges: list[str] = []
    for word in sorted({w for line in _CORPUS for w in line.replace(",", " ").split()}):
        parts = list(word)
        parts[-1] += "</w>"
        current = parts[0]
        for part in parts[1:]:
            merges.append(f"{current} {part}")
            current += part
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}), encoding="utf-8")


def _t5_tokenizer_files(folder: Path) -> None:
    """A SentencePiece unigram model in T5's format (spiece.model), trained on the corpus above."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=model,
        vocab_size=100,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        seed_sentencepiece_size=1000,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}), encoding="utf-8")


def build_tokenizers():
    """CLIPTokenizer and T5TokenizerFast built offline (the real classes; vocabularies from the corpus above)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        _clip_tokenizer_files(Path(tmp) / "clip")
        _t5_tokenizer_files(Path(tmp) / "t5")
        return (CLIPTokenizer.from_pretrained(Path(tmp) / "clip"),
                T5TokenizerFast.from_pretrained(Path(tmp) / "t5", extra_ids=0))


def assemble_flux_pipeline(transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae):
    """A FluxPipeline of these components with FLUX.1-dev's scheduler configuration."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


# The tiny model's dimensions, FLUX.1-dev's shapes of reasoning at toy size: 16 latent channels, x8 VAE, 2x2
# patches (in_channels 64), rotary axes summing to the head dim, guidance embedding (dev is guidance-distilled).
# The text encoders' vocabularies are the tiny tokenizers' (build_flux_pipeline fills them in).
TINY_DIMS: dict[str, dict[str, Any]] = {
    "transformer": dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                        axes_dims_rope=[4, 6, 6]),
    "t5": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
               feed_forward_proj="gated-gelu"),
    "clip": dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act="quick_gelu"),
    "vae": dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, latent_channels=16, norm_num_groups=4,
                sample_size=64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False),
}


def build_flux_pipeline(dims: dict[str, dict[str, Any]], seed: int,
                        init: Callable[[Any], None] | None = None):
    """A FluxPipeline of the real diffusers/transformers classes with these dimensions and random weights: the
    transformer, CLIP, T5 and VAE seeded with seed, seed+1, seed+2, seed+3 (the same weights for the same library
    line), `init` applied to the transformer. The tiny model and the synthetic checkpoints (fluxnb.models.synthetic,
    FLUX.1-dev's full size) are both built here; a vocabulary not in `dims` is the tiny tokenizers'."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = build_tokenizers()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**dims["transformer"])
    if init is not None:
        init(transformer)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{"vocab_size": len(tokenizer), **dims["clip"]},
                                                bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    torch.manual_seed(seed + 2)  # T5's own init (normal, std d_model^-0.5 ...) is variance-preserving
    text_encoder_2 = T5EncoderModel(T5Config(**{"vocab_size": len(tokenizer_2), **dims["t5"]},
                                             is_encoder_decoder=False, use_cache=False, decoder_start_token_id=0,
                                             pad_token_id=0, eos_token_id=1))
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", **dims["vae"])
    return assemble_flux_pipeline(transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae)


def task_dims(dims: dict[str, dict[str, Any]], task: str = TEXT_TO_IMAGE) -> dict[str, dict[str, Any]]:
    """`dims` with the transformer's input channels those of `task`'s model (fluxnb.models.tasks: Fill 384, Control
    128), its output channels FLUX.1-dev's packed latent channels; `dims` itself for text-to-image. The tiny editing
    models and the full-size synthetic editing checkpoints (fluxnb.models.synthetic) both take their shapes here."""
    if task == TEXT_TO_IMAGE:
        return dims
    packed = dims["transformer"]["in_channels"]
    return {**dims, "transformer": {**dims["transformer"], "in_channels": TASKS[task].in_channels,
                                    "out_channels": packed}}


def tiny_components(task: str = TEXT_TO_IMAGE) -> dict[str, Any]:
    """The tiny FLUX's components (deterministic for a given library line), shaped for `task` (task_dims)."""
    return build_flux_pipeline(task_dims(TINY_DIMS, task), TINY_SEED).components


def pipeline_of(cls, components: dict[str, Any]):
    """A pipeline of class `cls` from the components it takes (Fill and Control take no image encoder)."""
    import inspect

    takes = inspect.signature(cls.__init__).parameters
    return cls(**{name: part for name, part in components.items() if name in takes})


def build_tiny_pipeline(task: str = TEXT_TO_IMAGE):
    """The tiny pipeline of `task` in memory, in the task's pipeline class (FluxPipeline, FluxFillPipeline...)."""
    if task == TEXT_TO_IMAGE:
        return build_flux_pipeline(TINY_DIMS, TINY_SEED)
    return pipeline_of(pipeline_class(task), tiny_components(task))


def atomic_build(target: Path, build, info: dict, marker: str = BUILD_MARKER) -> Path:
    """Build a checkpoint folder in a staging folder beside `target`, then rename it into place: a half-written
    folder is never used. `build(staging)` writes the files and may return facts for the `marker` file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".building-", dir=target.parent))
    try:
        start = time.perf_counter()
        info.update(build(staging) or {})
        info["build_seconds"] = round(time.perf_counter() - start, 1)
        (staging / marker).write_text(json.dumps(info, indent=2), encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / marker).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_tiny_checkpoint(root: str | Path | None = None, task: str = TEXT_TO_IMAGE) -> Path:
    """Build the tiny checkpoint of `task` once and return its path."""
    import diffusers
    import transformers

    target = tiny_cache_dir(root, task)
    if (target / BUILD_MARKER).is_file():
        return target
    info = {
        "seed": TINY_SEED,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "note": "random weights: images are noise",
    }

    def build(staging: Path) -> None:
        build_tiny_pipeline(task).save_pretrained(staging, safe_serialization=True)

    return atomic_build(target, build, info)
