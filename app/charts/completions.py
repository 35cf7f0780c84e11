"""Charts of the Completions page (the went-or-goed bars also sit on the Overview page)."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from app.charts.common import legend_below, style
from app.charts.compare import Runs, run_looks

BASE_LABEL = "base model"


def candidate_bars(
    probs: Mapping[str, Mapping[str, float]], title: str = "", runs: Runs | None = None
) -> go.Figure:
    """Probability of each candidate answer among the candidates (renormalized over
    them), one bar group per model: ``probs[model_label][candidate] = p``. The base
    model is grey; each run is drawn in its method's colour (``runs``: label ->
    (method, run id), see app.charts.compare.run_looks; a label starting with
    "base" is the base model)."""
    fig = go.Figure()
    runs = dict(runs or {})
    for label in probs:
        if label.lower().startswith("base") and label not in runs:
            runs[label] = ("base", "base")
    looks = run_looks(list(probs), runs)
    for model, p in probs.items():
        cands = list(p)
        color, meta = looks[model]
        fig.add_trace(
            go.Bar(
                x=cands,
                y=[100 * p[c] for c in cands],
                name=model,
                meta=meta,
                marker_color=color,
                text=[f"{100 * p[c]:.1f}%" for c in cands],
                textposition="outside",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="probability among these candidates (%)", range=[0, 115])
    fig.update_xaxes(title_text="candidate answer")
    legend_below(fig)
    return style(fig, title or "Which answer does the model prefer?", height=480)
