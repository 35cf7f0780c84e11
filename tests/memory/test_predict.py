"""Tests for minituner.memory.predict (parameter counts, predicted memory), and the
prediction against minituner.memory.measure's live-tensor accounting, which must agree to
the byte on CPU. (The measurement itself: test_measure.py; the chapter's figures:
test_chapter.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minituner.lora.inject import add_lora
from minituner.memory.measure import measured_memory_cpu
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
