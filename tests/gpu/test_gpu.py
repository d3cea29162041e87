"""The GPU lane (`pytest -m gpu`, e.g. via scripts/gpu_lane.sh): real quantization on a real CUDA GPU.

CPU CI never runs these (pyproject: addopts -m 'not gpu'); without CUDA they skip. They use the embedded
tiny FLUX; the full-size proof is the synthetic benchmark that scripts/gpu_lane.sh runs after them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

QUANTIZED_KINDS = {"bnb-8bit": ("flux-dev-bnb-8bit", "int8"), "bnb-nf4": ("flux-dev-bnb-4bit", "nf4")}


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_cache):
    from fluxnb.models.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


@pytest.fixture(scope="module", params=sorted(QUANTIZED_KINDS))
def prequantized(request, tiny_checkpoint, tmp_path_factory):
    """The tiny pipeline quantized at load (transformer + T5) and saved: the hub's pre-quantized layout."""
    from fluxnb.models.synthetic import quantize_checkpoint

    kind = request.param
    target = tmp_path_factory.mktemp(f"tiny-{kind}")
    quantize_checkpoint(tiny_checkpoint, target, kind)
    return kind, target


def _generate(pipe, **kwargs):
    generator = torch.Generator(device="cpu").manual_seed(0)
    return pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, generator=generator, **kwargs)


@pytest.mark.parametrize("kind", sorted(QUANTIZED_KINDS))
def test_quantize_at_load_and_generate(kind, tiny_checkpoint):
    from diffusers import FluxPipeline

    from fluxnb.core.footprint import pipeline_footprint
    from fluxnb.models.synthetic import _quantization_mapping

    pipe = FluxPipeline.from_pretrained(
        tiny_checkpoint, torch_dtype=torch.bfloat16, quantization_config=_quantization_mapping(kind)
    )
    pipe.to("cuda")
    formats = {c.name: c.format for c in pipeline_footprint(pipe)}
    prefix = QUANTIZED_KINDS[kind][1]
    assert formats["transformer"].startswith(prefix), formats
    assert formats["text_encoder_2"].startswith(prefix), formats
    latents = _generate(pipe, output_type="latent").images
    assert torch.isfinite(latents.float()).all()


def test_prequantized_reload_through_the_guide_loader(prequantized, config):
    """The saved checkpoint reloads through the exact flux-bnb-* loader, and its verification passes."""
    import fluxnb
    from fluxnb.models.loading import verify_quantization

    kind, checkpoint = prequantized
    spec = config.get(QUANTIZED_KINDS[kind][0])
    model = fluxnb.load_model(spec, checkpoint=checkpoint, progress=False)
    verify_quantization(spec.type, model.report.components)  # load_model did it too; explicit here
    formats = {c.name: c.format for c in model.report.components}
    assert formats["transformer"].startswith(QUANTIZED_KINDS[kind][1])
    assert model.report.component("transformer").device.startswith("cuda")
    request = fluxnb.make_request(spec, prompt="a red fox in the snow", steps=2, width=64, height=64, seed=3)
    images = fluxnb.generate(model, request, progress=False)
    assert images[0].image.size == (64, 64)


def test_image_to_image_from_the_quantized_pipeline(prequantized, config, tmp_path):
    import fluxnb

    kind, checkpoint = prequantized
    spec = config.get(QUANTIZED_KINDS[kind][0])
    model = fluxnb.load_model(spec, checkpoint=checkpoint, progress=False)
    i2i = model.img2img_pipeline()
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae", "scheduler", "tokenizer", "tokenizer_2"):
        assert getattr(i2i, name) is getattr(model.pipe, name), name
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(init)
    request = fluxnb.make_request(
        spec, prompt="a red fox", steps=2, width=64, height=64, init_image=str(init), strength=0.6,
        mode=fluxnb.IMAGE_TO_IMAGE,
    )
    images = fluxnb.generate(model, request, progress=False)
    assert images[0].image.size == (64, 64)


def test_unquantized_checkpoint_through_the_8bit_loader_is_refused(tiny_checkpoint, config):
    import fluxnb

    with pytest.raises(fluxnb.QuantizationError, match="transformer"):
        fluxnb.load_model(config.get("flux-dev-bnb-8bit"), checkpoint=tiny_checkpoint, progress=False)


def _torchao_types():
    from fluxnb.models.backends import REGISTRY

    return sorted(t for t, backend in REGISTRY.items() if backend.family == "torchao")


@pytest.mark.parametrize("model_type", _torchao_types())
def test_torchao_backends_load_verify_and_generate(model_type, tiny_checkpoint, config, monkeypatch):
    """Quantize-at-load with torchao on the tiny model (eager here: the benchmark covers compile at full size)."""
    pytest.importorskip("torchao")
    import fluxnb
    from fluxnb.models.backends import REGISTRY

    capability = torch.cuda.get_device_capability()
    if capability < REGISTRY[model_type].min_capability:
        with pytest.raises(fluxnb.ModelUnavailableError, match="compute capability"):
            spec = dataclasses.replace(config.get("flux-dev"), name=model_type, type=model_type, requires_auth=False)
            fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False)
        return
    monkeypatch.setenv("FLUXNB_COMPILE", "0")
    spec = dataclasses.replace(config.get("flux-dev"), name=model_type, type=model_type, requires_auth=False)
    model = fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False)
    formats = {c.name: c.format for c in model.report.components}
    assert "torchao" in formats["transformer"] and "torchao" in formats["text_encoder_2"], formats
    latents = _generate(model.pipe, output_type="latent").images
    assert torch.isfinite(latents.float()).all()


def test_synthetic_builder_at_scaled_size_on_gpu(tmp_path):
    """The full-size builder's code path with fewer blocks: bf16 build, then the 8-bit checkpoint from it."""
    import fluxnb
    from fluxnb.models.synthetic import BUILD_MARKER, ensure_synthetic_checkpoint, scaled_dims

    dims = scaled_dims(layers=1, single_layers=1, t5_layers=1, clip_layers=1)
    path = ensure_synthetic_checkpoint("bnb-8bit", tmp_path, dims=dims, log=lambda _: None)
    assert (path / BUILD_MARKER).is_file()
    model = fluxnb.load_model(fluxnb.load_config().get("flux-dev-bnb-8bit"), checkpoint=path, progress=False)
    assert model.report.component("text_encoder_2").format.startswith("int8")


def _tiny_entry(config, name: str, **changes):
    """A model_config entry pointed at the tiny checkpoint (no gated download: requires_auth off)."""
    return dataclasses.replace(config.get(name), requires_auth=False, **changes)


def test_compiled_entry_compiles_once_then_reuses(tiny_checkpoint, config, monkeypatch):
    """flux-dev-torchao-int8dq (compile: true): the first image at a size pays torch.compile, the next ones and a
    re-run of the load cell (reuse=True) reuse the compiled blocks; the metadata says which image paid."""
    pytest.importorskip("torchao")
    import fluxnb

    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("int8 dynamic needs compute capability 8.0")
    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    spec = _tiny_entry(config, "flux-dev-torchao-int8dq")
    assert spec.compile
    torch._dynamo.reset()
    model = fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False, reuse=True)
    assert any("torch.compile" in note for note in model.report.notes), model.report.notes
    request = fluxnb.make_request(spec, prompt="a cat", steps=2, width=128, height=128, num_images=2)
    first, second = fluxnb.generate(model, request, progress=False)
    assert first.metadata["compile"]["new_graphs"] > 0 and first.metadata["compile"]["seconds"] > 0
    assert second.metadata["compile"] == {"new_graphs": 0, "seconds": 0.0}
    again = fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False, reuse=True)
    assert again is model and fluxnb.models.loading.REUSED_NOTE in again.report.notes
    (third,) = fluxnb.generate(again, fluxnb.make_request(spec, prompt="a dog", steps=2, width=128, height=128),
                               progress=False)
    assert third.metadata["compile"]["new_graphs"] == 0
    fluxnb.models.loading.release_session_model()


def test_offloaded_text_encoder_gives_the_same_image_from_the_cpu(tiny_checkpoint, config):
    """offload_text_encoder: T5 sits on the CPU between prompts, and the image is the same as with T5 on the GPU."""
    pytest.importorskip("torchao")
    import fluxnb

    resident = fluxnb.load_model(_tiny_entry(config, "flux-dev-torchao-int8"), checkpoint=tiny_checkpoint,
                                 progress=False)
    expected = _generate(resident.pipe, output_type="latent").images
    del resident
    offloaded = fluxnb.load_model(_tiny_entry(config, "flux-dev-torchao-int8", offload_text_encoder=True),
                                  checkpoint=tiny_checkpoint, progress=False)
    assert any("T5 is kept on the CPU" in note for note in offloaded.report.notes)
    with torch.inference_mode():  # as the benchmark runs it: torchao tensors cannot move inside inference mode
        latents = _generate(offloaded.pipe, output_type="latent").images
    assert next(offloaded.pipe.text_encoder_2.parameters()).device.type == "cpu"
    assert torch.equal(latents, expected)


def test_bnb_threshold_zero_loader(tiny_checkpoint, config, tmp_path):
    """flux-bnb-8bit-threshold0: the pre-quantized 8-bit checkpoint with LLM.int8's outlier threshold 0."""
    from bitsandbytes.nn import Linear8bitLt

    import fluxnb
    from fluxnb.models.synthetic import quantize_checkpoint

    quantize_checkpoint(tiny_checkpoint, tmp_path / "q", "bnb-8bit")
    spec = dataclasses.replace(config.get("flux-dev-bnb-8bit"), type="flux-bnb-8bit-threshold0")
    model = fluxnb.load_model(spec, checkpoint=tmp_path / "q", progress=False)
    layers = [m for m in model.pipe.transformer.modules() if isinstance(m, Linear8bitLt)]
    assert layers and all(layer.state.threshold == 0.0 for layer in layers)
    assert torch.isfinite(_generate(model.pipe, output_type="latent").images.float()).all()


def test_one_row_layers_run_the_triton_matvec_when_compiled():
    """The AdaLN layers' Triton kernel (fluxnb/models/backends/matvec_triton.py) is what the compiled layer runs on the
    GPU, and it gives torchao's product (eager) within bf16 rounding, with and without bias, for 1 and 3 input rows."""
    pytest.importorskip("torchao")
    import torchao.quantization as tq
    from torch.profiler import ProfilerActivity, profile

    from fluxnb.models.backends import matvec
    from fluxnb.models.backends.torchao import weight_only_config

    torch.manual_seed(0)
    for bias, rows in ((True, 1), (False, 3)):
        layer = torch.nn.Sequential(torch.nn.Linear(3072, 1000, bias=bias)).to("cuda", torch.bfloat16)
        tq.quantize_(layer, weight_only_config())
        x = torch.randn(rows, 3072, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            eager = layer(x)
        assert matvec.use_matvecs(layer, [r"re:0"]) == 1 and matvec._TRITON_OP is not None
        torch._dynamo.reset()
        compiled = torch.compile(layer)
        with torch.inference_mode():
            compiled(x)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                out = compiled(x)
                torch.cuda.synchronize()
        kernels = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
        assert any("int8_matvec_kernel" in name for name in kernels), kernels
        torch.testing.assert_close(out, eager, rtol=2 ** -7, atol=2 ** -7 * eager.abs().max().item())
    torch._dynamo.reset()


def test_cuda_graph_replays_the_compiled_steps(tiny_checkpoint, config, monkeypatch):
    """A compiled entry's transformer forward is captured at each size and replayed
    (fluxnb/models/backends/cuda_graph.py):
    the same latents as the compiled forward without it, a new capture at a new size, and no replay under a step
    cache (its hooks decide per step). Each image's metadata says what it did."""
    pytest.importorskip("torchao")
    import fluxnb
    from fluxnb.models.backends.cuda_graph import GraphedForward

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9")
    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    monkeypatch.delenv("FLUXNB_CUDA_GRAPH", raising=False)
    spec = _tiny_entry(config, "flux-dev-torchao-fp8")
    torch._dynamo.reset()
    model = fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False)
    graphed = model.pipe.transformer.forward
    assert isinstance(graphed, GraphedForward) and any("CUDA graph" in n for n in model.report.notes)

    def image(**kwargs):
        request = fluxnb.make_request(spec, prompt="a cat", steps=4, **{"width": 128, "height": 128, **kwargs})
        (result,) = fluxnb.generate(model, request, progress=False)
        return np.asarray(result.image), result.metadata["cuda_graph"]

    first, meta = image()  # step 1 runs (and compiles) as it is, step 2 runs on a side stream and is captured,
    assert meta == {"replayed_steps": 2, "captures": 1, "bypassed": None, "failed": None}  # steps 3-4 replay
    again, meta = image(seed=1)
    assert meta["replayed_steps"] == 4 and meta["captures"] == 0
    other_size, meta = image(width=96, height=96)
    assert meta["captures"] == 1 and meta["replayed_steps"] == 2 and other_size.shape[:2] == (96, 96)
    cached, meta = image(cache="taylorseer@2")
    assert meta["replayed_steps"] == 0 and "step cache" in meta["bypassed"]
    model.pipe.transformer.forward = graphed.eager_forward  # the same compiled blocks, no graph
    assert np.array_equal(image()[0], first) and np.array_equal(image(seed=1)[0], again)
    fluxnb.models.loading.release_session_model()
    torch._dynamo.reset()


def test_the_float8_entries_compiled_vae_decoder_decodes_as_the_eager_one(tiny_checkpoint, config, monkeypatch):
    """flux-dev-torchao-fp8 sets `compile_vae: true`: its VAE decoder runs compiled, convolutions in channels_last
    (fluxnb/models/backends/base.py, compile_vae_decoder), and decodes a latent as the same module's eager forward
    does, in bf16 on the GPU. Full size, the bench compares the images (runs 52-53)."""
    pytest.importorskip("torchao")
    import fluxnb
    from fluxnb.core.compat import compiled_call

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9")
    monkeypatch.delenv("FLUXNB_COMPILE", raising=False)
    spec = _tiny_entry(config, "flux-dev-torchao-fp8")
    assert spec.compile_vae
    torch._dynamo.reset()
    model = fluxnb.load_model(spec, checkpoint=tiny_checkpoint, progress=False)
    vae = model.pipe.vae
    assert compiled_call(vae.decoder) is not None and compiled_call(vae.encoder) is None
    latent = torch.randn(1, vae.config.latent_channels, 16, 16, device="cuda", dtype=vae.dtype,
                         generator=torch.Generator("cuda").manual_seed(0))
    with torch.inference_mode():
        compiled = vae.decoder(latent).float()  # Module.compile: calling the module runs the compiled forward
        eager = vae.decoder.forward(latent).float()  # the module's own forward, uncompiled
        exact = vae.decoder.float().forward(latent.float())  # the same weights in float32: what both approximate
    assert compiled.shape == eager.shape == exact.shape == (1, 3, 128, 128)

    def error(image: torch.Tensor) -> float:
        return ((image - exact).norm() / exact.norm()).item()

    # bf16 kernels of another order and layout round differently (2.3% apart on this random decoder, GPU lane run
    # 54), but no worse: a wrong layout or op would be off by the whole image
    assert error(compiled) <= 1.5 * error(eager) and error(eager) < 0.05
    fluxnb.models.loading.release_session_model()
    torch._dynamo.reset()


def test_float8_gelu_layers_quantize_in_one_kernel(tiny_checkpoint, config, monkeypatch):
    """flux-dev-torchao-fp8 (compiled): the GELU-then-float8-linear layers (fluxnb/models/backends/fp8_rows.py) run the
    one-pass kernel, and the transformer's output stays within float8 rounding of torchao's own compiled path."""
    pytest.importorskip("torchao")
    import copy

    from torch.profiler import ProfilerActivity, profile

    import fluxnb
    from fluxnb.models.backends.base import compile_regionally
    from fluxnb.models.backends.fp8_rows import GeluFloat8FeedForward, GeluFloat8SingleBlock, _swap_for

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9")
    monkeypatch.setenv("FLUXNB_COMPILE", "0")  # compiled below, once per copy
    model = fluxnb.load_model(_tiny_entry(config, "flux-dev-torchao-fp8"), checkpoint=tiny_checkpoint, progress=False)
    fused = model.pipe.transformer
    swapped = [m for m in fused.modules() if isinstance(m, (GeluFloat8FeedForward, GeluFloat8SingleBlock))]
    blocks = len(fused.transformer_blocks)
    assert len(swapped) == 2 * blocks + len(fused.single_transformer_blocks), len(swapped)
    plain = copy.deepcopy(fused)
    for module in plain.modules():  # torchao's own path: diffusers' classes back
        if isinstance(module, (GeluFloat8FeedForward, GeluFloat8SingleBlock)):
            module.__class__ = module.__class__.__mro__[1]
    assert not any(_swap_for(m) is None for m in plain.modules() if type(m).__name__ == "FeedForward")
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = fused.config
    inputs = dict(hidden_states=torch.randn(1, 64, cfg.in_channels, generator=g),
                  encoder_hidden_states=torch.randn(1, 32, cfg.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]) if cfg.guidance_embeds else None,
                  img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(32, 3))
    inputs = {k: v.to("cuda", torch.bfloat16 if v.is_floating_point() and "ids" not in k else v.dtype)
              if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    outputs = {}
    torch._dynamo.reset()
    for name, transformer in (("fused", fused), ("plain", plain)):
        compile_regionally(transformer)
        with torch.inference_mode():
            transformer(**inputs, return_dict=False)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                outputs[name] = transformer(**inputs, return_dict=False)[0].float()
                torch.cuda.synchronize()
        kernels = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
        assert any("gelu_fp8_rows_kernel" in k for k in kernels) == (name == "fused"), kernels
    difference = (outputs["fused"] - outputs["plain"]).norm() / outputs["plain"].norm()
    assert torch.isfinite(outputs["fused"]).all() and difference < 0.02, float(difference)
    fluxnb.models.loading.release_session_model()
    torch._dynamo.reset()


def gelu_fp8_rows_reference(b: torch.Tensor, a: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch of what fluxnb/models/backends/fp8_rows_triton.py documents: row = [a | GELU-tanh(b)] in float32,
    scale = (row amax / 448) rounded to bf16 (at least 1e-12), values = row / scale clamped to +-448, rounded to float8
    e4m3. (Triton's interpreter cannot check the kernel on the CPU: triton 3.6.0's interpreter rounds float32 to
    float8e4nv / bf16 without carrying a rounded-up mantissa into the exponent, e.g. -127.9 -> -64.)"""
    gelu = 0.5 * b.float() * (1 + torch.tanh(0.7978845608028654 * (b.float() + 0.044715 * b.float() ** 3)))
    row = gelu if a is None else torch.cat([a.float(), gelu], dim=-1)
    row = row.reshape(-1, row.shape[-1])
    scale = (row.abs().amax(dim=-1, keepdim=True) / 448).to(torch.bfloat16).float().clamp(min=1e-12)
    return (row / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def test_float8_row_kernel_matches_the_torch_reference():
    """The one-pass GELU + row quantization kernel against plain torch: the same scales, and float8 values equal
    but where the kernel's exp-based GELU and torch's tanh differ by a float32 ulp at a rounding boundary (at most
    one float8 step, in a handful of elements). Edges: K over the 1024 block, a strided slice, no attention part, a
    zero row."""
    pytest.importorskip("triton")
    from fluxnb.models.backends import fp8_rows_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    wide = torch.randn(3, 5000, device="cuda", generator=g).to(torch.bfloat16)
    cases = [(torch.randn(2, 7, 300, device="cuda", generator=g).to(torch.bfloat16) * 3,
              torch.randn(2, 7, 64, device="cuda", generator=g).to(torch.bfloat16) * 5),
             (wide[:, :2100], wide[:, 2500:3530]),  # strided rows, K over the block
             (torch.randn(4, 70, device="cuda", generator=g).to(torch.bfloat16), None)]
    zero = torch.zeros(2, 40, device="cuda", dtype=torch.bfloat16)
    cases.append((zero, zero[:, :8]))
    for b, a in cases:
        q, scale = fp8_rows_triton.launch(b, a)
        expected_q, expected_scale = gelu_fp8_rows_reference(b, a)
        assert q.dtype == torch.float8_e4m3fn and q.shape == expected_q.shape
        torch.testing.assert_close(scale, expected_scale, rtol=2 ** -7, atol=0)  # a bf16 step at most
        differ = q.view(torch.uint8) != expected_q.view(torch.uint8)
        assert differ.float().mean().item() < 0.01, differ.sum()
        assert ((q.float() - expected_q.float()).abs() <= expected_q.float().abs() / 8 + 2 ** -9).all()
    assert torch.equal(q.float(), torch.zeros_like(q.float())) and torch.equal(scale, torch.full_like(scale, 1e-12))


def _relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.float() - reference.float()).norm() / reference.float().norm()).item()


def test_sage_attention_against_float32_attention_at_flux_shapes():
    """fluxnb's SageAttention op (sageattention's Triton kernels: int8 Q and K) at FLUX.1-dev's attention shapes
    (24 heads of 128, 4096 image + 512 text tokens, keys with a per-channel bias like trained models') against float32
    attention: within a few percent (bf16 SDPA's own error printed beside it), and the caller's key untouched."""
    pytest.importorskip("sageattention")
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from fluxnb.models.sage_attention import sage_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 4608, 24, 128)  # [batch, tokens, heads, head_dim]: what diffusers' dispatch hands a backend
    q, k, v = (torch.randn(shape, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    k = k + 2.0 * torch.randn((1, 1, 24, 128), device="cuda", generator=g).to(torch.bfloat16)
    key = k.clone()
    out = sage_attention(q, k, v)
    reference = sdpa(*(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
    bf16 = sdpa(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    print(f"error vs float32: sage {_relative(out, reference):.4f}, bf16 SDPA {_relative(bf16, reference):.4f}")
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert torch.equal(k, key)
    assert _relative(out, reference) < 0.05


@pytest.mark.parametrize(("kernel", "package", "bound"),
                         [("sage", "sageattention", 0.05), ("cudnn-fp8", "cudnn", 0.15)])
def test_attention_kernel_compiles_into_a_flux_block_without_a_graph_break(kernel, package, bound):
    """A FLUX transformer (diffusers' class, 2 heads of 128) with `attention: sage` / `cudnn-fp8`, through diffusers'
    dispatch: close to SDPA's output eager (float8's rounding is the coarser), and compiled with fullgraph=True (the
    custom op keeps the kernels whole) the same as eager."""
    pytest.importorskip(package)
    if kernel == "cudnn-fp8" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("cuDNN's float8 attention needs compute capability 9.0+")
    from diffusers import FluxTransformer2DModel

    from fluxnb.models.attention import attention_backend, use_attention

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=128, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=64, axes_dims_rope=(32, 48, 48))
    transformer = transformer.to("cuda", torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 1024, 16, device="cuda", generator=g).to(torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, 128, 64, device="cuda", generator=g).to(torch.bfloat16),
                  pooled_projections=torch.randn(1, 64, device="cuda", generator=g).to(torch.bfloat16),
                  timestep=torch.tensor([0.5], device="cuda"), img_ids=torch.zeros(1024, 3, device="cuda"),
                  txt_ids=torch.zeros(128, 3, device="cuda"), return_dict=False)
    with torch.inference_mode():
        reference = transformer(**inputs)[0]
        use_attention(transformer, kernel)
        eager = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True)
        compiled = transformer(**inputs)[0]
    print(f"{kernel} vs sdpa {_relative(eager, reference):.4f}, compiled vs eager {_relative(compiled, eager):.5f}")
    assert attention_backend(transformer).startswith(f"{kernel} (")
    assert 0 < _relative(eager, reference) < bound  # not SDPA's output, but close to it
    assert _relative(compiled, eager) < 0.01


def test_cudnn_fp8_attention_against_float32_attention_at_flux_shapes():
    """fluxnb's cuDNN float8 attention (Q, K, V, O in float8, one scale each, V centred) at FLUX.1-dev's attention
    shapes against float32 attention: float8's error (about 0.08 on random tensors with V uncentred in probe run 37,
    bf16 SDPA's 0.002 printed beside it), lower than the same kernel's with V whole when V has a mean as FLUX's
    has; and captured in a CUDA graph, as the float8 entries run it, the same output."""
    pytest.importorskip("cudnn")  # nvidia-cudnn-frontend: the `cudnn-fp8` extra
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("cuDNN's float8 attention needs compute capability 9.0+")
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from fluxnb.models.cudnn_fp8_attention import diffusers_backend, quantize_per_tensor, sdpa_fp8

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 4608, 24, 128)  # [batch, tokens, heads, head_dim]: what diffusers' dispatch hands a backend
    q, k, v = (torch.randn(shape, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    k = k + 2.0 * torch.randn((1, 1, 24, 128), device="cuda", generator=g).to(torch.bfloat16)
    v = v + 0.5 * torch.randn((1, 1, 24, 128), device="cuda", generator=g).to(torch.bfloat16)  # FLUX's V: 0.3-0.5
    out = diffusers_backend(q, k, v)
    reference = sdpa(*(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
    bf16 = sdpa(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_tensor(t) for t in (q, k, v))
    whole = sdpa_fp8(q8, k8, v8, dq, dk, dv, 128 ** -0.5).float() * dv
    print(f"error vs float32: cudnn-fp8 {_relative(out, reference):.4f} (V whole: {_relative(whole, reference):.4f}), "
          f"bf16 SDPA {_relative(bf16, reference):.4f}")
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert _relative(bf16, reference) < _relative(out, reference) < min(0.12, _relative(whole, reference))
    compiled = torch.compile(diffusers_backend, fullgraph=True)
    compiled(q, k, v)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = compiled(q, k, v)
    graph.replay()
    assert _relative(captured, out) < 1e-3
