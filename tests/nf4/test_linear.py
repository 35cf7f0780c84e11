"""NF4Linear (minituner.nf4.linear): the layer, its buffers and casts, its low-memory
variant, and putting whole models into 4 bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from nf4_util import SETTINGS

from minituner.nf4.codec import dequantize_nf4, quantize_nf4
from minituner.nf4.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DOUBLE_QUANT,
    NF4Tensor,
)
from minituner.nf4.linear import NF4Linear, NF4LinearLowMem, quantize_model_nf4
from minituner.nf4.storage import (
    bits_per_param,
    nf4_model_bytes,
    nf4_numel_bytes,
    nf4_storage_bytes,
)

# ---------------------------------------------------------------------------- NF4Linear


@SETTINGS
@given(
    in_f=st.integers(1, 48),
    out_f=st.integers(1, 48),
    batch=st.lists(st.integers(1, 4), max_size=2),
    bias=st.booleans(),
    double_quant=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_nf4linear_forward_is_linear_with_the_dequantized_weight(
    in_f, out_f, batch, bias, double_quant, dtype
):
    torch.manual_seed(in_f * 100 + out_f)
    lin = nn.Linear(in_f, out_f, bias=bias)
    m = NF4Linear.from_linear(lin, block_size=64, double_quant=double_quant)
    x = torch.randn(*batch, in_f).to(dtype)
    w = m.dequantize_weight(dtype)
    assert w.shape == (out_f, in_f) and w.dtype == dtype
    expected = F.linear(x, w, None if lin.bias is None else lin.bias.to(dtype))
    assert torch.equal(m(x), expected)
    ref = dequantize_nf4(quantize_nf4(lin.weight, 64, double_quant))
    assert torch.equal(m.dequantize_weight(), ref)


def test_nf4linear_is_frozen_and_keeps_the_bias():
    lin = nn.Linear(96, 40)
    m = NF4Linear.from_linear(lin, double_quant=True)
    assert (m.in_features, m.out_features) == (96, 40)
    assert not any(p.requires_grad for p in m.parameters())
    assert torch.equal(m.bias, lin.bias) and m.bias.dtype == torch.float32
    assert {n for n, _ in m.named_buffers()} >= {"weight_codes", "weight_absmax"}
    x = torch.randn(3, 96, requires_grad=True)
    m(x).sum().backward()  # gradients reach the input (LoRA and earlier layers need it)
    assert x.grad is not None and x.grad.abs().sum() > 0
    err = (m.dequantize_weight() - lin.weight).abs().max()
    assert err <= 0.16 * lin.weight.abs().max()
    assert m.storage_bytes() == nf4_numel_bytes(96 * 40, 64, True)


def test_nf4linear_dtype_casts_keep_float32_scales():
    m = NF4Linear.from_linear(nn.Linear(64, 64), double_quant=True)
    before = m.dequantize_weight()
    m.to(torch.bfloat16)
    assert m.weight_absmax_scale.dtype == torch.float32
    assert m.weight_absmax_offset.dtype == torch.float32
    assert m.bias.dtype == torch.bfloat16 and m.weight_dtype == torch.bfloat16
    assert torch.equal(m.dequantize_weight(torch.float32), before)
    m.float()
    assert m.dequantize_weight().dtype == torch.float32
    plain = NF4Linear.from_linear(nn.Linear(64, 8), double_quant=False).half()
    assert plain.weight_absmax.dtype == torch.float32


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_nf4linear_state_dict_round_trips_through_safetensors(tmp_path, double_quant, bias):
    from safetensors.torch import load_file, save_file

    lin = nn.Linear(70, 30, bias=bias)
    m = NF4Linear.from_linear(lin, block_size=64, double_quant=double_quant)
    path = tmp_path / "nf4.safetensors"
    save_file(m.state_dict(), str(path))
    fresh = NF4Linear(70, 30, bias=bias, block_size=64, double_quant=double_quant)
    fresh.load_state_dict(load_file(str(path)))
    assert torch.equal(fresh.dequantize_weight(), m.dequantize_weight())
    x = torch.randn(5, 70)
    assert torch.equal(fresh(x), m(x))


def test_nf4linear_holds_one_nf4tensor_and_forward_makes_none(monkeypatch):
    lin = nn.Linear(70, 30)
    m = NF4Linear.from_linear(lin, double_quant=True)
    q = m.quantized_weight
    assert isinstance(q, NF4Tensor) and q.shape == (30, 70)
    assert torch.equal(m.dequantize_weight(), dequantize_nf4(quantize_nf4(lin.weight, 64, True)))
    buffers = dict(m.named_buffers())
    assert all(buffers[f"weight_{k}"] is t for k, t in q.tensors().items())  # no copies
    made = []
    init = NF4Tensor.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(NF4Tensor, "__init__", counting_init)
    x = torch.randn(4, 70)
    y = m(x)
    m.dequantize_weight()
    assert made == [] and m.quantized_weight is q  # nothing re-packed per call
    assert torch.equal(y, F.linear(x, dequantize_nf4(q), lin.bias))


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4linear_weight_follows_its_buffers(double_quant):
    """Moves, casts, loads (in place or assigned) and assignments keep the NF4Tensor and
    the buffers the same tensors."""

    def same(m):
        q, buffers = m.quantized_weight, dict(m.named_buffers())
        assert buffers.keys() == {f"weight_{k}" for k in q.tensors()}
        return all(buffers[f"weight_{k}"] is t for k, t in q.tensors().items())

    src = NF4Linear.from_linear(nn.Linear(70, 30), double_quant=double_quant)
    x = torch.randn(3, 70)
    want = src(x)
    m = NF4Linear(70, 30, double_quant=double_quant)
    m.load_state_dict(src.state_dict())
    assert same(m) and torch.equal(m(x), want)
    m = NF4Linear(70, 30, double_quant=double_quant)
    m.load_state_dict(src.state_dict(), assign=True)
    assert same(m) and torch.equal(m(x), want)
    m.to(torch.bfloat16)
    assert same(m) and m.quantized_weight.dtype == torch.bfloat16
    assert torch.equal(m(x.bfloat16()), F.linear(x.bfloat16(), src.dequantize_weight(
        torch.bfloat16), src.bias.bfloat16()))  # fmt: skip
    m.weight_codes = src.weight_codes.clone()
    assert same(m)
    with pytest.raises(ValueError, match="inconsistent"):
        m.weight_codes = src.weight_codes[:-1]
    with pytest.raises(ValueError, match="shape"):
        m.quantized_weight = quantize_nf4(torch.randn(30, 71))


def test_layers_and_the_codec_share_one_default():
    w = nn.Linear(70, 30)
    q = quantize_nf4(w.weight)
    assert (q.block_size, q.double_quant) == (DEFAULT_BLOCK_SIZE, DEFAULT_DOUBLE_QUANT)
    for m in (NF4Linear(70, 30), NF4Linear.from_linear(w)):
        assert (m.block_size, m.double_quant) == (DEFAULT_BLOCK_SIZE, DEFAULT_DOUBLE_QUANT)
    model = nn.Sequential(nn.Linear(8, 8))
    quantize_model_nf4(model)
    assert model[0].double_quant == DEFAULT_DOUBLE_QUANT
    n = 96 * 40
    assert (
        nf4_model_bytes([(96, 40)])["nf4"]
        == nf4_numel_bytes(n)
        == nf4_storage_bytes(quantize_nf4(torch.randn(96, 40)))
    )
    assert bits_per_param() == bits_per_param(DEFAULT_BLOCK_SIZE, DEFAULT_DOUBLE_QUANT)


def test_low_memory_variant_computes_the_same_and_saves_no_dense_weight():
    torch.manual_seed(0)
    lin = nn.Linear(70, 30)
    plain = NF4Linear.from_linear(lin, double_quant=True)
    low = NF4LinearLowMem.from_linear(lin, double_quant=True)
    x = torch.randn(4, 70, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = low(x)
    assert (30, 70) not in saved  # the backward dequantizes the weight again
    torch.testing.assert_close(y, plain(x))
    (grad_low,) = torch.autograd.grad(y.sum(), x)
    (grad_plain,) = torch.autograd.grad(plain(x).sum(), x)
    torch.testing.assert_close(grad_low, grad_plain)
    with torch.no_grad():  # nothing to save: the plain forward
        assert torch.equal(low(x), plain(x))


# ---------------------------------------------------------------------------- whole models


def test_quantize_minigpt_replaces_block_linears_only():
    from minituner.minigpt.model import GPTConfig, MiniGPT

    torch.manual_seed(0)
    model = MiniGPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(0, 40, (2, 16))
    before = model(idx)
    names = quantize_model_nf4(model)
    suffixes = [
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "mlp.fc_in",
        "mlp.fc_out",
    ]
    assert sorted(names) == sorted(f"blocks.{i}.{s}" for i in range(2) for s in suffixes)
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.tok_emb.weight  # the tie survives
    assert all(isinstance(model.get_submodule(n), NF4Linear) for n in names)
    after = model(idx)
    assert after.shape == before.shape
    assert (after - before).norm() / before.norm() < 0.2


def test_quantize_model_generic_filter_and_ties():
    emb = nn.Embedding(10, 8)
    head = nn.Linear(8, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict(
        {"emb": emb, "a": nn.Linear(8, 8), "b": nn.Sequential(nn.Linear(8, 8)), "head": head}
    )
    assert sorted(quantize_model_nf4(model)) == ["a", "b.0"]  # the tied head stays
    assert isinstance(model["head"], nn.Linear)
    model2 = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    assert quantize_model_nf4(model2, module_filter=lambda name, m: m.out_features == 4) == ["2"]
    assert isinstance(model2[0], nn.Linear) and isinstance(model2[2], NF4Linear)
