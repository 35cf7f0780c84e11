"""What every chart shares: large fonts (the app is projected in a lecture room), one
colour per method, the layout each builder finishes with (its text escaped: plotly
renders ``<a href>``, ``<b>``, ``<br>`` in titles, legends, ticks and hover text, and the
names in a chart come from run records and files), and short layer names."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from app.format import plotly_text

FONT_SIZE = 18
TICK_FONT_SIZE = 16  # projected: ticks at 14 px or more, dark (not plotly's light grey)
TICK_COLOR = "#222222"

# One visual language (issue 24). Two disjoint sets of colours, so a colour means one
# thing on every page: a METHOD colour (full, LoRA, QLoRA, base) wherever runs or methods
# are compared, and a METRIC colour wherever one run's measures are drawn (Train, Teach).
# A run is drawn in a shade of its method's colour chosen from the run's own key
# (:func:`run_color`), never from the order of the runs in a chart.
METHOD_COLORS = {
    "full": "#D55E00",  # vermillion
    "lora": "#0072B2",  # blue
    "qlora": "#AA3377",  # purple
    "base": "#8C8C8C",  # grey
}
METRIC_COLORS = {
    "loss": "#222222",  # near black
    "irregular_accuracy": "#009E73",  # bluish green: the task
    "regular_accuracy": "#E69F00",  # orange: the cost on the control verbs
    "control_drift": "#882255",  # wine: control-English perplexity drift
    "spanish_drift": "#CC79A7",  # pink: control-Spanish perplexity drift
}
METRIC_NAMES = {
    "loss": "training loss",
    "irregular_accuracy": "irregular-verb accuracy (%)",
    "regular_accuracy": "regular-verb accuracy (%)",
    "control_drift": "control English drift (%)",
    "spanish_drift": "control Spanish drift (%)",
}
# the 4-bit formats on the NF4 page: NF4 is QLoRA's format and keeps QLoRA's colour
FORMAT_COLORS = {"nf4": METHOD_COLORS["qlora"], "int4": "#56B4E9", "fp4": "#117733"}
# categories that are neither methods nor metrics (layers, verbs, targets): a neutral
# qualitative palette with none of the method or metric colours in it
CATEGORY_PALETTE = (
    "#332288",
    "#44AA99",
    "#999933",
    "#DDCC77",
    "#661100",
    "#6699CC",
    "#117733",
    "#88CCEE",
    "#AA4499",
    "#555555",
)
_SHADES = (0.0, -0.2, 0.25, -0.35, 0.4, -0.1, 0.12)  # <0 darker, >0 lighter: still the method


def _mix(color: str, amount: float) -> str:
    """``color`` moved toward black (amount < 0) or white (amount > 0)."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    out = [round(c + (target - c) * abs(amount)) for c in rgb]
    return "#" + "".join(f"{c:02X}" for c in out)


def method_color(method: str) -> str:
    """The fixed colour of a method ("full", "lora", "qlora", "base"); a label such as
    "LoRA r=8 ..." or "full ..." is read by its first word."""
    key = method.split()[0].lower() if method.strip() else ""
    if key not in METHOD_COLORS:
        raise KeyError(f"no colour for method {method!r}")
    return METHOD_COLORS[key]


def run_color(method: str, run_key: str) -> str:
    """A run's colour: a shade of its method's colour picked by a stable hash of the
    run's own key (run id or label), so adding or removing other runs never changes it."""
    digest = hashlib.sha256(run_key.encode("utf-8", "replace")).digest()
    return _mix(method_color(method), _SHADES[digest[0] % len(_SHADES)])


def run_colors(runs: Mapping[str, str]) -> dict[str, str]:
    """``{run key: method}`` -> ``{run key: colour}``: each run a shade of its method's
    colour, by :func:`run_color`, so a run keeps its colour on every page and whichever
    other runs are drawn beside it. Key runs by their run id where there is one."""
    return {key: run_color(method, key) for key, method in runs.items()}


def metric_color(metric: str) -> str:
    """The fixed colour of a measure (see METRIC_COLORS)."""
    return METRIC_COLORS[metric]


def style(fig: go.Figure, title: str = "", height: int = 460) -> go.Figure:
    """The layout every chart ends with: large fonts, a white template, the title; every
    text of the figure shown as text (:func:`escape_text`)."""
    fig.update_layout(
        title=dict(text=title, font=dict(size=FONT_SIZE + 4)) if title else None,
        font=dict(size=FONT_SIZE),
        template="plotly_white",
        height=height,
        margin=dict(l=70, r=30, t=70 if title else 30, b=60),
        legend=dict(font=dict(size=FONT_SIZE - 2)),
        hoverlabel=dict(font=dict(size=FONT_SIZE - 2)),
    )
    axis_look = dict(
        tickfont=dict(size=TICK_FONT_SIZE, color=TICK_COLOR),
        title_font=dict(size=FONT_SIZE, color=TICK_COLOR),
        automargin=True,
    )
    fig.update_xaxes(**axis_look)
    fig.update_yaxes(**axis_look)
    fig.update_annotations(font_size=FONT_SIZE)
    return escape_text(fig)


# what a trace shows as text: its legend name, labels, tick categories and hover text
_TRACE_TEXT = ("name", "text", "hovertext", "x", "y", "customdata", "labels")


def _escaped(v):
    if isinstance(v, str):
        return plotly_text(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_escaped(x) for x in v)
    if isinstance(v, np.ndarray) and v.dtype.kind in "OUS":
        return np.array(_escaped(v.tolist()), dtype=object)
    return v


def escape_text(fig: go.Figure) -> go.Figure:
    """Every text of ``fig`` (title, subplot titles and other annotations, axis titles
    and tick texts, legend title, trace names, labels, categories and hover texts)
    through app.format.plotly_text, in place, so that plotly shows it as it is; the hover
    templates are the app's own markup and stay. Called once, by :func:`style`."""
    for trace in fig.data:
        for prop in _TRACE_TEXT:
            if prop in trace._valid_props and trace[prop] is not None:
                trace[prop] = _escaped(trace[prop])
        for prop in ("legendgrouptitle", "colorbar"):
            part = trace[prop] if prop in trace._valid_props else None
            if prop == "colorbar" and part is not None:
                part = part.title
            if part is not None and part.text:
                part.text = plotly_text(part.text)
    layout = fig.layout
    for part in (layout.title, layout.legend.title):
        if part.text:
            part.text = plotly_text(part.text)
    for a in layout.annotations:
        if a.text:
            a.text = plotly_text(a.text)

    def axis(ax) -> None:
        if ax.title.text:
            ax.title.text = plotly_text(ax.title.text)
        if ax.ticktext is not None:
            ax.ticktext = _escaped(ax.ticktext)

    fig.for_each_xaxis(axis)
    fig.for_each_yaxis(axis)
    return fig


def legend_below(fig: go.Figure, y: float = -0.22) -> go.Figure:
    """A horizontal legend under the plot: run labels are long, and a side legend would
    squeeze the plot on a projector."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=y, xanchor="left", x=0))
    return fig


def short_layer(name: str) -> str:
    # "blocks.0.attn.q_proj" -> "L0 q_proj"
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return f"L{parts[1]} {parts[-1]}"
    return name
