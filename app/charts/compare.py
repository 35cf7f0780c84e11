"""Charts of the Compare page (the loss curve also heads the Overview page), and the one
rule for drawing runs that the Completions and Forgetting charts share:
:func:`run_looks` gives each run its method's colour (a shade of it where several runs of
one method are drawn, picked from the run's own id, so adding or removing runs never
recolours the others) and the ``meta`` the browser test reads from the DOM."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import plotly.graph_objects as go

from app.charts.common import (
    CATEGORY_PALETTE,
    METHOD_COLORS,
    legend_below,
    method_color,
    run_color,
    style,
)
from minituner.store.records import EvalPoint

# label -> (method, run id): what a trace of a run stands for
Runs = Mapping[str, tuple[str, str]]


def method_of(label: str) -> str | None:
    """The method a run label names by its first word ("lora r=8 …", "full · …",
    "base model"), or None."""
    words = label.split()
    first = words[0].lower() if words else ""
    return first if first in METHOD_COLORS else None


def run_looks(labels: Sequence[str], runs: Runs | None = None) -> dict[str, tuple[str, dict]]:
    """``{label: (colour, meta)}`` for the runs of one chart.

    ``runs[label] = (method, run id)``; a label not in it is read by :func:`method_of`
    (its run key is then the label). The colour is the run's shade of its method's colour
    (common.run_color, keyed by the run id), whatever other runs the chart has, so a run
    looks the same here as on every other page. ``meta`` is
    ``{"method": …, "run": …}``; a label naming no method gets a neutral colour from a
    hash of the label and ``{"run": label}``."""
    keys: dict[str, tuple[str | None, str]] = {}
    for label in labels:
        method, rid = (runs or {}).get(label) or (method_of(label), label)
        keys[label] = (method, rid)
    out = {}
    for label, (method, rid) in keys.items():
        if method is None:
            h = hashlib.sha256(label.encode("utf-8", "replace")).digest()[0]
            out[label] = (CATEGORY_PALETTE[h % len(CATEGORY_PALETTE)], {"run": label})
            continue
        color = method_color("base") if method == "base" else run_color(method, rid)
        out[label] = (color, {"method": method, "run": rid})
    return out


def loss_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "Training loss",
    log_y: bool = False,
    runs: Runs | None = None,
) -> go.Figure:
    """One line per run: ``series[label] = (steps, losses)`` (``runs``: see
    :func:`run_looks`)."""
    fig = go.Figure()
    looks = run_looks(list(series), runs)
    for label, (steps, losses) in series.items():
        color, meta = looks[label]
        fig.add_trace(
            go.Scatter(
                x=list(steps),
                y=list(losses),
                mode="lines",
                name=label,
                meta=meta,
                line=dict(width=3, color=color),
            )
        )
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(
        title_text="loss (nats per answer character)", type="log" if log_y else "linear"
    )
    legend_below(fig)
    return style(fig, title, height=520)


def eval_curves(
    series: Mapping[str, Sequence[EvalPoint]],
    figure: Callable[[EvalPoint], float],
    title: str,
    y_title: str,
    percent: bool = True,
    runs: Runs | None = None,
) -> go.Figure:
    """One line per run of an evaluation figure over steps (``series[label] = evals``,
    ``figure(e)`` the figure of one evaluation; ``runs``: see :func:`run_looks`)."""
    fig = go.Figure()
    scale = 100.0 if percent else 1.0
    looks = run_looks(list(series), runs)
    for label, evals in series.items():
        color, meta = looks[label]
        fig.add_trace(
            go.Scatter(
                x=[e.step for e in evals],
                y=[scale * figure(e) for e in evals],
                mode="lines+markers",
                name=label,
                meta=meta,
                line=dict(width=3, color=color),
                marker=dict(size=8),
            )
        )
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text=y_title)
    legend_below(fig)
    return style(fig, title, height=520)
