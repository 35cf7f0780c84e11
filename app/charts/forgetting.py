"""Charts of the Forgetting page: control perplexity and drift."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import COLORS, PALETTE, series_colors, style


def perplexity_over_steps(series: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """Control perplexity over steps, English and Spanish side by side, one line per run."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("control English", "control Spanish"), shared_yaxes=False
    )
    colors = series_colors(list(series))
    for label, evals in series.items():
        color = colors[label]
        for col, lang in ((1, "en"), (2, "es")):
            key = f"control_{lang}_ppl"
            pts = [(e["step"], e[key]) for e in evals if key in e]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    line=dict(width=3, color=color),
                    marker=dict(size=8),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="perplexity per character", row=1, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return style(fig, "Control perplexity during fine-tuning", height=480)


def drift_bars(summary: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Final control drift per method with its spread over seeds:
    ``summary[method] = {control_en_drift_mean, control_en_drift_std, control_es_…}``."""
    methods = list(summary)
    fig = go.Figure()
    for lang, name, color in (("en", "English", "#4c78a8"), ("es", "Spanish", "#f58518")):
        means = [
            100 * float(summary[m].get(f"control_{lang}_drift_mean", math.nan)) for m in methods
        ]
        stds = [
            100 * float(summary[m].get(f"control_{lang}_drift_std", 0.0) or 0.0) for m in methods
        ]
        fig.add_trace(
            go.Bar(
                x=methods,
                y=means,
                name=f"control {name}",
                marker_color=color,
                error_y=dict(type="data", array=stds, visible=True, thickness=2),
                text=[f"{m:+.1f}%" for m in means],
                textposition="outside",
            )
        )
    fig.add_hline(y=5, line_dash="dash", line_color="#555", annotation_text="5% drift")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="perplexity drift vs base (%)")
    return style(fig, "Forgetting: final control drift")


def metric_bars(
    summary: Mapping[str, Mapping[str, float]],
    key: str,
    title: str,
    y_title: str,
    percent: bool = True,
) -> go.Figure:
    """One bar per group (method, targets, ...) of ``summary[group][key + "_mean"]`` with
    ``key + "_std"`` as its error bar."""
    groups = list(summary)
    scale = 100.0 if percent else 1.0
    means = [scale * float(summary[g].get(f"{key}_mean", math.nan)) for g in groups]
    stds = [scale * float(summary[g].get(f"{key}_std", 0.0) or 0.0) for g in groups]
    fig = go.Figure(
        go.Bar(
            x=groups,
            y=means,
            error_y=dict(type="data", array=stds, visible=True, thickness=2),
            marker_color=[COLORS.get(g, PALETTE[i % len(PALETTE)]) for i, g in enumerate(groups)],
            text=[f"{m:.1f}%" if percent else f"{m:.3g}" for m in means],
            textposition="inside",
            insidetextanchor="middle",
            name=key,
        )
    )
    fig.update_yaxes(title_text=y_title, range=[0, 110] if percent else None)
    return style(fig, title)
