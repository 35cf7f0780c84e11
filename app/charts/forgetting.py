"""Charts of the Forgetting page: control perplexity and drift, the learning-forgetting
frontier and the replay sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import COLORS, PALETTE, legend_below, series_colors, style


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


# ---------------------------------------------------------------- frontier and replay
FRONTIER_PANELS = (
    ("control_en_drift", "control English drift (%)", 100.0),
    ("regular_accuracy", "regular-verb accuracy (%)", 100.0),
)


def frontier(section: Mapping, measure: str, y_title: str, scale: float = 100.0) -> go.Figure:
    """Learning (irregular accuracy, x) against one forgetting measure (y) of every grid
    config: its mean over seeds with ± std bars on both axes, one colour per method, and
    each method's Pareto front drawn as the step it is (``section`` is experiments.json's
    ``frontier``: ``configs`` and ``fronts[measure][method]``, indices into configs).

    The step goes up first: with at least learning x a method reaches the forgetting of
    its next front point at or above x."""
    configs = list(section.get("configs", []))
    fronts = section.get("fronts", {}).get(measure, {})
    fig = go.Figure()
    methods = list(dict.fromkeys(c["method"] for c in configs))
    for i, m in enumerate(methods):
        color = COLORS.get(m, PALETTE[i % len(PALETTE)])
        pts = [c for c in configs if c["method"] == m]
        fig.add_trace(
            go.Scatter(
                x=[100 * c["irregular_accuracy_mean"] for c in pts],
                y=[scale * c[f"{measure}_mean"] for c in pts],
                error_x=dict(type="data", array=[100 * c["irregular_accuracy_std"] for c in pts]),
                error_y=dict(type="data", array=[scale * c[f"{measure}_std"] for c in pts]),
                mode="markers",
                name=m,
                legendgroup=m,
                marker=dict(size=11, color=color, opacity=0.8),
                text=[c["label"] for c in pts],
                hovertemplate="%{text}<br>irregular %{x:.1f}%<br>%{y:.2f}<extra></extra>",
            )
        )
        front = [configs[j] for j in fronts.get(m, [])]
        if len(front) > 1:
            fig.add_trace(
                go.Scatter(
                    x=[100 * c["irregular_accuracy_mean"] for c in front],
                    y=[scale * c[f"{measure}_mean"] for c in front],
                    mode="lines",
                    line=dict(color=color, width=3, shape="vh"),
                    name=f"{m} front",
                    legendgroup=m,
                    hoverinfo="skip",
                )
            )
    fig.update_xaxes(title_text="irregular-verb accuracy (%) — learning")
    fig.update_yaxes(title_text=y_title)
    legend_below(fig)
    return style(fig, f"Learning vs forgetting: {y_title.split(' (')[0]}", height=520)


REPLAY_PANELS = (
    ("irregular_accuracy", "irregular accuracy (%)"),
    ("regular_accuracy", "regular accuracy (%)"),
    ("control_en_drift", "control English drift (%)"),
)


def replay(section: Mapping) -> go.Figure:
    """Irregular accuracy, regular accuracy and control drift against the replay share,
    one line per method (mean over seeds, ± std bars); ``section`` is experiments.json's
    ``replay``: ``{method: [{replay, <figure>_mean, <figure>_std, …}, …]}``."""
    fig = make_subplots(rows=1, cols=len(REPLAY_PANELS),
                        subplot_titles=[t for _, t in REPLAY_PANELS])  # fmt: skip
    for m in ("lora", "full"):
        entries = list(section.get(m, []))
        if not entries:
            continue
        for col, (key, _) in enumerate(REPLAY_PANELS, 1):
            fig.add_trace(
                go.Scatter(
                    x=[100 * e["replay"] for e in entries],
                    y=[100 * e[f"{key}_mean"] for e in entries],
                    error_y=dict(type="data", array=[100 * e[f"{key}_std"] for e in entries]),
                    mode="lines+markers",
                    name=m,
                    legendgroup=m,
                    showlegend=col == 1,
                    line=dict(width=3, color=COLORS.get(m, PALETTE[0])),
                    marker=dict(size=9),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="replay share (%)")
    legend_below(fig, y=-0.25)
    return style(fig, "Replaying regular-verb pairs", height=480)
