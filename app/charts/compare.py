"""Charts of the Compare page (the loss curve also heads the Overview page)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import plotly.graph_objects as go

from app.charts.common import legend_below, series_colors, style
from minituner.store.records import EvalPoint


def loss_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "Training loss",
    log_y: bool = False,
) -> go.Figure:
    """One line per run: ``series[label] = (steps, losses)``."""
    fig = go.Figure()
    colors = series_colors(list(series))
    for label, (steps, losses) in series.items():
        fig.add_trace(
            go.Scatter(
                x=list(steps),
                y=list(losses),
                mode="lines",
                name=label,
                line=dict(width=3, color=colors[label]),
            )
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss (answer characters)", type="log" if log_y else "linear")
    legend_below(fig)
    return style(fig, title, height=520)


def eval_curves(
    series: Mapping[str, Sequence[EvalPoint]],
    figure: Callable[[EvalPoint], float],
    title: str,
    y_title: str,
    percent: bool = True,
) -> go.Figure:
    """One line per run of an evaluation figure over steps (``series[label] = evals``,
    ``figure(e)`` the figure of one evaluation)."""
    fig = go.Figure()
    scale = 100.0 if percent else 1.0
    colors = series_colors(list(series))
    for label, evals in series.items():
        fig.add_trace(
            go.Scatter(
                x=[e.step for e in evals],
                y=[scale * figure(e) for e in evals],
                mode="lines+markers",
                name=label,
                line=dict(width=3, color=colors[label]),
                marker=dict(size=8),
            )
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=y_title)
    legend_below(fig)
    return style(fig, title, height=520)
