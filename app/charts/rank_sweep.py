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


def nice_log_ticks(values: Sequence[float]) -> list[float]:
    """1, 2 and 5 times the powers of ten from just below the smallest of ``values`` to
    just above the largest (on a log axis plotly would otherwise line the ticks up with
    the other axis' grid: 145.333k, 57.9703k, ...)."""
    pos = [float(v) for v in values if v > 0]
    if not pos:
        return []
    lo, hi = min(pos), max(pos)
    out = []
    for k in range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 2):
        out += [m * 10.0**k for m in (1, 2, 5)]
    below = max((v for v in out if v <= lo), default=lo)
    above = min((v for v in out if v >= hi), default=hi)
    return [v for v in out if below <= v <= above]


def _si(v: float) -> str:
    """2000 -> "2k", 5e6 -> "5M": the tick labels of :func:`nice_log_ticks`."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


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
            mode="none",
            fill="toself",
            fillcolor=_rgba(metric_color("irregular_accuracy"), 0.18),
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
        fig.add_annotation(  # above the plot, where no line can run through it
            x=math.log10(int(elbow_r)),
            y=1.0,
            yref="paper",
            yanchor="bottom",
            text=f"elbow r = {elbow_r}",
            showarrow=False,
            font=dict(size=FONT_SIZE, color=TICK_COLOR),
        )
    fig.update_xaxes(
        title_text="LoRA rank r (log scale)", type="log", tickvals=r, ticktext=[str(v) for v in r]
    )
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], dtick=20, secondary_y=False)
    if params is not None:  # 1k, 2k, 5k, ... (left alone, plotly matches the left grid)
        ticks = nice_log_ticks([int(p) for p in params])
        fig.update_yaxes(
            title_text="trainable parameters (log scale)",
            type="log",
            tickmode="array",
            tickvals=ticks,
            ticktext=[_si(v) for v in ticks],
            secondary_y=True,
            showgrid=False,
        )
    legend_below(fig, y=-0.25)
    return style(fig, "Rank sweep: where a larger r stops paying off", height=540)


def targets_bars(summary: Mapping[str, Aggregate]) -> go.Figure:
    """Accuracy (± std) per choice of target modules, its trainable parameters in the
    tick label; the regular-verb control next to it when the summary has it."""
    names = list(summary)
    aggs = list(summary.values())
    series = [(lambda a: a.irregular_accuracy, "irregular verbs (task)", "irregular_accuracy")]
    if all(a.regular_accuracy is not None for a in aggs):
        series.append((lambda a: a.regular_accuracy, "regular verbs (control)", "regular_accuracy"))
    fig = go.Figure()
    for figure, label, metric in series:
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
                name=label,
                meta={"metric": metric},
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(  # the parameter count under each choice, not over the error bars
        title_text="LoRA target modules (trainable parameters)",
        tickvals=names,
        ticktext=[f"{n} ({_si(a.trainable_params)})" for n, a in zip(names, aggs, strict=True)],
    )
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], dtick=20)
    legend_below(fig)
    return style(fig, "Which layers to adapt", height=500)
