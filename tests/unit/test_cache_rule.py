"""The cached mode keeps its promise (issue 25): each image and bench row records the steps its step cache really
computed (observed on diffusers' hooks, checked here against the blocks' own calls), and the bench summary offers a
cached mode only within 3x bnb 8-bit's latent error on both weight sets, saying why otherwise."""

from __future__ import annotations

import pytest

import fluxnb
from fluxnb.bench import add_comparisons, parse_backend, run_bench, summarize
from fluxnb.models import step_cache
from fluxnb.models.step_cache import parse_cache

pytestmark = pytest.mark.stack  # in both lanes: the guide line has no cache hooks (its refusal: test_step_cache)

HOOKS = step_cache.unavailable_reason(parse_cache("taylorseer@2")) is None
needs_hooks = pytest.mark.skipif(not HOOKS, reason="this lane's diffusers has no cache hooks")
STEPS = 8


def _cached_image(model, spec, cache: str) -> tuple[dict, list[int]]:
    """One tiny image with `cache`: its metadata's cache record, and the steps whose last transformer block really
    ran (a forward pre-hook on its attention, the step read from the pipeline's step callback)."""
    step, ran = [0], []

    def next_step(pipe, index, timestep, kwargs):
        step[0] = index + 1
        return kwargs

    tail = model.pipe.transformer.single_transformer_blocks[-1].attn  # skipped by both caches when a step is cached
    handle = tail.register_forward_pre_hook(lambda *args: ran.append(step[0]))
    try:
        request = fluxnb.make_request(spec, prompt="a cat", steps=STEPS, width=32, height=32, cache=cache)
        image = fluxnb.generate(model, request, progress=False, callback_on_step_end=next_step)[0]
    finally:
        handle.remove()
    return image.metadata["speed"]["cache"], ran


@needs_hooks
def test_first_block_records_the_steps_it_computed(tiny_spec):
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)  # own copy: the hooks change it
    skipping, ran = _cached_image(model, tiny_spec, "first-block@0.9")  # the tiny model's steps change less than that
    assert skipping["steps"] == STEPS and skipping["computed"] < STEPS
    assert skipping["computed_steps"] == ran and skipping["computed"] == len(ran)
    assert skipping["computed_steps"][0] == 0  # nothing to reuse before the first step
    every, ran = _cached_image(model, tiny_spec, "first-block@0.0001")
    assert every["computed_steps"] == ran == [0, 1, 2, 3, 4, 5, 6, 7]
    assert every["computed"] == every["steps"] == STEPS


@needs_hooks
def test_taylorseer_records_its_fixed_schedule(tiny_spec):
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    record, ran = _cached_image(model, tiny_spec, "taylorseer@2")
    # diffusers' TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=3): steps 0-2 computed to fit the
    # Taylor factors, then one step in 2 counted from step 4 (the hook computes when (step - 3 - 1) % 2 == 0)
    assert record["computed_steps"] == ran == [0, 1, 2, 4, 6]
    assert (record["computed"], record["steps"], record["setting"]) == (5, STEPS, "taylorseer@2")
    # a forecast window: steps before 2 and from 6 on computed, one in 2 between (the hook computes step 3, 5)
    window, ran = _cached_image(model, tiny_spec, "taylorseer@2:from=2:until=6")
    assert window["computed_steps"] == ran == [0, 1, 3, 5, 6, 7]
    assert window["computed"] == parse_cache("taylorseer@2:from=2:until=6").computed_steps(STEPS) == 6
    plain, ran = _cached_image(model, tiny_spec, "off")
    assert plain is None and ran == list(range(STEPS))


@needs_hooks
def test_a_hook_state_diffusers_moved_makes_the_record_unknown_not_the_image_fail(tiny_spec, monkeypatch):
    from fluxnb.models import cache_schedule

    def moved(hook):
        raise AttributeError("'FBCSharedBlockState' object has no attribute 'should_compute'")

    monkeypatch.setattr(cache_schedule, "step_cache_decision", moved)
    model = fluxnb.load_model(tiny_spec, device="cpu", progress=False)
    record, ran = _cached_image(model, tiny_spec, "first-block@0.9")
    assert record["computed_steps"] == ("unknown (reading the step cache's decision failed: AttributeError: "
                                        "'FBCSharedBlockState' object has no attribute 'should_compute')")
    assert record["computed"] is None and ran[0] == 0  # the image was made


@needs_hooks
def test_bench_rows_carry_the_schedule_of_the_timed_call(config):
    backends = [parse_backend(name, config) for name in ("flux-tiny", "flux-tiny@cache=taylorseer@2")]
    results = run_bench(backends, ((32, 32),), steps=STEPS, warmup_steps=1, device="cpu", log=lambda line: None)
    rows = {row["backend"]: row for row in results["rows"]}
    assert rows["flux-tiny@cache=taylorseer@2"]["cache_schedule"] == {
        "computed_steps": [0, 1, 2, 4, 6], "computed": 5, "steps": STEPS}
    assert "cache_schedule" not in rows["flux-tiny"]


def _row(backend: str, seconds: float, error: float, weights: str) -> dict:
    return {"backend": backend, "size": "1024x1024", "width": 1024, "height": 1024, "steps": 28, "weights": weights,
            "seconds_per_image": seconds, "seconds_per_step": seconds / 28, "latent_rel_error": error,
            "psnr_db": 30.0, "fits_cap": True, "capped": True}


def _results(cached: dict[str, tuple[float, float]]) -> dict:
    """bnb 8-bit at 16 s with latent error 0.02 (Gaussian) and 0.04 (outliers); each cached mode at 1.6 s (10x)
    with its given errors on the two sets."""
    rows = []
    for weights, base_error in (("gaussian", 0.02), ("outliers", 0.04)):
        rows += [_row("flux-dev", 5.0, 0.0, weights), _row("flux-dev-bnb-8bit", 16.0, base_error, weights)]
        rows += [_row(label, 1.6, errors[weights == "outliers"], weights) for label, errors in cached.items()]
    results = {"weights": "synthetic", "device": {"gpu": "NVIDIA H100 80GB HBM3"}, "rows": rows,
               "backends": [{"label": r["backend"], "type": "t"} for r in rows if r["weights"] == "gaussian"],
               "settings": {"baseline": "flux-dev-bnb-8bit", "reference": "flux-dev", "cap_bytes": 22e9}}
    add_comparisons(results, {})  # the speed ratios
    return results


def test_summary_offers_a_cached_mode_within_3x_on_both_sets_and_says_why_not_otherwise():
    near = "flux-dev-torchao-fp8@cache=taylorseer@2"
    far = "flux-dev-torchao-fp8@cache=first-block@0.2"
    # near: 2.5x the baseline's error on both sets; far: 2.5x on the Gaussian set, 3.5x on the outliers (0.14 > 0.12)
    summary = summarize(_results({near: (0.05, 0.10), far: (0.05, 0.14)}))
    size = summary["sizes"]["1024x1024"]
    assert size["cached"] == {"backend": near, "speedup": 10.0, "goal_met": True}
    assert near in size["candidates"] and far not in size["candidates"]
    assert list(size["cached_not_offered"]) == [far]
    text = "\n".join(summary["lines"])
    assert (f"cached mode {far} not offered: latent rel. err 0.14 on the outliers weights is above 3x the "
            "baseline's (3 x 0.04 = 0.12)") in text
    alone = summarize(_results({far: (0.05, 0.14)}))["sizes"]["1024x1024"]
    assert "cached" not in alone and far in alone["cached_not_offered"]


def test_summary_refuses_a_cached_mode_measured_on_one_set_only_and_wants_8x():
    label = "flux-dev-torchao-fp8@cache=taylorseer@2"
    results = _results({label: (0.03, 0.05)})
    results["rows"] = [r for r in results["rows"] if r["weights"] == "gaussian"]
    size = summarize(results)["sizes"]["1024x1024"]
    assert size["cached_not_offered"] == {label: "no latent error beside the baseline's on the outliers weights"}
    slower = _results({label: (0.03, 0.05)})
    for row in slower["rows"]:
        row["seconds_per_image"] = 2.1 if row["backend"] == label else row["seconds_per_image"]
    add_comparisons(slower, {})
    assert summarize(slower)["sizes"]["1024x1024"]["cached"]["goal_met"] is False  # 16 / 2.1 = 7.6x < 8x


def test_a_cached_mode_with_another_change_is_held_to_the_same_rule():
    joined = "flux-dev-torchao-fp8@attention=sage+cache=taylorseer@2"
    summary = summarize(_results({joined: (0.05, 0.14)}))  # outliers: 3.5x the baseline's error
    size = summary["sizes"]["1024x1024"]
    assert "cached" not in size and joined not in size["candidates"] and list(size["cached_not_offered"]) == [joined]
    assert summarize(_results({joined: (0.05, 0.10)}))["sizes"]["1024x1024"]["cached"]["backend"] == joined


def test_the_cached_goal_needs_8x_on_every_weight_set():
    """Run 36: taylorseer@2:until=22 took 1.90 s and 2.00 s on the two sets against baselines of 16.39 s and 15.88 s:
    8.63x and 7.94x. The line gives both, and the 8x goal is not met."""
    label = "flux-dev-torchao-fp8@cache=taylorseer@2:until=22"
    results = _results({})
    results["rows"] = [_row("flux-dev", 5.0, 0.0, "gaussian"), _row("flux-dev", 5.0, 0.0, "outliers"),
                       _row("flux-dev-bnb-8bit", 16.39, 0.0298, "gaussian"), _row(label, 1.90, 0.0726, "gaussian"),
                       _row("flux-dev-bnb-8bit", 15.88, 0.0371, "outliers"), _row(label, 2.00, 0.0725, "outliers")]
    add_comparisons(results, {})
    summary = summarize(results)
    assert summary["sizes"]["1024x1024"]["cached"] == {"backend": label, "speedup": pytest.approx(8.626, abs=1e-3),
                                                       "goal_met": False}
    assert "1.90 s/image = 8.63x (outliers weights: 7.94x)" in "\n".join(summary["lines"])


def _two_set_run(baseline: tuple[float, float], backends: dict[str, tuple[tuple[float, float], ...]],
                 extra: dict[str, dict] | None = None) -> dict:
    """A run on both weight sets: bf16 at 5 s, bnb 8-bit at the given seconds (errors 0.0298 and 0.0371, as
    measured), each backend at its (seconds, latent error) on the Gaussian then the outlier set, its rows carrying
    `extra[label]`'s keys too."""
    results = _results({})
    results["rows"] = []
    for index, (weights, base_error) in enumerate((("gaussian", 0.0298), ("outliers", 0.0371))):
        results["rows"] += [_row("flux-dev", 5.0, 0.0, weights),
                            _row("flux-dev-bnb-8bit", baseline[index], base_error, weights)]
        results["rows"] += [{**_row(label, *sets[index], weights), **(extra or {}).get(label, {})}
                            for label, sets in backends.items()]
    add_comparisons(results, {})
    return results


def _run_lines(baseline: tuple[float, float], backends: dict[str, tuple[tuple[float, float], ...]]) -> str:
    """The summary lines of `_two_set_run`."""
    return "\n".join(summarize(_two_set_run(baseline, backends))["lines"])


def test_the_baseline_line_gives_its_time_on_each_weight_set_and_says_when_they_differ():
    """Run 47: bnb 8-bit took 21.37 s on the Gaussian set and 15.75 s on the outlier set of one run, and float8's
    7.61x on one set was 5.47x on the other. The baseline's line gives both times and says they differ by 36%; run
    36's 16.39 / 15.88 s (3%) get no such remark."""
    def baseline_line(gaussian: float, outliers: float) -> str:
        lines = _run_lines((gaussian, outliers), {"flux-dev-torchao-fp8": ((2.81, 0.0459), (2.88, 0.0459))})
        return next(line for line in lines.splitlines() if "baseline flux-dev-bnb-8bit" in line)

    assert baseline_line(21.37, 15.75).startswith(
        "1024x1024: baseline flux-dev-bnb-8bit 21.37 s/image (outliers weights: 15.75 s) (its own time differs by 36% "
        "between weight sets in this run: the speed-ups below move with it), latent rel. err 0.0298")
    assert baseline_line(16.39, 15.88).startswith(
        "1024x1024: baseline flux-dev-bnb-8bit 16.39 s/image (outliers weights: 15.88 s), latent rel. err 0.0298")


def test_a_missed_goal_says_what_time_would_have_met_it_against_this_runs_baseline():
    """Run 50: bnb 8-bit took 13.75 / 13.76 s, float8 2.82 / 2.80 s (4.87x / 4.91x), the cached mode 1.79 s on both
    sets (7.68x / 7.69x): each NOT met line says the time per image the goal needed there (13.75 / 6.5 = 2.12 s,
    13.75 / 8 = 1.72 s); a goal met gets no such remark."""
    run = {"flux-dev-torchao-fp8": ((2.82, 0.0459), (2.80, 0.0459)),
           "flux-dev-torchao-fp8@cache=taylorseer@2:until=24": ((1.79, 0.0834), (1.79, 0.0830))}

    run50 = _run_lines((13.75, 13.76), run)
    assert ("-> goal of 6.5x NOT met (6.5x of this run's baseline needs <= 2.12 s/image on the gaussian weights and "
            "<= 2.12 s/image on the outliers weights)") in run50
    assert ("-> goal of 8.0x NOT met (8.0x of this run's baseline needs <= 1.72 s/image on the gaussian weights and "
            "<= 1.72 s/image on the outliers weights)") in run50
    one_set_short = _run_lines((21.37, 15.75), run)  # run 47's baselines: float8 short on the outlier set only
    assert "NOT met (6.5x of this run's baseline needs <= 2.42 s/image on the outliers weights)" in one_set_short
    assert "goal of 8.0x met" in one_set_short and "8.0x of this run's" not in one_set_short


def test_a_cached_entry_benched_by_its_name_is_held_to_the_cached_rule():
    """The shipped cached entry is benched as `flux-dev-torchao-fp8-cached` (no @cache= in the label): its rows
    record the entry's setting, so the summary holds it to the cached rule and goal and names the setting. Run 52's
    figures for it: 1.736 / 1.754 s against bnb 8-bit's 13.886 / 13.999 s, 7.999x / 7.981x, so 8.0x is NOT met (by
    rounding, which the line must not hide)."""
    entry = "flux-dev-torchao-fp8-cached"
    results = _two_set_run((13.886, 13.999), {entry: ((1.736, 0.0833), (1.754, 0.0829))},
                           {entry: {"cache": "taylorseer@2:until=24", "cache_schedule": {"computed": 17, "steps": 28}}})
    summary = summarize(results)
    size = summary["sizes"]["1024x1024"]
    assert size["cached"] == {"backend": entry, "speedup": pytest.approx(7.999, abs=1e-3), "goal_met": False}
    assert (f"cached mode {entry} (cache taylorseer@2:until=24, 17 of 28 steps computed): 1.74 s/image = 8.00x "
            "(outliers weights: 7.98x)") in "\n".join(summary["lines"])
    for row in results["rows"]:
        row.pop("cache", None)  # the same rows without the setting (a plain entry): no cached mode at all
    assert "cached" not in summarize(results)["sizes"]["1024x1024"]
