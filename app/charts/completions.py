"""Charts of the Completions page (the went-or-goed bars also sit on the Overview page)."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from app.charts.common import COLORS, PALETTE, legend_below, style


def candidate_bars(probs: Mapping[str, Mapping[str, float]], title: str = "") -> go.Figure:
    """Probability of each candidate answer, one bar group per model:
    ``probs[model_label][candidate] = p`` (renormalized over the candidates)."""
    fig = go.Figure()
    for i, (model, p) in enumerate(probs.items()):
        cands = list(p)
        fig.add_trace(
            go.Bar(
                x=cands,
                y=[100 * p[c] for c in cands],
                name=model,
                marker_color=COLORS["base"] if i == 0 else PALETTE[(i - 1) % len(PALETTE)],
                text=[f"{100 * p[c]:.1f}%" for c in cands],
                textposition="outside",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="probability among the candidates (%)", range=[0, 110])
    fig.update_xaxes(title_text="candidate answer")
    legend_below(fig)
    return style(fig, title or "Which answer does the model prefer?", height=460)
