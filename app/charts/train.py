"""Charts of the Train page: the loss and the periodic evaluation of one fine-tune, live
(the live panel, app/live.py) and stored (the Train page's stored run).

One run's measures are drawn, so each line has its METRIC colour (app/charts/common.py:
loss near-black, irregular-verb accuracy green, regular-verb accuracy orange, control
drift wine), never a method's. The evaluation panel shows the task (irregular verbs)
and its cost (regular verbs, on the same left axis; control-English drift on the right
axis), so the headline is honest: what was learned and what was lost, side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.charts.common import METRIC_COLORS
from app.charts.svg import Axis, Box, Line, flow, panel

PANEL = Box(width=420, height=262, left=64, right=64, top=40, bottom=50)
# two panels side by side from a column of 2 x 400 px plus the gap, else one above the
# other; at most 600 px each, so a wide column does not make them tall
BASIS_PX, MOST_PX = 380, 600
SERIES_NAMES = {  # the legend's words for each measure
    "loss": "training loss",
    "irregular_accuracy": "irregular verbs",
    "regular_accuracy": "regular verbs",
    "control_drift": "control English drift (right axis)",
}


def _finite(points):
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def loss_panel(steps: Sequence[int], losses: Sequence[float], total_steps: int) -> str:
    """The training loss per step, the x axis fixed to the whole run so the line grows."""
    pts = _finite([(float(s), float(v)) for s, v in zip(steps, losses, strict=False)])
    hi = max([v for _, v in pts] or [1.0])
    line = Line(pts, METRIC_COLORS["loss"], SERIES_NAMES["loss"], {"metric": "loss"},
                markers=False)  # fmt: skip
    return panel(
        "train-loss", "loss", Axis.steps(total_steps),
        Axis.nice(0.0, hi, "training loss (per character)", max_ticks=5), [line], box=PANEL,
    )  # fmt: skip


def evaluation_panel(evals: Sequence, total_steps: int) -> str:
    """The periodic evaluation on a sample: irregular- and regular-verb accuracy (%) on
    the left axis, control-English perplexity drift (%) on the right axis. ``evals`` are
    evaluation events or records (step, irregular_accuracy, regular_accuracy,
    control_en_drift); step 0 is the base model."""
    acc = _finite([(float(e.step), 100 * float(e.irregular_accuracy)) for e in evals])
    reg = _finite([(float(e.step), 100 * float(e.regular_accuracy)) for e in evals])
    drift = _finite([(float(e.step), 100 * float(e.control_en_drift)) for e in evals])
    d_lo = min([0.0, *(y for _, y in drift)])
    d_hi = max([1.0, *(y for _, y in drift)])  # at least 0..1 %: noise stays flat
    lines = [
        Line(acc, METRIC_COLORS["irregular_accuracy"], SERIES_NAMES["irregular_accuracy"],
             {"metric": "irregular_accuracy"}),
        Line(reg, METRIC_COLORS["regular_accuracy"], SERIES_NAMES["regular_accuracy"],
             {"metric": "regular_accuracy"}),
        Line(drift, METRIC_COLORS["control_drift"], SERIES_NAMES["control_drift"],
             {"metric": "control_drift"}, dash=True, right=True),
    ]  # fmt: skip
    return panel(
        "train-evaluation", "evaluation on a sample", Axis.steps(total_steps),
        Axis(0.0, 100.0, [0, 25, 50, 75, 100], "accuracy (%)", 25.0), lines,
        y2=Axis.nice(d_lo, d_hi, "control EN drift (%)", max_ticks=5), box=PANEL,
    )  # fmt: skip


def live_training(
    steps: Sequence[int],
    losses: Sequence[float],
    evals: Sequence,
    total_steps: int,
) -> str:
    """The loss panel and the evaluation panel in a row that wraps (app/charts/svg.py:
    side by side in a wide column, stacked in a narrow one; never wider than the column).

    Plain markup, built in well under a millisecond and drawn by the browser without a
    chart library, so a redraw per event costs the server and every watching tab almost
    nothing."""
    top = max(1, int(total_steps))
    return flow([loss_panel(steps, losses, top), evaluation_panel(evals, top)], BASIS_PX, MOST_PX)
