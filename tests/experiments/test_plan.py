"""The experiments' plan (minituner.experiments.plan): every run each experiment needs."""

from __future__ import annotations

from minituner.experiments.plan import FULL_LRS, RANKS, TARGET_SETS, lr_search_plan, plan


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
