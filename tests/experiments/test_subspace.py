"""Subspace similarity of the shipped runs (minituner.experiments.subspace): the comparisons
found through experiments.json, φ grids of two runs' updates, the data folder README's
section, and ``python -m minituner subspace`` reproducing the shipped subspace.json."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from record_util import subspace_record as record

from minituner.analysis import subspace_record as R
from minituner.analysis.subspace import similarity_grid
from minituner.experiments import subspace as subspace_runs


def test_readme_section_is_replaced_not_repeated(tmp_path):
    path = R.write_subspace(record(), tmp_path / "subspace.json")
    readme = tmp_path / "README.md"
    readme.write_text("# data\n\nsome findings\n")
    subspace_runs.update_readme(readme, path)
    once = readme.read_text()
    assert once.startswith("# data\n\nsome findings\n\n" + subspace_runs.README_BEGIN)
    assert "| LoRA r=2 vs LoRA r=3 | q_proj | 0.500 | 0.500 | 0.500 | 2, 3 |" in once
    R.write_subspace(record(phi_a=0.05), path)
    subspace_runs.update_readme(readme, path)
    twice = readme.read_text()
    assert twice.count(subspace_runs.README_BEGIN) == 1 and "| v_proj | 0.050 |" in twice
    assert twice.startswith("# data\n\nsome findings\n\n")
    path.write_text("[]")
    assert "cannot be read" in "\n".join(subspace_runs.readme_lines(path))
    assert subspace_runs.readme_lines(tmp_path / "none.json") == []


def test_the_cli_command_reproduces_the_shipped_file(tmp_path):
    """`python -m minituner subspace` recomputes precomputed/subspace.json from the stored
    runs (no training) and prints the figures the README and the page quote."""
    from cli_util import run_minituner

    out = tmp_path / "subspace.json"
    proc = run_minituner("subspace", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    got, shipped = R.read_subspace(out), R.read_subspace()
    assert [p.name for p in got.pairs] == [p.name for p in shipped.pairs]
    for a, b in zip(got.pairs, shipped.pairs, strict=True):
        assert (a.a, a.b, a.max_i, a.max_j, list(a.layers)) == (
            b.a,
            b.b,
            b.max_i,
            b.max_j,
            list(b.layers),
        )
        for name in a.layers:
            assert np.allclose(a.layers[name].phi, b.layers[name].phi, atol=2e-4), (a.name, name)
    row = R.summary_rows(got)[0]
    assert f"{row['pair']:<34}  {row['layers']:<6}" in proc.stdout
    assert f"{row['phi_11']:8.3f}" in proc.stdout
    assert R.conclusion(got) in proc.stdout
    assert "updated" not in proc.stdout  # --out: the data folder's README is left alone


# ---------------------------------------------------------------------- the comparisons
def test_the_comparisons_are_found_through_experiments_json(store, shipped):
    pairs = subspace_runs.plan_pairs(store, shipped)
    assert [p[0] for p in pairs] == [
        "r8_vs_r64", "r8_vs_r64_other_seed", "r8_seed0_vs_seed1", "r8_vs_full", "r64_vs_full"
    ]  # fmt: skip
    setting = {
        name: [(i.method, i.finetune_config().r, i.finetune_config().seed) for i in (a, b)]
        for name, _, a, b in pairs
    }
    assert setting["r8_vs_r64"] == [("lora", 8, 0), ("lora", 64, 0)]
    assert setting["r8_vs_r64_other_seed"] == [("lora", 8, 0), ("lora", 64, 1)]
    assert setting["r8_seed0_vs_seed1"] == [("lora", 8, 0), ("lora", 8, 1)]
    assert setting["r8_vs_full"][1][0] == setting["r64_vs_full"][1][0] == "full"
    for _, _, a, b in pairs:  # every run named is one of experiments.json's
        assert {a.run_id, b.run_id} <= {i.run_id for i in store.list()}


def test_a_missing_section_is_named(store, shipped):
    no_full = dataclasses.replace(shipped, forgetting=None)
    with pytest.raises(ValueError, match="lacks rank_sweep.runs or forgetting.full"):
        subspace_runs.plan_pairs(store, no_full)
    sweep = dataclasses.replace(shipped.rank_sweep, runs={**shipped.rank_sweep.runs, 64: []})
    with pytest.raises(ValueError, match="no stored LoRA r=64 run with seed 0"):
        subspace_runs.plan_pairs(store, dataclasses.replace(shipped, rank_sweep=sweep))


def test_refresh_reports_a_missing_run_in_one_line_and_writes_nothing(store, fbase, shipped):
    logged: list[str] = []
    no_full = dataclasses.replace(shipped, forgetting=None)
    before = R.subspace_file().read_bytes()
    assert subspace_runs.refresh(store, fbase, no_full, log=logged.append) is None
    assert len(logged) == 1 and logged[0].startswith("subspace similarity not computed: ")
    assert "forgetting.full" in logged[0]
    assert R.subspace_file().read_bytes() == before


def _updates(seed: int, names: list[str], out: int = 6, inp: int = 5, rank: int = 3):
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(out, rank, generator=g, dtype=torch.float64)
        @ torch.randn(rank, inp, generator=g, dtype=torch.float64)
        for n in names
    }


def test_compare_runs_grids_the_layers_both_runs_adapted():
    a = _updates(0, ["q", "v", "k"])
    b = _updates(1, ["v", "q"])
    grids = subspace_runs.compare_runs(a, b, 2, 3)
    assert list(grids) == ["q", "v"]  # in A's order, only the shared ones
    for name, grid in grids.items():
        assert grid.in_features == 5
        want = similarity_grid(a[name], b[name], 2, 3).tolist()
        assert [list(r) for r in grid.phi] == want
    same = subspace_runs.compare_runs(a, a, 3, 3)["q"]
    assert same.at(3, 3) == pytest.approx(1.0)


def test_compare_runs_refuses_no_shared_layer_and_names_a_short_one():
    a = _updates(0, ["q"])
    with pytest.raises(ValueError, match="no layer in common"):
        subspace_runs.compare_runs(a, _updates(1, ["v"]), 1, 1)
    with pytest.raises(ValueError, match=r"^q: "):
        subspace_runs.compare_runs(a, _updates(1, ["q"], rank=2), 1, 3)
