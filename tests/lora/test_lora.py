"""Tests for minituner.lora.layer: identities (B=0, merge), PEFT as a reference, adapter files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import minituner.lora.layer as lora_mod
from minituner.lora.layer import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRALinear,
    add_lora,
    count_parameters,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    resolve_targets,
    save_adapter,
)
from minituner.minigpt.model import MiniGPT, preset_config

VOCAB = 40
ALL_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"]


def tiny(seed: int = 0, **overrides) -> MiniGPT:
    torch.manual_seed(seed)
    return MiniGPT(preset_config("tiny", vocab_size=VOCAB, **overrides)).eval()


def tokens(seed: int = 1, batch: int = 3, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def randomize_lora(model: nn.Module, seed: int = 2, scale: float = 0.1) -> None:
    """Give every adapter a nonzero B (a fresh one is zero and would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * scale)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)


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


class Toy(nn.Module):
    """A model that is not MiniGPT, with PEFT-style names."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 24)
        self.v_proj = nn.Linear(24, 16, bias=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.v_proj(F.gelu(self.q_proj(x)))))


# ------------------------------------------------------------------ identities


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


# ---------------------------------------------------------------------- training


def test_training_changes_only_lora():
    model = tiny()
    paths = add_lora(model, "q,v,fc_in", r=4, alpha=8, dropout=0.1)
    assert len(paths) == 6
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: t.clone() for n, t in lora_state_dict(model).items()}
    # every parameter goes to the optimizer, with weight decay: frozen ones must still not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    x = tokens(batch=4, length=16)
    for _ in range(3):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for name, p in model.named_parameters():
            is_lora = name.endswith((".lora_A", ".lora_B"))
            assert (p.grad is not None) == is_lora, name
            assert p.requires_grad == is_lora, name
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    after = lora_state_dict(model)
    assert set(after) == {f"{p}.{k}" for p in paths for k in ("lora_A", "lora_B")}
    assert all(not torch.equal(after[n], lora_before[n]) for n in after)


# --------------------------------------------------------------- PEFT reference


def peft_copy(model: nn.Module, targets: list[str], r: int, alpha: float, rslora: bool):
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, use_rslora=rslora
    )
    return inject_adapter_in_model(cfg, copy.deepcopy(model))


def copy_adapters_into_peft(ours: nn.Module, theirs: nn.Module) -> None:
    modules = dict(theirs.named_modules())
    with torch.no_grad():
        for path, layer in lora_layers(ours).items():
            modules[path].lora_A["default"].weight.copy_(layer.lora_A)
            modules[path].lora_B["default"].weight.copy_(layer.lora_B)


def grads_of(model: nn.Module, out: torch.Tensor, upstream: torch.Tensor, x: torch.Tensor):
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    names = sorted(params)
    got = torch.autograd.grad((out * upstream).sum(), [params[n] for n in names] + [x])
    return dict(zip(names, got[:-1], strict=True)), got[-1]


@pytest.mark.parametrize("r,alpha,rslora", [(2, 8.0, False), (5, 3.0, False), (5, 12.0, True)])
def test_matches_peft_and_float64_reference_on_toy(r, alpha, rslora):
    torch.manual_seed(0)
    base = Toy()
    ours = copy.deepcopy(base)
    add_lora(ours, ["q_proj", "v_proj"], r=r, alpha=alpha, rslora=rslora)
    randomize_lora(ours, scale=0.3)
    theirs = peft_copy(base, ["q_proj", "v_proj"], r, alpha, rslora)
    copy_adapters_into_peft(ours, theirs)
    assert theirs.q_proj.scaling["default"] == ours.q_proj.scaling
    x = torch.randn(4, 7, 16)
    up = torch.randn(4, 7, 5)

    # ours against PEFT, both in float64 so that only a real difference can show
    ours64, theirs64 = copy.deepcopy(ours).double(), copy.deepcopy(theirs).double()
    x64 = x.double().requires_grad_()
    out_ours64, out_peft64 = ours64(x64), theirs64(x64)
    # what the CPU runs: one Linear with W + s·B·A for a layer small for its rank, else the
    # function
    large = [not lora_mod._cpu_folds(m.base.weight, r) for m in lora_layers(ours64).values()]
    assert through_function(out_ours64) == any(large)
    torch.testing.assert_close(out_ours64, out_peft64, atol=1e-12, rtol=1e-12)
    g_ours64, gx_ours64 = grads_of(ours64, out_ours64, up.double(), x64)
    g_peft64, gx_peft64 = grads_of(theirs64, out_peft64, up.double(), x64)
    torch.testing.assert_close(gx_ours64, gx_peft64, atol=1e-12, rtol=1e-12)
    for name, g in g_ours64.items():
        torch.testing.assert_close(g, g_peft64[f"{name}.default.weight"], atol=1e-12, rtol=1e-12)

    # ours in float32 against the formula written out in float64
    s = alpha / (math.sqrt(r) if rslora else r)
    p64 = {n: t.double() for n, t in lora_state_dict(ours).items()}
    p64 = {n: t.requires_grad_() for n, t in p64.items()}
    wq, bq = base.q_proj.weight.double(), base.q_proj.bias.double()
    wv, wh, bh = base.v_proj.weight.double(), base.head.weight.double(), base.head.bias.double()
    h = x64 @ wq.T + bq + s * (x64 @ p64["q_proj.lora_A"].T) @ p64["q_proj.lora_B"].T
    h = F.gelu(h)
    h = h @ wv.T + s * (h @ p64["v_proj.lora_A"].T) @ p64["v_proj.lora_B"].T
    ref = torch.tanh(h) @ wh.T + bh
    ref_grads = torch.autograd.grad((ref * up.double()).sum(), [*p64.values(), x64])
    x32, xp32 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out32, out_p32 = ours(x32), theirs(xp32)
    g32, gx32 = grads_of(ours, out32, up, x32)
    g_p32, gx_p32 = grads_of(theirs, out_p32, up, xp32)
    torch.testing.assert_close(out32.double(), ref, atol=1e-5, rtol=1e-5)
    # each gradient within a few float32 roundings of its size, as PEFT's float32 one is
    got = [*(g32[n] for n in p64), gx32]
    peft = [*(g_p32[f"{n}.default.weight"] for n in p64), gx_p32]
    for name, g, g_p, want in zip([*p64, "x"], got, peft, ref_grads, strict=True):
        err, err_peft = (g.double() - want).abs().max(), (g_p.double() - want).abs().max()
        assert err <= max(2 * err_peft, 5e-6 * want.abs().max()), (
            name,
            float(err),
            float(err_peft),
        )


@pytest.fixture(params=["function", "factored", "folded"])
def lora_path(request, monkeypatch):
    """Run a test through each form of LoRALinear's fast path, whatever the device.

    "function" (``_LoRAFunction``, its own backward) is what the CPU takes with W and b
    frozen for a layer that is large for its rank; "folded" (one Linear with W + s·B·A) is
    what small layers take on a GPU, and on the CPU with W and b frozen; "factored"
    (y = x Wᵀ + b, then y += s·(x Aᵀ) Bᵀ, autograd's backward) is everything else.
    """
    monkeypatch.setattr(lora_mod, "_fold_delta", lambda x, w: request.param == "folded")
    monkeypatch.setattr(lora_mod, "_cpu_folds", lambda w, r: False)
    if request.param != "function":
        monkeypatch.setattr(lora_mod, "_use_function", lambda x, w, b: False)
    return request.param


def through_function(out: torch.Tensor) -> bool:
    """Whether ``out`` was computed by ``_LoRAFunction`` (its backward is in the graph)."""
    todo, seen = [out.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "_LoRAFunctionBackward":
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


def lora_formula(x, w, bias, a, b, s):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ written out, autograd's gradients as the reference."""
    y = x @ w.T + (0.0 if bias is None else bias)
    return y + s * (x @ a.T) @ b.T


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("x_grad", "frozen"),
    [(x_grad, frozen) for x_grad in (True, False) for frozen in (None, "A", "B", "AB")][:-1],
)
def test_lora_function_gradcheck_and_formula(fold, bias, x_grad, frozen):
    """_LoRAFunction in float64: finite differences and the formula's autograd gradients.

    With ``fold`` and x_grad, ∂x and g B come from one GEMM, g [W' | B]: every combination of
    which inputs need a gradient takes its own branch of the backward.
    """
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    x = torch.randn(7, 5, dtype=f64, generator=g).requires_grad_(x_grad)
    w = torch.randn(6, 5, dtype=f64, generator=g)
    b0 = torch.randn(6, dtype=f64, generator=g) if bias else None
    a = torch.randn(3, 5, dtype=f64, generator=g).requires_grad_("A" not in (frozen or ""))
    b = torch.randn(6, 3, dtype=f64, generator=g).requires_grad_("B" not in (frozen or ""))
    s = 1.7

    def fn(x, a, b):
        return lora_mod._LoRAFunction.apply(x, w, b0, a, b, s, fold)

    assert torch.autograd.gradcheck(fn, (x, a, b))
    out, ref = fn(x, a, b), lora_formula(x, w, b0, a, b, s)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn(out.shape, dtype=f64, generator=g)
    wrt = [t for t in (x, a, b) if t.requires_grad]
    got = torch.autograd.grad((out * up).sum(), wrt)
    want = torch.autograd.grad((ref * up).sum(), wrt)
    for t, u in zip(got, want, strict=True):
        torch.testing.assert_close(t, u, atol=1e-12, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(1,), (3,), (2, 3), (0, 2), (2, 1, 4)]),
    in_f=st.integers(1, 9),
    out_f=st.integers(1, 9),
    r_frac=st.floats(0.0, 1.0),
    bias=st.booleans(),
    rslora=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpu_layer_runs_the_function_and_matches_the_formula(
    shape, in_f, out_f, r_frac, bias, rslora, seed
):
    """LoRALinear on the CPU, float64, 2-D and 3-D x: _LoRAFunction, equal to the formula."""
    torch.manual_seed(seed)
    f64 = torch.float64
    r = 1 + int(r_frac * (min(in_f, out_f) - 1))
    layer = LoRALinear(nn.Linear(in_f, out_f, bias=bias, dtype=f64), r, 2.5, rslora=rslora)
    layer.double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(*shape, in_f, dtype=f64, requires_grad=True)
    with pytest.MonkeyPatch.context() as mp:  # these layers are small: they would fold
        mp.setattr(lora_mod, "_cpu_folds", lambda w, r: False)
        out = layer(x)
    assert through_function(out) and out.shape == (*shape, out_f) and out.is_contiguous()
    params = (layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B)
    ref = lora_formula(x, *params, layer.scaling)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn_like(out)
    got = torch.autograd.grad((out * up).sum(), [x, layer.lora_A, layer.lora_B])
    want = torch.autograd.grad((ref * up).sum(), [x, layer.lora_A, layer.lora_B])
    for t, u in zip(got, want, strict=True):
        torch.testing.assert_close(t, u, atol=1e-12, rtol=1e-12)
    with torch.no_grad():  # nothing to differentiate: one Linear with W + s·B·A
        torch.testing.assert_close(layer(x), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("in_f", "out_f", "r", "folds"),
    [(128, 128, 8, True), (16, 16, 1, True), (128, 512, 8, False), (128, 128, 4, False)],
)
def test_cpu_layer_small_for_its_rank_folds_a_larger_one_runs_the_function(in_f, out_f, r, folds):
    """CPU, frozen float64 base: one Linear with W + s·B·A when in·out <= 10·r·(in + out),
    else _LoRAFunction; either way the formula's output and gradients."""
    torch.manual_seed(0)
    f64 = torch.float64
    assert lora_mod._cpu_folds(torch.empty(out_f, in_f), r) == folds
    layer = LoRALinear(nn.Linear(in_f, out_f, dtype=f64), r, 16.0).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, in_f, dtype=f64, requires_grad=True)
    out = layer(x)
    assert through_function(out) != folds
    params = (layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B)
    ref = lora_formula(x, *params, layer.scaling)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn_like(out)
    wrt = [x, layer.lora_A, layer.lora_B]
    got = torch.autograd.grad((out * up).sum(), wrt)
    want = torch.autograd.grad((ref * up).sum(), wrt)
    for t, u in zip(got, want, strict=True):
        torch.testing.assert_close(t, u, atol=1e-12, rtol=1e-10)


def test_cpu_function_keeps_a_small_update_in_bfloat16_like_peft():
    """bf16 does not fold W + s·B·A (it would round ΔW away): the update reaches y as in PEFT."""
    base = nn.Sequential()
    base.add_module("q_proj", nn.Linear(16, 4, bias=False, dtype=torch.bfloat16))
    with torch.no_grad():
        base.q_proj.weight.copy_(torch.tensor([1.0, -1.0]).repeat(4, 8))  # x Wᵀ = 0 for x = 1
    ours = copy.deepcopy(base)
    add_lora(ours, "q", r=1, alpha=1.0)
    ours.q_proj.to(torch.bfloat16)
    theirs = peft_copy(base, ["q_proj"], 1, 1.0, False).to(torch.bfloat16)
    with torch.no_grad():
        ours.q_proj.lora_A.fill_(2.0**-5)
        ours.q_proj.lora_B.fill_(2.0**-4)  # s·B·A = 2⁻⁹: 1 - 2⁻⁹ and 1 + 2⁻⁹ round to ±1
    copy_adapters_into_peft(ours, theirs)
    x = torch.ones(2, 16, dtype=torch.bfloat16, requires_grad=True)
    out, out_peft = ours(x), theirs(x)
    assert through_function(out)
    assert torch.equal(out, out_peft) and torch.equal(out, torch.full_like(out, 2.0**-5))
    up = torch.randn(out.shape, dtype=torch.bfloat16)
    g, gx = grads_of(ours, out, up, x)
    g_p, gx_p = grads_of(theirs, out_peft, up, x)
    torch.testing.assert_close(gx, gx_p)
    for name, t in g.items():
        torch.testing.assert_close(t, g_p[f"{name}.default.weight"])


def minigpt_grads(model: nn.Module, x: torch.Tensor, up: torch.Tensor):
    out = model(x)
    (out * up.to(out.dtype)).sum().backward()
    grads = {n.replace(".default.weight", ""): p.grad for n, p in model.named_parameters()}
    return out, {n: g for n, g in grads.items() if g is not None}


@pytest.mark.parametrize("rslora", [False, True])
def test_matches_peft_on_minigpt(rslora, lora_path):
    base = tiny()
    ours = copy.deepcopy(base)
    add_lora(ours, "all", r=4, alpha=16, rslora=rslora)
    randomize_lora(ours, scale=0.2)
    theirs = peft_copy(base, ALL_NAMES, 4, 16, rslora)
    copy_adapters_into_peft(ours, theirs)
    x = tokens()
    up = torch.randn(3, 12, VOCAB, generator=torch.Generator().manual_seed(3))
    # float64: the same function, so only rounding at 1e-16 can differ
    out64, g64 = minigpt_grads(copy.deepcopy(ours).double(), x, up)
    out_p64, g_p64 = minigpt_grads(copy.deepcopy(theirs).double(), x, up)
    assert not torch.allclose(out64, base.double()(x), atol=1e-3)
    torch.testing.assert_close(out64, out_p64, atol=1e-12, rtol=1e-12)
    assert set(g64) == set(g_p64) and len(g64) == 2 * 6 * 2
    for name, g in g64.items():
        torch.testing.assert_close(g, g_p64[name], atol=1e-12, rtol=1e-10)
    # float32: ours is as close to the float64 result as PEFT is (the rounding order differs)
    out32, g32 = minigpt_grads(ours, x, up)
    out_p32, g_p32 = minigpt_grads(theirs, x, up)
    assert through_function(out32) == (lora_path == "function")
    torch.testing.assert_close(out32, out_p32, atol=1e-5, rtol=1e-5)
    for name, g in g32.items():
        err, err_peft = (g.double() - g64[name]).abs().max(), (g_p32[name] - g64[name]).abs().max()
        scale = g64[name].abs().max()
        # within a few float32 roundings of the gradient's size, as PEFT is
        assert err <= max(2 * err_peft, 5e-6 * scale), (name, float(err), float(err_peft))
        torch.testing.assert_close(g, g_p32[name], atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (4,), (3, 0, 4)])
def test_fast_path_gradients_with_unfrozen_base(bias, shape, lora_path):
    """Every gradient, the base's too once unfrozen: finite differences and the formula."""
    torch.manual_seed(0)
    f64 = torch.float64
    layer = LoRALinear(nn.Linear(4, 5, bias=bias, dtype=f64), r=2, alpha=3.0, dtype=f64)
    names = ["lora_A", "lora_B", "base.weight"] + (["base.bias"] if bias else [])
    values = [torch.randn(layer.get_parameter(n).shape, dtype=f64) for n in names]
    values = [v.requires_grad_() for v in values]
    x = torch.randn(*shape, dtype=f64, requires_grad=True)

    def ours(x, *vals):
        return torch.func.functional_call(layer, dict(zip(names, vals, strict=True)), (x,))

    def formula(x, a, b, w, *bias_):
        y = x @ w.T + (bias_[0] if bias_ else 0.0)
        return y + layer.scaling * (x @ a.T) @ b.T

    assert torch.autograd.gradcheck(ours, (x, *values))
    out, ref = ours(x, *values), formula(x, *values)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn_like(out)
    got = torch.autograd.grad((out * up).sum(), [x, *values])
    want = torch.autograd.grad((ref * up).sum(), [x, *values])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


def test_dropout_in_training_matches_peft_draw_for_draw():
    torch.manual_seed(0)
    base = Toy()
    ours = copy.deepcopy(base)
    add_lora(ours, ["q_proj", "v_proj"], r=3, alpha=6.0, dropout=0.4)
    randomize_lora(ours, scale=0.3)
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=3, lora_alpha=6.0, target_modules=["q_proj", "v_proj"], lora_dropout=0.4)
    theirs = inject_adapter_in_model(cfg, copy.deepcopy(base))
    copy_adapters_into_peft(ours, theirs)
    ours.train()
    theirs.train()
    x = torch.randn(4, 7, 16, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 7, 5, dtype=torch.float64)
    ours64, theirs64 = ours.double(), theirs.double()
    torch.manual_seed(5)
    out = ours64(x)
    torch.manual_seed(5)
    out_peft = theirs64(x)
    torch.manual_seed(6)
    assert not torch.allclose(out, ours64(x))  # the dropout really drops
    torch.testing.assert_close(out, out_peft, atol=1e-12, rtol=1e-12)
    g, gx = grads_of(ours64, out, up, x)
    g_peft, gx_peft = grads_of(theirs64, out_peft, up, x)
    torch.testing.assert_close(gx, gx_peft, atol=1e-12, rtol=1e-12)
    for name, t in g.items():
        torch.testing.assert_close(t, g_peft[f"{name}.default.weight"], atol=1e-12, rtol=1e-12)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n_embd", [32, 1024])  # small: W + s·B·A folded; large: factored
def test_matches_peft_on_cuda(n_embd):
    base = tiny(n_embd=n_embd, n_head=2).cuda()
    ours = copy.deepcopy(base)
    add_lora(ours, "all", r=4, alpha=16)
    randomize_lora(ours, scale=0.2)
    theirs = peft_copy(base, ALL_NAMES, 4, 16, False)
    copy_adapters_into_peft(ours, theirs)
    x = tokens(batch=8, length=64).cuda()
    layer = ours.blocks[0].attn.q_proj
    assert lora_mod._fold_delta(torch.empty(8, 64, n_embd, device="cuda"), layer.base.weight) == (
        n_embd == 32
    )
    up = torch.randn(8, 64, VOCAB, device="cuda", dtype=torch.float64)
    out64, g64 = minigpt_grads(copy.deepcopy(ours).double(), x, up)
    out_p64, g_p64 = minigpt_grads(copy.deepcopy(theirs).double(), x, up)
    torch.testing.assert_close(out64, out_p64, atol=1e-12, rtol=1e-12)
    for name, g in g64.items():
        torch.testing.assert_close(g, g_p64[name], atol=1e-12, rtol=1e-10)
    out32, g32 = minigpt_grads(ours, x, up)
    out_p32, g_p32 = minigpt_grads(theirs, x, up)
    torch.testing.assert_close(out32, out_p32, atol=1e-5, rtol=1e-5)
    for name, g in g32.items():
        err, err_peft = (g.double() - g64[name]).abs().max(), (g_p32[name] - g64[name]).abs().max()
        assert err <= max(2 * err_peft, 5e-6 * g64[name].abs().max()), (name, float(err))


# ---------------------------------------------------------------- merge_lora


def test_merge_lora_gives_plain_linears_and_leaves_tied_embedding_alone():
    model = tiny()
    emb = model.tok_emb.weight.detach().clone()
    add_lora(model, "all,lm_head", r=4, alpha=8)
    randomize_lora(model)
    x = tokens()
    expected = model(x)
    with pytest.raises(ValueError, match="tied"):
        model.lm_head.merge()
    assert merge_lora(model) is model
    assert not lora_layers(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert isinstance(model.blocks[0].attn.q_proj, nn.Linear)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.tok_emb.weight, emb)


def test_merge_lora_after_in_place_merge_adds_delta_once():
    model = tiny()
    add_lora(model, "q", r=2, alpha=4)
    randomize_lora(model)
    x = tokens()
    expected = model(x)
    model.blocks[0].attn.q_proj.merge()
    merge_lora(model)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


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


# ------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    "targets,expected",
    [
        ("q,v", ["q_proj", "v_proj"]),
        (" q , v ,", ["q_proj", "v_proj"]),
        (["attn"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("mlp,q", ["fc_in", "fc_out", "q_proj"]),
        ("all", ALL_NAMES),
        (["q", "q_proj", "attn"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
        (["lm_head", "fc_in"], ["lm_head", "fc_in"]),
    ],
)
def test_resolve_targets(targets, expected):
    assert resolve_targets(targets) == expected


def test_add_lora_paths_and_full_path_target():
    model = tiny()
    assert add_lora(model, "q,v", r=2, alpha=4) == [
        f"blocks.{i}.attn.{n}" for i in range(2) for n in ("q_proj", "v_proj")
    ]
    other = tiny()
    assert add_lora(other, "blocks.1.mlp.fc_out", r=2, alpha=4) == ["blocks.1.mlp.fc_out"]


def test_add_lora_on_plain_modules():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    expected = seq(x)
    assert add_lora(seq, "0,2", r=2, alpha=2) == ["0", "2"]
    assert torch.equal(seq(x), expected)
    toy = Toy()
    assert add_lora(toy, "attn", r=2, alpha=4) == ["q_proj", "v_proj"]  # k, o absent: skipped
    assert not toy.head.weight.requires_grad
    trainable = [n for n, p in toy.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"]


def test_count_parameters_counts_tied_weights_once():
    model = tiny()
    n_base = model.num_params()
    add_lora(model, "q,v", r=4, alpha=8)
    counts = count_parameters(model)
    n_lora = 2 * 2 * 4 * (32 + 32)  # layers x modules x r(in + out)
    assert counts["trainable"] == n_lora
    assert counts["total"] == n_base + n_lora == sum(p.numel() for p in model.parameters())
    per = {m["name"]: m for m in counts["per_module"]}
    assert per["blocks.0.attn.q_proj"] == {
        "name": "blocks.0.attn.q_proj",
        "trainable": 256,
        "total": 256,
    }
    assert per["blocks.0.attn.q_proj.base"]["trainable"] == 0
    assert "lm_head" not in per  # its weight is the token embedding, counted there
    assert sum(m["total"] for m in counts["per_module"]) == counts["total"]


# -------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(r=0), r"r must be between 1 and 8"),
        (dict(r=-2), r"r must be between 1 and 8"),
        (dict(r=9), r"r=9 .*in_features=16, out_features=8.*between 1 and 8"),
        (dict(r=2.0), r"rank r must be a whole number"),
        (dict(r="4"), r"rank r must be a whole number"),
        (dict(r=True), r"rank r must be a whole number"),
        (dict(alpha=0), r"alpha must be a number > 0, got 0"),
        (dict(alpha=-1.5), r"alpha must be a number > 0"),
        (dict(alpha=float("nan")), r"alpha must be a number > 0"),
        (dict(alpha=float("inf")), r"alpha must be finite"),
        (dict(alpha="16"), r"alpha must be a number > 0"),
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


@pytest.mark.parametrize(
    "targets,match",
    [
        ([], r"no LoRA targets given"),
        ("", r"no LoRA targets given"),
        (" , ", r"no LoRA targets given"),
        (5, r"targets must be a list of names or a comma-separated string"),
        ([1], r"target names must be strings"),
        ("q,zz", r"'zz' matches no module of MiniGPT; Linear .* available: fc_in, fc_out, k_proj"),
        ("ln_1", r"'ln_1' is a LayerNorm in MiniGPT, not an nn.Linear"),
    ],
)
def test_add_lora_rejects_bad_targets(targets, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        add_lora(model, targets, r=2, alpha=4)
    assert not lora_layers(model)


def test_add_lora_rejects_double_wrap_no_match_and_bad_rank_without_changing_model():
    model = tiny()
    add_lora(model, "q", r=2, alpha=4)
    with pytest.raises(ValueError, match=r"LoRA already added to blocks.0.attn.q_proj"):
        add_lora(model, "attn", r=2, alpha=4)
    with pytest.raises(ValueError, match=r"matched no Linear layer of Sequential"):
        add_lora(nn.Sequential(nn.Linear(3, 3)), "attn", r=2, alpha=4)
    fresh = tiny()
    # fc_in is 32 -> 128, q_proj 32 -> 32: r=40 fits neither, and nothing may be half-done
    with pytest.raises(ValueError, match=r"r=40 does not fit blocks.0.attn.q_proj"):
        add_lora(fresh, "fc_in,q", r=40, alpha=4)
    assert not lora_layers(fresh)
    assert all(p.requires_grad for p in fresh.parameters())


# ---------------------------------------------------------------- adapter files


def trained_tiny(targets="q,v", **overrides) -> MiniGPT:
    model = tiny(**overrides)
    add_lora(model, targets, r=4, alpha=8, dropout=0.05)
    randomize_lora(model)
    return model.eval()


def test_save_load_round_trip_is_exact(tmp_path):
    model = trained_tiny()
    x = tokens()
    expected = model(x)
    out = save_adapter(tmp_path / "run1", model, {"lr": 3e-4, "note": "irregular verbs"})
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
    meta = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (meta["r"], meta["alpha"], meta["rslora"], meta["dropout"]) == (4, 8.0, False, 0.05)
    assert meta["targets"] == ["q_proj", "v_proj"]
    assert meta["modules"]["blocks.1.attn.v_proj"]["in_features"] == 32
    assert meta["config"] == {"lr": 3e-4, "note": "irregular verbs"}

    fresh = tiny()  # same base weights, no LoRA yet
    loaded = load_adapter(out, fresh)
    assert loaded["config"]["note"] == "irregular verbs"
    assert fresh.blocks[0].attn.v_proj.dropout == 0.05
    assert torch.equal(fresh.eval()(x), expected)
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == list(
        lora_state_dict(fresh)
    )
    # a model that already has the same LoRA layers just takes the values
    again = tiny()
    add_lora(again, "q,v", r=4, alpha=8)
    load_adapter(out, again)
    assert torch.equal(again(x), expected)


def test_load_into_other_shape_or_targets_says_what_differs(tmp_path):
    save_adapter(tmp_path, trained_tiny())
    bigger = MiniGPT(preset_config("small", vocab_size=VOCAB))
    with pytest.raises(
        ValueError,
        match=r"blocks.0.attn.q_proj: adapter lora_A is \(4, 32\), model expects \(4, 96\)",
    ):
        load_adapter(tmp_path, bigger)
    assert not lora_layers(bigger)  # nothing changed on failure
    other_targets = tiny()
    add_lora(other_targets, "k,v", r=4, alpha=8)
    with pytest.raises(
        ValueError,
        match=r"adapter has blocks.0.attn.q_proj but the model has no LoRA layer there.*model has LoRA on blocks.0.attn.k_proj",
    ):
        load_adapter(tmp_path, other_targets)
    other_rank = tiny()
    add_lora(other_rank, "q,v", r=2, alpha=8)
    with pytest.raises(ValueError, match=r"adapter lora_A is \(4, 32\), model expects \(2, 32\)"):
        load_adapter(tmp_path, other_rank)
    other_alpha = tiny()
    add_lora(other_alpha, "q,v", r=4, alpha=16)
    with pytest.raises(ValueError, match=r"adapter alpha is 8.0, the model's is 16.0"):
        load_adapter(tmp_path, other_alpha)
    deeper = tmp_path / "deeper"
    save_adapter(deeper, trained_tiny(n_layer=3))
    with pytest.raises(
        ValueError, match=r"adapter has blocks.2.attn.q_proj but the model has no such layer"
    ):
        load_adapter(deeper, tiny())
    merged = trained_tiny()
    merged.blocks[0].attn.q_proj.merge()
    with pytest.raises(ValueError, match=r"blocks.0.attn.q_proj is merged"):
        load_adapter(tmp_path, merged)


def test_bad_adapter_files_raise_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"adapter_config.json is missing"):
        load_adapter(tmp_path / "nowhere", tiny())
    save_adapter(tmp_path, trained_tiny())
    weights, cfg = tmp_path / ADAPTER_WEIGHTS, tmp_path / ADAPTER_CONFIG
    good = weights.read_bytes()
    for damaged in (b"not a safetensors file", good[: len(good) // 2], b""):
        weights.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"is not a readable safetensors file") as err:
            load_adapter(tmp_path, tiny())
        assert "\n" not in str(err.value)
    weights.unlink()
    with pytest.raises(ValueError, match=r"adapter.safetensors is missing"):
        load_adapter(tmp_path, tiny())
    weights.write_bytes(good)
    meta = json.loads(cfg.read_text())
    cfg.write_text("{ not json")
    with pytest.raises(ValueError, match=r"not a readable adapter config"):
        load_adapter(tmp_path, tiny())
    meta["modules"]["blocks.0.attn.q_proj"]["r"] = 0
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"bad entry for blocks.0.attn.q_proj"):
        load_adapter(tmp_path, tiny())
    meta["modules"]["blocks.0.attn.q_proj"]["r"] = 2
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not match adapter_config.json"):
        load_adapter(tmp_path, tiny())


def test_save_adapter_rejects_bad_requests(tmp_path):
    with pytest.raises(ValueError, match=r"no LoRA layers"):
        save_adapter(tmp_path, tiny())
    with pytest.raises(ValueError, match=r"cannot be written as JSON"):
        save_adapter(tmp_path, trained_tiny(), {"f": object()})
    with pytest.raises(ValueError, match=r"config must be a dict"):
        save_adapter(tmp_path, trained_tiny(), ["r", 4])
    assert not list(tmp_path.iterdir())  # nothing half-written
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"is a file"):
        save_adapter(file, trained_tiny())


def test_no_pickle_loading_in_lora_package():
    for path in (Path(__file__).parents[2] / "minituner" / "lora").rglob("*.py"):
        source = path.read_text()
        assert "torch.load(" not in source and "import pickle" not in source, path
