"""Charts of the Spectrum page: singular values, energy and stable rank of ΔW."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import (
    CATEGORY_PALETTE,
    METHOD_COLORS,
    METRIC_NAMES,
    TICK_COLOR,
    TICK_FONT_SIZE,
    legend_below,
    metric_color,
    run_color,
    short_layer,
    style,
)

NUMERICAL_ZERO = 1e-6  # singular values below this share of σ₁ are rounding noise
# Labels are plain Unicode: plotly shows "_F" and "^2" raw, so the squared Frobenius
# norm ‖ΔW‖²_F is written as the sum of the squared singular values, Σσᵢ², which it is.
STABLE_RANK = "stable rank Σσᵢ² / σ₁² (directions)"


RunKey = tuple[str, str]  # (method, run id): what a run's colour is chosen by


def _run_looks(
    labels: Sequence[str], runs: Mapping[str, RunKey] | None
) -> dict[str, tuple[str, dict]]:
    """``{label: (colour, meta)}``: a run in a shade of its method's colour picked by its
    run id (:func:`run_color`), with the trace meta the browser test reads. ``runs[label]
    = (method, run id)``; a label not in it is read as a run label (its first word the
    method, the label the key); one with no method gets a neutral colour."""
    out = {}
    for i, label in enumerate(labels):
        method, key = (runs or {}).get(label) or (label.split(" ", 1)[0].lower(), label)
        if method in METHOD_COLORS:
            out[label] = (run_color(method, key), {"method": method, "run": key})
        else:
            out[label] = (CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)], {"run": label})
    return out


def short_run(label: str) -> str:
    """A run label's method part and run id ("full · 1f93a7"): two long labels side by
    side over half-width panels would run into each other."""
    parts = label.split(" · ")
    return f"{parts[0]} · {parts[-1]}" if len(parts) > 2 else label


DASHES = ("solid", "dash", "dot", "dashdot")  # runs told apart by line as well as colour
SYMBOLS = ("circle", "square", "diamond", "triangle-up")


def spectrum_side_by_side(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    normalized: bool = False,
    floor: float = NUMERICAL_ZERO,
) -> go.Figure:
    """Singular values of ΔW on a log scale, one panel per run (e.g. full | LoRA), one
    line per layer: ``panels[run_label][layer] = singular values``.

    Values at or below ``floor`` × σ₁ are float32 rounding of an exactly low-rank product
    (a rank-r LoRA update has only r non-zero singular values) and are not drawn."""
    labels = list(panels) or [""]
    fig = make_subplots(
        rows=1,
        cols=len(labels),
        subplot_titles=[short_run(label) for label in labels],
        shared_yaxes=True,
        horizontal_spacing=0.06,
    )
    layers = sorted({layer for p in panels.values() for layer in p})
    colors = {layer: CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)] for i, layer in enumerate(layers)}
    for col, label in enumerate(labels, start=1):
        for layer, sv in panels.get(label, {}).items():
            y = [float(s) for s in sv]
            top = y[0] if y else 0.0
            if normalized and top > 0:
                y = [s / top for s in y]
                top = 1.0
            # a log axis cannot show 0; rounding noise is not a direction of the update
            pts = [(i + 1, s) for i, s in enumerate(y) if s > 0 and s > floor * top]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines",
                    name=short_layer(layer),
                    legendgroup=layer,
                    showlegend=col == 1 or layer not in panels.get(labels[0], {}),
                    line=dict(width=2.5, color=colors[layer]),
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(type="log", exponentformat="power", dtick=1)  # 10⁻³, 10⁻², ...
    y_title = "σᵢ / σ₁ (share of the largest)" if normalized else "singular value σᵢ (weight units)"
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_xaxes(title_text="index i (largest first)", type="log", dtick="D2")
    return style(fig, "Singular values of ΔW per layer", height=520)


def cumulative_energy(
    series: Mapping[str, Sequence[float]],
    max_k: int | None = None,
    runs: Mapping[str, RunKey] | None = None,
) -> go.Figure:
    """Share of the energy Σσᵢ² (the squared Frobenius norm of ΔW) held by the top-k
    singular values: ``series[label] = energies``, ``runs[label] = (method, run id)``
    (else read from the label). Each run a dash of its own as well as its
    colour, so a line that lies on another still shows."""
    fig = go.Figure()
    looks = _run_looks(list(series), runs)
    for i, (label, energy) in enumerate(series.items()):
        e = [float(v) for v in energy][: max_k or None]
        color, meta = looks[label]
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(e) + 1)),
                y=[100 * v for v in e],
                mode="lines+markers",
                name=label,
                line=dict(width=3, color=color, dash=DASHES[i % len(DASHES)]),
                marker=dict(size=8, symbol=SYMBOLS[i % len(SYMBOLS)], maxdisplayed=24),
                meta=meta,
            )
        )
    fig.add_hline(y=90, line_dash="dash", line_color="#555", annotation_text="90% of Σσᵢ²")
    fig.update_xaxes(title_text="top-k singular values (k)", type="log", dtick="D2")
    fig.update_yaxes(title_text="cumulative energy (% of Σσᵢ²)", range=[0, 102], dtick=20)
    legend_below(fig)
    return style(fig, "Cumulative energy of ΔW", height=520)


def stable_rank_bars(
    ranks: Mapping[str, Mapping[str, float]], runs: Mapping[str, RunKey] | None = None
) -> go.Figure:
    """Stable rank per layer, one bar group per run: ``ranks[run_label][layer] = value``,
    ``runs[run_label] = (method, run id)`` (else read from the label)."""
    fig = go.Figure()
    looks = _run_looks(list(ranks), runs)
    for label, per_layer in ranks.items():
        layers = list(per_layer)
        color, meta = looks[label]
        fig.add_trace(
            go.Bar(
                x=[short_layer(x) for x in layers],
                y=[float(per_layer[x]) for x in layers],
                name=label,
                marker_color=color,
                meta=meta,
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=STABLE_RANK, rangemode="tozero")
    fig.update_xaxes(title_text="layer and matrix", tickangle=-45)
    legend_below(fig, y=-0.35)
    return style(fig, "Stable rank of ΔW per layer", height=560)


def truncation_curve(
    k: Sequence[int | str],
    accuracy: Sequence[float],
    drift: Sequence[float] | None = None,
) -> go.Figure:
    """Accuracy (and drift) when full fine-tuning's ΔW is cut to its top-k singular
    directions; ``k`` may end with "full"."""
    xs = [str(v) for v in k]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[100 * float(a) for a in accuracy],
            mode="lines+markers",
            name=METRIC_NAMES["irregular_accuracy"],
            line=dict(width=3, color=metric_color("irregular_accuracy")),
            marker=dict(size=10),
            meta={"metric": "irregular_accuracy"},
        ),
        secondary_y=False,
    )
    if drift is not None:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[100 * float(d) for d in drift],
                mode="lines+markers",
                name=METRIC_NAMES["control_drift"],
                line=dict(width=3, dash="dot", color=metric_color("control_drift")),
                marker=dict(size=10, symbol="diamond"),
                meta={"metric": "control_drift"},
            ),
            secondary_y=True,
        )
    fig.update_xaxes(title_text="rank k kept of full fine-tuning's ΔW", type="category")
    fig.update_yaxes(
        title_text=METRIC_NAMES["irregular_accuracy"], range=[0, 101], dtick=20, secondary_y=False
    )
    fig.update_yaxes(
        title_text=METRIC_NAMES["control_drift"],
        tickmode="auto",  # plotly would line the ticks up with the left grid: 0.85, 1.79
        secondary_y=True,
        showgrid=False,
        rangemode="tozero",
    )
    legend_below(fig)
    return style(fig, "Truncating full fine-tuning's update to rank k")


def subspace_heatmaps(grids: Mapping[str, Sequence[Sequence[float]]], layer: str) -> go.Figure:
    """φ(i, j) of one layer as heatmaps, one row per comparison:
    ``grids[label][i-1][j-1] = φ(A, B, i, j)``, i the top-i directions of A (rows), j those
    of B (columns). One colour scale, 0 (orthogonal) to 1 (contained), for every panel."""
    labels = list(grids) or [""]
    fig = make_subplots(
        rows=len(labels), cols=1, subplot_titles=labels, vertical_spacing=0.5 / len(labels)
    )
    for row, label in enumerate(labels, start=1):
        z = [[float(v) for v in r] for r in grids.get(label, [])]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(1, len(z[0]) + 1)) if z else [],
                y=list(range(1, len(z) + 1)),
                zmin=0.0,
                zmax=1.0,
                colorscale="Viridis",
                coloraxis="coloraxis",
                hovertemplate="i=%{y}, j=%{x}: φ=%{z:.3f}<extra></extra>",
                name=label,
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text="i (top of A)", autorange="reversed", row=row, col=1)
        fig.update_xaxes(title_text="top-j directions of B (j)", row=row, col=1)
    fig.update_layout(
        coloraxis=dict(
            colorscale="Viridis",
            cmin=0.0,
            cmax=1.0,
            colorbar=dict(
                title=dict(text="φ (0 to 1)"),
                dtick=0.2,
                tickfont=dict(size=TICK_FONT_SIZE, color=TICK_COLOR),
            ),
        )
    )
    title = f"Subspace similarity φ(i, j), {short_layer(layer)}"
    return style(fig, title, height=170 + 230 * len(labels))
