"""The orchestration's own measurement (minituner.experiments.run): the truncation test of
the shipped full fine-tune, consistent with its run and recomputed at rank 1."""

from __future__ import annotations

import copy

import pytest
import torch

from minituner.analysis import spectrum as analysis
from minituner.experiments.plan import TRUNCATION_K
from minituner.minigpt.evaluate import cloze_metrics, perplexity


def test_truncation_figures_are_consistent(shipped, store):
    tr = shipped.truncation
    assert tr.k == [*TRUNCATION_K, "full"]
    assert tr.run_id == shipped.rank_sweep.full_runs[0]  # full FT, best lr, seed 0
    acc = tr.irregular_accuracy
    assert all(b >= a - 0.02 for a, b in zip(acc, acc[1:], strict=False))  # nondecreasing-ish
    assert acc[-1] > acc[0]
    assert min(acc[TRUNCATION_K.index(8) :]) >= 0.95
    # the untruncated update is the run itself (its delta stored in fp16)
    f = store.get(tr.run_id).final
    assert acc[-1] == pytest.approx(f.irregular_accuracy, abs=1 / 240)
    assert tr.control_en_drift[-1] == pytest.approx(f.control_en_drift, abs=1e-4)


@torch.no_grad()
def test_truncation_at_rank_1_recomputes(shipped, store, fbase):
    """Rebuild W + ΔW_1 for every block Linear of the full fine-tune and re-measure
    irregular accuracy and control drift (independently of truncation_test)."""
    tr = shipped.truncation
    tuned = store.load_model(store.get(tr.run_id), fbase)
    model = copy.deepcopy(tuned)
    base_sd, sd = fbase.model.state_dict(), model.state_dict()
    n = 0
    for name, w in tuned.state_dict().items():
        if name.startswith("blocks.") and w.dim() == 2:
            sd[name].copy_(base_sd[name] + analysis.low_rank_approx(w - base_sd[name], 1))
            n += 1
    assert n == 4 * 6
    model.eval()
    corpus = fbase.corpus
    acc = cloze_metrics(model, fbase.tok, corpus.finetune_test)["accuracy"]
    drift_en = perplexity(model, fbase.tok, corpus.control_en) / fbase.metrics["control_en_ppl"] - 1
    drift_es = perplexity(model, fbase.tok, corpus.control_es) / fbase.metrics["control_es_ppl"] - 1
    assert acc == pytest.approx(tr.irregular_accuracy[0], abs=1 / 240)
    assert drift_en == pytest.approx(tr.control_en_drift[0], abs=1e-4)
    assert drift_es == pytest.approx(tr.control_es_drift[0], abs=1e-4)
