"""Tests for minituner.memory.predict (parameter counts, predicted memory), minituner.memory.measure
(the live-tensor accounting, which must equal the prediction to the byte on CPU) and
minituner.memory.chapter (the source chapter's figures)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minituner.lora.inject import add_lora
from minituner.memory.chapter import seed_figures
from minituner.memory.measure import measure_cuda_step, measured_memory_cpu
from minituner.memory.predict import linear_params, lora_params, predict_memory, trainable_params
from minituner.memory.shapes import SHAPES, ModelShape
from minituner.minigpt.model import MiniGPT, preset_config
from minituner.nf4.linear import NF4Linear, quantize_model_nf4

GiB, MiB = 2**30, 2**20

# ------------------------------------------------------------------------ parameter math


def test_parameter_formulas():
    assert lora_params(768, 768, 8) == 12_288
    assert linear_params(768, 768) == 589_824
    assert linear_params(768, 3072, bias=True) == 768 * 3072 + 3072


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


def test_nf4_bits_per_quantized_weight():
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
