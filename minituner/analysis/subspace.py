"""Subspace similarity of two weight updates (Hu et al. 2021, LoRA, section 7).

How much do the top directions of two updates ΔW_A and ΔW_B overlap? With V_A^i the
top-i **right** singular vectors of ΔW_A (columns: unit vectors in the layer's *input*
space, R^in_features, ordered by singular value) and V_B^j those of ΔW_B,

    φ(A, B, i, j) = ‖(V_A^i)ᵀ V_B^j‖_F² / min(i, j)   ∈ [0, 1]

1 when the smaller subspace lies inside the larger one, 0 when they are orthogonal. It
depends only on the two subspaces (not on the basis chosen in each, nor on the scale of
ΔW), and φ(A, B, i, j) = φ(B, A, j, i). Two random subspaces of dimensions i and j in
R^d give φ ≈ max(i, j) / d on average (:func:`chance_level`): the baseline to read a
heatmap against.

The paper compares the right singular vectors of the *A matrices* of an r=8 and an r=64
adapter. We compare the updates themselves, ΔW = (α/r)·B·A for LoRA and W_ft − W_base for
full fine-tuning, so that LoRA and full fine-tuning can be compared too. For a LoRA
update the span of its top-r right singular vectors is the row space of A (whenever B
has full column rank), so at i = r the two definitions agree; below r, ΔW orders the
directions by how much they change the output, A alone does not.

This module is the math (float64 SVD, pure torch): :func:`top_right_singular_vectors`,
:func:`basis_similarity`, :func:`subspace_similarity`, :func:`similarity_grid`,
:func:`chance_level`. :mod:`minituner.analysis.subspace_record` is the precomputed results file
(``<data>/subspace.json``, validated when read) and the sentences made from it;
:mod:`minituner.experiments.subspace` computes it from the stored runs (``python -m minituner
subspace``, and ``precompute``).
"""

from __future__ import annotations

import torch

from minituner.analysis.spectrum import as_matrix

# ---------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int]) -> int:
    """How many singular values exceed σ₁ · max(shape) · eps(float64): beyond them the
    singular vectors are rounding noise, not directions of the update."""
    if singular_values.numel() == 0 or float(singular_values[0]) == 0.0:
        return 0
    tol = float(singular_values[0]) * max(shape) * torch.finfo(torch.float64).eps
    return int((singular_values > tol).sum())


def top_right_singular_vectors(delta: torch.Tensor, k: int, name: str = "dW") -> torch.Tensor:
    """The top-k right singular vectors of ``delta`` (out, in) as columns: (in, k), float64.

    Raises:
        TypeError: ``delta`` is not a tensor.
        ValueError: not a finite 2-D matrix, k < 1, or k above its numerical rank (the
            k-th direction would be undefined: an r=8 LoRA update has only 8).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: k must be a whole number >= 1, got {k!r}")
    m = as_matrix(delta, name, finite=True)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)  # vh: (min(out, in), in)
    rank = numerical_rank(s, tuple(m.shape))
    if k > rank:
        raise ValueError(
            f"{name}: asked for its top {k} directions but it has numerical rank {rank}"
        )
    return vh[:k].T.contiguous()  # (in, k)


def basis_similarity(va: torch.Tensor, vb: torch.Tensor) -> float:
    """‖vaᵀ vb‖_F² / min(i, j) for orthonormal column bases va (d, i) and vb (d, j).

    Raises:
        ValueError: different d, an empty basis, or columns that are not orthonormal.
    """
    if va.ndim != 2 or vb.ndim != 2 or va.shape[0] != vb.shape[0]:
        raise ValueError(
            f"bases must be (d, i) and (d, j): got {tuple(va.shape)}, {tuple(vb.shape)}"
        )
    if va.shape[1] == 0 or vb.shape[1] == 0:
        raise ValueError("a basis needs at least one column")
    va, vb = va.to(torch.float64), vb.to(torch.float64)
    for v, name in ((va, "first"), (vb, "second")):
        eye = torch.eye(v.shape[1], dtype=torch.float64)
        if not torch.allclose(v.T @ v, eye, atol=1e-8):
            raise ValueError(f"the {name} basis does not have orthonormal columns")
    overlap = float((va.T @ vb).pow(2).sum())
    return _clip(overlap / min(va.shape[1], vb.shape[1]))


def _clip(phi: float) -> float:
    # rounding may put an exact 0 or 1 a few ulps outside [0, 1]; anything more is a bug
    if not -1e-9 <= phi <= 1 + 1e-9:
        raise AssertionError(f"subspace similarity {phi} outside [0, 1]")
    return min(max(phi, 0.0), 1.0)


def subspace_similarity(a: torch.Tensor, b: torch.Tensor, i: int, j: int) -> float:
    """φ(A, B, i, j) of two updates of one layer (same in_features), in [0, 1].

    Raises:
        ValueError: different input dimensions, or i, j out of 1..numerical rank.
    """
    return float(similarity_grid(a, b, i, j)[i - 1, j - 1])


def similarity_grid(a: torch.Tensor, b: torch.Tensor, max_i: int, max_j: int) -> torch.Tensor:
    """φ(A, B, i, j) for every i in 1..max_i and j in 1..max_j: a (max_i, max_j) float64
    tensor whose [i-1, j-1] entry is φ(A, B, i, j).

    One SVD per update: with P = (V_Aᵀ V_B)² elementwise, ‖(V_A^i)ᵀ V_B^j‖_F² is the sum of
    P's top-left i×j block, so two cumulative sums give the whole grid.

    Raises:
        ValueError: different input dimensions, or max_i / max_j out of 1..numerical rank.
    """
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] != b.shape[1]:
        raise ValueError(
            f"updates of different input dimensions: {tuple(a.shape)} and {tuple(b.shape)}"
        )
    va = top_right_singular_vectors(a, max_i, "A")  # (in, max_i)
    vb = top_right_singular_vectors(b, max_j, "B")  # (in, max_j)
    p = (va.T @ vb).pow(2)  # (max_i, max_j)
    block = p.cumsum(0).cumsum(1)
    i = torch.arange(1, max_i + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, max_j + 1, dtype=torch.float64)[None, :]
    grid = block / torch.minimum(i, j)
    lo, hi = float(grid.min()), float(grid.max())
    _clip(lo), _clip(hi)  # raises on a bug, passes rounding
    return grid.clamp(0.0, 1.0)


def chance_level(i: int, j: int, d: int) -> float:
    """E[φ] for uniformly random subspaces of dimensions i and j in R^d: i·j/d / min(i, j)
    = max(i, j) / d (E‖V_iᵀ V_j‖_F² = i·j/d)."""
    return max(i, j) / d
