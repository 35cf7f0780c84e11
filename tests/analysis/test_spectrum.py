"""Tests for minituner.analysis.spectrum: spectra of weight updates, low-rank approximation, the
rank elbow."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.analysis.spectrum import (
    layer_spectra,
    lora_deltas,
    low_rank_approx,
    mean_std,
    rank_elbow,
    spectrum,
    weight_deltas,
)
from minituner.lora.inject import add_lora
from minituner.minigpt.model import MiniGPT, preset_config


def rank_k(m: int, n: int, singular_values, seed: int = 0) -> torch.Tensor:
    """A float64 (m, n) matrix with exactly the given singular values (rank = their count)."""
    g = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return (U * torch.tensor(singular_values, dtype=torch.float64)) @ V.T


# ------------------------------------------------------------------------------ spectrum


@pytest.mark.parametrize("k", [1, 3, 10])
def test_equal_singular_values_give_stable_rank_k(k):
    s = spectrum(rank_k(40, 30, [2.5] * k))
    assert s["stable_rank"] == pytest.approx(k, rel=1e-9)
    assert s["rank_90"] == math.ceil(0.9 * k)
    assert len(s["singular_values"]) == 30
    assert s["singular_values"][:k] == pytest.approx([2.5] * k, rel=1e-9)
    assert max(s["singular_values"][k:]) < 1e-10
    assert s["normalized"][0] == 1.0
    assert s["cumulative_energy"][k - 1] == pytest.approx(1.0)
    assert s["frobenius_norm"] == pytest.approx(2.5 * math.sqrt(k))
    assert s["spectral_norm"] == pytest.approx(2.5)
    assert s["note"] is None


def test_rank_90_and_stable_rank_with_decaying_values():
    s = spectrum(rank_k(20, 16, [3.0, 2.0, 1.0, 0.1]))
    # energies 9, 4, 1, 0.01 of 14.01: cumulative 0.642, 0.928 -> two values reach 90 %
    assert s["rank_90"] == 2
    assert s["stable_rank"] == pytest.approx(14.01 / 9.0)
    assert s["cumulative_energy"][:2] == pytest.approx([9 / 14.01, 13 / 14.01])


def test_all_zero_delta_has_no_nan():
    s = spectrum(torch.zeros(8, 5))
    assert s["stable_rank"] == 0.0
    assert s["rank_90"] == 0
    assert s["note"] and "zero" in s["note"]
    for key in ("singular_values", "normalized", "cumulative_energy"):
        assert len(s[key]) == 5
        assert all(v == 0.0 for v in s[key])


def test_spectrum_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        spectrum(torch.ones(3))


def test_spectrum_is_float64_for_low_precision_input():
    d = rank_k(12, 12, [1.0, 1e-3]).to(torch.bfloat16)
    s = spectrum(d)
    ref = torch.linalg.svdvals(d.double())
    assert s["singular_values"] == pytest.approx(ref.tolist(), rel=1e-12, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(2, 24),
    n=st.integers(2, 24),
    values=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_stable_rank_between_one_and_rank(m, n, values, seed):
    values = values[: min(m, n)]
    s = spectrum(rank_k(m, n, values, seed))
    assert 1.0 - 1e-9 <= s["stable_rank"] <= len(values) + 1e-9
    assert 1 <= s["rank_90"] <= len(values)
    energy = s["cumulative_energy"]
    assert all(a <= b + 1e-12 for a, b in zip(energy, energy[1:], strict=False))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_rank_approx_error_is_the_tail(dtype):
    torch.manual_seed(0)
    d = torch.randn(20, 12, dtype=dtype)
    sv = torch.linalg.svdvals(d.double())
    for k in range(0, 13):
        approx = low_rank_approx(d, k)
        assert approx.dtype == dtype and approx.shape == d.shape
        err = (d.double() - approx.double()).double()
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        assert torch.linalg.matrix_norm(err).item() == pytest.approx(
            sv[k:].pow(2).sum().sqrt().item(), abs=tol
        )
        spectral = torch.linalg.matrix_norm(err, ord=2).item()
        assert spectral == pytest.approx(sv[k].item() if k < 12 else 0.0, abs=tol)
        if k < 12:
            assert torch.linalg.matrix_rank(approx.double(), atol=1e-6).item() == k
    with pytest.raises(ValueError):
        low_rank_approx(d, -1)


def test_layer_spectra_weight_deltas_and_lora_deltas():
    torch.manual_seed(0)
    model = MiniGPT(preset_config("tiny", vocab_size=20, block_size=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight += 0.1 * rank_k(32, 32, [1.0, 0.5]).float()
    deltas = weight_deltas(before, model.state_dict(), suffix="proj.weight")
    assert len(deltas) == 2 * 4
    spectra = layer_spectra(deltas)
    assert list(spectra) == list(deltas)
    assert spectra["blocks.0.attn.q_proj.weight"]["rank_90"] == 2
    assert spectra["blocks.1.attn.q_proj.weight"]["stable_rank"] == 0.0

    add_lora(model, "q,fc_in", r=4, alpha=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    ld = lora_deltas(model)
    assert sorted(ld) == sorted(
        f"blocks.{i}.{m}" for i in range(2) for m in ("attn.q_proj", "mlp.fc_in")
    )
    layer = model.blocks[1].mlp.fc_in
    ref = layer.scaling * (layer.lora_B.double() @ layer.lora_A.double())
    torch.testing.assert_close(ld["blocks.1.mlp.fc_in"], ref)
    assert spectrum(ld["blocks.1.mlp.fc_in"])["rank_90"] <= 4


# ---------------------------------------------------------------------------------- elbow


def test_mean_std():
    assert mean_std([1, 2, 3]) == (2.0, 1.0)
    assert mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_rank_elbow_within_one_std_of_best():
    results = {
        16: [0.81, 0.80, 0.82],
        1: [0.50, 0.52, 0.48],
        2: [0.70, 0.71, 0.69],
        4: [0.80, 0.82, 0.78],
        8: [0.81, 0.83, 0.79],
    }
    e = rank_elbow(results)
    assert e["ranks"] == [1, 2, 4, 8, 16]
    assert e["mean"] == pytest.approx([0.50, 0.70, 0.80, 0.81, 0.81])
    assert e["std"][0] == pytest.approx(0.02)
    assert e["best_r"] == 8  # ties go to the smaller r
    assert e["tolerance"] == pytest.approx(0.02)
    assert e["elbow_r"] == 4
    assert "standard deviation" in rank_elbow.__doc__


def test_rank_elbow_floor_handles_zero_spread():
    results = {1: [0.5] * 3, 2: [0.9] * 3, 4: [0.903] * 3}
    assert rank_elbow(results)["elbow_r"] == 2  # floor 0.005
    assert rank_elbow(results, floor=0.0)["elbow_r"] == 4
    loss = {1: [2.0, 2.0], 2: [1.5, 1.5], 4: [1.499, 1.499]}
    e = rank_elbow(loss, higher_is_better=False)
    assert (e["best_r"], e["elbow_r"]) == (4, 2)
    with pytest.raises(ValueError):
        rank_elbow({})
