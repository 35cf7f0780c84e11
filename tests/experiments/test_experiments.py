"""The experiments (minituner.experiments.run): the plan, the summary of the shipped runs,
which must reproduce precomputed/experiments.json and precomputed/README.md, and the
claims as the shipped figures record them."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from minituner.analysis import spectrum as analysis
from minituner.experiments.run import (
    FULL_LRS,
    RANKS,
    REGENERATE,
    TARGET_SETS,
    TRUNCATION_K,
    best_full_lr,
    findings_table,
    lr_search_plan,
    plan,
    summarize,
    write_outputs,
)
from minituner.finetune.result import load_base
from minituner.minigpt.evaluate import cloze_metrics, perplexity
from minituner.paths import experiments_file, experiments_readme, runs_dir
from minituner.store.runs import RunStore


@pytest.fixture(scope="module")
def fbase():
    return load_base()


@pytest.fixture(scope="module")
def store():
    return RunStore([runs_dir()], save_root=runs_dir())


@pytest.fixture(scope="module")
def shipped():
    return json.loads(experiments_file().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def summary(store, fbase, shipped):
    """summarize() over the shipped store; truncation (7 full evaluations) is taken from
    the file, and one of its points is recomputed below."""
    return summarize(store, fbase, seeds=3, truncation=shipped["truncation"])


# ------------------------------------------------------------------ plan


def test_plan_covers_ranks_seeds_and_targets():
    p = plan(seeds=3, full_lr=1e-3)
    assert set(p) == {"rank_sweep", "targets", "forgetting", "frontier", "replay"}
    sweep = [(c.method, c.r, tuple(c.targets), c.seed) for c in p["rank_sweep"]]
    lora = {(r, s) for m, r, t, s in sweep if m == "lora" and t == ("q", "v")}
    assert lora == {(r, s) for r in (1, 2, 4, 8, 16, 32, 64) for s in range(3)}
    assert len([1 for m, *_ in sweep if m == "lora"]) == 21
    full = [c for c in p["rank_sweep"] if c.method == "full"]
    assert sorted(c.seed for c in full) == [0, 1, 2] and {c.lr for c in full} == {1e-3}
    tg = {(tuple(c.targets), c.seed) for c in p["targets"]}
    assert tg == {(t, s) for t in TARGET_SETS.values() for s in range(3)}
    assert {c.r for c in p["targets"]} == {8}
    assert set(TARGET_SETS) == {"q,v", "q,k,v,o", "mlp", "all"}
    assert [(c.method, c.seed) for c in p["forgetting"]] == [("qlora", s) for s in range(3)]
    assert RANKS == (1, 2, 4, 8, 16, 32, 64)
    assert [c.lr for c in lr_search_plan()] == list(FULL_LRS)


# ------------------------------------------------------------------ reproduce the file


def test_summary_reproduces_experiments_json(summary, shipped):
    got = json.loads(json.dumps(summary))  # as write_outputs stores it
    for key in ("base", "rank_sweep", "targets", "forgetting", "full_lr_search", "missing"):
        assert got[key] == shipped[key], key
    assert got == shipped


def test_best_full_lr_is_the_searched_one(store, fbase, shipped):
    best = best_full_lr(store, fbase)
    assert best == shipped["full_lr_search"]["best_lr"]
    runs = shipped["full_lr_search"]["runs"]
    assert [r["lr"] for r in runs] == list(FULL_LRS)
    top = max(runs, key=lambda r: (r["irregular_accuracy"], -r["control_en_drift"]))
    assert top["lr"] == best


def test_readme_is_the_output_of_write_outputs(summary, shipped, tmp_path):
    readme = experiments_readme().read_text(encoding="utf-8")
    assert findings_table(shipped) in readme
    assert findings_table(summary) in readme
    assert REGENERATE in readme
    write_outputs(summary, path=tmp_path / "experiments.json", readme=tmp_path / "README.md")
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == readme
    assert json.loads((tmp_path / "experiments.json").read_text()) == shipped


def test_findings_table_has_one_row_per_result(shipped):
    rows = findings_table(shipped).splitlines()
    assert len(rows) == 2 + len(RANKS) + 1 + len(TARGET_SETS) + 1
    assert rows[-1].startswith("| QLoRA | qlora | 8 | q,v | ")


# ------------------------------------------------------------------ the claims


def test_lora_keeps_control_perplexity_and_learns_the_verbs(shipped):
    r8 = shipped["rank_sweep"]["summary"]["8"]
    assert r8["irregular_accuracy_mean"] >= 0.95
    assert r8["control_en_drift_mean"] <= 0.05 and r8["control_es_drift_mean"] <= 0.05
    assert shipped["base"]["irregular_accuracy"] < 0.5  # the base model over-regularizes
    assert shipped["base"]["overregularized_rate"] > 0.5
    for r in map(str, RANKS):
        a = shipped["rank_sweep"]["summary"][r]
        assert a["n"] == 3
        assert a["irregular_accuracy_mean"] >= 0.9, r
        assert a["control_en_drift_mean"] <= 0.05, r
    for name, a in shipped["targets"].items():
        assert a["control_en_drift_mean"] <= 0.05, name
    assert shipped["targets"]["q,v"] == shipped["rank_sweep"]["summary"]["8"]


def test_full_finetuning_drifts_more_than_lora(shipped):
    full = shipped["rank_sweep"]["summary"]["full"]
    r8 = shipped["rank_sweep"]["summary"]["8"]
    assert full["irregular_accuracy_mean"] >= 0.95
    assert full["control_en_drift_mean"] > 0.05  # measured: about +9%
    assert full["control_en_drift_mean"] > 5 * r8["control_en_drift_mean"]
    assert full["regular_accuracy_mean"] < r8["regular_accuracy_mean"]
    assert full["trainable_params"] == 816_000 > 40 * r8["trainable_params"]


def test_trainable_params_grow_linearly_with_rank(shipped):
    sw = shipped["rank_sweep"]["summary"]
    for r in RANKS:
        # 4 layers x (q, v) x r x (128 + 128)
        assert sw[str(r)]["trainable_params"] == 4 * 2 * r * 256


def test_elbow_is_a_swept_rank(shipped):
    el = shipped["rank_sweep"]["elbow"]
    assert el["elbow"] in RANKS
    assert el["elbow"] == el["elbow_r"]


def test_truncation_figures_are_consistent(shipped, store):
    tr = shipped["truncation"]
    assert tr["k"] == [*TRUNCATION_K, "full"]
    assert tr["run_id"] == shipped["rank_sweep"]["full"][0]  # full FT, best lr, seed 0
    acc = tr["irregular_accuracy"]
    assert all(b >= a - 0.02 for a, b in zip(acc, acc[1:], strict=False))  # nondecreasing-ish
    assert acc[-1] > acc[0]
    assert min(acc[TRUNCATION_K.index(8) :]) >= 0.95
    # the untruncated update is the run itself (its delta stored in fp16)
    f = store.get(tr["run_id"]).final
    assert acc[-1] == pytest.approx(f.irregular_accuracy, abs=1 / 240)
    assert tr["control_en_drift"][-1] == pytest.approx(f.control_en_drift, abs=1e-4)


@torch.no_grad()
def test_truncation_at_rank_1_recomputes(shipped, store, fbase):
    """Rebuild W + ΔW_1 for every block Linear of the full fine-tune and re-measure
    irregular accuracy and control drift (independently of truncation_test)."""
    tr = shipped["truncation"]
    tuned = store.load_model(store.get(tr["run_id"]), fbase)
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
    assert acc == pytest.approx(tr["irregular_accuracy"][0], abs=1 / 240)
    assert drift_en == pytest.approx(tr["control_en_drift"][0], abs=1e-4)
    assert drift_es == pytest.approx(tr["control_es_drift"][0], abs=1e-4)
