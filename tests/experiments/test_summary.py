"""The summary (minituner.experiments.summary) of the shipped runs reproduces
precomputed/experiments.json, section for section and as the typed record."""

from __future__ import annotations

import json

import pytest

from minituner.experiments.plan import FULL_LRS, best_full_lr
from minituner.experiments.summary import summarize


@pytest.fixture(scope="module")
def summary(store, fbase, shipped):
    """summarize() over the shipped store; truncation (7 full evaluations) is taken from
    the file, and one of its points is recomputed in test_run.py."""
    return summarize(store, fbase, seeds=3, truncation=shipped.truncation)


def test_summary_reproduces_experiments_json(summary, shipped, shipped_json):
    got = json.loads(json.dumps(summary.to_json()))  # as write_outputs stores it
    for key in ("base", "rank_sweep", "targets", "forgetting", "full_lr_search", "missing"):
        assert got[key] == shipped_json[key], key
    assert got == shipped_json
    assert summary == shipped


def test_best_full_lr_is_the_searched_one(store, fbase, shipped):
    best = best_full_lr(store, fbase)
    assert best == shipped.full_lr_search.best_lr
    runs = shipped.full_lr_search.runs
    assert [r.lr for r in runs] == list(FULL_LRS)
    top = max(runs, key=lambda r: (r.irregular_accuracy, -r.control_en_drift))
    assert top.lr == best
