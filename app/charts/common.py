"""What every chart shares: large fonts (the app is projected in a lecture room), one
colour per method, the layout each builder finishes with, and short layer names."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

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
    """The layout every chart ends with: large fonts, a white template, the title."""
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
