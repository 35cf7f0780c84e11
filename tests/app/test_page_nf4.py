"""The NF4 page as a lecturer projects it (issue 24): every axis titled with its unit,
nice tick values, the 4-bit formats in FORMAT_COLORS (NF4 in QLoRA's colour) on every
chart, histogram outlines that do not hide each other, no delta badge."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from page_util import (  # noqa: E402
    colour_of,
    deltas,
    figures,
    labels,
    off_contract,
    open_page,
    ragged_ticks,
    raw_underscores,
    untitled_axes,
)

from app.charts.common import FORMAT_COLORS, METHOD_COLORS  # noqa: E402


def test_nf4_page_titles_every_axis_in_the_format_colours(empty_cache):
    at = open_page("nf4")
    figs = figures(at)
    assert len(figs) == 4, list(figs)  # codebook, error histogram, error per layer, bits
    layer = at.selectbox(key="nf4_layer").value
    for key, fig in figs.items():
        assert not untitled_axes(fig), key
        assert not ragged_ticks(fig), key
        assert not off_contract(fig), key
        shown = [s.replace(layer, "") for s in labels(fig)]  # the layer's own name
        assert not any("_" in s for s in shown), (key, shown)
    formats = {
        (t["meta"]["format"], colour_of(t))
        for f in figs.values()
        for t in f["data"]
        if "format" in (t.get("meta") or {})
    }
    assert {f for f, _ in formats} == {"nf4", "int4", "fp4"}
    assert ("nf4", METHOD_COLORS["qlora"]) in formats  # NF4 is QLoRA's format
    assert all(color == FORMAT_COLORS[f] for f, color in formats)
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not [w for text in shown for w in raw_underscores(text)]
    assert deltas(at) == {}


def test_nf4_error_histograms_do_not_hide_each_other(empty_cache):
    at = open_page("nf4")
    hist = next(f for f in figures(at).values() if f["layout"]["title"]["text"].startswith("Quant"))
    assert all(t.get("fill") in (None, "none") for t in hist["data"])  # outlines only
    assert len({t["line"].get("dash", "solid") for t in hist["data"]}) == len(hist["data"])
