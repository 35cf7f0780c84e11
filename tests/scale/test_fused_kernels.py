"""The fused Triton kernels of minituner/scale (fused_rmsnorm, fused_rope, fused_swiglu,
fused_ce) compute the eager PyTorch path's function, forward and backward.

:func:`check_kernels` compares each fused node with its eager reference on odd shapes
(ragged rows, a hidden size that is not a power of two, three heads of size 10, a vocab
split into ragged chunks, ignored labels). On a CUDA machine it runs for real in float32
and bfloat16; where Triton is installed but there is no GPU, the same kernels run in
Triton's interpreter (in a subprocess: the interpreter is chosen when a kernel is
defined), float32 only (the interpreter rounds to bfloat16 differently from the GPU).
Everywhere, the fallbacks are checked against the formulas they replace.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minituner.scale import fused_ce, fused_rmsnorm, fused_rope, fused_swiglu
from minituner.scale.fused_rope import apply_rotary, rotary_tables

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = HAS_TRITON and torch.cuda.is_available()
TOL = {torch.float32: {"rtol": 2e-5, "atol": 2e-6}, torch.bfloat16: {}}  # bf16: defaults


def _both(fn_fused, fn_eager, inputs, grad_out):
    """Outputs and input gradients of two implementations on copies of the same inputs."""
    outs = []
    for fn in (fn_fused, fn_eager):
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y = fn(*xs)
        y.backward(grad_out if grad_out is not None else torch.ones_like(y))
        outs.append((y.detach(), [x.grad for x in xs if x.requires_grad]))
    return outs


def _close(a, b, dtype, what):
    """float32: to float32 rounding. bfloat16: each element within 2 ulp at the tensor's
    scale (a product of rounded values, such as the head's gradient GEMM, rounds
    differently when the scaling comes before or after it; an element near 0 has no
    relative precision to keep)."""
    tol = TOL[dtype] or {"rtol": 1.6e-2, "atol": 2**-7 * b.abs().max().item()}
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


def _norm_with_spare(x, w, spare, up, fused):
    """(norm with ``spare`` columns, x's gradient for the upstream gradient ``up``): the
    fused node, or the eager norm padded with zeros."""
    x = x.detach().clone().requires_grad_()
    if fused:
        y, res = fused_rmsnorm.rms_norm_residual(x, w, 1e-5, spare=spare)
    else:
        y, res = F.pad(fused_rmsnorm.eager_rms_norm(x, w, 1e-5), (0, spare)), x
    ((y * up).sum() + (res * 0.5).sum()).backward()
    return y.detach(), x.grad


def check_kernels(device: str, dtype: torch.dtype) -> None:
    """Every fused node against its eager reference (called by the tests below)."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, device=device) * scale).to(dtype)

    # RMSNorm: ragged rows, C not a power of two, a frozen weight
    x, w = randn(2, 7, 100, scale=3.0), randn(100).abs() + 0.5
    assert fused_rmsnorm.fused_applies(x, w)
    (y1, (gx1,)), (y2, (gx2,)) = _both(
        lambda x: fused_rmsnorm.rms_norm(x, w, 1e-5),
        lambda x: fused_rmsnorm.eager_rms_norm(x, w, 1e-5),
        [x],
        randn(2, 7, 100),
    )
    _close(y1, y2, dtype, "rmsnorm forward")
    _close(gx1, gx2, dtype, "rmsnorm backward")
    # the norm and its residual from one node: the residual's gradient added in the kernel
    c = randn(2, 7, 100)
    for use in ("both", "norm", "residual"):

        def combine(n, r, use=use):
            return {"both": n * c + r, "norm": n * c, "residual": r * 1.0}[use]

        (o1, (gr1,)), (o2, (gr2,)) = _both(
            lambda x: combine(*fused_rmsnorm.rms_norm_residual(x, w, 1e-5)),
            lambda x: combine(fused_rmsnorm.eager_rms_norm(x, w, 1e-5), x),
            [x],
            randn(2, 7, 100),
        )
        _close(o1, o2, dtype, f"rmsnorm + residual forward ({use})")
        _close(gr1, gr2, dtype, f"rmsnorm + residual backward ({use})")
    # spare columns after the norm: zeros, whose gradient is ignored
    for spare in (8, 5):
        up = randn(2, 7, 100 + spare)
        (o1, gs1), (o2, gs2) = (
            _norm_with_spare(x, w, spare, up, fused=True),
            _norm_with_spare(x, w, spare, up, fused=False),
        )
        assert o1.shape == (2, 7, 100 + spare) and torch.all(o1[..., 100:] == 0)
        _close(o1, o2, dtype, f"rmsnorm with {spare} spare forward")
        _close(gs1, gs2, dtype, f"rmsnorm with {spare} spare backward")

    # rotary: 3 heads of 10 (5 pairs), 7 positions, on the (B, T, C) layout
    H, D, T = 3, 10, 7
    cos, sin = rotary_tables(D, 16, device=device)
    xq = randn(2, T, H * D, scale=2.0)
    assert fused_rope.fused_applies(xq, cos[:T])

    def eager_rope(x):
        heads = x.view(2, T, H, D).transpose(1, 2)
        return apply_rotary(heads, cos[:T], sin[:T]).transpose(1, 2).reshape(2, T, H * D)

    (o1, (d1,)), (o2, (d2,)) = _both(
        lambda x: fused_rope.rotary(x, cos, sin, H), eager_rope, [xq], randn(2, T, H * D)
    )
    _close(o1, o2, dtype, "rotary forward")
    _close(d1, d2, dtype, "rotary backward")
    # q and k as column slices of one (B, T, 3C) q, k, v output: read in place
    qkv = randn(2, T, 3 * H * D, scale=2.0)
    for part in (0, 1):
        sl = qkv[..., part * H * D : (part + 1) * H * D]
        assert not sl.is_contiguous()
        torch.testing.assert_close(
            fused_rope.rotary(sl, cos, sin, H),
            fused_rope.rotary(sl.contiguous(), cos, sin, H),
            rtol=0,
            atol=0,
        )
    one = randn(3, 1, 3 * H * D)[..., H * D : 2 * H * D]  # one position, three rows
    torch.testing.assert_close(
        fused_rope.rotary(one, cos, sin, H),
        fused_rope.rotary(one.contiguous(), cos, sin, H),
        rtol=0,
        atol=0,
    )

    # SwiGLU: a size no block divides
    gate, up = randn(3, 7, 333, scale=3.0), randn(3, 7, 333)
    assert fused_swiglu.fused_applies(gate, up)
    (h1, gr1), (h2, gr2) = _both(
        fused_swiglu.swiglu, lambda a, b: F.silu(a) * b, [gate, up], randn(3, 7, 333)
    )
    _close(h1, h2, dtype, "swiglu forward")
    for a, b, what in zip(gr1, gr2, ("gate", "up"), strict=True):
        _close(a, b, dtype, f"swiglu backward ({what})")
    # compute=False (a checkpoint's recompute): no product, the same backward
    gh = randn(3, 7, 333)
    (_, gr3), _ = _both(
        lambda a, b: fused_swiglu.swiglu(a, b, compute=False), fused_swiglu.swiglu, [gate, up], gh
    )
    (_, gr4), _ = _both(fused_swiglu.swiglu, fused_swiglu.swiglu, [gate, up], gh)
    for a, b in zip(gr3, gr4, strict=True):
        assert torch.equal(a, b), "swiglu backward after compute=False"
    # free_inputs: the same gradients, written over gate's and up's memory
    gate2 = (gate.detach() * 1.0).requires_grad_()
    up2 = (up.detach() * 1.0).requires_grad_()
    g_in, u_in = gate2 * 1.0, up2 * 1.0  # intermediates the node may overwrite
    fused_swiglu.swiglu(g_in, u_in, free_inputs=True).backward(gh)
    for a, b, buf in zip((gate2.grad, up2.grad), gr4, (g_in, u_in), strict=True):
        assert torch.equal(a, b), "swiglu backward with free_inputs"
        assert torch.equal(buf.detach(), b), "swiglu free_inputs writes over its inputs"

    # head + loss: 13 rows in chunks of 5, vocab 1000, two rows ignored
    hs, head = randn(13, 48), randn(1000, 48, scale=0.5)
    labels = torch.randint(0, 1000, (13,), generator=g, device=device)
    labels[[2, 11]] = fused_ce.IGNORE_INDEX
    assert fused_ce.fused_applies(hs, head)
    (l1, (dh1,)), (l2, (dh2,)) = _both(
        lambda h: fused_ce.linear_cross_entropy_sum(h, head, labels, chunk=5),
        lambda h: fused_ce.eager_cross_entropy_sum(h, head, labels),
        [hs],
        torch.tensor(0.37, device=device),
    )
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-4)
    _close(dh1, dh2, dtype, "head + loss backward")
    assert torch.all(dh1[2] == 0) and torch.all(dh1[11] == 0)  # ignored rows: no gradient


@pytest.mark.skipif(not CUDA, reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fused_kernels_equal_the_eager_path(dtype):
    check_kernels("cuda", dtype)


@pytest.mark.skipif(not CUDA, reason="needs CUDA and Triton")
def test_cuda_out_of_range_label_is_a_nan_loss():
    h, head = torch.randn(4, 32, device="cuda"), torch.randn(50, 32, device="cuda")
    labels = torch.tensor([1, 2, 50, 3], device="cuda")
    assert torch.isnan(fused_ce.linear_cross_entropy_sum(h, head, labels))


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="needs Triton, no GPU")
def test_interpreted_fused_kernels_equal_the_eager_path():
    script = (
        f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_fused_kernels as t; "
        "t.check_kernels('cpu', torch.float32); print('kernels ok')"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kernels ok" in out.stdout


def test_fallbacks_are_the_formulas_they_replace(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w = torch.randn(3, 5, 64), torch.rand(64) + 0.5
    assert not fused_rmsnorm.fused_applies(x, w)  # CPU tensors take the eager path
    h = F.rms_norm(x.float(), (64,), eps=1e-5)
    assert torch.equal(fused_rmsnorm.rms_norm(x, w, 1e-5), w * h.to(x.dtype))
    n, r = fused_rmsnorm.rms_norm_residual(x, w, 1e-5)
    assert torch.equal(n, w * h.to(x.dtype)) and r is x
    n, r = fused_rmsnorm.rms_norm_residual(x, w, 1e-5, spare=3)
    assert torch.equal(n, F.pad(w * h.to(x.dtype), (0, 3))) and r is x
    with pytest.raises(ValueError, match="spare must be"):
        fused_rmsnorm.rms_norm(x, w, 1e-5, spare=-1)
    cos, sin = rotary_tables(16, 8)
    q = torch.randn(2, 8, 64)
    heads = q.view(2, 8, 4, 16).transpose(1, 2)
    want = apply_rotary(heads, cos, sin).transpose(1, 2).reshape(2, 8, 64)
    assert torch.equal(fused_rope.rotary(q, cos, sin, 4), want)
    a, b = torch.randn(10), torch.randn(10)
    assert torch.equal(fused_swiglu.swiglu(a, b), F.silu(a) * b)
    hs, head, y = torch.randn(6, 8), torch.randn(20, 8), torch.tensor([1, 2, -100, 4, 5, 6])
    want = F.cross_entropy(hs @ head.t(), y, ignore_index=-100, reduction="sum")
    torch.testing.assert_close(fused_ce.linear_cross_entropy_sum(hs, head, y), want)


def test_a_trainable_norm_weight_takes_the_eager_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so that only the weight's rule can say no
    x, w = torch.randn(4, 8), torch.ones(8, requires_grad=True)
    assert not fused_rmsnorm.fused_applies(x, w)
    assert not fused_ce.fused_applies(x, torch.ones(3, 8, requires_grad=True))
    assert not fused_swiglu.fused_applies(x, x.double())
