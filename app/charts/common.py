"""What every chart shares: large fonts (the app is projected in a lecture room), one
colour per method, the layout each builder finishes with (its text escaped: plotly
renders ``<a href>``, ``<b>``, ``<br>`` in titles, legends, ticks and hover text, and the
names in a chart come from run records and files), and short layer names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from app.format import plotly_text

FONT_SIZE = 18
COLORS = {
    "full": "#d62728",
    "lora": "#1f77b4",
    "qlora": "#2ca02c",
    "base": "#7f7f7f",
    "nf4": "#2ca02c",
    "int4": "#ff7f0e",
    "fp4": "#9467bd",
}
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


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


def series_colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per label: the method's colour (full red, LoRA blue, QLoRA green) when
    each label starts with a different method, else distinct palette colours."""
    firsts = [label.split()[0] if label else "" for label in labels]
    if len(set(firsts)) == len(firsts) and all(f in COLORS for f in firsts):
        return {label: COLORS[f] for label, f in zip(labels, firsts, strict=True)}
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def short_layer(name: str) -> str:
    # "blocks.0.attn.q_proj" -> "L0 q_proj"
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return f"L{parts[1]} {parts[-1]}"
    return name
