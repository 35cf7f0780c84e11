"""minituner.lora.qlora_group: several projections of one input as one node, against the
one-node-per-Linear path and a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from minituner.lora import qlora_group as grp
from minituner.lora.layer import LoRALinear
from minituner.lora.qlora import GemmOrder, qlora_linear
from minituner.nf4.linear import NF4LinearLowMem

IN = 64


def _parts(kinds, dtype=torch.float32, seed=0, r=(4, 8, 2)):
    """One module per kind: "lora" (LoRA over a low-memory NF4 base) or "nf4" (the base).
    Ranks differ, the scaling (alpha / r = 2) is shared, as in one model's add_lora."""
    torch.manual_seed(seed)
    mods = []
    for i, kind in enumerate(kinds):
        out = (48, 64, 80)[i % 3]
        base = NF4LinearLowMem.from_linear(nn.Linear(IN, out, bias=False), block_size=64)
        if kind == "nf4":
            mods.append(base)
            continue
        m = LoRALinear(base, r[i % 3], 2.0 * r[i % 3], dtype=dtype)
        with torch.no_grad():
            m.lora_B.normal_(0, 0.1)
        mods.append(m)
    return mods


def _params(mods):
    return [p for m in mods for p in m.parameters() if p.requires_grad]


def _run(fn, mods, x, ups):
    for p in _params(mods):
        p.grad = None
    x = x.detach().clone().requires_grad_(x.requires_grad)
    outs = fn(x)
    sum((o * u).sum() for o, u in zip(outs, ups, strict=True)).backward()
    return [o.detach() for o in outs], x.grad, [p.grad.clone() for p in _params(mods)]


@pytest.fixture(params=[False, True], ids=["lora_first", "base_first"])
def order(request, monkeypatch):
    """Both GEMM orders of the fused nodes (minituner.lora.qlora.GemmOrder)."""
    monkeypatch.setattr(GemmOrder, "base_first", request.param)
    return request.param


KINDS = [("lora", "nf4", "lora"), ("lora", "lora", "lora"), ("nf4", "nf4"), ("lora", "nf4")]


@pytest.mark.parametrize("kinds", KINDS)
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("one_gemm", [False, True])
def test_group_equals_one_node_per_linear_in_float32(kinds, x_grad, one_gemm, order, monkeypatch):
    mods = _parts(kinds)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, IN, generator=g).requires_grad_(x_grad)
    ups = [torch.randn(3, 5, m.out_features, generator=g) for m in mods]
    if not x_grad and "lora" not in kinds:
        assert not grp.group_applies(mods, x)  # nothing to differentiate
        return
    assert grp.group_applies(mods, x)
    calls = []
    apply = grp._QLoRAGroupMatMul.apply
    monkeypatch.setattr(grp._QLoRAGroupMatMul, "apply", lambda *a: calls.append(1) or apply(*a))
    got = _run(lambda t: grp.qlora_group(mods, t, one_gemm=one_gemm), mods, x, ups)
    want = _run(lambda t: tuple(qlora_linear(m, t) for m in mods), mods, x, ups)
    assert calls == [1]
    for a, b in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if x_grad:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    else:
        assert got[1] is None
    assert len(got[2]) == len(want[2]) == 2 * kinds.count("lora")
    for a, b in zip(got[2], want[2], strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("one_gemm", [False, True])
def test_group_matches_a_float64_reference(one_gemm, order):
    mods = _parts(("lora", "nf4", "lora"))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, IN, generator=g, requires_grad=True)
    ups = [torch.randn(2, 7, m.out_features, generator=g) for m in mods]
    outs = grp.qlora_group(mods, x, one_gemm=one_gemm)
    if one_gemm:  # column slices of one output
        assert outs[0].data_ptr() + 48 * outs[0].element_size() == outs[1].data_ptr()
    sum((o * u).sum() for o, u in zip(outs, ups, strict=True)).backward()
    _check_float64(mods, x, ups, outs)


def _check_float64(mods, x, ups, outs) -> None:
    """The outputs and the gradients of x and of every A, B (already made by a backward
    with upstream gradients ``ups``) against the same function in float64."""
    xd = x.detach().double().requires_grad_()
    ref, ab = [], []
    for m in mods:
        base = m if isinstance(m, NF4LinearLowMem) else m.base
        y = xd @ base.dequantize_weight(torch.float64).T
        if isinstance(m, LoRALinear):
            a = m.lora_A.detach().double().requires_grad_()
            b = m.lora_B.detach().double().requires_grad_()
            y = y + m.scaling * (xd @ a.T) @ b.T
            ab.append((m, a, b))
        ref.append(y)
    sum((y * u.double()).sum() for y, u in zip(ref, ups, strict=True)).backward()
    for o, y in zip(outs, ref, strict=True):
        torch.testing.assert_close(o.double(), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-6)
    for m, a, b in ab:  # sums over all positions: float32 rounding of a larger sum
        torch.testing.assert_close(m.lora_A.grad.double(), a.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.lora_B.grad.double(), b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("one_gemm", [False, True])
def test_bfloat16_group_is_the_one_node_path_to_bf16_rounding(one_gemm, order):
    mods = _parts(("lora", "nf4", "lora"), dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, IN, generator=g).to(torch.bfloat16).requires_grad_()
    ups = [torch.randn(4, 6, m.out_features, generator=g).to(torch.bfloat16) for m in mods]
    got = _run(lambda t: grp.qlora_group(mods, t, one_gemm=one_gemm), mods, x, ups)
    want = _run(lambda t: tuple(qlora_linear(m, t) for m in mods), mods, x, ups)
    for a, b in zip(got[0] + [got[1]] + got[2], want[0] + [want[1]] + want[2], strict=True):
        assert a.dtype == b.dtype
        # the two paths round their intermediates (x W, hs, hs B) in bf16 with GEMMs
        # that may sum in another order (the CPU's bf16 kernels differ between machines):
        # an output near zero next to terms of size M can differ by about ulp(M) = 2^-7 M
        atol = max(1e-2, 2**-7 * b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=atol)


def test_group_steps_aside_where_it_does_not_apply():
    x = torch.randn(2, 3, IN, requires_grad=True)
    mods = _parts(("lora", "lora"))
    mods[1].scaling = mods[0].scaling * 2  # two scalings: one GEMM cannot carry both
    assert not grp.group_applies(mods, x)
    plain = nn.Linear(IN, 8, bias=False)
    assert not grp.group_applies([_parts(("lora",))[0], plain], x)
    assert not grp.group_applies(_parts(("lora",)), x)  # one module: nothing to group
    with torch.no_grad():
        assert not grp.group_applies(_parts(("lora", "nf4")), x)
    outs = grp.qlora_group([mods[0], plain], x)  # evaluated one by one
    torch.testing.assert_close(outs[1], plain(x))


@pytest.mark.parametrize("residual", [False, True])
def test_one_node_matches_a_float64_reference_in_either_order(order, residual):
    """qlora's single node (what o_proj and down_proj take) in both GEMM orders, with and
    without a residual riding in the GEMM, against float64 with the same NF4 weight."""
    (m,) = _parts(("lora",))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, IN, generator=g, requires_grad=True)
    res = torch.randn(3, 5, m.out_features, generator=g, requires_grad=True) if residual else None
    up = torch.randn(3, 5, m.out_features, generator=g)
    out = qlora_linear(m, x, residual=res)
    (out * up).sum().backward()
    xd = x.detach().double().requires_grad_()
    a = m.lora_A.detach().double().requires_grad_()
    b = m.lora_B.detach().double().requires_grad_()
    y = xd @ m.base.dequantize_weight(torch.float64).T + m.scaling * (xd @ a.T) @ b.T
    want = y + res.detach().double() if residual else y
    torch.testing.assert_close(out.detach().double(), want, rtol=1e-5, atol=1e-6)
    (y * up.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.lora_A.grad.double(), a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.lora_B.grad.double(), b.grad, rtol=1e-5, atol=1e-5)
    if residual:
        torch.testing.assert_close(res.grad, up)


@pytest.fixture
def lora_in_k(monkeypatch):
    """The LoRA-in-K path on (off by default until a GPU run has timed it)."""
    monkeypatch.setattr(grp.LoRAInK, "on", True)


def _padded(x, spare, fill=1e30):
    """x (..., in) with ``spare`` more columns of ``fill`` after it: the node may write
    them and must never use what it did not write (1e30 would show)."""
    return torch.cat([x, x.new_full((*x.shape[:-1], spare), fill)], -1)


@pytest.mark.parametrize("kinds", [k for k in KINDS if "lora" in k])
@pytest.mark.parametrize("r", [(4, 8, 2), (8, 8, 8)])
def test_lora_in_k_matches_a_float64_reference(kinds, r, lora_in_k):
    """With spare columns after x, each LoRA product rides in its base GEMM's K: the
    outputs and every gradient equal float64's, and x's spare columns get no gradient."""
    mods = _parts(kinds, r=r)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, IN, generator=g, requires_grad=True)
    ups = [torch.randn(2, 7, m.out_features, generator=g) for m in mods]
    spare = grp.lora_spare(mods, x)
    ranks = [r[i % 3] for i, k in enumerate(kinds) if k == "lora"]
    assert spare == -(-sum(ranks) // 8) * 8 and spare % 8 == 0
    xe = _padded(x, spare)  # as a norm with spare columns leaves it
    xe.retain_grad()
    calls = []
    in_k = grp._lora_in_k
    with pytest.MonkeyPatch.context() as m:
        m.setattr(grp, "_lora_in_k", lambda *a: calls.append(1) or in_k(*a))
        outs = grp.qlora_group(mods, xe, spare=spare)
    assert calls == [1]
    sum((o * u).sum() for o, u in zip(outs, ups, strict=True)).backward()
    _check_float64(mods, x, ups, outs)
    assert torch.equal(xe.grad[..., IN:], torch.zeros_like(xe.grad[..., IN:]))


def test_lora_in_k_weight_rows_are_16_elements_apart(lora_in_k, monkeypatch):
    """The weights it dequantizes into rows apart ([W | 0 | B]) have a row stride that is a
    multiple of 16 elements: Triton specializes the kernel's stride on % 16, and at 8 apart
    the H100 dequantize ran at half speed (unvectorized stores)."""
    mods = _parts(("lora", "nf4", "lora"))
    strides = []
    for m in mods:
        base = m.base if isinstance(m, LoRALinear) else m

        def spy(*a, _f=base.dequantize_weight, out=None, **k):
            if out is not None:
                strides.append(out.stride(0))
            return _f(*a, out=out, **k)

        monkeypatch.setattr(base, "dequantize_weight", spy)
    x = torch.randn(2, 3, IN)
    spare = grp.lora_spare(mods, x)
    grp.qlora_group(mods, _padded(x, spare), spare=spare)
    assert len(strides) == 2 and all(s % 16 == 0 and s >= IN for s in strides), strides


def test_bfloat16_lora_in_k_is_the_one_node_path_to_bf16_rounding(lora_in_k):
    mods = _parts(("lora", "nf4", "lora"), dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 6, IN, generator=g).to(torch.bfloat16).requires_grad_()
    ups = [torch.randn(4, 6, m.out_features, generator=g).to(torch.bfloat16) for m in mods]
    spare = grp.lora_spare(mods, x)

    def in_k(t):
        return grp.qlora_group(mods, _padded(t, spare), spare=spare)

    got = _run(in_k, mods, x, ups)
    want = _run(lambda t: tuple(qlora_linear(m, t) for m in mods), mods, x, ups)
    for a, b in zip(got[0] + [got[1]] + got[2], want[0] + [want[1]] + want[2], strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-2)


def test_spare_columns_where_lora_in_k_does_not_apply(lora_in_k, monkeypatch):
    """Too few spare columns, no LoRA part, one_gemm or LoRAInK off: x's first columns
    are used as usual (the same values and gradients), and lora_spare says 0."""
    mods = _parts(("lora", "nf4", "lora"))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, IN, generator=g, requires_grad=True)
    ups = [torch.randn(3, m.out_features, generator=g) for m in mods]
    want = _run(lambda t: grp.qlora_group(mods, t), mods, x, ups)
    assert grp.lora_spare(mods, x) == 8
    assert grp.lora_spare(mods, x, one_gemm=True) == 0
    assert grp.lora_spare(_parts(("nf4", "nf4")), x) == 0
    with torch.no_grad():
        assert grp.lora_spare(mods, x) == 0
    monkeypatch.setattr(grp, "_lora_in_k", lambda *a: pytest.fail("took the LoRA-in-K path"))
    for spare, one_gemm in ((4, False), (8, True)):
        got = _run(
            lambda t, s=spare, o=one_gemm: grp.qlora_group(
                mods, _padded(t, s, 0.0), one_gemm=o, spare=s
            ),
            mods,
            x,
            ups,
        )
        for a, b in zip(got[0] + [got[1]] + got[2], want[0] + [want[1]] + want[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(grp.LoRAInK, "on", False)  # the default
    assert grp.lora_spare(mods, x) == 0


def test_a_group_without_lora_keeps_no_input():
    """x only serves the A gradients: a group of plain NF4 parts (gate, up with q,v
    adapters) must not keep its (tokens, hidden) input alive until its backward."""
    mods = _parts(("nf4", "nf4"))
    x = torch.randn(3, IN, requires_grad=True)
    outs = grp.qlora_group(mods, x * 1.0)
    saved = outs[0].grad_fn.saved_tensors
    assert all(t is None or t.numel() == 0 or t.data_ptr() != x.data_ptr() for t in saved)
    assert not any(t is not None and t.shape == (3, IN) for t in saved)
    sum(o.sum() for o in outs).backward()
    want = sum(m.dequantize_weight(torch.float32).sum(0) for m in mods)
    torch.testing.assert_close(x.grad, want.expand(3, IN), rtol=1e-5, atol=1e-5)
    with_lora = grp.qlora_group(_parts(("lora", "nf4")), x * 1.0)
    assert any(t is not None and t.shape == (3, IN) for t in with_lora[0].grad_fn.saved_tensors)


@pytest.mark.parametrize("kinds", [("nf4", "nf4"), ("lora", "nf4", "lora")])
def test_one_dequantized_weight_is_alive_at_a_time(monkeypatch, order, kinds):
    """At 7B a gate or up weight is 86 MiB in bf16: the node frees each part's weight
    before it dequantizes the next, forward and backward (the H100 peak trace of the q,v
    step showed two alive in the recompute)."""
    import weakref

    mods = _parts(kinds)
    alive_at_call, made = [], []
    for m in mods:
        base = m.base if isinstance(m, LoRALinear) else m

        def spy(*a, _f=base.dequantize_weight, **k):
            alive_at_call.append(sum(r() is not None for r in made))
            w = _f(*a, **k)
            made.append(weakref.ref(w))
            return w

        monkeypatch.setattr(base, "dequantize_weight", spy)
    x = torch.randn(2, 3, IN, requires_grad=True)
    outs = grp.qlora_group(mods, x)
    sum(o.sum() for o in outs).backward()
    assert len(alive_at_call) == 2 * len(mods)  # each weight: forward, backward
    assert alive_at_call == [0] * len(alive_at_call)
