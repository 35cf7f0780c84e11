"""Charts of the NF4 page: value sets, quantization errors and bits per parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import CATEGORY_PALETTE, FORMAT_COLORS, legend_below, short_layer, style

FORMAT_NAMES = {"nf4": "NF4", "int4": "int4", "fp4": "FP4"}
DENSITY_COLOR = "#555555"  # the normal distribution: neither a format nor a method
DASHES = ("solid", "dash", "dot", "dashdot")


def _look(name: str, i: int) -> tuple[str, str, dict]:
    """A 4-bit format's display name, colour (FORMAT_COLORS; NF4 is QLoRA's) and trace
    meta; a name that is no known format keeps its name and gets a neutral colour."""
    key = name.lower()
    if key in FORMAT_COLORS:
        return FORMAT_NAMES.get(key, name), FORMAT_COLORS[key], {"format": key}
    return name, CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)], {}


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def nf4_codebook(
    codebooks: Mapping[str, Sequence[float]],
    scale: float,
) -> go.Figure:
    """The 4-bit value sets against the normal distribution they quantize.

    Values live in [-1, 1] (a block divided by its absmax); ``scale`` maps that range
    back onto a standard normal (the normal quantile NF4's outermost value stands for),
    so the curve is N(0, 1/scale²) drawn on the same axis. Each set is a row of markers.
    """
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.62, 0.38],
        shared_xaxes=True,
        vertical_spacing=0.05,
    )
    xs = [i / 200 for i in range(-230, 231)]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[_normal_pdf(x * scale) * scale for x in xs],
            mode="lines",
            name="normal weights (density)",
            line=dict(width=3, color=DENSITY_COLOR),
            fill="tozeroy",
            fillcolor="rgba(120,120,120,0.15)",
        ),
        row=1,
        col=1,
    )
    names = list(codebooks)
    for i, name in enumerate(names):
        values = sorted({float(v) for v in codebooks[name]})
        shown, color, meta = _look(name, i)
        if i == 0:  # the first set also as lines over the density
            for v in values:
                fig.add_vline(x=v, line_color=color, line_width=1.5, opacity=0.6, row=1, col=1)
        fig.add_trace(
            go.Scatter(
                x=values,
                y=[shown] * len(values),
                mode="markers",
                name=f"{shown} ({len(values)} values)",
                marker=dict(size=14, color=color, line=dict(width=1, color="white")),
                meta=meta,
            ),
            row=2,
            col=1,
        )
    fig.update_xaxes(
        title_text="value / block absmax (no unit)", range=[-1.15, 1.15], dtick=0.25, row=2, col=1
    )
    fig.update_yaxes(title_text="probability density", row=1, col=1)
    shown_names = [_look(n, i)[0] for i, n in enumerate(names)]
    fig.update_yaxes(
        title_text="4-bit format", categoryorder="array", categoryarray=shown_names[::-1],
        row=2, col=1,
    )  # fmt: skip
    legend_below(fig, y=-0.18)
    return style(fig, "4-bit value sets against the normal distribution", height=600)


def error_histograms(
    errors: Mapping[str, Sequence[float]], title: str = "", bins: int = 101
) -> go.Figure:
    """Histograms of per-weight quantization errors on shared bins, one outline per method
    (binned here, so a large layer does not ship every weight to the browser)."""
    arrays = {name: np.asarray(err, dtype=np.float64).ravel() for name, err in errors.items()}
    finite = [a[np.isfinite(a)] for a in arrays.values() if a.size]
    lim = max((float(np.abs(a).max()) for a in finite if a.size), default=1.0) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for i, (name, a) in enumerate(arrays.items()):
        counts, _ = np.histogram(a, bins=edges)
        shown, color, meta = _look(name, i)
        fig.add_trace(  # outlines with their own dash, no fill: no format hides another
            go.Scatter(
                x=centers,
                y=counts,
                mode="lines",
                line=dict(shape="hvh", width=3, color=color, dash=DASHES[i % len(DASHES)]),
                name=shown,
                meta=meta,
            )
        )
    fig.update_xaxes(
        title_text="error: dequantized − original weight (weight units)", exponentformat="power"
    )
    fig.update_yaxes(title_text="weights per bin (count)", rangemode="tozero")
    legend_below(fig)
    return style(fig, title or "Quantization error")


def error_rmse_bars(rows: Sequence[Mapping]) -> go.Figure:
    """Relative RMSE per layer and method (rows of ``quantization_error_report``)."""
    fig = go.Figure()
    methods: list[str] = []
    for row in rows:
        if row["method"] not in methods:
            methods.append(row["method"])
    for i, m in enumerate(methods):
        sel = [row for row in rows if row["method"] == m]
        shown, color, meta = _look(m, i)
        fig.add_trace(
            go.Bar(
                x=[short_layer(row["layer"].removesuffix(".weight")) for row in sel],
                y=[float(row["rel_rmse"]) for row in sel],
                name=shown,
                marker_color=color,
                meta=meta,
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="RMSE / weight std (ratio)", rangemode="tozero")
    fig.update_xaxes(title_text="layer and matrix", tickangle=-45)
    legend_below(fig, y=-0.4)
    return style(fig, "Error per layer (lower is better)")


def bits_bars(bits: Mapping[str, float], title: str = "Storage per parameter") -> go.Figure:
    """Bits per parameter of each storage format: ``bits[label] = bits``."""
    labels = list(bits)
    colors = [  # an NF4 format in NF4's colour (QLoRA's), the others neutral
        _look(k.split(",")[0].split()[0], i)[1] for i, k in enumerate(labels)
    ]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[float(bits[k]) for k in labels],
            text=[f"{float(bits[k]):.3g}" for k in labels],
            textposition="outside",
            marker_color=colors,
            name="bits per parameter",
        )
    )
    fig.update_xaxes(title_text="storage format")
    fig.update_yaxes(title_text="bits per parameter (bits)", dtick=8, rangemode="tozero")
    return style(fig, title)
