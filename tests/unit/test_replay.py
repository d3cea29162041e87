"""The troubleshooting replay (fluxnb.replay + notebook 03): every attempt labelled, diagnosed, live where it can be.

Live runs use the real tiny FLUX on this CPU. Attempt 3 is live in every lane; attempts 1, 2 and 4 are live when
torchao is installed (the default lane's `replay` extra) and attempt 5 when optimum-quanto is; otherwise they fall
back to the guide's recording and say how to install the extra (asserted below, in every lane). Attempt 6 needs a
CUDA GPU (its GPU evidence is kept in results/replay/).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from packaging.version import Version

from fluxnb import replay
from fluxnb.core.environment import package_version
from fluxnb.knowledge.base import load_knowledge
from fluxnb.runs.runner import run_notebook

pytestmark = pytest.mark.stack  # in both lanes: the guide's attempts fail differently on each line

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
HAS_QUANTO = importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.quanto") is not None
DIFFUSERS = Version(package_version("diffusers"))
RESULTS = Path(__file__).resolve().parents[2] / "results" / "replay"
GUIDE_CUDA0 = "cuda:0 not supported. Supported strategies are: balanced"
OFFLOAD_REFUSAL = "You are attempting to perform cpu/disk offload with a pre-quantized torchao model"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_cache):
    return replay.ReplayContext.create(tmp_path_factory.mktemp("replay"), device="cpu")


@pytest.fixture(scope="module")
def results(ctx):
    return {a.number: replay.run_attempt(a.number, ctx) for a in replay.ATTEMPTS}


def _expected_live() -> set[int]:
    live = {3}
    if HAS_TORCHAO:
        live |= {4} | ({1, 2} if DIFFUSERS >= Version("0.36") else set())
    if HAS_QUANTO:
        live.add(5)
    return live


# -- the entries -----------------------------------------------------------------------------------------------


def test_six_attempts_in_the_guides_order_each_with_a_known_diagnosis():
    kb = load_knowledge()
    assert [a.number for a in replay.ATTEMPTS] == [1, 2, 3, 4, 5, 6]
    for attempt in replay.ATTEMPTS:
        assert attempt.diagnosis_id in kb.ids, attempt.diagnosis_id
        assert attempt.code.strip() and attempt.fix and attempt.guide.error
    # the research corrects the guide on attempts 4 and 5
    assert "measurement" in replay.get_attempt(4).correction and "Marlin" in replay.get_attempt(5).correction
    assert kb.get("torchvision-mismatch")  # the AutoImageProcessor trap's real cause, cited by the timeline lesson


def test_recorded_mode_needs_no_model_and_still_diagnoses():
    for number in range(1, 7):
        result = replay.run_attempt(number, live=False)
        assert result.mode == replay.RECORDED and result.note == "live runs turned off (live=False)"
        assert result.diagnosis_confirmed and result.guide_error_matches, (number, result.diagnosis_ids)
        assert "(confirmed by fluxnb.knowledge.diagnosis)" in str(result)
    with pytest.raises(KeyError, match="attempts 1-6"):
        replay.get_attempt(7)


# -- live runs on this CPU -------------------------------------------------------------------------------------


def test_every_attempt_reports_mode_and_diagnosis(results):
    for number, result in results.items():
        assert result.mode in (replay.LIVE, replay.RECORDED)
        assert result.diagnosis_id == replay.get_attempt(number).diagnosis_id
        # live, a run that did not fail confirms nothing: attempt 1 loads and generates with today's torchao
        reproduced = not (result.mode == replay.LIVE and number == 1)
        assert result.diagnosis_confirmed == reproduced, (number, result.observed, result.diagnosis_ids)
        assert result.guide_error_matches, number  # the guide's own words are always diagnosed
        assert result.device == "cpu" and result.seconds >= 0
        data = json.loads(json.dumps(result.to_dict(), default=str))
        assert data["mode"] == result.mode and data["diagnosis_id"] == result.diagnosis_id
    assert {n for n, r in results.items() if r.mode == replay.LIVE} == _expected_live()


def test_attempt_3_cuda0_is_still_rejected(results):
    result = results[3]
    assert result.mode == replay.LIVE and result.outcome == "failed"
    assert result.observed.startswith("NotImplementedError: cuda:0 not supported. Supported strategies are: balanced")
    assert result.details["fix_works"] is True  # no device_map, then .to(device)
    if DIFFUSERS < Version("0.35"):
        assert result.observed.endswith(GUIDE_CUDA0) and not result.differs_from_guide
    else:  # 0.35+ lists the accelerator (cpu here) and cpu; 'cuda:0' is still refused
        assert result.differs_from_guide and "'cuda:0' is still rejected" in result.difference
        assert "cpu" in result.observed.split("strategies are:")[1]


def test_attempt_6_needs_a_gpu_and_shows_the_recording(results):
    result = results[6]
    assert result.mode == replay.RECORDED and "needs a CUDA GPU" in result.note
    assert result.outcome == "success" and "77 s / image" in result.observed


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao missing: test_torchao_attempts_fall_back_when_missing covers it")
def test_attempt_4_footprint_measured_both_ways(results):
    result = results[4]
    assert result.mode == replay.LIVE and "measurement artifact" in result.outcome
    before, after = result.details["before"], result.details["after"]
    assert before["get_memory_footprint"] == after["get_memory_footprint"] == before["numel_x_element_size"]
    assert after["torchao_get_model_size_in_bytes"] < 0.6 * before["torchao_get_model_size_in_bytes"]
    assert result.details["weight_reported_element_size"] == 2  # the lie that fooled the guide
    assert "model size unchanged" in result.observed and result.differs_from_guide


@pytest.mark.skipif(not HAS_TORCHAO or DIFFUSERS < Version("0.36"), reason="needs torchao and diffusers >= 0.36")
def test_attempts_1_and_2_with_a_torchao_checkpoint_made_here(results):
    first, second = results[1], results[2]
    assert first.mode == replay.LIVE and first.outcome == "succeeded"
    assert first.details["weight_class"].startswith("Float8") and first.details["sanity"]["ok"]
    assert "diagnosis: torchao-" in str(first) and "(the error did not occur here; the guide's recorded error is " \
        "matched by fluxnb.knowledge.diagnosis)" in str(first)  # said so, never shown as confirmed by a run that worked
    assert second.mode == replay.LIVE and second.outcome == "failed"
    assert second.observed.startswith(f"ValueError: {OFFLOAD_REFUSAL}")
    assert second.details["fix_works"] is True


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao missing")
def test_fluxnb_footprint_agrees_with_torchao_on_a_quantized_transformer(ctx):
    import torch
    from diffusers import FluxTransformer2DModel
    from torchao.quantization import Float8WeightOnlyConfig, quantize_
    from torchao.utils import get_model_size_in_bytes

    from fluxnb.core.footprint import component_footprint

    transformer = FluxTransformer2DModel.from_pretrained(ctx.checkpoint, subfolder="transformer",
                                                         torch_dtype=torch.bfloat16)
    quantize_(transformer, Float8WeightOnlyConfig())
    assert component_footprint("transformer", transformer).bytes == get_model_size_in_bytes(transformer)


@pytest.mark.skipif(not HAS_QUANTO, reason="optimum-quanto missing: test_quanto_attempt_falls_back_when_missing")
def test_attempt_5_qfloat8_on_cpu_is_correct(results):
    result = results[5]
    assert result.mode == replay.LIVE and result.outcome == "correct output (no mosaic)"
    layer = result.details["layer"]
    assert layer["qfloat8"]["weight_class"] == "WeightQBytesTensor"  # no Marlin kernel without CUDA
    assert layer["qfloat8"]["relative_error"] < 0.1 and layer["qint8"]["relative_error"] < 0.02
    assert result.details["sanity"]["ok"] and len(result.images) == 2
    assert result.differs_from_guide and "Marlin" in result.difference


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_torchao_attempts_fall_back_when_missing(monkeypatch, ctx):
    _hide(monkeypatch, "torchao")
    for number in (1, 2, 4):
        result = replay.run_attempt(number, ctx)
        assert result.mode == replay.RECORDED, number
        assert "torchao is not installed" in result.note and 'pip install -e ".[replay]"' in result.note
        assert result.outcome == replay.get_attempt(number).guide.result and result.diagnosis_confirmed


def test_quanto_attempt_falls_back_when_missing(monkeypatch, ctx):
    _hide(monkeypatch, "optimum")
    result = replay.run_attempt(5, ctx)
    assert result.mode == replay.RECORDED and "optimum-quanto is not installed" in result.note
    assert "pixel mosaic" in result.observed and result.diagnosis_id == "quanto-qfloat8-marlin"


def test_tables_and_working_configuration(results):
    ordered = [results[n] for n in sorted(results)]
    table = replay.summary(ordered)
    assert len(table.rows) == 6 and all(row[2] in (replay.LIVE, replay.RECORDED) for row in table.rows)
    assert "<table>" in table._repr_html_() and str(table).count("\n") == 7
    assert len(replay.timeline().rows) == 6
    working = replay.working_configuration()
    assert working["type"] == "flux-bnb-8bit" and "def load_prequantized" in working["loader_source"]
    assert working["loader"] == "fluxnb.models.backends.bnb.load_prequantized"
    assert "diffusers/FLUX.1-dev-bnb-8bit" in working["model_config_entry"]
    assert all(r._repr_html_().count(r.mode) == 1 for r in ordered)


# -- the notebook, headless -------------------------------------------------------------------------------------


def test_notebook_03_runs_headless_and_records_every_attempt(outputs_dir):
    run_dir = run_notebook("03_troubleshooting_replay", {"live": True})
    record = json.loads((run_dir / "replay.json").read_text(encoding="utf-8"))
    attempts = {a["attempt"]: a for a in record["attempts"]}
    assert sorted(attempts) == [1, 2, 3, 4, 5, 6]
    kb = load_knowledge()
    for number, attempt in attempts.items():
        assert attempt["mode"] in (replay.LIVE, replay.RECORDED)
        assert attempt["diagnosis_id"] == replay.get_attempt(number).diagnosis_id and attempt["diagnosis_id"] in kb.ids
    assert {n for n, a in attempts.items() if a["mode"] == replay.LIVE} == _expected_live()
    assert record["versions"]["diffusers"] == str(DIFFUSERS) and record["device"]["device"] == "cpu"
    executed = nbformat.read(run_dir / "03_troubleshooting_replay.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count("live / recorded") == 1 and "Attempt 6" in html
    # no widgets here, so no `interactive` parameter: the runner injects only what the notebook declares
    injected = [c.source for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "output_dir" in injected[0] and "interactive" not in injected[0]
    assert "interactive" not in executed.metadata["papermill"]["parameters"]


# -- the GPU evidence kept in the repo ---------------------------------------------------------------------------


def test_gpu_evidence_is_kept_with_card_and_versions():
    summary = (RESULTS / "README.md").read_text(encoding="utf-8")
    assert "H100" in summary and "diffusers 0.42.1" in summary
    modes = {}
    for path in RESULTS.glob("replay-*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["device"]["device"] == "cuda" and record["device"]["gpu"]
        assert record["versions"]["torch"] and record["versions"]["diffusers"]
        modes.update({a["attempt"]: a["mode"] for a in record["attempts"]})
    assert modes == {n: replay.LIVE for n in range(1, 7)}


def test_the_autoimageprocessor_trap_is_rediagnosed_as_torchvision():
    trap = replay.autoimageprocessor_trap()
    assert trap["diagnosis_ids"][0] == "torchvision-mismatch"
    assert "torch " in trap["this_machine"]


def test_recorded_cards_do_not_claim_a_device_or_a_time():
    result = replay.run_attempt(6, live=False)
    assert result.mode == replay.RECORDED
    card, text = result._repr_html_(), str(result)
    assert "(not run here)" in card and "0.00 s" not in card and "cpu" not in card.split("</p>")[0]
    assert "[recorded in the guide, not run here]" in text.splitlines()[0]
# -- the data file (fluxnb/replay.yaml) ------------------------------------------------------------------------


def test_the_attempts_prose_is_data_read_from_replay_yaml():
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("fluxnb").joinpath("replay.yaml").read_text(encoding="utf-8"))
    assert [a["title"] for a in data["attempts"]] == [a.title for a in replay.ATTEMPTS]
    assert data["attempts"][4]["guide"]["error"] == replay.get_attempt(5).guide.error
    assert replay.timeline().header == data["timeline_header"]


def test_a_broken_replay_yaml_lists_every_problem_at_once(tmp_path: Path):
    from importlib import resources

    import yaml

    from fluxnb.core.errors import KnowledgeError

    data = yaml.safe_load(resources.files("fluxnb").joinpath("replay.yaml").read_text(encoding="utf-8"))
    del data["attempts"][0]["fix"]
    data["attempts"][1]["requires"] = ["tensorrt"]
    data["attempts"][2]["guide"]["error"] = ""
    data["attempts"][3]["number"] = 9
    data["attempts"][5]["needs_cuda"] = "yes"
    data["summary_header"] = "cols"
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(KnowledgeError) as info:
        replay.load_replay(path)
    message = str(info.value)
    assert "(6 problem(s))" in message and str(path) in message
    for expected in ("attempts[0]: missing key 'fix'", "attempts[1].requires: expected a list of torchao",
                     "attempts[2].guide.error: expected non-empty text", "attempts[3].number: expected 4",
                     "attempts[5].needs_cuda: expected true or false", "summary_header: expected a list"):
        assert expected in message, expected
    path.write_text("attempts: [1, 2\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match="not valid YAML"):
        replay.load_replay(path)


def test_an_unknown_attempt_is_a_project_error_with_the_allowed_numbers():
    from fluxnb.core.errors import FluxnbError

    with pytest.raises(FluxnbError) as info:
        replay.get_attempt(0)
    assert str(info.value) == "no attempt 0; the guide has attempts 1-6\nFix: use a number from 1 to 6"
