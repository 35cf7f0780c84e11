"""The Rank sweep page as a lecturer projects it (issue 24): every axis titled with its
unit, nice tick values, metric and method colours of app.charts.common (the LoRA lines
in the colours of the metrics they show, full fine-tuning in its method's colour), lines
that do not hide each other, no raw underscore and no delta badge."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from page_util import (  # noqa: E402
    deltas,
    figures,
    labels,
    off_contract,
    open_page,
    ragged_ticks,
    raw_underscores,
    synced_axes,
    untitled_axes,
)


def test_rank_sweep_page_titles_every_axis_in_the_contract_colours(empty_cache):
    at = open_page("rank_sweep")
    figs = figures(at)
    assert len(figs) == 2, list(figs)  # the elbow chart and the targets chart
    for key, fig in figs.items():
        assert not untitled_axes(fig), key
        assert not synced_axes(fig), key
        assert not ragged_ticks(fig), key
        assert not off_contract(fig), key
        assert not any("_" in s for s in labels(fig)), key
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not [w for text in shown for w in raw_underscores(text)]
    assert deltas(at) == {}


def test_rank_sweep_lines_are_told_apart_by_more_than_colour(empty_cache):
    """Issue 24: lines that lie on each other (LoRA's accuracy near full fine-tuning's)
    still show: each has its own dash or marker."""
    at = open_page("rank_sweep")
    elbow = next(f for f in figures(at).values() if "Rank sweep" in f["layout"]["title"]["text"])
    lines = [t for t in elbow["data"] if t.get("mode", "").startswith("lines") and t.get("name")]
    looks = {
        ((t.get("line") or {}).get("dash", "solid"), (t.get("marker") or {}).get("symbol"))
        for t in lines
    }
    assert len(looks) == len(lines) >= 3
    metrics = {(t.get("meta") or {}).get("metric") for t in elbow["data"]}
    assert {"irregular_accuracy", "regular_accuracy"} <= metrics
    assert any((t.get("meta") or {}).get("method") == "full" for t in elbow["data"])
