"""Charts of the Rank sweep page: accuracy against r, and per choice of targets (from the
experiments record's :class:`~minituner.experiments.record_sections.Aggregate`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import COLORS, FONT_SIZE, PALETTE, legend_below, style
from minituner.experiments.record_sections import Aggregate


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
    axis; the elbow marked, full fine-tuning as a dashed line. ``others[label] = (mean,
    std)`` adds further accuracy lines (e.g. the regular-verb control)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    r = [int(v) for v in ranks]
    m = [100 * float(v) for v in mean]
    s = [100 * float(v or 0.0) for v in std]
    fig.add_trace(
        go.Scatter(
            x=r + r[::-1],
            y=[a + b for a, b in zip(m, s, strict=True)]
            + [a - b for a, b in zip(m, s, strict=True)][::-1],
            fill="toself",
            fillcolor="rgba(31,119,180,0.18)",
            line=dict(width=0),
            hoverinfo="skip",
            name="± 1 std over seeds",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=r,
            y=m,
            mode="lines+markers",
            name="irregular verbs (mean)",
            line=dict(width=3, color=COLORS["lora"]),
            marker=dict(size=10),
            error_y=dict(type="data", array=s, visible=True, thickness=2),
        ),
        secondary_y=False,
    )
    for i, (label, (om, osd)) in enumerate((others or {}).items()):
        fig.add_trace(
            go.Scatter(
                x=r,
                y=[100 * float(v) for v in om],
                mode="lines+markers",
                name=label,
                line=dict(width=3, color=PALETTE[(i + 3) % len(PALETTE)]),
                marker=dict(size=9, symbol="diamond"),
                error_y=dict(type="data", array=[100 * float(v or 0.0) for v in osd], visible=True),
            ),
            secondary_y=False,
        )
    if full_mean is not None:
        fm, fs = 100 * float(full_mean), 100 * float(full_std or 0.0)
        fig.add_trace(
            go.Scatter(
                x=[r[0], r[-1]],
                y=[fm, fm],
                mode="lines",
                name=f"full fine-tuning ({fm:.1f}% ± {fs:.1f})",
                line=dict(width=3, dash="dash", color=COLORS["full"]),
            ),
            secondary_y=False,
        )
    if params is not None:
        fig.add_trace(
            go.Scatter(
                x=r,
                y=[int(p) for p in params],
                mode="lines+markers",
                name="trainable parameters",
                line=dict(width=2, dash="dot", color="#555"),
                marker=dict(size=8, symbol="square"),
            ),
            secondary_y=True,
        )
    if elbow_r is not None:
        fig.add_vline(  # shapes take data values on a log axis, annotations log10
            x=int(elbow_r),
            line_dash="dash",
            line_color=COLORS["qlora"],
            line_width=3,
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
            font=dict(size=FONT_SIZE, color=COLORS["qlora"]),
        )
    fig.update_xaxes(title_text="rank r", type="log", tickvals=r, ticktext=[str(v) for v in r])
    fig.update_yaxes(title_text="accuracy (%)", secondary_y=False)
    fig.update_yaxes(
        title_text="trainable parameters",
        type="log",
        tickvals=[int(p) for p in params] if params is not None else None,
        ticktext=[f"{int(p):,}" for p in params] if params is not None else None,
        secondary_y=True,
        showgrid=False,
    )
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return style(fig, "Rank sweep: where a larger r stops paying off", height=540)


def targets_bars(summary: Mapping[str, Aggregate]) -> go.Figure:
    """Accuracy (± std) per choice of target modules, trainable parameters as text; the
    regular-verb control next to it when the summary has it."""
    names = list(summary)
    aggs = list(summary.values())
    series = [(lambda a: a.irregular_accuracy, "irregular verbs (task)", COLORS["lora"])]
    if all(a.regular_accuracy is not None for a in aggs):
        series.append((lambda a: a.regular_accuracy, "regular verbs (control)", "#ff7f0e"))
    fig = go.Figure()
    for i, (figure, label, color) in enumerate(series):
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
                marker_color=color,
                text=[f"{a.trainable_params:,} params" for a in aggs] if i == 0 else None,
                textposition="inside",
                name=label,
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="target modules")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 105])
    legend_below(fig)
    return style(fig, "Which layers to adapt", height=500)
