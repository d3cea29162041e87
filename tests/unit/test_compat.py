"""Each library internal behind fluxnb/core/compat.py still exists, with the shape fluxnb uses, in the installed
versions.

An upgrade that drops or reshapes one fails here, by name, instead of in a user's load. The ranges compat.py states
are pyproject.toml's bounds, and the installed versions lie within them. No module but compat.py names a private
library internal (the scan at the end).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import io
import tokenize
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

from fluxnb.core import compat
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.stack  # the diffusers line decides what some lookups find: the guide lane runs it too

OPTIONAL = {"torchao"}  # an extra (pyproject [project.optional-dependencies]); the guide line goes without it


def _pyproject_bounds() -> dict[str, str]:
    """Each dependency's version specifier in pyproject.toml, the extras included."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    return {Requirement(line).name: str(Requirement(line).specifier) for line in lines}


def _installed(library: str) -> str | None:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torchao():
    """torchao's quantization module; absent on the guide line (an optional extra): those tests say so and stop."""
    return pytest.importorskip("torchao.quantization", reason="torchao is an optional extra (the guide line)")


# --- the ranges ---------------------------------------------------------------------------------------------------


def test_compat_ranges_are_pyprojects_bounds():
    bounds = _pyproject_bounds()
    expected = {
        "torch": ">=2.4,<2.15", "diffusers": ">=0.31,<0.43", "peft": ">=0.15,<0.22", "torchao": ">=0.15,<0.19",
        "bitsandbytes": ">=0.45",
    }
    stated = {name: ",".join(sorted([f">={c.lowest}", *([f"<{c.below}"] if c.below else [])], reverse=True))
              for name, c in compat.CHECKED.items()}
    assert stated == expected
    assert {name: ",".join(sorted(bounds[name].split(","), reverse=True)) for name in expected} == expected


def test_installed_versions_lie_within_the_checked_ranges():
    missing = {name for name in compat.CHECKED if _installed(name) is None}
    assert missing <= OPTIONAL
    outside = {}
    for name, checked in compat.CHECKED.items():
        if name in missing:
            continue
        version = Version(Version(_installed(name)).base_version)  # 2.13.0+cpu -> 2.13.0
        if version < Version(checked.lowest) or (checked.below and version >= Version(checked.below)):
            outside[name] = str(version)
    assert outside == {}, f"installed outside the ranges fluxnb/core/compat.py was checked on: {outside}"


# --- torch ----------------------------------------------------------------------------------------------------------


def test_inductor_mode_options_spell_out_a_mode():
    import torch._inductor

    assert list(inspect.signature(torch._inductor.list_mode_options).parameters)[:1] == ["mode"]
    assert compat.inductor_mode_options(None) == {}
    assert compat.inductor_mode_options("max-autotune-no-cudagraphs") == {
        "max_autotune": True, "coordinate_descent_tuning": True}


def test_inductor_local_caches_are_switched_on():
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False):
        compat.enable_inductor_local_caches()
        assert (inductor_config.fx_graph_cache, inductor_config.autotune_local_cache) == (True, True)


def test_inductor_default_cache_dir_is_torchs_temp_folder():
    import getpass
    import os
    import tempfile

    assert compat.inductor_default_cache_dir() == os.path.join(tempfile.gettempdir(),
                                                               f"torchinductor_{getpass.getuser()}")


def test_compile_counters_count_a_new_graph_and_its_seconds():
    before = compat.compile_counters()
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
    assert compiled(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]
    after = compat.compile_counters()
    assert after[0] == before[0] + 1
    assert after[1] > before[1]


def test_fx_graph_cache_counters_are_the_ones_inductor_increments():
    import torch._inductor.codecache as codecache

    source = inspect.getsource(codecache)
    assert 'counters["inductor"]["fxgraph_cache_hit"] += 1' in source
    assert 'counters["inductor"]["fxgraph_cache_miss"] += 1' in source
    hits, misses = compat.fx_graph_cache_counts()
    assert isinstance(hits, int) and isinstance(misses, int) and hits >= 0 and misses >= 0


def test_compiled_call_is_the_one_module_compile_installs():
    linear = torch.nn.Linear(2, 2)
    assert compat.compiled_call(linear) is None
    linear.compile(backend="eager")
    compiled = compat.compiled_call(linear)
    assert callable(compiled)
    seen = []

    def wrapper(*args, **kwargs):
        seen.append(args[0].shape)
        return compiled(*args, **kwargs)

    compat.set_compiled_call(linear, wrapper)
    x = torch.ones(1, 2)
    torch.testing.assert_close(linear(x), x @ linear.weight.T + linear.bias)
    assert seen == [torch.Size([1, 2])]


def test_scaled_mm_rows_multiplies_by_a_torchao_float8_weight():
    _torchao()
    from torchao.float8.inference import Float8MMConfig
    from torchao.quantization import Float8Tensor, PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import QuantizeTensorToFloat8Kwargs

    schema = torch.ops.aten._scaled_mm.default._schema
    assert [a.name for a in schema.arguments][:4] == ["self", "mat2", "scale_a", "scale_b"]
    assert {"bias", "out_dtype", "use_fast_accum"} <= {a.name for a in schema.arguments}
    linear = torch.nn.Linear(32, 16, dtype=torch.bfloat16)
    weight = Float8Tensor.from_hp(linear.weight.detach(), granularity=PerRow(),
                                  mm_config=Float8MMConfig(use_fast_accum=True),
                                  act_quant_kwargs=QuantizeTensorToFloat8Kwargs(granularity=PerRow()))
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    scale = x.float().abs().amax(-1, keepdim=True) / 448
    out = compat.scaled_mm_rows((x.float() / scale).to(torch.float8_e4m3fn), scale, weight, linear.bias,
                                torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (20, 16)
    exact = x.float() @ linear.weight.detach().float().T + linear.bias.detach().float()
    torch.testing.assert_close(out.float(), exact, rtol=0.1, atol=0.15)  # two float8 roundings


def test_fp8_rows_recognizes_the_torchao_float8_weight_it_fuses():
    """backends/fp8_rows.py reads a Float8Tensor's act_quant_kwargs fields (granularity, float8_dtype, hp bounds)."""
    _torchao()
    from torchao.quantization import Float8Tensor, PerRow, PerTensor
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import QuantizeTensorToFloat8Kwargs

    from fluxnb.models.backends.fp8_rows import _per_row_float8

    def linear_with(act_granularity) -> torch.nn.Linear:
        linear = torch.nn.Linear(32, 16, dtype=torch.bfloat16)
        linear.weight = torch.nn.Parameter(Float8Tensor.from_hp(
            linear.weight.detach(), granularity=PerRow(),
            act_quant_kwargs=QuantizeTensorToFloat8Kwargs(granularity=act_granularity)), requires_grad=False)
        return linear

    assert _per_row_float8(linear_with(PerRow())) is True
    assert _per_row_float8(linear_with(PerTensor())) is False


# --- torchao --------------------------------------------------------------------------------------------------------


def test_int8_rows_are_an_int8_tensors_data_and_per_row_scales():
    tq = _torchao()
    linear = torch.nn.Linear(32, 16, dtype=torch.bfloat16)
    original = linear.weight.detach().float().clone()
    tq.quantize_(linear, tq.Int8WeightOnlyConfig(version=2, set_inductor_config=False))
    assert type(linear.weight).__name__ == "Int8Tensor"
    assert linear.weight.act_quant_kwargs is None  # backends/matvec.py picks weight-only layers by it
    qdata, scale = compat.int8_rows(linear.weight)
    assert qdata.dtype == torch.int8 and qdata.shape == (16, 32) and scale.numel() == 16
    rows = scale.float().reshape(16, 1)
    assert ((qdata.float() * rows - original).abs() <= rows * 0.51 + 1e-3).all()  # within half a step per row


# --- diffusers ------------------------------------------------------------------------------------------------------


def _tiny_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))


def test_repeated_blocks_name_flux_blocks_and_take_one_more():
    from diffusers import ModelMixin

    transformer = _tiny_transformer()
    if not hasattr(ModelMixin, "compile_repeated_blocks"):  # diffusers before regional compile (the guide's 0.34)
        assert compat.repeated_blocks(transformer) is None
        compat.add_repeated_block(transformer, "Mine")
        assert compat.repeated_blocks(transformer) is None
        return
    assert "_repeated_blocks" in inspect.getsource(ModelMixin.compile_repeated_blocks)  # what regional compile reads
    assert compat.repeated_blocks(transformer) == ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    compat.add_repeated_block(transformer, "Mine")
    compat.add_repeated_block(transformer, "Mine")
    assert compat.repeated_blocks(transformer) == ["FluxTransformerBlock", "FluxSingleTransformerBlock", "Mine"]
    assert type(transformer)._repeated_blocks == ["FluxTransformerBlock", "FluxSingleTransformerBlock"]  # the class's


def test_execution_device_is_diffusers_property():
    from diffusers import DiffusionPipeline

    assert isinstance(inspect.getattr_static(DiffusionPipeline, "_execution_device"), property)
    assert compat.execution_device(SimpleNamespace(_execution_device=torch.device("cpu"))) == torch.device("cpu")


def test_kontext_keeps_the_size_through_its_auto_resize_argument():
    import diffusers

    kontext = getattr(diffusers, "FluxKontextPipeline", None)
    if kontext is None:  # the guide's diffusers 0.34: the edit mode is refused before loading (tests/unit/test_editing)
        assert diffusers.__version__.startswith("0.34")
        return
    parameter = inspect.signature(kontext.__call__).parameters["_auto_resize"]
    assert parameter.default is True and compat.kontext_keep_size() == {"_auto_resize": False}


def test_unpack_latents_puts_each_2x2_patch_back():
    from diffusers import FluxPipeline

    assert list(inspect.signature(FluxPipeline._unpack_latents).parameters) == [
        "latents", "height", "width", "vae_scale_factor"]
    channels, height, width = 3, 32, 48  # pixels; vae_scale_factor 8: a 4 x 6 latent, 2 x 3 tokens of 2x2 patches
    latents = torch.arange(1 * 6 * channels * 4, dtype=torch.float32).reshape(1, 6, channels * 4)
    pipe = SimpleNamespace(_unpack_latents=FluxPipeline._unpack_latents, vae_scale_factor=8)
    out = compat.unpack_latents(pipe, latents, height, width)
    assert out.shape == (1, channels, 4, 6)
    for row in range(2):
        for col in range(3):
            for c in range(channels):
                for dy in range(2):
                    for dx in range(2):
                        assert out[0, c, 2 * row + dy, 2 * col + dx] == latents[0, row * 3 + col, c * 4 + dy * 2 + dx]


def test_attention_backend_lookups():
    diffusers_version = Version(importlib.metadata.version("diffusers"))
    transformer = _tiny_transformer()
    processor = transformer.transformer_blocks[0].attn.processor
    if diffusers_version < Version("0.36"):  # before the registry: scaled_dot_product_attention called directly
        assert compat.active_attention_backend() is None
        assert compat.processor_attention_backend(processor) is None
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    assert callable(_AttentionBackendRegistry.get_active_backend)
    assert compat.active_attention_backend() == "native"
    assert compat.processor_attention_backend(processor) is None
    transformer.set_attention_backend("native")
    assert "native" in compat.processor_attention_backend(processor).lower()


def test_attention_registry_takes_a_backend_fluxnb_registers():
    """The registry's `register` decorator and the processors' backend attribute, as diffusers' dispatch reads them
    (the default line; the guide's 0.34 has no registry and refuses the kernel before: test_attention.py)."""
    if Version(importlib.metadata.version("diffusers")) < Version("0.36"):
        assert compat.active_attention_backend() is None
        return
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = "_sage_qk_int8_pv_fp16_triton"
    original = _AttentionBackendRegistry._backends[AttentionBackendName(name)]

    def backend(query, key, value, attn_mask=None, is_causal=False, scale=None, _parallel_config=None):
        return query

    try:
        compat.register_attention_backend(name, backend)
        assert _AttentionBackendRegistry._backends[AttentionBackendName(name)] is backend
        transformer = _tiny_transformer()
        assert compat.set_attention_backend_unchecked(transformer, name) == 2  # 1 double + 1 single block
        assert compat.processor_attention_backend(transformer.transformer_blocks[0].attn.processor) == name
    finally:
        _AttentionBackendRegistry.register(AttentionBackendName(name))(original)


def test_block_registry_takes_a_swapped_block_class():
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    if Version(importlib.metadata.version("diffusers")) < Version("0.36"):
        return  # the float8 block swap is refused on the guide line (test_fast_path.py)
    from diffusers.hooks._helpers import TransformerBlockRegistry

    class Swapped(FluxSingleTransformerBlock):
        pass

    compat.register_block_class_like(Swapped, FluxSingleTransformerBlock)
    base, swapped = TransformerBlockRegistry.get(FluxSingleTransformerBlock), TransformerBlockRegistry.get(Swapped)
    assert (swapped.return_hidden_states_index, swapped.return_encoder_hidden_states_index) == \
        (base.return_hidden_states_index, base.return_encoder_hidden_states_index) == (1, 0)
    assert swapped._cls is Swapped and base._cls is FluxSingleTransformerBlock


def _forward_steps(transformer, steps: int) -> list[tuple[str, bool]]:
    """`steps` forwards of the same inputs inside the pipelines' cache_context("cond"), each step cache decision."""
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 4, 4, generator=generator),
                  encoder_hidden_states=torch.randn(1, 3, 16, generator=generator),
                  pooled_projections=torch.randn(1, 16, generator=generator), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(3, 3), return_dict=False)
    hook, decisions = compat.step_cache_hook(transformer), []
    with torch.inference_mode():
        for _ in range(steps):
            with transformer.cache_context("cond"):
                transformer(**inputs)
                decisions.append(compat.step_cache_decision(hook))
    return decisions


def test_step_cache_hooks_are_found_by_name_and_their_decisions_read():
    import diffusers

    assert compat.step_cache_hook(_tiny_transformer()) is None  # no cache on
    if not hasattr(diffusers, "TaylorSeerCacheConfig"):  # the guide's 0.34: cached modes refused (test_step_cache)
        return
    from diffusers.hooks import first_block_cache, taylorseer_cache

    assert compat.STEP_CACHE_HOOKS == (first_block_cache._FBC_LEADER_BLOCK_HOOK,
                                       taylorseer_cache._TAYLORSEER_CACHE_HOOK)
    transformer = _tiny_transformer()
    transformer.enable_cache(diffusers.FirstBlockCacheConfig(threshold=0.05))
    assert type(compat.step_cache_hook(transformer)).__name__ == "FBCHeadBlockHook"
    # the same inputs every step: the first block's residual does not change, so every step after the first is cached
    assert _forward_steps(transformer, 3) == [("cond", True), ("cond", False), ("cond", False)]
    transformer = _tiny_transformer()
    transformer.enable_cache(diffusers.TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=3))
    assert type(compat.step_cache_hook(transformer)).__name__ == "TaylorSeerCacheHook"
    # diffusers' TaylorSeer: steps 0-2 full (warm-up), then full when (step - 3 - 1) % 2 == 0: step 4, not step 3
    assert [computed for _, computed in _forward_steps(transformer, 5)] == [True, True, True, False, True]


# --- peft -----------------------------------------------------------------------------------------------------------


def test_hotswap_scaling_is_written_into_the_tensor_in_place():
    from peft.utils.hotswap import _update_scaling

    assert list(inspect.signature(_update_scaling).parameters) == ["lora_module", "adapter_name", "scaling"]
    tensor = torch.tensor(1.0)
    module = SimpleNamespace(scaling={"slot": tensor})
    compat.set_hotswap_scaling(module, "slot", 0.25)
    assert module.scaling["slot"] is tensor and tensor.item() == 0.25


# --- bitsandbytes ---------------------------------------------------------------------------------------------------


def test_bnb_matmul_logger_is_the_module_that_logs_the_cast():
    module = importlib.import_module(compat.BNB_MATMUL_LOGGER)
    source = inspect.getsource(module)
    assert "logging.getLogger(__name__)" in source and "MatMul8bitLt: inputs will be cast from" in source


# --- nothing else names a library internal --------------------------------------------------------------------------

PRIVATE_NAMES = {"_repeated_blocks", "_compiled_call_impl", "_execution_device", "_unpack_latents", "_update_scaling",
                 "_AttentionBackendRegistry", "_attention_backend", "_scaled_mm", "_int_mm", "_dynamo", "_inductor",
                 "act_quant_kwargs", "_auto_resize", "_diffusers_hook", "fbc_leader_block_hook", "taylorseer_cache",
                 "state_manager", "should_compute", "last_update_step", "_helpers", "_backends"}


def _private_uses(path: Path) -> list[str]:
    """Tokens of PRIVATE_NAMES in code: a name (`.name`, `import ...name`) or a string that is exactly one
    (`getattr(x, "name")`); comments and prose are not code."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
    return [f"{path.relative_to(REPO_ROOT)}:{t.start[0]}: {t.string}" for t in tokens
            if (t.type == tokenize.NAME and t.string in PRIVATE_NAMES)
            or (t.type == tokenize.STRING and t.string.strip("'\"") in PRIVATE_NAMES)]


def test_no_module_but_compat_names_a_library_internal():
    found = [use for path in sorted((REPO_ROOT / "fluxnb").rglob("*.py")) if path.name != "compat.py"
             for use in _private_uses(path)]
    assert found == []
