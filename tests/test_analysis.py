"""Tests for minituner.analysis (spectra, elbow) and minituner.memory (parameter and
memory math, seed figures)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.analysis import (
    layer_spectra,
    lora_deltas,
    low_rank_approx,
    mean_std,
    rank_elbow,
    spectrum,
    weight_deltas,
)
from minituner.lora import add_lora
from minituner.memory import (
    SHAPES,
    ModelShape,
    breakdown_table,
    format_bytes,
    linear_params,
    lora_params,
    measure_cuda_step,
    measured_memory_cpu,
    nf4_bits_per_param,
    predict_memory,
    seed_figures,
    trainable_params,
)
from minituner.model import MiniGPT, preset_config
from minituner.nf4 import NF4Linear, quantize_model_nf4

GiB, MiB, KiB = 2**30, 2**20, 2**10


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


# ------------------------------------------------------------------------ parameter math


def test_parameter_formulas():
    assert lora_params(768, 768, 8) == 12_288
    assert linear_params(768, 768) == 589_824
    assert linear_params(768, 3072, bias=True) == 768 * 3072 + 3072


def test_reference_shapes():
    assert SHAPES["gpt2-small"].total_params() == 124_439_808
    llama = SHAPES["llama-7b"]
    assert llama.total_params() == 6_738_415_616
    assert [lin.name for lin in llama.layer_linears][4:] == ["gate_proj", "up_proj", "down_proj"]
    assert llama.resolve_targets("mlp") == ("gate", "up", "down")
    assert llama.resolve_targets(["fc_out", "q_proj"]) == ("q", "down")
    assert llama.resolve_targets("attn, fc_in") == ("q", "k", "v", "o", "gate", "up")
    assert llama.linears()[-1] == ("lm_head", 4096, 32000)
    assert len(llama.linears()) == 32 * 7 + 1
    with pytest.raises(ValueError, match="gate"):
        llama.resolve_targets("fc_middle")
    with pytest.raises(ValueError):
        SHAPES["gpt2-small"].resolve_targets("gate")
    with pytest.raises(ValueError):
        trainable_params(llama, "adapter")


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("targets", [("q", "v"), ("attn",), ("all",), ("fc_out", "k")])
def test_shape_counts_match_minigpt(preset, targets):
    cfg = preset_config(preset, vocab_size=37, block_size=24)
    model = MiniGPT(cfg)
    shape = ModelShape.from_gpt_config(cfg)
    assert shape.total_params() == model.num_params()
    assert trainable_params(shape, "full") == model.num_params(trainable_only=True)
    assert len(shape.param_tensors()) == len(list(model.parameters()))
    add_lora(model, list(targets), r=4, alpha=8)
    assert trainable_params(shape, "lora", 4, targets) == model.num_params(trainable_only=True)


# -------------------------------------------------------------------------- seed figures


def test_seed_linear_figures():
    f = seed_figures()
    assert f["linear768_full_params"]["exact"] == 589_824  # "590K"
    assert f["linear768_lora8_params"]["exact"] == 12_288  # "12K"
    # "590K x 4 buffers ... ~4.7 MiB": 4 half-precision buffers = 4,718,592 B
    assert f["linear768_full_state"]["exact"] * MiB == 4_718_592
    assert f["linear768_full_state"]["seed_convention"] == pytest.approx(4.7, abs=0.05)
    assert f["linear768_lora8_state"]["exact"] == 96.0  # exactly 96 KiB
    assert f["linear768_full_state"]["mixed_fp32_adam"] == 6.75
    assert f["linear768_ratio"]["exact"] == 48
    assert f["linear4096_full_params"]["exact"] == 16_777_216  # 16.78 M
    assert f["linear4096_lora8_params"]["exact"] == 65_536  # 65 K
    assert f["linear4096_lora16_params"]["exact"] == 131_072  # 131 K
    assert f["linear4096_lora8_ratio"]["exact"] == 256
    assert f["linear4096_lora16_ratio"]["exact"] == 128
    assert f["attn32_full_params"]["exact"] == 2_147_483_648  # 2.15 G
    assert f["attn32_lora8_params"]["exact"] == 8_388_608  # 8.3 M
    assert f["attn32_lora8_percent"]["exact"] < 0.4
    assert f["mlp_layer_full_params"]["exact"] == 134_217_728  # 134 M
    assert f["mlp_layer_lora8_params"]["exact"] == 327_680  # 328 K
    for v in f.values():
        assert set(v) >= {"claim", "seed", "exact", "unit", "rel_diff"}
        assert math.isfinite(v["exact"])


def test_seed_7b_memory_figures():
    f = seed_figures()
    llama = SHAPES["llama-7b"]
    n = llama.total_params()
    n_tensors = len(llama.param_tensors())
    assert n_tensors == 291
    full = predict_memory(llama, "full", precision="mixed")
    assert full["weights"] == full["gradients"] == 2 * n
    assert full["optimizer"] == 8 * n + 4 * n_tensors
    assert full["states_total"] == 12 * n + 4 * n_tensors
    # the chapter: 7e9 x (2 + 2 + 4 + 4) B = 84 "GiB" (decimal); exact: 75.3 GiB
    assert f["llama7b_full_states_total"]["seed_convention"] == pytest.approx(84.0)
    assert f["llama7b_full_optimizer"]["seed_convention"] == pytest.approx(56.0)
    assert f["llama7b_full_weights"]["seed_convention"] == pytest.approx(14.0)
    assert f["llama7b_full_states_total"]["exact"] == pytest.approx(75.31, abs=0.01)
    assert full["states_total"] / 1e9 == pytest.approx(80.86, abs=0.01)

    lora = predict_memory(llama, "lora", r=8, targets=("q", "v"), precision="mixed")
    assert lora["weights"] == 2 * n
    assert lora["lora"] == 4 * 32 * 2 * 8 * (4096 + 4096) == 16 * MiB
    assert 12.5 < lora["states_total"] / GiB < 14.5  # "≈ 14 GiB"
    assert lora["states_total"] / 1e9 == pytest.approx(13.54, abs=0.01)

    q = predict_memory(llama, "qlora", r=8, targets=("q", "v"), precision="mixed")
    assert q["nf4"] / GiB == pytest.approx(3.11, abs=0.01)  # "3.5 GiB" with 7e9 x 0.5 B
    assert f["llama7b_qlora_nf4_base"]["seed_convention"] == pytest.approx(3.5)
    assert q["states_total"] / GiB == pytest.approx(3.6, abs=0.1)  # "≈ 3.6 GiB"
    assert q["states_total"] < 6 * GiB  # "fine-tunes in < 6 GiB"

    # LoRA r=8 on every layer Linear of the 7B shape: well under 1 % trainable
    assert f["llama7b_lora8_all_params"]["exact"] == 19_988_480
    assert f["llama7b_lora8_all_percent"]["exact"] < 1.0
    assert f["llama7b_lora8_all_percent"]["exact"] == pytest.approx(0.2966, abs=1e-4)


def test_nf4_bits():
    assert nf4_bits_per_param(64, False) == 4.5
    assert nf4_bits_per_param(64, True) == pytest.approx(4.127, abs=1e-3)
    shape = ModelShape("one-layer", 4096, 11008, 1, 32, 10, gated_mlp=True, norm_bias=False)
    q = predict_memory(shape, "qlora", block_size=64, double_quant=False)
    n_quantized = 4 * 4096 * 4096 + 3 * 4096 * 11008
    assert q["nf4"] * 8 / n_quantized == 4.5
    q = predict_memory(shape, "qlora", block_size=64, double_quant=True)
    assert q["nf4"] * 8 / n_quantized == pytest.approx(4.127, abs=1e-3)


def test_predict_memory_shapes_and_errors():
    shape = SHAPES["minigpt"]
    p = predict_memory(shape, "lora", batch=2, seq=64)
    assert p["activations_is_estimate"] is True
    assert p["nf4"] == 0
    assert p["total"] == p["states_total"] + p["activations"]
    ckpt = predict_memory(shape, "lora", batch=2, seq=64, activation_checkpointing=True)
    assert 0 < ckpt["activations"] < p["activations"]
    assert predict_memory(shape, "lora", batch=4, seq=64)["activations"] == 2 * p["activations"]
    assert predict_memory(shape, "lora", batch=0)["activations"] == 0
    with pytest.raises(ValueError):
        predict_memory(shape, "full", precision="fp8")
    with pytest.raises(ValueError):
        predict_memory(shape, "prefix")


# ------------------------------------------------------------------ predicted == measured


def _one_step(model: nn.Module, vocab: int) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    idx = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    logits = model(idx)
    F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    opt.step()
    return opt


CASES = [
    ("full", ("q", "v"), True),
    ("lora", ("q", "v"), True),
    ("lora", ("all",), True),
    ("qlora", ("q", "v"), True),
    ("qlora", ("attn", "fc_in"), False),
]


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize(("method", "targets", "double_quant"), CASES)
def test_prediction_equals_cpu_accounting(preset, method, targets, double_quant):
    vocab = 41
    cfg = preset_config(preset, vocab_size=vocab, block_size=32)
    torch.manual_seed(0)
    model = MiniGPT(cfg)
    if method == "qlora":
        quantize_model_nf4(model, block_size=64, double_quant=double_quant)
    if method != "full":
        add_lora(model, list(targets), r=4, alpha=8)
    opt = _one_step(model, vocab)
    measured = measured_memory_cpu(model, opt)
    shape = ModelShape.from_gpt_config(cfg)
    pred = predict_memory(
        shape, method, r=4, targets=targets, precision="fp32", double_quant=double_quant
    )
    for key in ("weights", "lora", "nf4", "gradients", "optimizer"):
        assert pred[key] == measured[key], key
    assert pred["states_total"] == measured["total"]
    if method != "qlora":
        assert measured["storage_slack"] == 0
    assert measured["n_trainable"] == trainable_params(shape, method, 4, targets)
    if method == "qlora":
        nf4_layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
        assert len(nf4_layers) == 6 * cfg.n_layer
        assert measured["nf4"] == sum(m.storage_bytes() for m in nf4_layers) > 0
        assert measured["gradients"] == measured["lora"]


class _Holder(nn.Module):
    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.register_buffer("t", t)


def test_measured_memory_dedupes_tied_weights():
    cfg = preset_config("tiny", vocab_size=30, block_size=16)
    model = MiniGPT(cfg)
    m = measured_memory_cpu(model)
    assert model.lm_head.weight is model.tok_emb.weight
    assert m["weights"] == 4 * model.num_params()
    assert m["gradients"] == m["optimizer"] == 0
    assert m["storage_slack"] == 0
    m = measured_memory_cpu(nn.ModuleDict({"a": model, "view": _Holder(model.tok_emb.weight[:3])}))
    assert m["weights"] == 4 * model.num_params()  # a view of a parameter ...
    assert m["storage_slack"] == 0  # ... is inside storage already counted
    m = measured_memory_cpu(_Holder(torch.zeros(10, 4)[:2]))
    assert (m["weights"], m["storage_slack"]) == (4 * 2 * 4, 4 * 8 * 4)
    half = measured_memory_cpu(model.to(torch.bfloat16))
    assert half["weights"] == predict_memory(ModelShape.from_gpt_config(cfg), "full")["weights"]


def test_measure_cuda_step():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            measure_cuda_step(lambda: None)
        return
    peak = measure_cuda_step(lambda: torch.ones(1024, 1024, device="cuda").sum().item())
    assert peak >= 4 * 1024 * 1024


# ---------------------------------------------------------------------------- formatting


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(98_304) == "96.0 KiB"
    assert format_bytes(4_718_592) == "4.5 MiB"
    assert format_bytes(4_718_592, binary=False) == "4.7 MB"
    assert format_bytes(84e9, digits=0, binary=False) == "84 GB"
    assert format_bytes(84e9) == "78.2 GiB"
    assert format_bytes(-2048) == "-2.0 KiB"


def test_breakdown_table():
    pred = predict_memory(SHAPES["minigpt"], "qlora", batch=1, seq=32)
    measured = {"weights": 10, "gradients": 5, "optimizer": 5, "lora": 0, "nf4": 0}
    rows = breakdown_table(pred, measured)
    sources = {r["source"] for r in rows}
    assert sources == {"predicted", "measured"}
    for s in sources:
        assert sum(r["fraction"] for r in rows if r["source"] == s) == pytest.approx(1.0)
    act = [r for r in rows if r["category"] == "activations"]
    assert len(act) == 1 and act[0]["estimate"] and act[0]["bytes"] == pred["activations"]
    assert next(r for r in rows if r["source"] == "measured")["label"] == "10 B"


def test_activation_estimate_follows_the_documented_formula():
    cfg = preset_config("tiny", vocab_size=30, block_size=16)
    shape = ModelShape.from_gpt_config(cfg)
    C, F_, L, V, H, b, s, r = 32, 128, 2, 30, 2, 3, 16, 4
    p = predict_memory(shape, "lora", r=r, targets="q,v", batch=b, seq=s, precision="fp32")
    a = 9 * C + 2 * F_ + H * s + 2 * r  # per layer and token
    assert p["activations"] == b * s * ((L * a + 2 * C + V) * 4 + 4 * V)
    ck = predict_memory(shape, "lora", r=r, targets="q,v", batch=b, seq=s, precision="fp32",
                        activation_checkpointing=True)  # fmt: skip
    assert ck["activations"] == b * s * ((L * C + a + 2 * C + V) * 4 + 4 * V)
    gated = predict_memory(SHAPES["llama-7b"], "full", batch=1, seq=8, precision="bf16")
    a = 9 * 4096 + 4 * 11008 + 32 * 8
    assert gated["activations"] == 8 * ((32 * a + 2 * 4096 + 32000) * 2 + 4 * 32000)
