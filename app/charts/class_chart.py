"""The Class page's chart: where each learner's finished run landed on the
learning-forgetting frontier, drawn over the shipped frontier grid.

Learning is the irregular-verb accuracy (x); forgetting is one measure (y): the control
English drift (lower is better) or the regular-verb accuracy (higher is better). The
shipped grid (experiments.json's ``frontier`` section: each config's mean over seeds and
each method's Pareto front, :mod:`minituner.analysis.frontier`) is the faint background
in its method's colour; each class run is a large star in its own shade of its method's
colour (:func:`app.charts.common.run_color`, keyed by the run id), named by the learner's
nickname, so r = 1 and r = 64 of two learners sit side by side against what the grid
found. Every trace carries ``meta={"method", "run"}`` (the visual-language contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from app.charts.common import legend_below, method_color, run_color, style
from minituner.experiments.record_grids import Frontier

PANELS = (
    ("control_en_drift", "control English drift (%)"),
    ("regular_accuracy", "regular-verb accuracy (%)"),
)
LEARNING_TITLE = "irregular-verb accuracy (%) — learning"
SHIPPED = "shipped grid"


@dataclass(frozen=True)
class ClassPoint:
    """One finished class run: its stored figures (fractions) and who trained it."""

    run_id: str
    method: str
    label: str  # the configuration (FinetuneConfig.label)
    who: str  # the learner's nickname, or "run #<job>"
    irregular_accuracy: float
    control_en_drift: float
    regular_accuracy: float | None


def _value(p: ClassPoint, measure: str) -> float | None:
    v = getattr(p, measure)
    return None if v is None else 100 * v


def class_frontier(
    points: Sequence[ClassPoint], frontier: Frontier | None, measure: str, y_title: str
) -> go.Figure:
    """Irregular accuracy (x) against ``measure`` (y, in %) for the class's finished runs
    over the shipped frontier grid (``frontier``; None: the class runs alone)."""
    fig = go.Figure()
    if frontier is not None:
        _shipped(fig, frontier, measure)
    for p in points:
        y = _value(p, measure)
        if y is None:  # a run stored before the measure existed
            continue
        color = run_color(p.method, p.run_id)
        fig.add_trace(
            go.Scatter(
                x=[100 * p.irregular_accuracy], y=[y], mode="markers+text",
                name=f"{p.who}: {p.label}", text=[p.who], textposition="top center",
                marker=dict(size=20, symbol="star", color=color, line=dict(width=1, color="#222222")),
                meta={"method": p.method, "run": p.run_id},
                hovertemplate="%{text}<br>irregular %{x:.1f}%<br>%{y:.2f}%<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(title_text=LEARNING_TITLE, rangemode="tozero")
    fig.update_yaxes(title_text=y_title)
    legend_below(fig)
    return style(fig, f"The class on the frontier: {y_title.split(' (')[0]}", height=560)


def _shipped(fig: go.Figure, frontier: Frontier, measure: str) -> None:
    """The shipped grid's config means (faint markers) and each method's front (a step)."""
    configs = [c for c in frontier.configs if getattr(c.stats, measure, None) is not None]
    fronts = frontier.fronts.get(measure, {})
    for m in dict.fromkeys(c.method for c in configs):
        color = method_color(m)
        pts = [c for c in configs if c.method == m]
        fig.add_trace(
            go.Scatter(
                x=[100 * c.stats.irregular_accuracy.mean for c in pts],
                y=[100 * getattr(c.stats, measure).mean for c in pts],
                mode="markers", name=f"{m} ({SHIPPED})", legendgroup=m, text=[c.label for c in pts],
                marker=dict(size=9, color=color, opacity=0.35), meta={"method": m, "run": SHIPPED},
                hovertemplate="%{text}<br>irregular %{x:.1f}%<br>%{y:.2f}%<extra></extra>",
            )
        )  # fmt: skip
        front = [frontier.configs[i] for i in fronts.get(m, []) if i < len(frontier.configs)]
        front = [c for c in front if getattr(c.stats, measure, None) is not None]
        if len(front) > 1:
            fig.add_trace(
                go.Scatter(
                    x=[100 * c.stats.irregular_accuracy.mean for c in front],
                    y=[100 * getattr(c.stats, measure).mean for c in front],
                    mode="lines", name=f"{m} front ({SHIPPED})", legendgroup=m, hoverinfo="skip",
                    line=dict(color=color, width=2, shape="vh", dash="dot"), opacity=0.5,
                    meta={"method": m, "run": SHIPPED},
                )
            )  # fmt: skip
