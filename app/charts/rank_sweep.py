"""Charts of the Rank sweep page: accuracy against r, and per choice of targets (from the
experiments record's :class:`~minituner.experiments.record_sections.Aggregate`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import (
    CATEGORY_PALETTE,
    FONT_SIZE,
    METRIC_COLORS,
    METRIC_NAMES,
    TICK_COLOR,
    legend_below,
    method_color,
    metric_color,
    style,
)
from minituner.experiments.record_sections import Aggregate

PARAMS_COLOR = "#555555"  # a count, neither a method nor a metric


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _lora_name(metric: str) -> str:
    return f"LoRA: {METRIC_NAMES[metric].removesuffix(' (%)')} (mean)"


def rank_elbow(
    ranks: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    params: Sequence[int] | None = None,
    elbow_r: int | None = None,
    full_mean: float | None = None,
    full_std: float | None = None,
    others: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> go.Figure:
    """Accuracy (mean ± std over seeds) and trainable parameters against r on a log
    axis; the elbow marked, full fine-tuning as a dashed line in its method's colour.
    ``others[key] = (mean, std)`` adds further accuracy lines: a metric key of
    METRIC_COLORS ("regular_accuracy", the control verbs) is drawn in that metric's
    colour and named by METRIC_NAMES, any other key as it is in a neutral colour. Each
    line has its own marker and dash, so one lying on another still shows."""
    fig = make_subplots(specs=[[{"secondary_y": params is not None}]])
    right = {"secondary_y": True} if params is not None else {}
    r = [int(v) for v in ranks]
    m = [100 * float(v) for v in mean]
    s = [100 * float(v or 0.0) for v in std]
    fig.add_trace(
        go.Scatter(
            x=r + r[::-1],
            y=[a + b for a, b in zip(m, s, strict=True)]
            + [a - b for a, b in zip(m, s, strict=True)][::-1],
            fill="toself",
            fillcolor=_rgba(metric_color("irregular_accuracy"), 0.18),
            line=dict(width=0),
            hoverinfo="skip",
            name="± 1 std over seeds",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=r,
            y=m,
            mode="lines+markers",
            name=_lora_name("irregular_accuracy"),
            line=dict(width=3, color=metric_color("irregular_accuracy")),
            marker=dict(size=11),
            error_y=dict(type="data", array=s, visible=True, thickness=2),
            meta={"metric": "irregular_accuracy"},
        )
    )
    for i, (key, (om, osd)) in enumerate((others or {}).items()):
        metric = key in METRIC_COLORS
        color = metric_color(key) if metric else CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=r,
                y=[100 * float(v) for v in om],
                mode="lines+markers",
                name=_lora_name(key) if metric else key,
                line=dict(width=3, color=color, dash="dot"),
                marker=dict(size=11, symbol=("diamond", "square", "triangle-up")[i % 3]),
                error_y=dict(type="data", array=[100 * float(v or 0.0) for v in osd], visible=True),
                meta={"metric": key} if metric else None,
            )
        )
    if full_mean is not None:
        fm, fs = 100 * float(full_mean), 100 * float(full_std or 0.0)
        fig.add_trace(
            go.Scatter(
                x=[r[0], r[-1]],
                y=[fm, fm],
                mode="lines",
                name=f"full fine-tuning: irregular-verb accuracy ({fm:.1f}% ± {fs:.1f})",
                line=dict(width=3, dash="dash", color=method_color("full")),
                meta={"method": "full", "run": "full fine-tuning, mean over seeds"},
            )
        )
    if params is not None:
        fig.add_trace(
            go.Scatter(
                x=r,
                y=[int(p) for p in params],
                mode="lines+markers",
                name="trainable parameters",
                line=dict(width=2, dash="dashdot", color=PARAMS_COLOR),
                marker=dict(size=8, symbol="square-open"),
            ),
            **right,
        )
    if elbow_r is not None:
        fig.add_vline(  # shapes take data values on a log axis, annotations log10
            x=int(elbow_r),
            line_dash="dash",
            line_color=TICK_COLOR,
            line_width=2,
        )
        i = r.index(int(elbow_r)) if int(elbow_r) in r else None
        fig.add_annotation(
            x=math.log10(int(elbow_r)),
            y=(m[i] if i is not None else 50),
            text=f"elbow r = {elbow_r}",
            showarrow=True,
            arrowhead=2,
            ax=60,
            ay=40,
            font=dict(size=FONT_SIZE, color=TICK_COLOR),
        )
    fig.update_xaxes(
        title_text="LoRA rank r (log scale)", type="log", tickvals=r, ticktext=[str(v) for v in r]
    )
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], dtick=20, secondary_y=False)
    if params is not None:  # 1k, 2k, 5k, ...: plotly's log ticks with SI prefixes
        fig.update_yaxes(
            title_text="trainable parameters (log scale)",
            type="log",
            tickformat="~s",
            secondary_y=True,
            showgrid=False,
        )
    legend_below(fig, y=-0.25)
    return style(fig, "Rank sweep: where a larger r stops paying off", height=540)


def targets_bars(summary: Mapping[str, Aggregate]) -> go.Figure:
    """Accuracy (± std) per choice of target modules, trainable parameters as text; the
    regular-verb control next to it when the summary has it."""
    names = list(summary)
    aggs = list(summary.values())
    series = [(lambda a: a.irregular_accuracy, "irregular verbs (task)", "irregular_accuracy")]
    if all(a.regular_accuracy is not None for a in aggs):
        series.append((lambda a: a.regular_accuracy, "regular verbs (control)", "regular_accuracy"))
    fig = go.Figure()
    for i, (figure, label, metric) in enumerate(series):
        fig.add_trace(
            go.Bar(
                x=names,
                y=[100 * figure(a).mean for a in aggs],
                error_y=dict(
                    type="data",
                    array=[100 * figure(a).std for a in aggs],
                    visible=True,
                    thickness=2,
                ),
                marker_color=metric_color(metric),
                text=[f"{a.trainable_params:,} params" for a in aggs] if i == 0 else None,
                textposition="inside",
                name=label,
                meta={"metric": metric},
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="LoRA target modules")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], dtick=20)
    legend_below(fig)
    return style(fig, "Which layers to adapt", height=500)
