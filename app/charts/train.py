"""Charts of the Train page: the live loss and evaluation of a running fine-tune."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import COLORS, style


def live_training(
    steps: Sequence[int],
    losses: Sequence[float],
    evals: Sequence[Mapping],
    total_steps: int,
) -> go.Figure:
    """The live view: the loss per step (left) and the periodic evaluation (right:
    irregular-verb accuracy and control-English drift), x fixed to the whole run."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("loss", "evaluation on a sample"),
        specs=[[{}, {"secondary_y": True}]],
        horizontal_spacing=0.12,
    )
    fig.add_trace(
        go.Scatter(
            x=list(steps),
            y=list(losses),
            mode="lines+markers",
            name="loss",
            marker=dict(size=5),
            line=dict(width=3, color=COLORS["lora"]),
        ),
        row=1,
        col=1,
    )
    ev_steps = [e["step"] for e in evals]
    fig.add_trace(
        go.Scatter(
            x=ev_steps,
            y=[100 * e.get("irregular_accuracy", math.nan) for e in evals],
            mode="lines+markers",
            name="irregular accuracy (%)",
            line=dict(width=3, color=COLORS["qlora"]),
            marker=dict(size=9),
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=ev_steps,
            y=[100 * e.get("control_en_drift", math.nan) for e in evals],
            mode="lines+markers",
            name="control EN drift (%)",
            line=dict(width=3, dash="dot", color=COLORS["full"]),
            marker=dict(size=9),
        ),
        row=1,
        col=2,
        secondary_y=True,
    )
    drifts = [100 * e["control_en_drift"] for e in evals if "control_en_drift" in e]
    lo, hi = min([0.0, *drifts]), max([1.0, *drifts])  # at least 0..1 %: noise stays flat
    pad = 0.1 * (hi - lo)
    top = max(1, int(total_steps))
    fig.update_xaxes(title_text="step", range=[0, top * 1.02])
    fig.update_yaxes(title_text="loss", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 101], row=1, col=2, secondary_y=False)
    fig.update_yaxes(
        title_text="drift (%)",
        range=[lo - pad, hi + pad],
        row=1,
        col=2,
        secondary_y=True,
        showgrid=False,
    )
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return style(fig, height=440)
