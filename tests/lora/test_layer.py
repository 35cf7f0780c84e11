"""Tests for minituner.lora.layer: LoRALinear's identities (B=0, merge/unmerge), init, checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from lora_util import (
    Toy,
    copy_adapters_into_peft,
    peft_copy,
    randomize_lora,
    tiny,
    tokens,
)

from minituner.lora.inject import add_lora, lora_layers, merge_lora
from minituner.lora.layer import LoRALinear

# ------------------------------------------------------------ identities


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_zero_B_gives_exactly_the_base_model(rslora, dropout):
    model = tiny()
    x = tokens()
    expected = model(x)
    add_lora(model, "all", r=4, alpha=8, dropout=dropout, rslora=rslora)
    for training in (False, True):  # train mode exercises the LoRA dropout too
        model.train(training)
        assert torch.equal(model(x), expected)


def test_fresh_adapter_init():
    layer = LoRALinear(nn.Linear(64, 32), r=8, alpha=16)
    assert layer.lora_A.shape == (8, 64) and layer.lora_B.shape == (32, 8)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(64)  # kaiming_uniform_(a=sqrt(5)) on fan_in=64
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4
    assert layer.scaling == 2.0
    assert LoRALinear(nn.Linear(64, 32), r=4, alpha=16, rslora=True).scaling == 8.0
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.delta_weight().shape == (32, 64)


def test_lora_params_follow_base_device_and_default_to_float32():
    layer = LoRALinear(nn.Linear(8, 6, device="meta", dtype=torch.float64), r=2, alpha=4)
    assert layer.lora_A.device.type == "meta" and layer.lora_B.device.type == "meta"
    assert layer.lora_A.dtype == torch.float32


@pytest.mark.parametrize("training", [False, True])
def test_merged_equals_unmerged_and_unmerge_restores(training):
    model = tiny()
    add_lora(model, ["attn", "mlp"], r=4, alpha=16)
    randomize_lora(model)
    model.train(training)
    x = tokens()
    before = {p: m.base.weight.detach().clone() for p, m in lora_layers(model).items()}
    unmerged = model(x)
    for m in lora_layers(model).values():
        m.merge()
        m.merge()  # idempotent: ΔW is added once
    assert all(m.merged for m in lora_layers(model).values())
    merged = model(x)
    assert not torch.equal(merged, tiny()(x))  # the update is big enough to matter
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    for p, m in lora_layers(model).items():
        m.unmerge()
        m.unmerge()
        torch.testing.assert_close(m.base.weight, before[p], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), unmerged, atol=1e-6, rtol=1e-6)


def test_merged_forward_is_base_only_even_with_dropout_in_train_mode():
    layer = LoRALinear(nn.Linear(16, 16), r=4, alpha=8, dropout=0.5).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(5, 16)
    layer.merge()
    out = layer(x)
    assert torch.equal(out, layer(x))  # no dropout noise once merged
    assert torch.equal(out, layer.base(x))


@settings(max_examples=60, deadline=None)
@given(
    in_f=st.integers(1, 24),
    out_f=st.integers(1, 24),
    r_frac=st.floats(0.0, 1.0),
    alpha=st.floats(0.05, 64.0),
    rslora=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_merge_unmerge_round_trip_property(in_f, out_f, r_frac, alpha, rslora, seed):
    torch.manual_seed(seed)
    r = 1 + int(r_frac * (min(in_f, out_f) - 1))
    layer = LoRALinear(nn.Linear(in_f, out_f), r=r, alpha=alpha, rslora=rslora)
    with torch.no_grad():
        layer.lora_B.normal_()
    w0 = layer.base.weight.detach().clone()
    scaling = alpha / (math.sqrt(r) if rslora else r)
    delta64 = scaling * layer.lora_B.double() @ layer.lora_A.double()
    expected = w0.double() + delta64
    tol = 1e-6 * (1.0 + expected.abs().max().item())
    torch.testing.assert_close(layer.delta_weight().double(), delta64, atol=tol, rtol=0)
    layer.merge()
    torch.testing.assert_close(layer.base.weight.double(), expected, atol=tol, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=tol, rtol=0)


# ------------------------------------------- general path and 4-bit base


def test_mixed_dtypes_and_autocast_take_the_general_path_like_peft():
    torch.manual_seed(0)
    base = Toy()
    ours = copy.deepcopy(base)
    add_lora(ours, ["q_proj", "v_proj"], r=2, alpha=4.0)
    randomize_lora(ours, scale=0.3)
    theirs = peft_copy(base, ["q_proj", "v_proj"], 2, 4.0, False)
    copy_adapters_into_peft(ours, theirs)
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, out_peft = ours(x), theirs(x)
    assert out.dtype == out_peft.dtype == torch.bfloat16
    torch.testing.assert_close(out, out_peft)
    ours.q_proj.base.to(torch.float64)  # a float64 base, float32 adapters: the cast path
    y = ours.q_proj(x.double())
    assert y.dtype == torch.float64
    ref = ours.q_proj.base(x.double()) + ours.q_proj.scaling * (
        x.double() @ ours.q_proj.lora_A.double().T @ ours.q_proj.lora_B.double().T
    )
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)


class FakeNF4(nn.Module):
    """Stand-in for nf4.NF4Linear: no float weight, only a coarse code + dequantize_weight()."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = linear.weight.detach().abs().max() / 7
        codes = torch.round(linear.weight.detach() / scale).to(torch.int8)
        self.register_buffer("codes", codes)
        self.register_buffer("absmax", scale.reshape(1))
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantize_weight(self) -> torch.Tensor:
        return self.codes.float() * self.absmax  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize_weight(), self.bias)


def test_nf4_like_base():
    torch.manual_seed(0)
    fake = FakeNF4(nn.Linear(16, 12))
    layer = LoRALinear(fake, r=3, alpha=6)
    x = torch.randn(2, 5, 16)
    assert torch.equal(layer(x), fake(x))
    nn.init.normal_(layer.lora_B)
    with pytest.raises(ValueError, match="4-bit.*merge_lora"):
        layer.merge()
    assert not layer.merged
    model = nn.Sequential()
    model.add_module("q_proj", fake)
    assert add_lora(model, "q", r=3, alpha=6) == ["q_proj"]
    with torch.no_grad():
        model.q_proj.lora_A.copy_(layer.lora_A)
        model.q_proj.lora_B.copy_(layer.lora_B)
    expected = model(x)
    merge_lora(model)
    assert type(model.q_proj) is nn.Linear and model.q_proj.weight.dtype == torch.float32
    w = fake.dequantize_weight() + layer.delta_weight()
    torch.testing.assert_close(model.q_proj.weight, w.detach())
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(r=0), r"r must be between 1 and 8"),
        (dict(r=-2), r"r must be between 1 and 8"),
        (dict(r=9), r"r=9 .*in_features=16, out_features=8.*between 1 and 8"),
        (dict(r=2.0), r"rank r must be a whole number"),
        (dict(r="4"), r"rank r must be a whole number"),
        (dict(r=True), r"rank r must be a whole number"),
        (dict(alpha=0), r"alpha must be a positive number, got 0"),
        (dict(alpha=-1.5), r"alpha must be a positive number"),
        (dict(alpha=float("nan")), r"alpha must be a positive number"),
        (dict(alpha=float("inf")), r"alpha must be finite"),
        (dict(alpha="16"), r"alpha must be a positive number"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(dropout=float("nan")), r"dropout must be in \[0, 1\)"),
        (dict(dropout=None), r"dropout must be a number"),
        (dict(rslora="yes"), r"rslora must be True or False"),
        (dict(base=nn.Conv1d(4, 4, 1)), r"nn.Linear or an NF4Linear-like base.*Conv1d"),
        (dict(base=nn.LayerNorm(4)), r"got LayerNorm"),
        (dict(base="q_proj"), r"got str"),
    ],
)
def test_lora_linear_rejects_bad_input(kwargs, match):
    args = dict(base=nn.Linear(16, 8), r=4, alpha=8.0) | kwargs
    with pytest.raises(ValueError, match=match):
        LoRALinear(**args)
