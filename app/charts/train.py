"""Charts of the Train page: the live loss and evaluation of a running fine-tune."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from app.charts.common import COLORS, FONT_SIZE

W, H = 560, 370  # one panel, in px; two panels side by side
PAD = dict(left=70, right=70, top=40, bottom=80)


def live_training(
    steps: Sequence[int],
    losses: Sequence[float],
    evals: Sequence,
    total_steps: int,
) -> str:
    """The live view as a small inline SVG: the loss per step (left) and the periodic
    evaluation (right: irregular-verb accuracy in % on the left axis, control-English
    drift in % on the right axis), the x axis fixed to the whole run so the lines grow.

    Plain markup, built in well under a millisecond and drawn by the browser without a
    chart library, so a redraw per event costs the server and every watching tab almost
    nothing. ``evals`` are evaluation events or records (attributes step,
    irregular_accuracy, control_en_drift)."""
    top = max(1, int(total_steps))
    loss_pts = [(float(s), float(v)) for s, v in zip(steps, losses, strict=False)
                if math.isfinite(v)]  # fmt: skip
    acc = [(float(e.step), 100 * float(e.irregular_accuracy)) for e in evals]
    drift = [(float(e.step), 100 * float(e.control_en_drift)) for e in evals]
    drift = [(x, y) for x, y in drift if math.isfinite(y)]
    loss_hi = max([v for _, v in loss_pts] or [1.0]) * 1.05
    d_lo = min([0.0, *(y for _, y in drift)])
    d_hi = max([1.0, *(y for _, y in drift)])  # at least 0..1 %: noise stays flat
    left = _panel("loss", top, (0.0, loss_hi), [(loss_pts, COLORS["lora"], "loss", False)], None)
    right = _panel(
        "evaluation on a sample", top, (0.0, 100.0),
        [(acc, COLORS["qlora"], "irregular accuracy (%)", True)],
        ((d_lo, d_hi), [(drift, COLORS["full"], "control EN drift (%)", True)]),
    )  # fmt: skip
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" '
        f'viewBox="0 0 {2 * W} {H}" font-family="sans-serif" font-size="{FONT_SIZE - 4}">'
        f'<rect width="{2 * W}" height="{H}" fill="white"/>{left}'
        f'<g transform="translate({W},0)">{right}</g></svg>'
    )


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _panel(title, x_max, y_range, series, secondary) -> str:
    """One panel: axes with ticks, a title, lines with markers, a legend below."""
    x0, x1 = PAD["left"], W - PAD["right"]
    y0, y1 = H - PAD["bottom"], PAD["top"]

    def sx(x):
        return x0 + (x1 - x0) * x / x_max

    def scale(lo, hi):
        span = (hi - lo) or 1.0
        return lambda y: y0 - (y0 - y1) * (y - lo) / span

    sy = scale(*y_range)
    out = [
        f'<text x="{(x0 + x1) / 2}" y="{PAD["top"] - 14}" text-anchor="middle" '
        f'font-size="{FONT_SIZE}">{escape(title)}</text>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>',
        f'<text x="{(x0 + x1) / 2}" y="{y0 + 42}" text-anchor="middle">step</text>',
    ]
    for i in range(5):
        xv, yv = x_max * i / 4, y_range[0] + (y_range[1] - y_range[0]) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{y0 + 20}" text-anchor="middle">{xv:.0f}</text>')
        out.append(
            f'<text x="{x0 - 6}" y="{sy(yv) + 5:.1f}" text-anchor="end">{_fmt(yv)}</text>'
            f'<line x1="{x0}" y1="{sy(yv):.1f}" x2="{x1}" y2="{sy(yv):.1f}" stroke="#eee"/>'
        )
    lines = [(pts, color, name, marks, sy) for pts, color, name, marks in series]
    if secondary is not None:
        (lo, hi), more = secondary
        pad = 0.1 * (hi - lo)
        sy2 = scale(lo - pad, hi + pad)
        out.append(f'<line x1="{x1}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#444"/>')
        for i in range(5):
            yv = lo - pad + (hi - lo + 2 * pad) * i / 4
            out.append(f'<text x="{x1 + 6}" y="{sy2(yv) + 5:.1f}">{_fmt(yv)}</text>')
        lines += [(pts, color, name, marks, sy2) for pts, color, name, marks in more]
    for k, (pts, color, name, marks, fy) in enumerate(lines):
        xy = " ".join(f"{sx(x):.1f},{fy(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="6 4"' if k > 0 else ""
        out.append(
            f'<polyline class="series" data-name="{escape(name)}" data-points="{len(pts)}" '
            f'fill="none" stroke="{color}" stroke-width="3"{dash} points="{xy}"/>'
        )
        if marks:
            out += [
                f'<circle cx="{sx(x):.1f}" cy="{fy(y):.1f}" r="5" fill="{color}"/>' for x, y in pts
            ]
    if len(lines) > 1:  # a legend below the axis
        x = x0 - 40
        for k, (_, color, name, _, _) in enumerate(lines):
            dash = ' stroke-dasharray="6 4"' if k > 0 else ""
            out.append(
                f'<line x1="{x}" y1="{H - 12}" x2="{x + 30}" y2="{H - 12}" '
                f'stroke="{color}" stroke-width="3"{dash}/>'
                f'<text x="{x + 36}" y="{H - 7}">{escape(name)}</text>'
            )
            x += 60 + 9 * len(name)
    return "".join(out)
