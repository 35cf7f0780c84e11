"""Charts of the Memory page: the breakdown by category and the 7B measurements."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from app.charts.common import COLORS, legend_below, style

CATEGORY_COLORS = {
    "weights": "#4c78a8",
    "nf4": "#54a24b",
    "lora": "#f58518",
    "gradients": "#e45756",
    "optimizer": "#b279a2",
    "activations": "#9d9da0",
}


def memory_stacked(rows: Sequence[Mapping], title: str = "Training memory") -> go.Figure:
    """Stacked bars, one bar per ``row["source"]`` (e.g. "LoRA predicted"), one colour per
    ``row["category"]``; rows as :func:`app.format.breakdown_table` gives them."""
    sources: list[str] = []
    for row in rows:
        if row["source"] not in sources:
            sources.append(row["source"])
    categories: list[str] = []
    for row in rows:
        if row["category"] not in categories:
            categories.append(row["category"])
    fig = go.Figure()
    for cat in categories:
        by_source = {row["source"]: row for row in rows if row["category"] == cat}
        fig.add_trace(
            go.Bar(
                x=sources,
                y=[by_source[s]["bytes"] if s in by_source else 0 for s in sources],
                name=cat,
                marker_color=CATEGORY_COLORS.get(cat),
                customdata=[
                    by_source[s].get("label", "") if s in by_source else "" for s in sources
                ],
                hovertemplate="%{x}<br>" + cat + ": %{customdata}<extra></extra>",
            )
        )
    fig.update_layout(barmode="stack", legend=dict(traceorder="normal"))
    fig.update_yaxes(title_text="bytes")
    return style(fig, title, height=500)


def scaling_bars(
    rows: Sequence[Mapping], title: str = "7B QLoRA: measured peak vs prediction"
) -> go.Figure:
    """Grouped bars in GiB, one group per configuration (``row["label"]``): our measured
    peak, the prediction (float32 LoRA + Adam) and, when any row has it, the PEFT +
    bitsandbytes peak; rows as :func:`minituner.scale.scaling.scaling_rows` gives them."""
    labels = [row["label"] for row in rows]
    series = [
        ("measured peak (ours)", "peak_bytes", COLORS["qlora"]),
        ("predicted (fp32 LoRA + Adam)", "predicted_mixed_bytes", "#9d9da0"),
    ]
    if any(row.get("peft_peak_bytes") is not None for row in rows):
        series.append(("measured peak (PEFT + bitsandbytes)", "peft_peak_bytes", "#ff7f0e"))
    fig = go.Figure()
    for name, key, color in series:
        gib = [row[key] / 2**30 if row.get(key) is not None else math.nan for row in rows]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=gib,
                name=name,
                marker_color=color,
                text=["" if math.isnan(v) else f"{v:.2f}" for v in gib],
                textposition="outside",
                hovertemplate="%{x}<br>" + name + ": %{y:.3f} GiB<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="LoRA rank and targets")
    fig.update_yaxes(title_text="GiB (2³⁰ bytes)", rangemode="tozero")
    legend_below(fig)
    return style(fig, title, height=500)
