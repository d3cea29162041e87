"""Property-based tests: whatever the config file or the parameters hold, only fluxnb's own errors come out."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import fluxnb
from fluxnb.core.packaged import SAMPLE_INIT_IMAGE
from fluxnb.models.config import DEFAULT_CONFIG_PATH, parse_config
from fluxnb.models.params import IMAGE_TO_IMAGE, make_request
from fluxnb.runs.outputs import RunFolder
from fluxnb.runs.runner import parse_cli_value

RAW = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                            inner, max_size=4),
                      max_leaves=12)
paths = st.sampled_from([
    ("models",), ("runtime",), ("runtime", "primary_model"), ("runtime", "fallback_model"),
    ("models", "flux-tiny"), ("models", "flux-tiny", "type"), ("models", "flux-tiny", "params"),
    *[("models", "flux-dev-bnb-8bit", "params", key) for key in RAW["models"]["flux-dev-bnb-8bit"]["params"]],
    *[("models", "flux-dev", key) for key in RAW["models"]["flux-dev"]],
    ("models", "new-model"), ("extra",),
])


def _mutated(mutations: list[tuple[tuple[str, ...], object]]) -> dict:
    """The shipped config with each (path, value) set where the path leads through mappings."""
    data = copy.deepcopy(RAW)
    for path, value in mutations:
        node = data
        for key in path[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(key), dict):
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                node[path[-1]] = value
    return data


def _says(config, data: dict) -> None:
    """The parsed config holds what the data said: its model names and types, its primary and fallback."""
    assert sorted(config.models) == sorted(data["models"])
    assert (config.primary_model, config.fallback_model) == (data["runtime"]["primary_model"],
                                                             data["runtime"]["fallback_model"])
    assert all(config.models[name].type == data["models"][name]["type"] for name in config.models)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(paths, values), min_size=1, max_size=4))
def test_any_config_mutation_gives_a_config_or_a_config_error(mutations):
    data = _mutated(mutations)
    try:
        config = parse_config(data)
    except fluxnb.ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
    else:
        _says(config, data)


def _edited(text: str, cut: int, insert: str) -> str:
    """A config's YAML text with a stretch cut out and something typed in its place (a slip of the editor)."""
    at = cut % (len(text) + 1)
    return text[:at] + insert + text[at + len(insert):]


configs_as_text = st.lists(st.tuples(paths, values), max_size=3).map(
    lambda mutations: yaml.safe_dump(_mutated(mutations), allow_unicode=True, sort_keys=False))
yaml_texts = (configs_as_text  # a config someone edited: mostly valid YAML, often a valid config
              | st.builds(_edited, configs_as_text, st.integers(0, 10_000), st.text(max_size=12))
              | st.text(max_size=300))  # anything at all


@settings(max_examples=200, deadline=None)
@given(yaml_texts)
def test_any_yaml_text_gives_the_config_it_says_or_a_config_error(tmp_path_factory, text):
    """Either a ConfigError, or the config the text says, read back independently of fluxnb by PyYAML."""
    path = tmp_path_factory.mktemp("cfg") / "model_config.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        config = fluxnb.load_config(path)
    except fluxnb.ConfigError as exc:
        assert exc.problems or str(exc)
        return
    _says(config, yaml.safe_load(path.read_text(encoding="utf-8")))


request_values = st.fixed_dictionaries({}, optional={
    "prompt": values | st.text(),
    "negative_prompt": values,
    "seed": values,
    "steps": values,
    "guidance_scale": values,
    "width": values,
    "height": values,
    "num_images": values,
    "max_sequence_length": values,
    "strength": values,
    "init_image": values,
})


# Values a person would give (in range for both models), mixed with the wild ones above: the success path is
# reached often, and must keep what was asked.
sensible_values = st.fixed_dictionaries({}, optional={
    "steps": st.integers(1, 50),
    "width": st.sampled_from([64, 128, 256, 512]),
    "height": st.sampled_from([64, 256, 512]),
    "guidance_scale": st.floats(0.5, 10.0),
    "seed": st.integers(0, 2**31),
    "num_images": st.integers(1, 4),
    "strength": st.floats(0.05, 1.0),
    "init_image": st.just(str(SAMPLE_INIT_IMAGE)),
})


@settings(max_examples=400, deadline=None)
@given(request_values | sensible_values, st.sampled_from(["flux-dev-bnb-8bit", "flux-tiny"]), st.booleans())
def test_any_request_gives_the_request_asked_or_a_request_error(kwargs, model, i2i):
    spec = fluxnb.load_config().get(model)
    kwargs.setdefault("prompt", "a fox")
    try:
        request = make_request(spec, mode=IMAGE_TO_IMAGE if i2i else "text-to-image", **kwargs)
    except fluxnb.RequestError as exc:
        event("refused")
        assert exc.parameter in {*kwargs, "mode", "init_image"}  # init_image: required for i2i
        return
    event("accepted")
    assert 1 <= request.steps <= spec.params.max_steps
    assert request.width % 16 == 0 and request.height % 16 == 0
    assert request.width <= spec.params.max_size[0] and request.height <= spec.params.max_size[1]
    assert 0 < request.guidance_scale < float("inf")
    for name in ("steps", "width", "height", "guidance_scale", "seed", "num_images"):  # what was asked, kept
        if isinstance(kwargs.get(name), (int, float)) and not isinstance(kwargs[name], bool):
            assert getattr(request, name) == kwargs[name], name
    assert request.mode == (IMAGE_TO_IMAGE if i2i else "text-to-image")
    if i2i:
        assert request.strength == kwargs.get("strength", request.strength) and request.init_image


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80).filter(str.strip))
def test_unicode_prompts_round_trip_into_png_and_manifest(tmp_path_factory, prompt):
    spec = fluxnb.load_config().get("flux-tiny")
    request = make_request(spec, prompt=prompt)
    run = RunFolder.create("unicode", base=tmp_path_factory.mktemp("out"))
    path = run.save_image(Image.new("RGB", (8, 8)), {"index": 0, "prompt": request.prompts[0]})
    assert fluxnb.read_png_metadata(path)["prompt"] == prompt
    assert fluxnb.read_manifest(run.path)["images"][0]["prompt"] == prompt


def test_korean_prompt_round_trip(tmp_path):
    prompt = "안개 낀 아침, 눈 덮인 숲 속의 붉은 여우 — 수채화"
    run = RunFolder.create("korean", base=tmp_path)
    path = run.save_image(Image.new("RGB", (8, 8)), {"index": 0, "prompt": prompt})
    assert fluxnb.read_png_metadata(path)["prompt"] == prompt
    assert prompt in (run.path / "manifest.json").read_text(encoding="utf-8")


@given(st.text() | st.from_regex(r"\s?[+-]?(\d{1,6}(\.\d{0,3})?|\.\d{1,3})([eE][+-]?\d{1,2})?\s?", fullmatch=True)
       | st.sampled_from(["None", "null", "~", "True", "true", "False", "false", "#1", "&word", "[a, b]", "a: b"]))
def test_cli_values_are_the_text_as_typed_or_its_literal(text):
    """-p gives a string parameter exactly what was typed; only None, True/False and plain numbers become values."""
    value = parse_cli_value(text)
    word = text.strip()
    if value is None:
        assert word in ("None", "null", "~")
    elif isinstance(value, bool):
        assert value is (word in ("True", "true")) and word in ("True", "true", "False", "false")
    elif isinstance(value, int):
        assert word.lstrip("+-").isdigit() and value == int(word)
    elif isinstance(value, float):
        assert any(c in word for c in ".eE") and value == float(word)
    else:
        assert value == text
