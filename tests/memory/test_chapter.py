"""The source chapter's figures (minituner.memory.chapter): each rounded figure beside the
exact one from minituner.memory.shapes and .predict, with the chapter's own convention."""

from __future__ import annotations

import math

import pytest

from minituner.memory.chapter import seed_figures
from minituner.memory.predict import predict_memory
from minituner.memory.shapes import SHAPES

GiB, MiB = 2**30, 2**20

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


def test_every_figure_states_its_relative_difference():
    figures = seed_figures()
    assert len(figures) >= 20
    for key, f in figures.items():
        assert isinstance(f["claim"], str) and f["claim"], key
        assert f["seed"] > 0, key
        assert f["rel_diff"] == pytest.approx((f["exact"] - f["seed"]) / f["seed"]), key
