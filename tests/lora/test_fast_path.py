"""Tests for minituner.lora.fast_path: every path against the formula in float64 and PEFT."""

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
    ALL_NAMES,
    VOCAB,
    Toy,
    copy_adapters_into_peft,
    grads_of,
    peft_copy,
    randomize_lora,
    tiny,
    tokens,
)

import minituner.lora.fast_path as fast_path
from minituner.lora.adapter_io import (
    lora_state_dict,
)
from minituner.lora.inject import add_lora, lora_layers
from minituner.lora.layer import LoRALinear


@pytest.fixture(params=["function", "factored", "folded"])
def lora_path(request, monkeypatch):
    """Run a test through each form of LoRALinear's fast path, whatever the device.

    "function" (``_LoRAFunction``, its own backward) is what the CPU takes with W and b
    frozen for a layer that is large for its rank; "folded" (one Linear with W + s·B·A) is
    what small layers take on a GPU, and on the CPU with W and b frozen; "factored"
    (y = x Wᵀ + b, then y += s·(x Aᵀ) Bᵀ, autograd's backward) is everything else.
    """
    monkeypatch.setattr(fast_path, "_fold_delta", lambda x, w: request.param == "folded")
    monkeypatch.setattr(fast_path, "_cpu_folds", lambda w, r: False)
    if request.param != "function":
        monkeypatch.setattr(fast_path, "_use_function", lambda x, w, b: False)
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


def minigpt_grads(model: nn.Module, x: torch.Tensor, up: torch.Tensor):
    out = model(x)
    (out * up.to(out.dtype)).sum().backward()
    grads = {n.replace(".default.weight", ""): p.grad for n, p in model.named_parameters()}
    return out, {n: g for n, g in grads.items() if g is not None}


# -------------------------------------------------------- PEFT reference


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
    large = [not fast_path._cpu_folds(m.base.weight, r) for m in lora_layers(ours64).values()]
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
    assert fast_path._fold_delta(torch.empty(8, 64, n_embd, device="cuda"), layer.base.weight) == (
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


# --------------------------------------- _LoRAFunction and the fold rule


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
        return fast_path._LoRAFunction.apply(x, w, b0, a, b, s, fold)

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
        mp.setattr(fast_path, "_cpu_folds", lambda w, r: False)
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
    assert fast_path._cpu_folds(torch.empty(out_f, in_f), r) == folds
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
