"""The visual language of app/charts/common.py (issue 24): one fixed colour per method,
metric colours disjoint from them, and a run's colour that comes from its method and its
own key only, whatever other runs are drawn beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.charts import common  # noqa: E402

METHODS = ("full", "lora", "qlora", "base")
run_keys = st.text(min_size=1, max_size=30)
run_sets = st.dictionaries(run_keys, st.sampled_from(METHODS), max_size=8)


def test_each_method_has_one_fixed_colour_disjoint_from_the_metrics():
    """Issue 24: a colour means one thing on every page: the methods' colours, the
    metrics' colours and the 4-bit formats other than NF4 are all different."""
    methods = [common.method_color(m) for m in METHODS]
    metrics = [common.metric_color(m) for m in common.METRIC_COLORS]
    assert len(set(methods)) == len(methods) and len(set(metrics)) == len(metrics)
    assert not set(methods) & set(metrics)
    assert set(common.METRIC_NAMES) == set(common.METRIC_COLORS)
    assert common.FORMAT_COLORS["nf4"] == common.method_color("qlora")  # QLoRA's format
    others = {common.FORMAT_COLORS[f] for f in ("int4", "fp4")}
    assert not others & (set(methods) | set(metrics))
    assert not set(common.CATEGORY_PALETTE) & (set(methods) | set(metrics))
    assert common.method_color("LoRA r=8 q,v · seed 0") == common.method_color("lora")
    with pytest.raises(KeyError):
        common.method_color("adapter")


@given(run_sets, run_sets)
def test_a_runs_colour_does_not_depend_on_the_other_runs(runs, others):
    """Issue 24: full was red and LoRA blue on Compare until a run was added, then the
    colours swapped. A run's colour comes from its method and its own key only."""
    alone = common.run_colors(runs)
    together = common.run_colors({**others, **runs})
    assert {k: together[k] for k in runs} == alone
    reordered = common.run_colors(dict(reversed(list(runs.items()))))
    assert reordered == alone
    for key, method in runs.items():
        assert alone[key] == common.run_color(method, key)


@given(run_keys, st.sampled_from(METHODS))
def test_a_run_is_a_shade_of_its_methods_colour(key, method):
    """Closer to its own method's colour than to any other method's or metric's."""

    def rgb(c: str) -> np.ndarray:
        return np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)

    def angle(a: str, b: str) -> float:  # hue-like: the direction of the colour from grey
        u, v = rgb(a) - rgb(a).mean(), rgb(b) - rgb(b).mean()
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 0.0 if nu < 1 or nv < 1 else float(np.arccos(np.clip(u @ v / nu / nv, -1, 1)))

    shade = common.run_color(method, key)
    assert shade == common.run_color(method, key)  # stable
    own = common.method_color(method)
    if method != "base":  # grey's shades are greys: no hue to compare
        rivals = [common.method_color(m) for m in METHODS if m not in (method, "base")]
        assert all(angle(shade, own) < angle(shade, other) for other in rivals)
