"""The Memory page as a lecturer projects it (issue 24): every axis titled, memory in the
unit of the table beside the chart (MiB or GiB, never "bytes"), no delta badge on a value
that is not a change, no raw underscore, and a calculator whose QLoRA figure is the
prediction for the setting the 7B run was measured with."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from page_util import (  # noqa: E402
    axis_titles,
    deltas,
    figures,
    labels,
    open_page,
    raw_underscores,
    untitled_axes,
)

from app.charts.memory import in_unit  # noqa: E402
from minituner.scale import scaling  # noqa: E402

CALCULATOR = "mem_calc"


def by_title(at) -> dict[str, dict]:
    return {f["layout"]["title"]["text"]: f for f in figures(at).values()}


def table_with(at, *columns: str):
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def test_memory_page_titles_every_axis_with_a_unit_and_shows_no_raw_underscore(empty_cache):
    at = open_page("memory")
    figs = by_title(at)
    assert len(figs) == 3, list(figs)  # MiniGPT runs, 7B measurements, calculator
    for title, fig in figs.items():
        assert not untitled_axes(fig), title
        memory_axes = [t for t in axis_titles(fig) if "memory" in t]
        assert memory_axes and all(t.endswith(("(MiB)", "(GiB)")) for t in memory_axes), title
        assert not any("_" in s for s in labels(fig)), (title, labels(fig))
    assert not [w for m in at.markdown for w in raw_underscores(m.value)]
    assert not [w for c in at.caption for w in raw_underscores(c.value)]


def test_memory_charts_use_the_unit_of_the_table_beside_them(empty_cache):
    at = open_page("memory")
    figs = by_title(at)
    minigpt = figs["MiniGPT training memory"]
    assert minigpt["layout"]["xaxis"]["title"]["text"] == "memory (MiB)"  # a small model
    runs = table_with(at, "weights")
    assert all(str(v).endswith(" MiB") for v in runs.drop(columns=[""]).to_numpy().ravel())
    calc = next(f for t, f in figs.items() if t.startswith("Predicted training memory"))
    assert calc["layout"]["xaxis"]["title"]["text"] == "memory (GiB)"  # the 7B preset
    table = table_with(at, "trainable params", "total")
    assert all(str(v).endswith(" GiB") for v in table["total"])
    scaled = figs["7B QLoRA: measured peak vs prediction"]
    assert scaled["layout"]["yaxis"]["title"]["text"] == "peak memory (GiB)"
    assert all(str(v).endswith(" GiB") for v in table_with(at, "measured peak")["measured peak"])
    for fig in figs.values():
        assert "bytes" not in " ".join(axis_titles(fig))


def test_two_runs_of_one_method_are_two_bars(empty_cache):
    """The bars were keyed by method: a second LoRA run replaced the first."""
    at = open_page("memory")
    runs = at.multiselect(key="mem_runs")
    loras = [o for o in runs.options if o.startswith("lora ")][:2]
    assert len(loras) == 2, "the shipped store holds several LoRA runs"
    runs.set_value(loras).run()
    fig = by_title(at)["MiniGPT training memory"]
    shown = {run for run in fig["data"][0]["y"][0]}
    assert shown == {f"{label.split(' · ')[0]} · {label.split(' · ')[-1]}" for label in loras}
    assert len(table_with(at, "weights", "total")) == 4  # predicted and measured, each


def test_memory_page_shows_no_delta_badges(empty_cache):
    at = open_page("memory")
    assert at.metric, "the calculator shows the model's figures as metrics"
    assert deltas(at) == {}


def test_calculator_starts_at_the_measured_7b_setting_and_agrees_with_it(empty_cache):
    """Issue 24: the calculator's QLoRA figure disagreed with the measured 7B figure above
    it (activation checkpointing off by default, on in the measured run)."""
    result = scaling.load_scaling_result()
    first = scaling.scaling_rows(result)[0]
    at = open_page("memory")
    assert at.checkbox(key="mem_ckpt").value is result["args"]["checkpointing"]
    assert at.number_input(key="mem_batch").value == result["args"]["batch"]
    assert at.number_input(key="mem_seq").value == result["args"]["seq"]
    assert at.number_input(key="mem_r").value == first["r"]
    qlora = table_with(at, "trainable params", "total").set_index("")["total"]["QLoRA"]
    assert qlora == in_unit(first["predicted_mixed_bytes"], "GiB")
    said = " ".join(c.value for c in at.caption)
    assert f"measured peak {in_unit(first['peak_bytes'], 'GiB')}" in said

    measured = result["args"]["checkpointing"]
    at.checkbox(key="mem_ckpt").set_value(not measured).run()  # the difference explained
    changed = table_with(at, "trainable params", "total").set_index("")["total"]["QLoRA"]
    assert changed != qlora
    said = " ".join(c.value for c in at.caption)
    on_off = {True: "on", False: "off"}
    assert f"activation checkpointing {on_off[not measured]} (measured: {on_off[measured]})" in said
    assert f"measured at {in_unit(first['peak_bytes'], 'GiB')}" in said
