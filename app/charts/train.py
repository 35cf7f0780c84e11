"""Charts of the Train page: the live loss and evaluation of a running fine-tune."""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.charts.common import COLORS, FONT_SIZE


def live_training(
    steps: Sequence[int],
    losses: Sequence[float],
    evals: Sequence,
    total_steps: int,
) -> dict:
    """The live view as a Vega-Lite spec (a plain dict: building it costs well under a
    millisecond, so a redraw per event stays cheap for the server and the browser): the
    loss per step (left) and the periodic evaluation (right: irregular-verb accuracy and
    control-English drift, in %), the x axis fixed to the whole run so the lines grow.
    ``evals`` are evaluation events or records (attributes step, irregular_accuracy,
    control_en_drift)."""
    top = max(1, int(total_steps))
    x = {"field": "step", "type": "quantitative", "scale": {"domain": [0, top]}}
    loss_rows = [{"step": int(s), "loss": float(v)} for s, v in zip(steps, losses, strict=False)]
    eval_rows = [
        {"step": int(e.step), "value": round(100 * float(v), 4), "figure": name}
        for e in evals
        for name, v in (
            ("irregular accuracy (%)", e.irregular_accuracy),
            ("control EN drift (%)", e.control_en_drift),
        )
        if math.isfinite(v)
    ]
    line = {"type": "line", "point": True, "strokeWidth": 3}
    color = {
        "field": "figure",
        "type": "nominal",
        "title": None,
        "scale": {
            "domain": ["irregular accuracy (%)", "control EN drift (%)"],
            "range": [COLORS["qlora"], COLORS["full"]],
        },
        "legend": {"orient": "bottom"},
    }
    panel = {"width": 420, "height": 300}
    return {
        "hconcat": [
            {
                **panel,
                "title": "loss",
                "data": {"values": loss_rows},
                "mark": {**line, "color": COLORS["lora"]},
                "encoding": {"x": x, "y": {"field": "loss", "type": "quantitative"}},
            },
            {
                **panel,
                "title": "evaluation on a sample",
                "data": {"values": eval_rows},
                "mark": line,
                "encoding": {
                    "x": x,
                    "y": {"field": "value", "type": "quantitative", "title": "%"},
                    "color": color,
                },
            },
        ],
        "config": {"font": "sans-serif", "axis": {"labelFontSize": FONT_SIZE - 4,
                   "titleFontSize": FONT_SIZE - 2}, "title": {"fontSize": FONT_SIZE}},
    }  # fmt: skip
