"""Subspace similarity φ(A, B, i, j) (minituner.analysis.subspace) against a float64 numpy
recomputation, and its invariants (hypothesis). (The subspace.json record:
test_subspace_record.py; the shipped runs' comparisons: tests/experiments/test_subspace.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.analysis import subspace as S


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
