"""Each chart builder of app/charts/ returns a plotly Figure with the expected traces,
from small synthetic data (no browser, no Streamlit)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.charts import (  # noqa: E402
    common,
    compare,
    completions,
    forgetting,
    memory,
    nf4,
    rank_sweep,
    spectrum,
    train,
)
from app.format import breakdown_table  # noqa: E402
from minituner.experiments.record_sections import MeanStd  # noqa: E402
from minituner.memory.predict import predict_memory  # noqa: E402
from minituner.memory.shapes import SHAPES  # noqa: E402
from minituner.nf4.format import FP4_CODEBOOK, INT4_CODEBOOK, NF4_CODEBOOK  # noqa: E402

EVALS = [
    SimpleNamespace(step=0, irregular_accuracy=0.2, control_en_drift=0.0, control_en_ppl=1.36,
                    control_es_ppl=1.31, regular_accuracy=1.0),
    SimpleNamespace(step=10, irregular_accuracy=0.9, control_en_drift=0.01, control_en_ppl=1.37,
                    control_es_ppl=1.32, regular_accuracy=0.75),
]  # fmt: skip


def aggregate(**figures) -> SimpleNamespace:
    """What the charts read of an experiments record's Aggregate: figures as MeanStd."""
    params = figures.pop("trainable_params", 0)
    stats = {"regular_accuracy": None, **{k: MeanStd(*v) for k, v in figures.items()}}
    return SimpleNamespace(trainable_params=params, **stats)


def names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data]


def test_loss_curves_one_line_per_run():
    fig = compare.loss_curves({"lora a": ([1, 2, 3], [2.0, 1.0, 0.5]), "full b": ([1, 2], [3, 1])})
    assert isinstance(fig, go.Figure)
    assert names(fig) == ["lora a", "full b"]
    assert list(fig.data[0].y) == [2.0, 1.0, 0.5]
    assert fig.layout.yaxis.type == "linear"
    assert compare.loss_curves({"x": ([1], [1.0])}, log_y=True).layout.yaxis.type == "log"


def test_live_training_loss_and_evaluation_panels():
    import re
    from xml.etree import ElementTree

    svg = train.live_training([1, 2, 3], [2.0, 1.5, 1.0], EVALS, total_steps=40)
    root = ElementTree.fromstring(svg)  # well-formed markup: two panels in a wrapping row
    assert [e.get("data-chart") for e in root.iter() if e.get("data-chart")] == [
        "train-loss", "train-evaluation"]  # fmt: skip
    series = dict(re.findall(r'data-metric="([^"]+)" data-points="(\d+)"', svg))
    assert series == {"loss": "3", "irregular_accuracy": "2", "regular_accuracy": "2",
                      "control_drift": "2"}  # fmt: skip
    ticks = re.findall(r">(\d+)</text>", svg)
    assert "40" in ticks  # the x axis spans the whole run
    empty = train.live_training([], [], [], total_steps=5)
    assert re.findall(r'data-points="(\d+)"', empty) == ["0", "0", "0", "0"]
    nasty = train.live_training([1], [float("nan")], [], total_steps=1)  # no NaN in markup
    assert "nan" not in nasty.lower()


def test_eval_curves_and_perplexity_over_steps():
    fig = compare.eval_curves(
        {"lora": EVALS, "full": EVALS[:1]}, lambda e: e.irregular_accuracy, "t", "%"
    )
    assert names(fig) == ["lora", "full"]
    assert list(fig.data[0].y) == pytest.approx([20.0, 90.0])
    ppl = forgetting.perplexity_over_steps({"lora x": EVALS, "full y": EVALS})
    assert len(ppl.data) == 4  # English and Spanish panels per run
    assert [t.name for t in ppl.data if t.showlegend] == ["lora x", "full y"]
    assert list(ppl.data[1].y) == [1.31, 1.32]


def test_drift_bars_with_error_bars():
    summary = {
        m: aggregate(control_en_drift=(d, 0.01), control_es_drift=(d / 2, 0.0))
        for m, d in (("full", 0.08), ("lora", 0.01), ("qlora", 0.02))
    }
    fig = forgetting.drift_bars(summary)
    assert names(fig) == ["control English", "control Spanish"]
    assert list(fig.data[0].x) == ["full", "lora", "qlora"]
    assert list(fig.data[0].y) == pytest.approx([8.0, 1.0, 2.0])
    assert list(fig.data[0].error_y.array) == pytest.approx([1.0, 1.0, 1.0])


def test_metric_bars_mean_and_std():
    fig = forgetting.metric_bars(
        {"full": aggregate(regular_accuracy=(0.02, 0.01)),
         "lora": aggregate(regular_accuracy=(0.75, 0.05))},
        lambda a: a.regular_accuracy, "t", "%",
    )  # fmt: skip
    # one bar (trace) per method, in the method's colour (issue 24's trace contract)
    assert [t.x[0] for t in fig.data] == ["full", "lora"]
    assert [t.y[0] for t in fig.data] == pytest.approx([2.0, 75.0])
    assert [t.error_y.array[0] for t in fig.data] == pytest.approx([1.0, 5.0])
    assert [t.marker.color for t in fig.data] == [common.method_color(m) for m in ("full", "lora")]


def test_candidate_bars_grouped_per_model():
    fig = completions.candidate_bars(
        {"base": {"went": 0.2, "goed": 0.8}, "lora": {"went": 0.9, "goed": 0.1}}
    )
    assert names(fig) == ["base", "lora"]
    assert list(fig.data[1].x) == ["went", "goed"]
    assert list(fig.data[1].y) == pytest.approx([90.0, 10.0])
    assert fig.layout.barmode == "group"


def test_spectrum_side_by_side_log_scale_and_zeros_dropped():
    panels = {
        "full": {"blocks.0.attn.q_proj": [4.0, 2.0, 1.0], "blocks.1.attn.q_proj": [3.0, 1.0, 0.5]},
        "lora": {"blocks.0.attn.q_proj": [2.0, 1.0, 0.0]},
    }
    fig = spectrum.spectrum_side_by_side(panels)
    assert len(fig.data) == 3
    assert fig.data[0].name == "L0 q_proj"
    assert fig.layout.yaxis.type == "log"
    assert list(fig.data[2].y) == [2.0, 1.0]  # the zero cannot sit on a log axis
    noisy = spectrum.spectrum_side_by_side({"lora": {"a": [1.0, 0.5, 1e-9]}})
    assert list(noisy.data[0].y) == [1.0, 0.5]  # float32 rounding of a rank-2 product
    norm = spectrum.spectrum_side_by_side(panels, normalized=True)
    assert list(norm.data[0].y) == pytest.approx([1.0, 0.5, 0.25])


def test_cumulative_energy_stable_rank_and_truncation():
    runs = {"full": ("full", "aaaaaaaaaaaa"), "lora": ("lora", "bbbbbbbbbbbb")}
    fig = spectrum.cumulative_energy({"full": [0.5, 0.8, 1.0], "lora": [0.9, 1.0]}, runs=runs)
    assert names(fig) == ["full", "lora"]
    assert list(fig.data[0].y) == pytest.approx([50.0, 80.0, 100.0])
    assert [t.meta for t in fig.data] == [{"method": m, "run": r} for m, r in runs.values()]
    assert [t.line.color for t in fig.data] == [common.run_color(*k) for k in runs.values()]
    assert fig.data[0].line.dash != fig.data[1].line.dash  # a line on another still shows
    sr = spectrum.stable_rank_bars(
        {"full": {"blocks.0.attn.q_proj": 3.2}, "lora": {"blocks.0.attn.q_proj": 1.4}}, runs
    )
    assert names(sr) == ["full", "lora"] and list(sr.data[0].x) == ["L0 q_proj"]
    assert [t.marker.color for t in sr.data] == [common.run_color(*k) for k in runs.values()]
    assert "_" not in sr.layout.yaxis.title.text  # not "‖ΔW‖²_F": plotly shows it raw
    guessed = spectrum.stable_rank_bars({"lora r=8 · seed 0": {"a": 1.0}})  # from the label
    assert guessed.data[0].meta == {"method": "lora", "run": "lora r=8 · seed 0"}
    tr = spectrum.truncation_curve(
        [1, 2, 4, "full"], [0.3, 0.6, 0.9, 0.95], [0.0, 0.01, 0.02, 0.05]
    )
    assert names(tr) == [
        common.METRIC_NAMES["irregular_accuracy"],
        common.METRIC_NAMES["control_drift"],
    ]
    assert [t.meta for t in tr.data] == [
        {"metric": "irregular_accuracy"},
        {"metric": "control_drift"},
    ]
    assert [t.line.color for t in tr.data] == [
        common.metric_color("irregular_accuracy"),
        common.metric_color("control_drift"),
    ]
    assert tr.layout.yaxis2.title.text == common.METRIC_NAMES["control_drift"]  # right axis
    assert list(tr.data[0].x) == ["1", "2", "4", "full"]
    assert len(spectrum.truncation_curve([1, 2], [0.1, 0.2]).data) == 1


def test_rank_elbow_marks_the_elbow_on_a_log_axis():
    fig = rank_sweep.rank_elbow(
        [1, 2, 4, 8], [0.5, 0.8, 0.95, 0.96], [0.05, 0.04, 0.01, 0.01],
        params=[2048, 4096, 8192, 16384], elbow_r=4, full_mean=0.97, full_std=0.01,
    )  # fmt: skip
    assert names(fig) == [
        "± 1 std over seeds",
        "LoRA: irregular-verb accuracy (mean)",
        "full fine-tuning: irregular-verb accuracy (97.0% ± 1.0)",
        "trainable parameters",
    ]
    assert fig.layout.xaxis.type == "log"
    accuracy, full = fig.data[1], fig.data[2]
    assert accuracy.meta == {"metric": "irregular_accuracy"}
    assert accuracy.line.color == common.metric_color("irregular_accuracy")
    assert full.meta["method"] == "full" and full.line.color == common.method_color("full")
    assert fig.layout.yaxis2.title.text == "trainable parameters (log scale)"
    assert fig.layout.yaxis.dtick == 20  # 0, 20, ..., 100
    assert list(fig.data[1].y) == pytest.approx([50.0, 80.0, 95.0, 96.0])
    assert any("elbow r = 4" in a.text for a in fig.layout.annotations)
    assert any(s.type == "line" for s in fig.layout.shapes)
    bare = rank_sweep.rank_elbow([1, 2], [0.5, 0.6], [0.0, 0.0])
    assert len(bare.data) == 2
    assert "yaxis2" not in bare.layout.to_plotly_json()  # no empty right axis without params
    more = rank_sweep.rank_elbow(
        [1, 2], [0.5, 0.6], [0.0, 0.0], others={"regular_accuracy": ([0.9, 0.8], [0, 0])}
    )
    assert names(more)[-1] == "LoRA: regular-verb accuracy (mean)"
    assert list(more.data[-1].y) == pytest.approx([90.0, 80.0])
    assert more.data[-1].line.color == common.metric_color("regular_accuracy")
    assert more.data[-1].marker.symbol != more.data[1].marker.symbol  # both still show
    named = rank_sweep.rank_elbow([1], [0.5], [0.0], others={"other": ([0.4], [0.0])})
    assert names(named)[-1] == "other" and named.data[-1].meta is None


@given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=8))
def test_parameter_ticks_are_nice_and_span_the_values(values):
    """Issue 24: the right axis of the rank sweep read 145.333k, 57.9703k, ... (plotly
    lined its log ticks up with the accuracy grid)."""
    ticks = rank_sweep.nice_log_ticks(values)
    assert ticks == sorted(ticks) and ticks[0] <= min(values) and ticks[-1] >= max(values)
    for t in ticks:
        mantissa = t / 10 ** np.floor(np.log10(t))
        assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-9


def test_targets_bars():
    fig = rank_sweep.targets_bars(
        {"q,v": aggregate(irregular_accuracy=(0.9, 0.02), trainable_params=16384),
         "all": aggregate(irregular_accuracy=(0.95, 0.01), trainable_params=60000)}
    )  # fmt: skip
    assert list(fig.data[0].x) == ["q,v", "all"]
    assert list(fig.data[0].y) == pytest.approx([90.0, 95.0])
    assert list(fig.layout.xaxis.ticktext) == ["q,v (16.4k)", "all (60k)"]  # parameters
    assert len(fig.data) == 1  # no regular-verb figures given
    both = rank_sweep.targets_bars(
        {"q,v": aggregate(irregular_accuracy=(0.9, 0.0), regular_accuracy=(0.7, 0.0))}
    )
    assert names(both) == ["irregular verbs (task)", "regular verbs (control)"]
    assert [t.marker.color for t in both.data] == [
        common.metric_color("irregular_accuracy"),
        common.metric_color("regular_accuracy"),
    ]


def test_memory_stacked_one_trace_per_category():
    pred = predict_memory(SHAPES["minigpt"], "qlora", batch=2, seq=16)
    rows = breakdown_table(
        pred, {"weights": 10, "nf4": 5, "lora": 1, "gradients": 1, "optimizer": 2}
    )
    fig = memory.memory_stacked(rows)
    assert fig.layout.barmode == "stack"
    assert names(fig) == ["weights", "nf4", "lora", "gradients", "optimizer", "activations"]
    assert list(fig.data[0].y) == ["predicted", "measured"]  # horizontal bars
    unit = memory.byte_unit([pred["states_total"] + pred["activations"]])
    assert fig.layout.xaxis.title.text == f"memory ({unit})"  # not "bytes"
    assert fig.data[0].x[1] == pytest.approx(10 / memory.UNITS[unit])
    assert fig.data[-1].x[1] == 0  # nothing measured for activations
    assert fig.data[0].customdata[1] == memory.in_unit(10, unit)  # hover: the table's unit
    assert {t.marker.color for t in fig.data} <= set(common.CATEGORY_PALETTE)
    in_gib = memory.memory_stacked(rows, unit="GiB")
    assert in_gib.layout.xaxis.title.text == "memory (GiB)"
    by_run = [
        {**row, "run": run, "kind": row["source"], "source": f"{run} {row['source']}"}
        for run in ("lora a", "lora b")
        for row in rows
    ]
    two = memory.memory_stacked(by_run)  # two runs of one method: four bars, not two
    assert [list(level) for level in two.data[0].y] == [
        ["lora a", "lora a", "lora b", "lora b"],
        ["predicted", "measured", "predicted", "measured"],
    ]


@given(st.integers(min_value=1, max_value=2**50))
def test_byte_unit_keeps_the_largest_size_between_1_and_1024_units(n):
    unit = memory.byte_unit([n, n // 3, 0])
    assert 1 <= n / memory.UNITS[unit] < 1024 or unit == "TiB"
    shown = memory.in_unit(n, unit)
    assert shown.endswith(" " + unit)
    assert float(shown.split()[0].replace(",", "")) == pytest.approx(
        n / memory.UNITS[unit], rel=5e-3
    )  # three significant digits


def test_scaling_bars_grouped_in_gib_with_peft_when_present():
    rows = [
        {"label": "r=8 qv", "peak_bytes": 2**32, "predicted_mixed_bytes": 2**31,
         "peft_peak_bytes": 3 * 2**30},
        {"label": "r=8 all", "peak_bytes": 2**30, "predicted_mixed_bytes": 2**30,
         "peft_peak_bytes": None},
    ]  # fmt: skip
    fig = memory.scaling_bars(rows)
    assert fig.layout.barmode == "group"
    assert names(fig) == [
        "measured peak (ours)",
        "predicted (fp32 LoRA + Adam)",
        "measured peak (PEFT + bitsandbytes)",
    ]
    assert list(fig.data[0].x) == ["r=8 qv", "r=8 all"]
    assert list(fig.data[0].y) == pytest.approx([4.0, 1.0])
    assert fig.data[2].y[0] == pytest.approx(3.0) and np.isnan(fig.data[2].y[1])
    assert fig.layout.yaxis.title.text == "peak memory (GiB)"
    ours, predicted, peft = fig.data
    assert ours.meta == {"method": "qlora", "run": "ours"}
    assert ours.marker.color == common.method_color("qlora")
    assert peft.meta["method"] == "qlora"
    assert peft.marker.color == common.run_color("qlora", peft.meta["run"])
    assert peft.marker.color != ours.marker.color  # a shade of QLoRA's colour, not the same
    assert predicted.marker.color not in set(common.METHOD_COLORS.values())
    no_peft = memory.scaling_bars([{**r, "peft_peak_bytes": None} for r in rows])
    assert len(no_peft.data) == 2


def test_nf4_codebook_against_the_normal():
    fig = nf4.nf4_codebook({"nf4": NF4_CODEBOOK, "int4": INT4_CODEBOOK, "fp4": FP4_CODEBOOK}, 1.85)
    assert names(fig)[0] == "normal weights (density)"
    assert names(fig)[1:] == ["NF4 (16 values)", "int4 (15 values)", "FP4 (15 values)"]
    assert list(fig.data[1].x) == sorted(NF4_CODEBOOK)
    assert [t.marker.color for t in fig.data[1:]] == [
        common.FORMAT_COLORS[f] for f in ("nf4", "int4", "fp4")
    ]
    assert fig.layout.yaxis2.title.text == "4-bit format"
    assert max(fig.data[0].y) == pytest.approx(1.85 / np.sqrt(2 * np.pi), rel=1e-3)


def test_error_histograms_share_bins_and_count_every_weight():
    rng = np.random.default_rng(0)
    errors = {"nf4": rng.normal(0, 0.01, 1000), "int4": rng.normal(0, 0.02, 1000), "fp4": [0.0]}
    fig = nf4.error_histograms(errors, bins=21)
    assert names(fig) == ["NF4", "int4", "FP4"]
    assert [t.meta for t in fig.data] == [{"format": f} for f in ("nf4", "int4", "fp4")]
    assert len({t.line.dash for t in fig.data}) == 3  # no outline hides another
    assert list(fig.data[0].x) == list(fig.data[1].x)
    assert sum(fig.data[0].y) == 1000 and sum(fig.data[2].y) == 1


def test_error_rmse_bars_and_bits_bars():
    rows = [
        {"layer": "blocks.0.attn.q_proj.weight", "method": m, "rel_rmse": v}
        for m, v in (("nf4", 0.1), ("int4", 0.12), ("fp4", 0.15))
    ]
    fig = nf4.error_rmse_bars(rows)
    assert names(fig) == ["NF4", "int4", "FP4"] and list(fig.data[0].x) == ["L0 q_proj"]
    assert fig.data[0].marker.color == common.FORMAT_COLORS["nf4"]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    bits = nf4.bits_bars({"fp32": 32, "NF4, blocks of 64": 4.5})
    assert list(bits.data[0].y) == [32.0, 4.5]
    assert list(bits.data[0].text) == ["32", "4.5"]
    fp32, nf4_bar = bits.data[0].marker.color
    assert nf4_bar == common.FORMAT_COLORS["nf4"]
    assert fp32 not in set(common.METHOD_COLORS.values()) | set(common.FORMAT_COLORS.values())


# ---------------------------------------------------------------------- issue 23, item 2
LINK = "<a href='http://127.0.0.1:9/x'>click</a><br><b>b</b>"


def test_names_from_the_data_are_text_in_every_chart():
    """Issue 23, item 2: plotly renders <a href>, <b>, <br> in legends, titles, tick labels
    and hover text; a verb, run or layer name from a record is escaped there (plotly shows
    the entities as the characters), while the app's own hover templates keep their
    markup."""
    from app.charts import spectrum, verbs

    escaped = "&lt;a href='http://127.0.0.1:9/x'&gt;click&lt;/a&gt;&lt;br&gt;&lt;b&gt;b&lt;/b&gt;"
    fig = verbs.verb_curves([(1, {LINK: 0.5, "go": 1.0})], f"Per-verb accuracy: {LINK}", LINK)
    assert sorted(t.name for t in fig.data) == sorted([escaped, "go"])
    assert fig.layout.title.text == f"Per-verb accuracy: {escaped}"
    fig = spectrum.stable_rank_bars({LINK: {"blocks.0.<a href='x'>q</a>": 1.0}})
    assert fig.data[0].name == escaped
    assert list(fig.data[0].x) == ["L0 &lt;a href='x'&gt;q&lt;/a&gt;"]
    fig = spectrum.subspace_heatmaps({LINK: [[1.0]]}, "blocks.0.attn.q_proj")
    assert fig.layout.annotations[0].text == escaped
    assert fig.data[0].hovertemplate.endswith("<extra></extra>")  # the app's own markup
    assert "<a" not in fig.to_json()
