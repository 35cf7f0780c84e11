"""The Spectrum page as a lecturer projects it (issue 24): every axis titled, no raw
underscore (the page wrote the squared Frobenius norm as "‖ΔW‖²_F", and the subspace
table's headers as "phi_ij"), runs in the colours of their methods, no delta badges."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from page_util import (  # noqa: E402
    deltas,
    figures,
    labels,
    open_page,
    raw_underscores,
    synced_axes,
    untitled_axes,
)

from app.charts.common import run_color  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402


def layer_names(at) -> list[str]:
    """The module names the page offers (q_proj, ...): real identifiers, shown as such."""
    return list(at.multiselect(key="spec_kinds").options) + list(
        at.selectbox(key="spec_sub_layer").options
    )


def test_spectrum_page_titles_every_axis_and_shows_no_raw_underscore(empty_cache):
    at = open_page("spectrum")
    figs = figures(at)
    assert len(figs) >= 4  # singular values, stable rank, energy, truncation (+ subspace)
    names = sorted(layer_names(at), key=len, reverse=True)
    for key, fig in figs.items():
        assert not untitled_axes(fig), key
        assert not synced_axes(fig), key
        for text in labels(fig):
            for name in names:  # a layer's name is its identifier, underscore and all
                text = text.replace(name, "")
            assert "_" not in text and "^" not in text, (key, text)
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not [w for text in shown for w in raw_underscores(text)]
    headers = [c for d in at.dataframe for c in d.value.columns]
    assert "Frobenius norm ‖ΔW‖" in headers and "φ(i, j)" in headers
    assert not [c for c in headers if "_" in c]
    assert deltas(at) == {}


def test_stable_rank_says_what_it_divides(empty_cache):
    at = open_page("spectrum")
    stable = next(f for f in figures(at).values() if "Stable rank" in f["layout"]["title"]["text"])
    assert stable["layout"]["yaxis"]["title"]["text"].startswith("stable rank Σσᵢ² / σ₁²")
    assert "Frobenius" in " ".join(m.value for m in at.markdown)  # the norm in words


def test_spectrum_runs_wear_their_methods_colours(empty_cache):
    """Issue 24: a run is drawn in a shade of its method's colour chosen by its run id."""
    at = open_page("spectrum")
    runs = {r.run_id: r for r in RunStore().list()}
    drawn = 0
    for fig in figures(at).values():
        for trace in fig["data"]:
            meta = trace.get("meta") or {}
            if "method" not in meta:
                continue
            drawn += 1
            assert runs[meta["run"]].method == meta["method"]
            color = (trace.get("line") or {}).get("color") or trace["marker"]["color"]
            assert color == run_color(meta["method"], meta["run"])
    assert drawn >= 4  # a full and a LoRA run in the stable-rank and energy charts
