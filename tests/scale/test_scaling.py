"""The 7B QLoRA measurements (precomputed/scaling/): scaling.load_scaling_result checks the
file, scaling.scaling_rows sets each measured peak beside the prediction and PEFT's.

Figures are read from the shipped file and compared with what the package computes now,
never typed in; broken files raise a ValueError that names the file and the problem.
"""

from __future__ import annotations

import copy
import json
import math
import re

import pytest

from minituner.memory.predict import predict_memory, trainable_params
from minituner.memory.shapes import SHAPES
from minituner.scale.scaling import (
    load_scaling_result,
    qlora_7b_h200,
    scaling_rows,
    validate_scaling_result,
)

PREDICT_TARGETS = {"qv": ("q", "v"), "all": "all"}  # the benchmark's names -> ModelShape's


@pytest.fixture(scope="module")
def shipped() -> dict:
    return load_scaling_result(qlora_7b_h200())


def write(tmp_path, obj, text: str | None = None):
    path = tmp_path / "result.json"
    path.write_text(text if text is not None else json.dumps(obj))
    return path


def test_the_default_path_is_in_precomputed_scaling():
    assert qlora_7b_h200().parts[-3:] == ("precomputed", "scaling", "qlora_7b_h200.json")
    assert qlora_7b_h200().is_file()
    assert load_scaling_result() == load_scaling_result(qlora_7b_h200())


def test_one_row_per_configuration_with_ratios(shipped):
    rows = scaling_rows(shipped)
    assert [r["config"] for r in rows] == list(shipped["runs"])
    for row in rows:
        run = shipped["runs"][row["config"]]
        assert row["config"] == f"r{row['r']}_{row['targets']}"
        assert row["peak_bytes"] == run["peak_bytes"]
        mixed = run["predicted"]["mixed"]["total"]
        assert row["predicted_mixed_bytes"] == mixed
        assert row["predicted_bf16_bytes"] == run["predicted"]["bf16"]["total"]
        assert row["peak_over_mixed"] == pytest.approx(run["peak_bytes"] / mixed)
        assert row["tokens_per_s"] == pytest.approx(run["tokens_per_s"])
        peft = shipped["peft"]["runs"][row["config"]]
        assert row["peft_peak_bytes"] == peft["peak_bytes"]
        # the ratios the benchmark stored agree with the ones computed here
        stored = peft["ratios_ours_over_peft"]
        assert row["peak_ours_over_peft"] == pytest.approx(stored["peak_ours_over_peft"])
        assert row["step_ours_over_peft"] == pytest.approx(stored["step_time_ours_over_peft"])


def test_r8_qv_peak_is_within_10_percent_of_the_mixed_prediction(shipped):
    row = next(r for r in scaling_rows(shipped) if r["config"] == "r8_qv")
    assert abs(row["peak_bytes"] / row["predicted_mixed_bytes"] - 1) < 0.10
    for r in scaling_rows(shipped):  # and every configuration, and PEFT within 10% of ours
        assert abs(r["peak_over_mixed"] - 1) < 0.10, r["config"]
        assert abs(r["peak_ours_over_peft"] - 1) < 0.10, r["config"]


def test_stored_predictions_match_the_formula_today(shipped):
    """If predict_memory or nf4 storage changes, the shipped file is stale: rerun the
    benchmark's command (the file's "command")."""
    shape = SHAPES[shipped["prediction_shape"]]
    args = shipped["args"]
    for row in scaling_rows(shipped):
        targets = PREDICT_TARGETS[row["targets"]]
        assert row["trainable_params"] == trainable_params(shape, "qlora", row["r"], targets)
        for precision in ("mixed", "bf16"):
            now = predict_memory(
                shape, "qlora", r=row["r"], targets=targets, batch=args["batch"],
                seq=args["seq"], precision=precision,
                activation_checkpointing=args["checkpointing"],
            )  # fmt: skip
            assert now == shipped["runs"][row["config"]]["predicted"][precision], (
                row["config"],
                precision,
            )


def test_step_mode_and_busy_fraction_come_from_the_file(shipped):
    rows = scaling_rows(shipped)
    for row in rows:
        run = shipped["runs"][row["config"]]
        assert row["step_mode"] == run.get("step_mode", "eager")
        prof = run.get("profile", {})
        assert row["busy_fraction"] == prof.get("device_busy_fraction")
        peft = shipped["peft"]["runs"][row["config"]].get("profile", {})
        assert row["peft_busy_fraction"] == peft.get("device_busy_fraction")
    older = copy.deepcopy(shipped)  # a file from before step_mode and profiles
    for run in older["runs"].values():
        run.pop("step_mode", None)
        run.pop("profile", None)
    assert all(
        r["step_mode"] == "eager" and r["busy_fraction"] is None for r in scaling_rows(older)
    )


def test_peft_figures_are_optional(shipped):
    result = copy.deepcopy(shipped)
    del result["peft"]
    rows = scaling_rows(result)
    assert all(r["peft_peak_bytes"] is None and r["step_ours_over_peft"] is None for r in rows)
    result["peft"] = {"skipped": "--peft skipped: ImportError"}  # what a run without PEFT writes
    assert scaling_rows(result)[0]["peak_ours_over_peft"] is None


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="file not found") as e:
        load_scaling_result(path)
    assert str(path) in str(e.value)


def test_invalid_json(tmp_path):
    path = write(tmp_path, None, text='{"runs": {')
    with pytest.raises(ValueError, match="not valid JSON") as e:
        load_scaling_result(path)
    assert str(path) in str(e.value)


def test_not_an_object(tmp_path):
    with pytest.raises(ValueError, match="JSON object"):
        load_scaling_result(write(tmp_path, [1, 2]))


BROKEN = [
    (lambda d: d.pop("runs"), "missing key 'runs'"),
    (lambda d: d.pop("command"), "missing key 'command'"),
    (lambda d: d["args"].pop("seq"), "missing key 'args.seq'"),
    (lambda d: d["runs"]["r8_qv"].pop("peak_bytes"), "missing key 'runs.r8_qv.peak_bytes'"),
    (
        lambda d: d["runs"]["r8_qv"]["predicted"].pop("mixed"),
        "missing key 'runs.r8_qv.predicted.mixed'",
    ),
    (lambda d: d["runs"]["r8_qv"].update(peak_bytes="4 GB"), "peak_bytes should be a whole"),
    (lambda d: d["runs"]["r8_qv"].update(step_s_median=True), "step_s_median should be a num"),
    (lambda d: d["runs"]["r8_qv"].update(tokens_per_s=0), "tokens_per_s should be > 0"),
    (lambda d: d["runs"]["r8_qv"].update(peak_bytes=None), "peak_bytes is null"),
    (lambda d: d.update(runs={}), "'runs' is empty"),
    (lambda d: d["runs"].update(big={}), "'big' is not of the form"),
    (lambda d: d["peft"]["runs"]["r8_qv"].pop("peak_bytes"), "'peft.runs.r8_qv.peak_bytes'"),
    (lambda d: d["runs"]["r8_qv"].update(step_mode="jit"), "step_mode should be one of"),
    (
        lambda d: d["runs"]["r8_qv"].update(profile={"wall_s": 0.1, "device_busy_s": 0.2}),
        "missing key 'runs.r8_qv.profile.device_busy_fraction'",
    ),
    (
        lambda d: d["runs"]["r8_qv"].update(
            profile={"wall_s": 0.1, "device_busy_s": 0.2, "device_busy_fraction": 2.0}
        ),
        "device_busy_fraction is 2.0, above 1",
    ),
]


@pytest.mark.parametrize(("edit", "message"), BROKEN, ids=[m for _, m in BROKEN])
def test_broken_content_is_a_clear_value_error(tmp_path, shipped, edit, message):
    broken = copy.deepcopy(shipped)
    edit(broken)
    path = write(tmp_path, broken)
    with pytest.raises(ValueError) as e:
        load_scaling_result(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_number_anywhere_is_refused(tmp_path, shipped, value):
    broken = copy.deepcopy(shipped)
    broken["runs"]["r16_all"]["step_s_all"][2] = value  # json.dumps writes NaN / Infinity
    path = write(tmp_path, broken)
    with pytest.raises(ValueError, match=r"runs\.r16_all\.step_s_all\[2\] is not a finite") as e:
        load_scaling_result(path)
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="not a finite number"):
        scaling_rows(broken)  # rows check an unchecked dict too


def test_validate_names_its_source():
    with pytest.raises(ValueError, match="^mine: should hold a JSON object"):
        validate_scaling_result([], source="mine")


def _with_peers(result: dict) -> dict:
    """The shipped result with a Liger peer (every run at 0.8x PEFT's time) and a torchao
    peer that failed to compile, as bench_7b_qlora.py writes them."""
    out = copy.deepcopy(result)
    liger = {
        k: {**v, "step_s_median": 0.8 * v["step_s_median"]} for k, v in out["peft"]["runs"].items()
    }
    out["peers"] = {
        "liger": {"runs": liger, "what": "liger"},
        "torchao": {"runs": {k: {"skipped": "torchao failed: compile"} for k in liger}},
    }
    return out


def test_peer_rows_set_ours_against_each_peer_that_ran(shipped):
    from minituner.scale.full_load import PEER_NAMES, peer_rows

    result = _with_peers(shipped)
    rows = peer_rows(result)
    assert [r["config"] for r in rows] == list(result["runs"])
    for row in rows:
        ours = result["runs"][row["config"]]
        assert set(row["peers"]) <= set(PEER_NAMES)
        for name, holder in (("peft", result["peft"]), ("liger", result["peers"]["liger"])):
            theirs = holder["runs"][row["config"]]
            got = row["peers"][name]
            assert got["step_ratio"] == pytest.approx(
                ours["step_s_median"] / theirs["step_s_median"]
            )
            assert got["peak_ratio"] == pytest.approx(ours["peak_bytes"] / theirs["peak_bytes"])
        assert "torchao" not in row["peers"] and "compile" in row["skipped"]["torchao"]


def test_full_load_path_is_in_precomputed_scaling():
    from minituner.scale.scaling import qlora_7b_full_load

    assert qlora_7b_full_load().parts[-2:] == ("scaling", "qlora_7b_batch8.json")


def test_full_load_lines_show_every_run_and_peer(shipped):
    from minituner.scale.full_load import full_load_lines, peer_rows

    result = _with_peers(shipped)
    lines = full_load_lines(result)
    rows = peer_rows(result)
    body = [line for line in lines if line.startswith("| r=")]
    assert len(body) == len(rows)
    for line, row in zip(body, rows, strict=True):
        assert f"{row['peers']['liger']['step_ratio']:.3f}x" in line  # 0.6017 is not 0.60
        assert line.rstrip(" |").endswith("did not run")  # torchao failed for every run
    assert result["command"] in lines[-1] and "compile" in lines[-1]


def test_full_load_lines_give_peaks_to_three_places_busy_fractions_and_variants(shipped):
    """A peak ratio of 1.005 must not print as 1.00x; a host-bound peer's busy fraction and
    the settings timed beside our default are in the note."""
    from minituner.scale.full_load import full_load_lines

    result = _with_peers(shipped)
    key = next(iter(result["runs"]))
    ours = result["runs"][key]
    result["peers"]["liger"]["runs"][key]["peak_bytes"] = ours["peak_bytes"] / 1.005
    for run in (ours, result["peers"]["liger"]["runs"][key]):
        run["profile"] = {"wall_s": 0.2, "device_busy_s": 0.1, "device_busy_fraction": 0.5}
    ours["profile"]["device_busy_fraction"] = 0.98
    result["variants"] = {"base_first": {key: {"step_time_over_default": 1.0251}}}
    lines = full_load_lines(result)
    row = next(line for line in lines if line.startswith(f"| r={key[1:].replace('_', ' on ')} |"))
    assert "1.005x" in row
    assert re.search(r": ours 98%(, peft \d+%)?, liger 50%", lines[-1])
    # with --clocks: each step's mean SM clock, and the same GEMMs' time ours / the peer's
    ours["clocks"] = {"samples": 80, "sm_mhz_mean": 1580.4}
    theirs = result["peers"]["liger"]["runs"][key]
    theirs["clocks"] = {"samples": 0, "error": "no NVML"}  # not sampled: nothing said
    theirs["ratios_ours_over_liger"] = {"same_gemm_kernels": {"time_ours_over_peer": 1.1329}}
    note = full_load_lines(result)[-1]
    assert re.search(
        r": ours 98% at 1580 MHz(, peft [^,]+)?, liger 50% \(same GEMMs 1.133x\)", note
    )
    assert f"base_first: {key} 1.025x" in lines[-1]
    result["variants"]["lora_in_k"] = {key: {"failed": "RuntimeError: x"}}  # said, not dropped
    assert f"lora_in_k: {key} failed" in full_load_lines(result)[-1]
    result["variants"] = {}
    assert "other settings" not in full_load_lines(result)[-1]
