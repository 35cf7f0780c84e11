"""Charts of the Memory page: the breakdown by category and the 7B measurements.

Both draw memory in one binary unit (KiB, MiB or GiB, :func:`byte_unit`) that the page's
tables beside them use too, so a bar and its table cell read the same number."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go

from app.charts.common import (
    CATEGORY_PALETTE,
    legend_below,
    method_color,
    run_color,
    style,
)

# memory categories are neither methods nor metrics: fixed colours of the neutral palette
CATEGORY_COLORS = {
    "weights": CATEGORY_PALETTE[0],
    "nf4": CATEGORY_PALETTE[1],
    "lora": CATEGORY_PALETTE[3],
    "gradients": CATEGORY_PALETTE[4],
    "optimizer": CATEGORY_PALETTE[5],
    "activations": CATEGORY_PALETTE[9],
}
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
PREDICTED_COLOR = CATEGORY_PALETTE[2]  # a prediction is not a run: a neutral colour
PEFT_RUN = "measured peak (PEFT + bitsandbytes)"  # its run key: a shade of QLoRA's colour


def byte_unit(sizes: Iterable[float]) -> str:
    """The largest binary unit the biggest of ``sizes`` is at least one of ("MiB" for
    400 MiB and 900 KiB alike, so both read as numbers below 1,024 of one unit)."""
    top = max((abs(float(s)) for s in sizes), default=0.0)
    unit = "B"
    for name, size in UNITS.items():
        if top >= size:
            unit = name
    return unit


def in_unit(n: float, unit: str) -> str:
    """``n`` bytes in ``unit`` with three significant digits: "4.04 GiB", "0.0156 GiB",
    "1,234 MiB"."""
    v = float(n) / UNITS[unit]
    if v == 0:
        text = "0"
    elif abs(v) >= 1000:
        text = f"{v:,.0f}"
    else:
        digits = max(0, 2 - math.floor(math.log10(abs(v))))
        text = f"{v:.{digits}f}"
    return f"{text} {unit}"


def source_totals(rows: Sequence[Mapping]) -> dict[str, int]:
    """Each source's total bytes over its categories (what a stacked bar reaches)."""
    out: dict[str, int] = {}
    for row in rows:
        out[row["source"]] = out.get(row["source"], 0) + int(row["bytes"])
    return out


def memory_stacked(
    rows: Sequence[Mapping], title: str = "Training memory", unit: str | None = None
) -> go.Figure:
    """Stacked horizontal bars, one bar per ``row["source"]`` (e.g. "LoRA predicted"), one
    colour per ``row["category"]``, in ``unit`` (default: :func:`byte_unit` of the longest
    bar); rows as :func:`app.format.breakdown_table` gives them. Rows that all carry
    ``run`` and ``kind`` ("predicted", "measured") are labelled on two levels, the run
    beside its kinds. Horizontal, so that run labels read across, however many runs."""
    unit = unit or byte_unit(source_totals(rows).values())
    sources = list(dict.fromkeys(row["source"] for row in rows))
    y: list = sources
    if rows and all("run" in row and "kind" in row for row in rows):
        first = {row["source"]: row for row in reversed(rows)}
        y = [[first[s]["run"] for s in sources], [first[s]["kind"] for s in sources]]
    categories = list(dict.fromkeys(row["category"] for row in rows))
    fig = go.Figure()
    for i, cat in enumerate(categories):
        by_source = {row["source"]: row for row in rows if row["category"] == cat}
        sizes = [by_source[s]["bytes"] if s in by_source else 0 for s in sources]
        fig.add_trace(
            go.Bar(
                y=y,
                x=[b / UNITS[unit] for b in sizes],
                orientation="h",
                name=cat,
                marker_color=CATEGORY_COLORS.get(cat, CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)]),
                customdata=[in_unit(b, unit) for b in sizes],
                hovertemplate=cat + ": %{customdata}<extra></extra>",
                meta={"category": cat},
            )
        )
    fig.update_layout(barmode="stack", legend=dict(traceorder="normal"))
    fig.update_yaxes(
        title_text="run and source" if y is not sources else "method",
        autorange="reversed",  # the first run on top, as in the table
    )
    fig.update_xaxes(title_text=f"memory ({unit})", rangemode="tozero")
    height = 230 + 42 * len(sources)
    legend_below(fig, y=-85 / (height - 130))  # 85 px under the plot: below the axis title
    return style(fig, title, height=height)


def scaling_bars(
    rows: Sequence[Mapping], title: str = "7B QLoRA: measured peak vs prediction"
) -> go.Figure:
    """Grouped bars in GiB, one group per configuration (``row["label"]``): our measured
    peak (QLoRA's colour), the prediction (float32 LoRA + Adam, a neutral colour: it is
    no run) and, when any row has it, the PEFT + bitsandbytes peak (a shade of QLoRA's
    colour, hatched); rows as :func:`minituner.scale.scaling.scaling_rows` gives them."""
    labels = [row["label"] for row in rows]
    series = [
        ("measured peak (ours)", "peak_bytes", method_color("qlora"), "", "ours"),
        ("predicted (fp32 LoRA + Adam)", "predicted_mixed_bytes", PREDICTED_COLOR, "", None),
    ]
    if any(row.get("peft_peak_bytes") is not None for row in rows):
        series.append((PEFT_RUN, "peft_peak_bytes", run_color("qlora", PEFT_RUN), "/", PEFT_RUN))
    fig = go.Figure()
    for name, key, color, hatch, run in series:
        gib = [row[key] / UNITS["GiB"] if row.get(key) is not None else math.nan for row in rows]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=gib,
                name=name,
                marker=dict(color=color, pattern_shape=hatch),
                text=["" if math.isnan(v) else f"{v:.2f}" for v in gib],
                textposition="outside",
                hovertemplate="%{x}<br>" + name + ": %{y:.3f} GiB<extra></extra>",
                meta={"method": "qlora", "run": run} if run else {"series": "predicted"},
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="LoRA rank and targets")
    fig.update_yaxes(title_text="peak memory (GiB)", rangemode="tozero")
    legend_below(fig)
    return style(fig, title, height=500)
