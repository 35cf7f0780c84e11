"""The learning-forgetting frontier (minituner.analysis.frontier), the frontier and replay
experiments (plan and summary of a small fake store, the claim) and metrics-only runs in
the run store. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import pytest

from minituner.analysis import frontier as fr
from minituner.experiments import claims, plan, report, summary
from minituner.experiments.record import read_experiments
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base
from minituner.paths import base_dir, runs_dir
from minituner.store.records import MetricsRecord, RunConfig
from minituner.store.runs import RunStore, run_id

SHIPPED_LORA = "0e9eca154689"  # lora r=8 q,v seed 0, stored with its adapter


# ------------------------------------------------------------------ the front math
def test_pareto_front_drops_dominated_points_and_sorts_by_learning():
    pts = [(0.5, 0.1), (0.7, 0.05), (0.9, 0.2), (0.6, 0.3)]
    # (0.5, 0.1) and (0.6, 0.3) learn less than (0.7, 0.05) and forget more
    assert fr.pareto_front(pts) == [1, 2]
    assert fr.front_points(pts) == [(0.7, 0.05), (0.9, 0.2)]


def test_pareto_front_for_an_accuracy_keeps_the_higher_one():
    pts = [(0.5, 0.9), (0.7, 0.8), (0.7, 0.6), (0.9, 0.95)]
    # higher is better: (0.9, 0.95) beats every other point on both axes
    assert fr.pareto_front(pts, lower_is_better=False) == [3]
    assert fr.pareto_front(pts[:3], lower_is_better=False) == [0, 1]  # (0.7, 0.6) < (0.7, 0.8)


def test_pareto_front_ties_and_equal_learning():
    # identical points: the first is kept; equal learning: the lower forgetting wins
    assert fr.pareto_front([(0.8, 0.1), (0.8, 0.1), (0.8, 0.2)]) == [0]
    assert fr.pareto_front([]) == []
    with pytest.raises(ValueError, match="point 1"):
        fr.pareto_front([(0.8, 0.1), (float("nan"), 0.1)])


def test_attainable_is_the_first_front_point_at_or_above_the_level():
    front = [(0.7, 0.05), (0.9, 0.2)]
    assert fr.attainable(front, 0.5) == 0.05  # below the front: its first point reaches it
    assert fr.attainable(front, 0.7) == 0.05
    assert fr.attainable(front, 0.71) == 0.2  # more than 0.7 needs the 0.9 point
    assert fr.attainable(front, 0.9) == 0.2
    assert fr.attainable(front, 0.91) is None  # no extrapolation
    with pytest.raises(ValueError, match="increase strictly"):
        fr.attainable([(0.9, 0.2), (0.7, 0.05)], 0.8)


def test_matched_levels_span_the_overlap_and_end_exactly_at_its_top():
    a, b = [(0.8, 0.0), (0.97, 0.01)], [(0.9, 0.01), (0.99, 0.1)]
    assert fr.matched_levels(a, b, 5) == pytest.approx([0.9, 0.9175, 0.935, 0.9525, 0.97])
    # 0.9 + 0.08 rounds to 0.9800000000000001 in floating point; the top level must not
    assert fr.matched_levels([(0.9, 0.0), (0.98, 0.1)], [(0.8, 0.0), (0.98, 0.0)], 5)[-1] == 0.98
    assert fr.matched_levels([(0.5, 0.0)], [(0.5, 0.2)], 3) == [0.5]
    assert fr.matched_levels([(0.5, 0.0)], [(0.6, 0.2)], 3) == []  # no overlap
    assert fr.matched_levels(a, b, 1) == pytest.approx([0.935])
    with pytest.raises(ValueError):
        fr.matched_levels(a, b, 0)


def test_compare_by_hand():
    lora = [(0.80, 0.00), (0.97, 0.01)]
    full = [(0.90, 0.01), (0.95, 0.02), (0.99, 0.10)]
    c = fr.compare(lora, full)
    # levels 0.9, 0.9175, 0.935, 0.9525, 0.97; LoRA needs its 0.97 point at every level
    # (0.01); full: 0.01 at 0.9, 0.02 up to 0.95, then 0.10
    assert c["a"] == pytest.approx([0.01] * 5)
    assert c["b"] == pytest.approx([0.01, 0.02, 0.02, 0.10, 0.10])
    assert c["advantage"] == pytest.approx([0.0, 0.01, 0.01, 0.09, 0.09])
    assert c["mean_advantage"] == pytest.approx(0.04)
    assert c["wins"] == 4
    acc = fr.compare([(0.80, 0.95), (0.97, 0.70)], [(0.90, 0.9), (0.95, 0.8), (0.99, 0.2)], False)
    # an accuracy: advantage = LoRA - full = 0.7 - (0.9, 0.8, 0.8, 0.2, 0.2)
    assert acc["advantage"] == pytest.approx([-0.2, -0.1, -0.1, 0.5, 0.5])
    assert acc["wins"] == 2
    assert fr.compare([(0.5, 0.0)], [(0.6, 0.1)])["mean_advantage"] is None


# ------------------------------------------------------------------ the plan
def test_plan_has_the_frontier_grid_and_the_replay_sweep():
    p = plan.plan(seeds=3, full_lr=1e-3)
    full = {(c.lr, c.steps) for c in p["frontier"] if c.method == "full"}
    assert full == {(lr, n) for lr in (1e-4, 3e-4, 1e-3) for n in (20, 40, 80)}
    lora = {(c.r, c.lr, tuple(c.targets), c.steps) for c in p["frontier"] if c.method == "lora"}
    assert lora == {(r, lr, ("q", "v"), 40) for r in (2, 8, 32) for lr in (1e-3, 5e-3, 2e-2)}
    assert [c.seed for c in p["frontier"] if c.method == "qlora"] == [0, 1, 2]
    assert len(p["frontier"]) == (9 + 9 + 1) * 3
    rp = {(c.method, c.replay, c.lr, c.seed) for c in p["replay"]}
    assert rp == {(m, s, {"lora": 5e-3, "full": 1e-3}[m], k)
                  for m in ("lora", "full") for s in (0.0, 0.05, 0.1, 0.25) for k in range(3)}  # fmt: skip
    # replay 0 and the defaults are the shipped runs of the other experiments (one run id)
    assert FinetuneConfig(method="lora", replay=0.0).to_dict() == FinetuneConfig().to_dict()
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        plan.check_only(("frontier", "nope"))


# ------------------------------------------------------------------ a small fake store
# (irregular, control_en drift, regular) for seed 0 and seed 1 of each config
FAKE = [
    (FinetuneConfig(method="full", lr=1e-4, steps=20), [(0.90, 0.00, 0.9), (0.90, 0.02, 0.9)]),
    (FinetuneConfig(method="full", lr=1e-4, steps=40), [(0.935, 0.02, 0.8), (0.965, 0.02, 0.8)]),
    (FinetuneConfig(method="full", lr=1e-3, steps=40), [(1.00, 0.10, 0.1), (0.98, 0.10, 0.3)]),
    (FinetuneConfig(method="lora", r=8, lr=1e-3), [(0.80, 0.00, 0.95), (0.80, 0.00, 0.95)]),
    (FinetuneConfig(method="lora", r=8, lr=5e-3), [(0.96, 0.01, 0.7), (0.98, 0.01, 0.7)]),
    (FinetuneConfig(method="lora", replay=0.25), [(0.95, 0.001, 0.99), (0.97, 0.003, 0.97)]),
]


def _template() -> dict:
    return json.loads((runs_dir() / _lean_ids()[0] / "metrics.json").read_text())


def _write_run(root: Path, base, cfg: FinetuneConfig, irr: float, drift: float, reg: float):
    rid = run_id(cfg, base.model_id, base.metrics["corpus_version"])
    d = root / rid
    d.mkdir(parents=True)
    m = _template()
    m.update(irregular_accuracy=irr, control_en_drift=drift, control_es_drift=drift / 2,
             regular_accuracy=reg)  # fmt: skip
    MetricsRecord.from_json(m, "fake")  # a valid record
    (d / "metrics.json").write_text(json.dumps(m))
    cfg_json = RunConfig(rid, cfg, base.model_id, base.metrics["corpus_version"]).to_json()
    (d / "config.json").write_text(json.dumps(cfg_json))


@pytest.fixture(scope="module")
def fake_base():
    """What the store and summarize() read of a base model: its id and its figures."""
    metrics = json.loads((base_dir() / "metrics.json").read_text())
    return types.SimpleNamespace(model_id="fakebase0001", metrics=metrics)


@pytest.fixture(scope="module")
def fake_summary(tmp_path_factory, fake_base):
    root = tmp_path_factory.mktemp("runs")
    for cfg, figures in FAKE:
        for seed, f in enumerate(figures):
            _write_run(root, fake_base, dataclasses.replace(cfg, seed=seed), *f)
    return summary.summarize(RunStore([root]), fake_base, seeds=2)


def test_summary_of_a_fake_store_has_configs_fronts_and_matching(fake_summary):
    f = fake_summary.frontier
    labels = [c.label for c in f.configs]
    assert labels == [
        "full lr=0.0001 steps=20",
        "full lr=0.0001 steps=40",
        "full lr=0.001 steps=40",
        "lora r=8 a=16 q,v lr=0.001 steps=40",
        "lora r=8 a=16 q,v lr=0.005 steps=40",
    ]
    a, b = f.configs[0], f.configs[1]
    assert a.stats.n == 2 and a.seeds == [0, 1]
    assert a.stats.control_en_drift.mean == pytest.approx(0.01)
    assert a.stats.control_en_drift.std == pytest.approx(0.0141421356)  # sample std of 0, 0.02
    assert b.stats.irregular_accuracy.mean == pytest.approx(0.95)
    assert a.per_seed.control_en_drift == [0.0, 0.02]
    assert f.fronts["control_en_drift"] == {"full": [0, 1, 2], "lora": [3, 4]}
    assert f.fronts["regular_accuracy"] == {"full": [0, 1, 2], "lora": [3, 4]}
    d = f.matched["control_en_drift"]  # the case of test_compare_by_hand
    assert d.levels == pytest.approx([0.9, 0.9175, 0.935, 0.9525, 0.97])
    assert d.advantage == pytest.approx([0.0, 0.01, 0.01, 0.09, 0.09])
    assert d.mean_advantage == pytest.approx(0.04) and d.wins == 4
    # seed 0: levels 0.9 … 0.96, full 0.00, 0.02, 0.02, 0.10, 0.10 against LoRA's 0.01;
    # seed 1: the 0.90 full point is beaten by 0.965 (same drift), levels 0.9 … 0.98,
    # full 0.02 x4 then 0.10 against 0.01
    assert d.per_seed_advantage == pytest.approx({"0": 0.038, "1": 0.026})
    r = f.matched["regular_accuracy"]
    assert r.advantage == pytest.approx([-0.2, -0.1, -0.1, 0.5, 0.5])
    assert f.matched["control_es_drift"].mean_advantage == pytest.approx(0.02)


def test_summary_of_a_fake_store_has_the_replay_sweep(fake_summary):
    rp = fake_summary.replay
    assert rp.shares == [0.0, 0.05, 0.1, 0.25]
    # replay 0 is the default config, already a frontier config (the same runs)
    assert [e.replay for e in rp.lora] == [0.0, 0.25]
    assert [e.replay for e in rp.full] == [0.0]
    assert rp.lora[0].stats.run_ids == fake_summary.frontier.configs[4].stats.run_ids
    e = rp.lora[1]
    assert e.stats.regular_accuracy.mean == pytest.approx(0.98)
    assert e.label == "lora r=8 a=16 q,v lr=0.005 steps=40 replay=0.25"
    text = "\n".join(report.replay_lines(rp))
    assert "| 25% | 0.960 ± 0.014 | 0.980 ± 0.014 |" in text


def test_the_claim_follows_the_measurement_both_ways(fake_summary):
    f = fake_summary.frontier
    c = claims.frontier_claim(f)
    # drift: LoRA ahead by 4 points on average; regular accuracy: ahead by 0.12
    assert c.held is True
    assert "lower at 4 of 5, by +4.00 points" in c.figures
    assert "+3.20 pts ± 0.85 pts over 2 seeds" in c.figures
    reg = f.matched["regular_accuracy"]
    flipped = dataclasses.replace(f, matched={
        **f.matched, "regular_accuracy": dataclasses.replace(reg, mean_advantage=-0.1)
    })  # fmt: skip
    assert claims.frontier_claim(flipped).held is False
    drift = dataclasses.replace(f.matched["control_en_drift"], mean_advantage=None)
    flipped = dataclasses.replace(flipped, matched={**flipped.matched, "control_en_drift": drift})
    assert "cannot be compared" in claims.frontier_claim(flipped).figures
    assert claims.frontier_claim(None) is None
    lora_only = dataclasses.replace(f, configs=[x for x in f.configs if x.method == "lora"])
    assert claims.frontier_claim(lora_only) is None


def test_the_shipped_summary_answers_the_question():
    shipped = read_experiments(runs_dir().parent / "experiments.json")
    c = claims.frontier_claim(shipped.frontier)
    d = shipped.frontier.matched["control_en_drift"]
    assert c.held == (d.mean_advantage > 0
                      and shipped.frontier.matched["regular_accuracy"].mean_advantage > 0)  # fmt: skip
    assert all(x.stats.n == 3 for x in shipped.frontier.configs)
    assert len(shipped.frontier.configs) == 19 and not shipped.missing


# ------------------------------------------------------------------ metrics-only runs
def test_metrics_only_runs_are_found_but_not_listed(tmp_path, fake_base):
    lean_root, full_root = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs_dir() / SHIPPED_LORA, full_root / SHIPPED_LORA)
    lean = lean_root / SHIPPED_LORA
    lean.mkdir(parents=True)
    shutil.copy(full_root / SHIPPED_LORA / "config.json", lean / "config.json")
    m = json.loads((full_root / SHIPPED_LORA / "metrics.json").read_text())
    (lean / "metrics.json").write_text(json.dumps({**m, "weights_saved": False}))

    only_lean = RunStore([lean_root])
    info = only_lean.find(SHIPPED_LORA)
    assert info is not None and not info.has_weights and info.spectrum is None
    assert only_lean.list() == []
    assert [i.run_id for i in only_lean.list(metrics_only=True)] == [SHIPPED_LORA]
    with pytest.raises(ValueError, match="figures only"):
        only_lean.load_model(info, fake_base)
    both = RunStore([lean_root, full_root])  # a copy with weights in a later root wins
    assert both.find(SHIPPED_LORA).has_weights
    assert [i.path for i in both.list()] == [full_root / SHIPPED_LORA]
    assert [i.path for i in both.list(metrics_only=True)] == [full_root / SHIPPED_LORA]


def test_save_without_weights_keeps_the_records_only(tmp_path):
    base = load_base()
    cfg = FinetuneConfig(steps=2, batch_size=8, eval_every=100, eval_sample=4)
    res = finetune(cfg, base, device="cpu", eval_limit=4)
    store = RunStore([tmp_path], save_root=tmp_path)
    info = store.save(res, weights=False)
    assert sorted(p.name for p in info.path.iterdir()) == ["config.json", "metrics.json"]
    again = store.find(info.run_id)
    assert again is not None and not again.has_weights
    assert again.metrics.stable_rank_mean == info.metrics.stable_rank_mean > 0
    assert again.final == info.final
    with_weights = store.save(res)  # saving it again with weights replaces it
    assert store.find(info.run_id).has_weights and with_weights.spectrum is not None


def test_cli_lists_metrics_only_runs_and_refuses_to_load_one(tmp_path):
    from cli_util import run_minituner

    lean = sorted(_lean_ids())[0]
    env = {"MINITUNER_CACHE": str(tmp_path / "cache")}
    r = run_minituner("runs", env=env)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(lean))
    assert "(figures only)" in line
    assert "(figures only)" not in next(
        ln for ln in r.stdout.splitlines() if ln.startswith(SHIPPED_LORA)
    )
    r = run_minituner("complete", "--run", lean, "He __ to school yesterday.", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "figures only" in r.stderr


def test_precompute_refuses_unknown_experiments_and_bad_shards():
    from cli_util import run_minituner

    r = run_minituner("precompute", "--only", "frontier,nope")
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr
    r = run_minituner("precompute", "--shard", "4/4")
    assert r.returncode == 2 and "0 <= K < N" in r.stderr


def _lean_ids() -> list[str]:
    return [
        p.name
        for p in sorted(runs_dir().iterdir())
        if (p / "metrics.json").is_file()
        and json.loads((p / "metrics.json").read_text()).get("weights_saved") is False
    ]


def test_replay_claim_compares_the_largest_share_with_none(fake_summary):
    rp = fake_summary.replay
    assert claims.replay_claim(rp) is None  # full fine-tuning has no replay run here
    lora = rp.lora  # regular 0.70 -> 0.98, irregular 0.97 -> 0.96
    c = claims.replay_claim(dataclasses.replace(rp, full=lora))
    assert c.held is True
    assert "regular-verb accuracy 0.700 ± 0.000 -> 0.980 ± 0.014 at 25% replay" in c.figures
    stats = lora[1].stats  # loses 0.07 of the irregular verbs:
    irr = dataclasses.replace(stats.irregular_accuracy, mean=0.9)
    worse = dataclasses.replace(lora[1], stats=dataclasses.replace(stats, irregular_accuracy=irr))
    assert claims.replay_claim(dataclasses.replace(rp, full=[lora[0], worse])).held is False
