"""Small inline-SVG charts: the Train and Teach pages' live panel and stored runs.

Why SVG and not plotly there: the live panel is redrawn from a JSON feed in every
watching tab (app/live.py, app/feed.py); plain markup is built in well under a
millisecond and drawn by the browser without a chart library.

Why each chart is one small panel sized to be drawn at about 1:1: an SVG's text scales
with its ``viewBox``, so a 1,120-unit chart squeezed into a 560 px column shows 7 px
ticks. Each panel here is about 400 units wide, scales to its box (``width="100%"``,
the height follows the ``viewBox``) and sits in a wrapping row (:func:`flow`): two
panels side by side in a column of 820 px or more (ticks stay at 14 px or larger),
one above the other in a narrower one. Nothing has a fixed pixel width, so nothing
reaches beyond its column.

Every chart follows the visual language of app/charts/common.py: dark ticks at nice
values (steps of 1, 2, 2.5 or 5 × 10^k), a title on every axis (``<g data-axis>`` holding
a ``.axis-title``; the layout test reads them), a legend naming each line, and each line
says what it stands for (``data-metric`` …) in its one colour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from app.charts.common import TICK_COLOR

FONT = 16  # ticks and legend, in SVG units (drawn at about 1:1, never below 14 px)
TITLE_FONT = 17
GRID = "#e4e4e4"
AXIS = "#444444"
LEGEND_ROW = 22


def nice_step(span: float, max_ticks: int = 6) -> float:
    """The tick step for ``span``: the smallest of 1, 2, 2.5, 5 × 10^k giving at most
    ``max_ticks`` ticks."""
    if not math.isfinite(span) or span <= 0:
        return 1.0
    raw = span / max(1, max_ticks - 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def nice_range(lo: float, hi: float, max_ticks: int = 6) -> tuple[float, float, list[float]]:
    """``lo``..``hi`` widened to whole tick steps, and the ticks: (lo, hi, ticks), at most
    ``max_ticks`` of them (the widening can add one: then the next nice step is taken)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo = lo if math.isfinite(lo) else 0.0
        hi = lo + 1
    step = nice_step(hi - lo, max_ticks)
    while True:
        a, b = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if b - a + 1 <= max_ticks:
            break
        step = nice_step(step * 1.0001 * (max_ticks - 1), max_ticks)  # the next nice step
    ticks = [round(k * step, 12) for k in range(a, b + 1)]
    return ticks[0], ticks[-1], ticks


def step_ticks(total: int, max_ticks: int = 6) -> list[int]:
    """Whole-step ticks from 0 to ``total`` at a nice step (the last at or below it)."""
    step = max(1, int(round(nice_step(max(1, total), max_ticks))))
    while math.floor(total / step) + 1 > max_ticks + 1:  # 2.5 rounded down: too many
        step *= 2
    return list(range(0, total + 1, step))


def fmt_tick(v: float, step: float) -> str:
    """A tick label with as many decimals as the step needs (0.25 -> 2, 2.5 -> 1, 20 -> 0)."""
    decimals = next(d for d in range(10) if abs(round(step, d) - step) <= 1e-9 * max(1, step))
    text = f"{v:,.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text


@dataclass(frozen=True)
class Axis:
    """One axis: its range, ticks and title (units in the title)."""

    lo: float
    hi: float
    ticks: Sequence[float]
    title: str
    step: float = 1.0

    @classmethod
    def nice(cls, lo: float, hi: float, title: str, max_ticks: int = 6) -> Axis:
        lo, hi, ticks = nice_range(lo, hi, max_ticks)
        return cls(lo, hi, ticks, title, ticks[1] - ticks[0] if len(ticks) > 1 else 1.0)

    @classmethod
    def steps(cls, total: int, title: str = "step", max_ticks: int = 6) -> Axis:
        ticks = step_ticks(max(1, int(total)), max_ticks)
        return cls(0.0, float(max(1, int(total))), ticks, title, 1.0)


@dataclass(frozen=True)
class Line:
    """One line of a chart: points (x, y), colour, legend name, what it stands for (the
    ``data-*`` attributes, e.g. ``{"metric": "loss"}``), and its look."""

    points: Sequence[tuple[float, float]]
    color: str
    name: str
    data: Mapping[str, str] = field(default_factory=dict)
    dash: bool = False
    markers: bool = True
    width: float = 3
    right: bool = False  # on the right-hand axis
    css: str = "series"


@dataclass(frozen=True)
class Box:
    """A panel's size and margins, in SVG units."""

    width: int = 420
    height: int = 300
    left: int = 62
    right: int = 18
    top: int = 40
    bottom: int = 52


def _attrs(data: Mapping[str, str]) -> str:
    return "".join(f' data-{k}="{escape(str(v))}"' for k, v in data.items())


def _legend_rows(lines: Sequence[Line], width: float) -> list[list[Line]]:
    rows: list[list[Line]] = [[]]
    used = 0.0
    for ln in lines:
        need = 40 + 0.56 * FONT * len(ln.name) + 18
        if rows[-1] and used + need > width:
            rows.append([])
            used = 0.0
        rows[-1].append(ln)
        used += need
    return rows


def legend_height(lines: Sequence[Line], box: Box) -> int:
    """The height the legend of ``lines`` needs under a panel of ``box``'s width."""
    return LEGEND_ROW * len(_legend_rows(lines, box.width - 16)) if lines else 0


def panel(
    key: str,
    title: str,
    x: Axis,
    y: Axis,
    lines: Sequence[Line],
    y2: Axis | None = None,
    box: Box = Box(),
    legend: bool = True,
    empty: str = "",
    title_attrs: str = "",
) -> str:
    """One chart as an ``<svg data-chart=key>``: title, axes (each in a ``<g data-axis>``
    with its ``.axis-title``), grid, lines with markers, and a legend under the axes."""
    shown = [ln for ln in lines if ln.name] if legend else []
    leg_h = legend_height(shown, box)
    height = box.height + leg_h
    x0, x1 = box.left, box.width - box.right
    y0, y1 = box.height - box.bottom, box.top

    def sx(v: float) -> float:
        return x0 + (x1 - x0) * (min(max(v, x.lo), x.hi) - x.lo) / ((x.hi - x.lo) or 1.0)

    def scale(ax: Axis):
        return lambda v: y0 - (y0 - y1) * (v - ax.lo) / ((ax.hi - ax.lo) or 1.0)

    sy = scale(y)
    sy2 = scale(y2) if y2 is not None else sy
    out = [
        f'<rect width="{box.width}" height="{height}" fill="white"/>',
        f'<text class="chart-title" x="{(x0 + x1) / 2:.1f}" y="{box.top - 16}" '
        f'text-anchor="middle" font-size="{TITLE_FONT}"{title_attrs}>{escape(title)}</text>',
    ]
    xs = [f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="{AXIS}"/>']
    for t in x.ticks:
        xs.append(
            f'<text x="{sx(t):.1f}" y="{y0 + 18}" text-anchor="middle">{fmt_tick(t, x.step)}</text>'
        )
    xs.append(
        f'<text class="axis-title" x="{(x0 + x1) / 2:.1f}" y="{y0 + 38}" '
        f'text-anchor="middle">{escape(x.title)}</text>'
    )
    out.append(f'<g data-axis="x">{"".join(xs)}</g>')
    out.append(_y_axis("y", y, sy, x0, x1, y0, y1, box, grid=True))
    if y2 is not None:
        out.append(_y_axis("y2", y2, sy2, x0, x1, y0, y1, box, grid=False))
    for ln in lines:
        fy = sy2 if ln.right else sy
        pts = [(sx(a), fy(b)) for a, b in ln.points if math.isfinite(a) and math.isfinite(b)]
        xy = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        dash = ' stroke-dasharray="7 5"' if ln.dash else ""
        out.append(
            f'<polyline class="{ln.css}" data-name="{escape(ln.name)}"{_attrs(ln.data)} '
            f'data-points="{len(pts)}" fill="none" stroke="{ln.color}" '
            f'stroke-width="{ln.width:g}"{dash} points="{xy}"/>'
        )
        if ln.markers:
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{ln.color}"/>' for a, b in pts]
    if empty and not any(ln.points for ln in lines):
        out.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" '
            f'fill="#555">{escape(empty)}</text>'
        )
    out.append(_legend(shown, box))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" data-chart="{escape(key)}" '
        f'viewBox="0 0 {box.width} {height}" width="100%" style="display:block;height:auto" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" '
        f'font-size="{FONT}" fill="{TICK_COLOR}">{"".join(out)}</svg>'
    )


def _y_axis(name, ax: Axis, sy, x0, x1, y0, y1, box: Box, grid: bool) -> str:
    at, anchor, off = (x0, "end", -7) if name == "y" else (x1, "start", 7)
    parts = [f'<line x1="{at}" y1="{y0}" x2="{at}" y2="{y1}" stroke="{AXIS}"/>']
    for t in ax.ticks:
        ty = sy(t)
        if grid and t != ax.lo:
            parts.append(f'<line x1="{x0}" y1="{ty:.1f}" x2="{x1}" y2="{ty:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{at + off}" y="{ty + 5:.1f}" text-anchor="{anchor}">'
            f"{fmt_tick(t, ax.step)}</text>"
        )
    cy = (y0 + y1) / 2
    tx = 16 if name == "y" else box.width - 8
    parts.append(
        f'<text class="axis-title" x="{tx}" y="{cy:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 {tx} {cy:.1f})">{escape(ax.title)}</text>'
    )
    return f'<g data-axis="{name}">{"".join(parts)}</g>'


def _legend(lines: Sequence[Line], box: Box) -> str:
    out = []
    y = box.height + 4
    for row in _legend_rows(lines, box.width - 16):
        x = 12.0
        for ln in row:
            dash = ' stroke-dasharray="7 5"' if ln.dash else ""
            out.append(
                f'<line class="legend"{_attrs(ln.data)} x1="{x:.0f}" y1="{y:.0f}" '
                f'x2="{x + 32:.0f}" y2="{y:.0f}" stroke="{ln.color}" '
                f'stroke-width="{ln.width:g}"{dash}/>'
                f'<text x="{x + 38:.0f}" y="{y + 5:.0f}">{escape(ln.name)}</text>'
            )
            x += 40 + 0.56 * FONT * len(ln.name) + 18
        y += LEGEND_ROW
    return f'<g class="legend">{"".join(out)}</g>' if out else ""


def flow(svgs: Sequence[str], basis: int, most: int, gap: str = "12px 20px") -> str:
    """Charts in a row that wraps: each takes at least ``basis`` px (else it moves to the
    next line) and at most ``most`` px, so a chart never reaches beyond its column and
    its text stays near its drawn size."""
    cells = "".join(
        f'<div style="flex:1 1 {basis}px;min-width:0;max-width:{most}px">{s}</div>' for s in svgs
    )
    return (
        f'<div class="chart-row" style="display:flex;flex-wrap:wrap;gap:{gap};'
        f'align-items:flex-start;margin:0 0 0.5rem 0">{cells}</div>'
    )


def grid(svgs: Sequence[str], least: int, gap: str = "10px 12px") -> str:
    """Small charts in a grid of equal columns, as many as fit at ``least`` px each (a
    flex row would widen the last, lonely one)."""
    cells = "".join(f'<div style="min-width:0">{s}</div>' for s in svgs)
    return (
        f'<div class="chart-grid" style="display:grid;grid-template-columns:'
        f'repeat(auto-fill,minmax({least}px,1fr));gap:{gap};margin:0 0 0.5rem 0">{cells}</div>'
    )
