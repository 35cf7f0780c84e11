"""Subspace similarity φ(A, B, i, j) (minituner.analysis.subspace, subspace_record) against a
float64 numpy recomputation, its invariants (hypothesis), the subspace.json record, its
section of the data folder's README (minituner.experiments.subspace) and the shipped file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.analysis import subspace as S
from minituner.analysis import subspace_record as R
from minituner.experiments import subspace as subspace_runs


# ---------------------------------------------------------------------- reference
def phi_numpy(a: np.ndarray, b: np.ndarray, i: int, j: int) -> float:
    """The definition, written out: right singular vectors from numpy's SVD, float64."""
    va = np.linalg.svd(a.astype(np.float64))[2][:i].T  # (in, i)
    vb = np.linalg.svd(b.astype(np.float64))[2][:j].T  # (in, j)
    return float(np.linalg.norm(va.T @ vb, "fro") ** 2 / min(i, j))


def gaussian(seed: int, out: int, inp: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((out, inp)))


def orthogonal(seed: int, n: int) -> torch.Tensor:
    q, r = torch.linalg.qr(gaussian(seed, n, n))
    return q * torch.sign(torch.diagonal(r))  # (n, n), Haar-distributed


def low_rank(seed: int, out: int, v: torch.Tensor, s: list[float]) -> torch.Tensor:
    """U diag(s) Vᵀ with the given right singular vectors v (in, k), a random U."""
    u = orthogonal(seed, out)[:, : len(s)]
    return (u * torch.tensor(s, dtype=torch.float64)) @ v.T


shapes = st.tuples(st.integers(3, 12), st.integers(3, 12))
seeds = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------- the math
@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(1, 12), seeds, seeds)
def test_grid_matches_numpy_reference(shape, out_b, sa, sb):
    out, inp = shape
    a, b = gaussian(sa, out, inp), gaussian(sb, out_b, inp)
    ka, kb = min(out, inp), min(out_b, inp)
    grid = S.similarity_grid(a, b, ka, kb)
    assert grid.shape == (ka, kb) and grid.dtype == torch.float64
    for i in range(1, ka + 1):
        for j in range(1, kb + 1):
            assert grid[i - 1, j - 1].item() == pytest.approx(
                phi_numpy(a.numpy(), b.numpy(), i, j), abs=1e-9
            )
    assert S.subspace_similarity(a, b, ka, kb) == pytest.approx(grid[-1, -1].item(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(shapes, seeds, seeds, st.data())
def test_in_unit_interval_and_swap_symmetric(shape, sa, sb, data):
    out, inp = shape
    a, b = gaussian(sa, out, inp), gaussian(sb, out, inp)
    k = min(out, inp)
    i, j = data.draw(st.integers(1, k)), data.draw(st.integers(1, k))
    phi = S.subspace_similarity(a, b, i, j)
    assert 0.0 <= phi <= 1.0
    assert S.subspace_similarity(b, a, j, i) == pytest.approx(phi, abs=1e-12)
    assert S.subspace_similarity(b, a, i, i) == pytest.approx(S.subspace_similarity(a, b, i, i))


@settings(max_examples=30, deadline=None)
@given(shapes, seeds)
def test_identical_updates_give_one(shape, seed):
    a = gaussian(seed, *shape)
    k = min(shape)
    grid = S.similarity_grid(a, a, k, k)
    assert torch.allclose(torch.diagonal(grid), torch.ones(k, dtype=torch.float64), atol=1e-12)
    # the smaller top set is contained in the larger one
    assert torch.allclose(grid, torch.ones_like(grid), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(shapes, seeds, seeds, st.floats(1e-3, 1e3), st.booleans())
def test_invariant_to_scale_and_to_the_output_side(shape, sa, sb, c, negate):
    out, inp = shape
    a, b = gaussian(sa, out, inp), gaussian(sb, out, inp)
    k = min(out, inp)
    ref = S.similarity_grid(a, b, k, k)
    scaled = (-c if negate else c) * a
    assert torch.allclose(S.similarity_grid(scaled, b, k, k), ref, atol=1e-8)
    # an orthogonal map of the output space leaves the right singular vectors alone
    q = orthogonal(sa ^ 1, out)
    assert torch.allclose(S.similarity_grid(q @ a, b, k, k), ref, atol=1e-8)
    # rotating both updates' input space together changes no overlap
    r = orthogonal(sb ^ 1, inp)
    assert torch.allclose(S.similarity_grid(a @ r, b @ r, k, k), ref, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(7, 12), st.integers(1, 3), st.integers(1, 3), seeds, st.floats(0.1, 10))
def test_rotation_within_the_subspace_changes_nothing(d, i, j, seed, s):
    """Equal top singular values: the top-i basis is only defined up to a rotation;
    φ at that i does not depend on it (and basis_similarity does not either)."""
    basis = orthogonal(seed, d)
    va = basis[:, :i]
    vb, _ = torch.linalg.qr(basis[:, i - 1 : i - 1 + j] + 0.3 * basis[:, d - 1 :])  # partly in va
    rot = orthogonal(seed ^ 7, i)
    assert S.basis_similarity(va @ rot, vb) == pytest.approx(S.basis_similarity(va, vb), abs=1e-10)
    b = low_rank(seed ^ 3, d, vb, [3.0 * s] * j)
    one = low_rank(seed ^ 5, d, va, [s] * i)
    rotated = low_rank(seed ^ 5, d, va @ rot, [s] * i)
    assert S.subspace_similarity(rotated, b, i, j) == pytest.approx(
        S.subspace_similarity(one, b, i, j), abs=1e-9
    )
    assert S.subspace_similarity(one, b, i, j) == pytest.approx(
        S.basis_similarity(va, vb), abs=1e-9
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 16), st.data(), seeds)
def test_orthogonal_subspaces_give_zero(d, data, seed):
    i = data.draw(st.integers(1, d - 1))
    j = data.draw(st.integers(1, d - i))
    basis = orthogonal(seed, d)
    s_a = sorted(data.draw(st.lists(st.floats(0.5, 5), min_size=i, max_size=i)), reverse=True)
    s_b = sorted(data.draw(st.lists(st.floats(0.5, 5), min_size=j, max_size=j)), reverse=True)
    a = low_rank(seed ^ 1, d + 2, basis[:, :i], s_a)
    b = low_rank(seed ^ 2, d + 1, basis[:, i : i + j], s_b)
    assert torch.allclose(
        S.similarity_grid(a, b, i, j), torch.zeros(i, j, dtype=torch.float64), atol=1e-10
    )


def test_random_subspaces_average_the_chance_level():
    d, i, j = 64, 4, 16
    phis = [
        S.subspace_similarity(gaussian(s, 32, d), gaussian(s + 1000, 32, d), i, j)
        for s in range(200)
    ]
    assert np.mean(phis) == pytest.approx(S.chance_level(i, j, d), abs=0.03)


def test_lora_update_spans_the_row_space_of_a():
    """At i = r the top right singular vectors of ΔW = s·B·A span A's rows: the paper's
    definition (on A) and ours (on ΔW) agree there."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 40, generator=g, dtype=torch.float64)
    b = torch.randn(30, 8, generator=g, dtype=torch.float64)
    delta = 2.0 * b @ a
    assert S.subspace_similarity(delta, a, 8, 8) == pytest.approx(1.0, abs=1e-10)
    assert S.subspace_similarity(delta, a, 3, 8) == pytest.approx(1.0, abs=1e-10)


def test_block_sums_never_shrink():
    """‖V_A^iᵀ V_B^j‖² grows with i and j: what the cumulative sums rely on."""
    a, b = gaussian(1, 20, 16), gaussian(2, 20, 16)
    grid = S.similarity_grid(a, b, 16, 16)
    mins = torch.minimum(torch.arange(1, 17)[:, None], torch.arange(1, 17)[None, :])
    mass = grid * mins
    assert (mass.diff(dim=0) >= -1e-12).all() and (mass.diff(dim=1) >= -1e-12).all()
    assert mass[-1, -1].item() == pytest.approx(16.0)


def test_errors_name_the_problem():
    a = gaussian(0, 6, 5)
    with pytest.raises(ValueError, match="input dimensions"):
        S.similarity_grid(a, gaussian(1, 6, 4), 1, 1)
    with pytest.raises(ValueError, match="numerical rank 2"):
        rank2 = gaussian(2, 6, 2) @ gaussian(3, 2, 5)
        S.similarity_grid(rank2, a, 3, 1)
    with pytest.raises(ValueError, match="numerical rank 0"):
        S.subspace_similarity(torch.zeros(4, 5), a, 1, 1)
    with pytest.raises(ValueError, match="k must be"):
        S.subspace_similarity(a, a, 0, 1)
    with pytest.raises(ValueError, match="NaN"):
        S.subspace_similarity(a * float("nan"), a, 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        S.subspace_similarity(torch.ones(5), a, 1, 1)
    with pytest.raises(TypeError):
        S.subspace_similarity(np.ones((5, 5)), a, 1, 1)
    with pytest.raises(ValueError, match="orthonormal"):
        S.basis_similarity(torch.ones(5, 2), torch.eye(5)[:, :1])


def test_float32_input_is_computed_in_float64():
    a32 = gaussian(4, 10, 10).float()
    b32 = gaussian(5, 10, 10).float()
    got = S.subspace_similarity(a32, b32, 3, 5)
    assert got == pytest.approx(
        phi_numpy(a32.double().numpy(), b32.double().numpy(), 3, 5), abs=1e-9
    )


# ---------------------------------------------------------------------- the record
def record(phi_a=0.25) -> R.SubspaceRecord:
    grid = ((phi_a, 0.5, 0.75), (0.5, 0.6, 0.9))
    layers = {
        "blocks.0.attn.q_proj": R.LayerGrid(16, grid),
        "blocks.1.attn.q_proj": R.LayerGrid(
            16, tuple(tuple(round(1.0 - v, 4) for v in r) for r in grid)
        ),
        "blocks.0.attn.v_proj": R.LayerGrid(16, grid),
    }
    pair = R.Pair(
        "p", "LoRA r=2 vs LoRA r=3", R.RunRef("a" * 12, "A"), R.RunRef("b" * 12, "B"), 2, 3, layers
    )
    return R.SubspaceRecord(base_model_id="m", pairs=(pair,))


def test_record_round_trip_and_means(tmp_path):
    rec = record()
    path = R.write_subspace(rec, tmp_path / "subspace.json")
    back = R.read_subspace(path)
    assert back == rec
    pair = back.pair("p")
    assert pair.kinds() == ["q_proj", "v_proj"]
    assert pair.mean_phi("q_proj", 1, 1) == pytest.approx((0.25 + 0.75) / 2)
    assert pair.mean_phi("v_proj", 2, 3) == pytest.approx(0.9)
    assert pair.mean_chance("q_proj", 2, 3) == pytest.approx(3 / 16)
    text = R.headline(pair)
    assert "φ(1,1) = 0.50 and 0.25 on q_proj and v_proj (random directions: 0.062)" in text
    assert "φ(2,3) = 0.50 and 0.90 on q_proj and v_proj (random subspaces: 0.19)" in text
    with pytest.raises(ValueError, match="no k_proj"):
        pair.mean_phi("k_proj", 1, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("pairs"), "pairs is missing"),
        (lambda d: d.update(pairs=[]), "pairs is empty"),
        (lambda d: d.update(schema_version=2), "schema_version is 2"),
        (lambda d: d.update(extra=1), "extra is not a known field"),
        (lambda d: d["pairs"][0].update(max_i="2"), r"pairs\[0\].max_i must be a whole number"),
        (lambda d: d["pairs"][0]["layers"]["blocks.0.attn.q_proj"]["phi"].pop(), "has 1 rows"),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.q_proj"]["phi"][0].append(0.1),
            "max_j = 3",
        ),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.v_proj"]["phi"][1].__setitem__(0, 1.5),
            "1.5",
        ),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.v_proj"]["phi"][1].__setitem__(
                0, None
            ),
            r"phi\[1\]\[0\] must be a number, not null",
        ),
        (lambda d: d["pairs"][0]["a"].pop("run_id"), r"pairs\[0\].a.run_id is missing"),
        (lambda d: d["pairs"].append(d["pairs"][0]), "repeat a name"),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.q_proj"].update(in_features=2),
            "in_features",
        ),
    ],
)
def test_a_malformed_file_is_one_clear_error(tmp_path, change, message):
    data = record().to_json()
    change(data)
    path = tmp_path / "subspace.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as e:
        R.read_subspace(path)
    assert str(path) in str(e.value)


def test_missing_or_invalid_json_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        R.read_subspace(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        R.read_subspace(bad)


# ---------------------------------------------------------------------- the shipped file
def test_shipped_file_is_valid_and_agrees_with_its_definition():
    rec = R.read_subspace()  # precomputed/subspace.json, validated
    assert rec.command == R.COMMAND
    names = {p.name for p in rec.pairs}
    assert {"r8_vs_r64", "r8_vs_full"} <= names
    fig3 = rec.pair("r8_vs_r64")
    assert (fig3.max_i, fig3.max_j) == (8, 64)
    assert fig3.kinds() == ["q_proj", "v_proj"] and len(fig3.layers) == 8
    for grid in fig3.layers.values():
        phi = np.array(grid.phi)
        mass = phi * np.minimum(np.arange(1, 9)[:, None], np.arange(1, 65)[None, :])
        # block sums of squared overlaps only grow (up to the file's 4 decimals)
        assert (np.diff(mass, axis=0) >= -1e-3).all() and (np.diff(mass, axis=1) >= -1e-3).all()
        assert math.isclose(grid.at(1, 1), phi[0, 0])


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


def constant_pair(name: str, value: float, d: int = 16) -> R.Pair:
    grid = tuple(tuple(value for _ in range(3)) for _ in range(2))
    layers = {f"blocks.{k}.attn.{kind}": R.LayerGrid(d, grid) for k in (0, 1) for kind in "qv"}
    return R.Pair(name, name, R.RunRef("a" * 12, "A"), R.RunRef("b" * 12, "B"), 2, 3, layers)


@pytest.mark.parametrize(
    ("same", "other", "full", "words"),
    [
        (0.9, 0.25, 0.2, ["+0.71 with the same seed, +0.06 with another", "goes away", "about as"]),
        (
            0.9,
            0.8,
            0.6,
            ["+0.71 with the same seed, +0.61 with another", "survives", "share input"],
        ),
        (0.1, 0.1, 0.2, ["share no more than random", "about as much as random"]),
    ],
)
def test_conclusion_is_chosen_by_the_numbers(same, other, full, words):
    pairs = (
        constant_pair("r8_vs_r64", same),
        constant_pair("r8_vs_r64_other_seed", other),
        constant_pair("r8_vs_full", full),
    )
    text = R.conclusion(R.SubspaceRecord("m", pairs))
    for w in words:
        assert w in text
    assert R.conclusion(R.SubspaceRecord("m", pairs[:1])) is None


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


def test_the_cli_command_without_runs_is_one_error_line(tmp_path):
    from cli_util import run_minituner

    proc = run_minituner("--data", str(tmp_path), "subspace")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "subspace.json").exists()
