"""Charts of the Forgetting page: control perplexity and drift, the learning-forgetting
frontier and the replay sweep, from the typed records (runs' EvalPoints, the experiments
record's sections)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import (
    CATEGORY_PALETTE,
    METHOD_COLORS,
    legend_below,
    method_color,
    metric_color,
    style,
)
from app.charts.compare import Runs, run_looks
from minituner.experiments.record_grids import Frontier, Matched, Replay
from minituner.experiments.record_sections import Aggregate, MeanStd
from minituner.store.records import EvalPoint


def _method_look(group: str, i: int = 0) -> tuple[str, dict]:
    """A bar or a point set of a method: its colour and meta; another group (a target
    set, say) a neutral colour and no method."""
    if group in METHOD_COLORS:
        return method_color(group), {"method": group, "run": group}
    return CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)], {"run": group}


def perplexity_over_steps(
    series: Mapping[str, Sequence[EvalPoint]], runs: Runs | None = None
) -> go.Figure:
    """Control perplexity over steps, English and Spanish side by side, one line per run
    (``runs``: label -> (method, run id), see app.charts.compare.run_looks)."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("control English", "control Spanish"), shared_yaxes=False
    )
    looks = run_looks(list(series), runs)
    panels = ((1, lambda e: e.control_en_ppl), (2, lambda e: e.control_es_ppl))
    for label, evals in series.items():
        color, meta = looks[label]
        for col, ppl in panels:
            fig.add_trace(
                go.Scatter(
                    x=[e.step for e in evals],
                    y=[ppl(e) for e in evals],
                    mode="lines+markers",
                    name=label,
                    meta=meta,
                    legendgroup=label,
                    showlegend=col == 1,
                    line=dict(width=3, color=color),
                    marker=dict(size=8),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="perplexity per character")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return style(fig, "Control perplexity during fine-tuning", height=480)


def drift_bars(summary: Mapping[str, Aggregate]) -> go.Figure:
    """Final control drift per method with its spread over seeds (``summary[method]``):
    one bar series per measure (English, Spanish) in the measure's colour."""
    methods = list(summary)
    fig = go.Figure()
    for drift, name, metric in (
        (lambda a: a.control_en_drift, "English", "control_drift"),
        (lambda a: a.control_es_drift, "Spanish", "spanish_drift"),
    ):
        means = [100 * drift(a).mean for a in summary.values()]
        stds = [100 * drift(a).std for a in summary.values()]
        fig.add_trace(
            go.Bar(
                x=methods,
                y=means,
                name=f"control {name}",
                meta={"metric": metric},
                marker_color=metric_color(metric),
                error_y=dict(type="data", array=stds, visible=True, thickness=2),
                customdata=stds,  # the figures are in the table below; on hover too
                hovertemplate="%{x}: %{y:+.2f}% ± %{customdata:.2f}<extra></extra>",
            )
        )
    fig.add_hline(y=5, line_dash="dash", line_color="#555", annotation_text="5% drift")
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="method (each at its own default settings)")
    fig.update_yaxes(title_text="perplexity drift vs base (%)")
    legend_below(fig)
    return style(fig, "Final control drift, per method")


def metric_bars(
    summary: Mapping[str, Aggregate],
    figure: Callable[[Aggregate], MeanStd],
    title: str,
    y_title: str,
    percent: bool = True,
) -> go.Figure:
    """One bar per group (method, targets, ...) of ``figure(summary[group])``'s mean with
    its std as the error bar; each bar its own trace, so a method's bar carries its
    colour and meta (app.charts.common's contract)."""
    scale = 100.0 if percent else 1.0
    fig = go.Figure()
    for i, (group, a) in enumerate(summary.items()):
        color, meta = _method_look(group, i)
        mean, std = scale * figure(a).mean, scale * figure(a).std
        fig.add_trace(
            go.Bar(
                x=[group],
                y=[mean],
                error_y=dict(type="data", array=[std], visible=True, thickness=2),
                marker_color=color,
                meta=meta,
                text=[f"{mean:.1f}%" if percent else f"{mean:.3g}"],
                textposition="inside",
                insidetextanchor="middle",
                name=group,
                showlegend=False,
            )
        )
    fig.update_xaxes(title_text="method (each at its own default settings)")
    fig.update_yaxes(title_text=y_title, range=[0, 110] if percent else None)
    return style(fig, title)


MATCHED_PANELS = (
    ("control_en_drift", "control English drift (%)"),
    ("regular_accuracy", "regular-verb accuracy (%)"),
)
MATCHED_NAMES = {"lora": "LoRA", "full": "full fine-tuning"}


def matched_learning(matched: Mapping[str, Matched]) -> go.Figure:
    """The answer of the frontier grid at matched learning: at each level of irregular
    accuracy (x) the least forgetting each method reaches with at least that accuracy
    (its Pareto front), control drift and regular-verb accuracy side by side, one line
    per method (``matched[measure]``, the record's frontier.matched)."""
    panels = [(m, t) for m, t in MATCHED_PANELS if m in matched]
    fig = make_subplots(rows=1, cols=max(len(panels), 1),
                        subplot_titles=[t.split(" (")[0] for _, t in panels])  # fmt: skip
    for col, (measure, y_title) in enumerate(panels, 1):
        mt = matched[measure]
        for method in ("lora", "full"):
            fig.add_trace(
                go.Scatter(
                    x=[100 * x for x in mt.levels],
                    y=[100 * y for y in getattr(mt, method)],
                    mode="lines+markers",
                    name=f"{MATCHED_NAMES[method]} (best of its grid)",
                    meta={"method": method, "run": f"{method} frontier grid"},
                    legendgroup=method,
                    showlegend=col == 1,
                    line=dict(width=3, color=method_color(method)),
                    marker=dict(size=10),
                    hovertemplate="irregular ≥ %{x:.1f}%<br>%{y:.2f}%<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_yaxes(title_text=y_title, row=1, col=col)
    fig.update_xaxes(title_text="irregular-verb accuracy at least (%)")
    legend_below(fig, y=-0.25)
    return style(fig, "At matched learning: who forgets less?", height=440)


# ---------------------------------------------------------------- frontier and replay
FRONTIER_PANELS = (
    ("control_en_drift", "control English drift (%)", 100.0),
    ("regular_accuracy", "regular-verb accuracy (%)", 100.0),
)


def frontier(section: Frontier, measure: str, y_title: str, scale: float = 100.0) -> go.Figure:
    """Learning (irregular accuracy, x) against one forgetting measure (y, an
    :class:`~minituner.experiments.record_sections.Aggregate` attribute) of every grid
    config: its mean over seeds with ± std bars on both axes, one colour per method, and
    each method's Pareto front drawn as the step it is (``section.fronts[measure]
    [method]``: indices into ``section.configs``).

    The step goes up first: with at least learning x a method reaches the forgetting of
    its next front point at or above x."""
    configs = section.configs
    fronts = section.fronts.get(measure, {})
    fig = go.Figure()
    methods = list(dict.fromkeys(c.method for c in configs))

    def xs(cs):
        return [100 * c.stats.irregular_accuracy.mean for c in cs]

    def ys(cs):
        return [scale * getattr(c.stats, measure).mean for c in cs]

    for i, m in enumerate(methods):
        color, meta = _method_look(m, i)
        pts = [c for c in configs if c.method == m]
        fig.add_trace(
            go.Scatter(
                x=xs(pts),
                y=ys(pts),
                error_x=dict(
                    type="data", array=[100 * c.stats.irregular_accuracy.std for c in pts]
                ),
                error_y=dict(
                    type="data", array=[scale * getattr(c.stats, measure).std for c in pts]
                ),
                mode="markers",
                name=m,
                meta=meta,
                legendgroup=m,
                marker=dict(size=11, color=color, opacity=0.8),
                text=[c.label for c in pts],
                hovertemplate="%{text}<br>irregular %{x:.1f}%<br>%{y:.2f}<extra></extra>",
            )
        )
        front = [configs[j] for j in fronts.get(m, [])]
        if len(front) > 1:
            fig.add_trace(
                go.Scatter(
                    x=xs(front),
                    y=ys(front),
                    mode="lines",
                    line=dict(color=color, width=3, shape="vh"),
                    name=f"{m} front",
                    meta=meta,
                    legendgroup=m,
                    hoverinfo="skip",
                )
            )
    fig.update_xaxes(title_text="irregular-verb accuracy (%) — learning")
    fig.update_yaxes(title_text=y_title)
    legend_below(fig)
    return style(fig, f"{y_title.split(' (')[0]} vs learning", height=520)


REPLAY_PANELS = (  # (figure, panel title, y-axis title): short, three panels share a row
    (lambda a: a.irregular_accuracy, "irregular accuracy", "accuracy (%)"),
    (lambda a: a.regular_accuracy, "regular accuracy", "accuracy (%)"),
    (lambda a: a.control_en_drift, "control English drift", "drift (%)"),
)


def replay(section: Replay) -> go.Figure:
    """Irregular accuracy, regular accuracy and control drift against the replay share,
    one line per method (mean over seeds, ± std bars)."""
    fig = make_subplots(rows=1, cols=len(REPLAY_PANELS), horizontal_spacing=0.1,
                        subplot_titles=[t for _, t, _ in REPLAY_PANELS])  # fmt: skip
    for m, entries in (("lora", section.lora), ("full", section.full)):
        if not entries:
            continue
        for col, (figure, _, _) in enumerate(REPLAY_PANELS, 1):
            fig.add_trace(
                go.Scatter(
                    x=[100 * e.replay for e in entries],
                    y=[100 * figure(e.stats).mean for e in entries],
                    error_y=dict(type="data", array=[100 * figure(e.stats).std for e in entries]),
                    mode="lines+markers",
                    name=m,
                    meta={"method": m, "run": m},
                    legendgroup=m,
                    showlegend=col == 1,
                    line=dict(width=3, color=method_color(m)),
                    marker=dict(size=9),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="replay share (%)")
    for col, (_, _, y_title) in enumerate(REPLAY_PANELS, 1):
        fig.update_yaxes(title_text=y_title, row=1, col=col)
    legend_below(fig, y=-0.25)
    return style(fig, "Replaying regular-verb pairs", height=480)
