"""Charts of the NF4 page: value sets, quantization errors and bits per parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import COLORS, PALETTE, short_layer, style


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
            line=dict(width=3, color="#555"),
            fill="tozeroy",
            fillcolor="rgba(120,120,120,0.15)",
        ),
        row=1,
        col=1,
    )
    names = list(codebooks)
    for i, name in enumerate(names):
        values = sorted({float(v) for v in codebooks[name]})
        color = COLORS.get(name, PALETTE[i % len(PALETTE)])
        if i == 0:  # the first set also as lines over the density
            for v in values:
                fig.add_vline(x=v, line_color=color, line_width=1.5, opacity=0.6, row=1, col=1)
        fig.add_trace(
            go.Scatter(
                x=values,
                y=[name] * len(values),
                mode="markers",
                name=f"{name} ({len(values)} values)",
                marker=dict(size=14, color=color, line=dict(width=1, color="white")),
            ),
            row=2,
            col=1,
        )
    fig.update_xaxes(title_text="value / block absmax", range=[-1.15, 1.15], row=2, col=1)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_yaxes(categoryorder="array", categoryarray=names[::-1], row=2, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.18))
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
        color = COLORS.get(name, PALETTE[i % len(PALETTE)])
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=counts,
                mode="lines",
                line=dict(shape="hvh", width=2.5, color=color),
                fill="tozeroy",
                opacity=0.5,
                name=name,
            )
        )
    fig.update_xaxes(title_text="dequantized − original weight")
    fig.update_yaxes(title_text="weights per bin")
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
        fig.add_trace(
            go.Bar(
                x=[short_layer(row["layer"].removesuffix(".weight")) for row in sel],
                y=[float(row["rel_rmse"]) for row in sel],
                name=m,
                marker_color=COLORS.get(m, PALETTE[i % len(PALETTE)]),
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="RMSE / weight std")
    fig.update_xaxes(tickangle=-45)
    return style(fig, "Error per layer (lower is better)")


def bits_bars(bits: Mapping[str, float], title: str = "Storage per parameter") -> go.Figure:
    """Bits per parameter of each storage format: ``bits[label] = bits``."""
    labels = list(bits)
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[float(bits[k]) for k in labels],
            text=[f"{float(bits[k]):.3f}" for k in labels],
            textposition="outside",
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(labels))],
        )
    )
    fig.update_yaxes(title_text="bits per parameter")
    return style(fig, title)
