"""LoRALinear's fast path: which kernels a float layer runs, and a hand-written backward.

:func:`fast_forward` computes y = x Wᵀ + b + s·dropout(x) Aᵀ Bᵀ for an ``nn.Linear`` base
when x, W, A and B share one dtype on the CPU or a GPU (``LoRALinear.forward`` decides
that). It picks one of three paths by rules measured on these machines:

- one Linear with W' = W + s·B·A built per call (``_one_linear``): a small layer on a GPU,
  where a step waits on kernel launches (``MERGED_FORWARD_MAX_MACS``); on the CPU a
  frozen float32/64 layer small for its rank (``CPU_FOLD_MAX_RATIO``), or one with nothing
  to differentiate;
- ``_LoRAFunction``, an autograd function with its own backward: a larger frozen CPU layer;
- otherwise the base GEMM with the update added in place (autograd derives the rest).

Every path computes the same function; ``tests/lora/test_fast_path.py`` checks each
against the formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# LoRALinear on a GPU folds ΔW into the weight for layers up to this many multiply-adds
# (tokens x in x out): ~4 µs of an H200's float32 GEMM, about one kernel launch
MERGED_FORWARD_MAX_MACS = 1 << 27
# On the CPU the narrow LoRA products ((r, N) @ (N, in) and the like) ran at about 1/5 of
# the rate of a full (N, in) @ (in, out) GEMM in `bench_lora_peft.py --profile` on the 2-core
# machine, so a layer folds W + s·B·A into one Linear (∂W' = gᵀ x: N·in·out multiply-adds,
# instead of ~2·r·N·(in + out) in narrow products) while in·out <= this ratio · r·(in + out)
CPU_FOLD_MAX_RATIO = 10


def _fold_delta(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether LoRALinear runs as one Linear with W + s·B·A: on a GPU, for a small layer."""
    return x.is_cuda and x.numel() * weight.shape[0] <= MERGED_FORWARD_MAX_MACS


def _cpu_folds(weight: torch.Tensor, r: int) -> bool:
    """Whether a CPU layer with a frozen float32/64 base runs as one Linear with W + s·B·A."""
    out_f, in_f = weight.shape
    return in_f * out_f <= CPU_FOLD_MAX_RATIO * r * (in_f + out_f)


def _use_function(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether LoRALinear runs as ``_LoRAFunction``: on the CPU, with W and b frozen."""
    return x.is_cpu and not weight.requires_grad and (bias is None or not bias.requires_grad)


def _one_linear(x, weight, bias, a, b) -> bool:
    """Whether LoRALinear (without dropout) runs as one Linear with W + s·B·A and autograd's
    backward: a small layer on a GPU; on the CPU, with W and b frozen, a float32/64 layer
    small for its rank, or one with nothing to differentiate."""
    if _fold_delta(x, weight):
        return True
    if weight.dtype not in (torch.float32, torch.float64) or not _use_function(x, weight, bias):
        return False
    needs_grad = x.requires_grad or a.requires_grad or b.requires_grad
    return _cpu_folds(weight, a.shape[0]) or not (torch.is_grad_enabled() and needs_grad)


class _LoRAFunction(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ for a frozen W and b, with a hand-written backward.

    On the CPU what LoRA costs is its narrow products ((r, N) = (r, in) @ (in, N) and the
    like): each reads a whole (N, in) or (N, out) tensor, often no longer in cache, at a small
    fraction of the GEMM rate (``benchmarks/bench_lora_peft.py --profile`` lists them). Each
    is laid out with r rows, (r, N), the faster layout there. With ``fold`` (float32 /
    float64) the update rides in the frozen GEMMs through W' = W + s·B·A, built per call
    ((out, r) @ (r, in)), and backward's g B rides in the GEMM for ∂x:

        forward   y = x W'ᵀ + b,  hᵀ = A xᵀ (r, N)                        2 GEMMs
        backward  [∂x | gh] = g [W' | B]  (N, in + r),                    1 GEMM
                  ∂A = s·ghᵀ x,  ∂B = s·(hᵀ g)ᵀ                           2 GEMMs

    (ghᵀ = Bᵀ gᵀ alone where ∂x is not needed; ∂x is then a column slice, not contiguous).
    The forward keeps y = x W'ᵀ + b as the frozen Linear computes it, so a zero B gives the
    base's output bit for bit. Without ``fold`` (bfloat16 / float16, where W' would round
    away a small ΔW) y and ∂x get the update in place instead: y += s·h Bᵀ, ∂x += s·gh A.
    The scaling s rides in the GEMMs' alpha. PEFT runs 3 GEMMs and 2 passes over an (N, out)
    tensor forward, 5 GEMMs, a scaling and an add over (N, ·) tensors backward.
    """

    @staticmethod
    def forward(ctx, x, w, bias, a, b, s: float, fold: bool):
        # x: (N, in), w: (out, in), bias: (out,) or None, a: (r, in), b: (out, r)
        wf = torch.addmm(w, b, a, alpha=s) if fold else w  # (out, in)
        y = torch.mm(x, wf.t()) if bias is None else torch.addmm(bias, x, wf.t())  # (N, out)
        ht = torch.mm(a, x.t())  # (r, N)
        if not fold:
            y.addmm_(ht.t(), b.t(), alpha=s)
        ctx.save_for_backward(x, wf, a, b, ht)
        ctx.s, ctx.fold = s, fold
        return y

    @staticmethod
    def backward(ctx, g):
        # g: (N, out)
        x, wf, a, b, ht = ctx.saved_tensors
        s, need, fold = ctx.s, ctx.needs_input_grad, ctx.fold
        gx = ga = gb = ght = None
        if need[0] and fold:
            ge = torch.mm(g, torch.cat([wf, b], 1))  # (N, in + r)
            gx, ght = ge[:, : x.shape[1]], ge[:, x.shape[1] :].t()  # (N, in), (r, N)
        elif need[3] or need[0]:
            ght = torch.mm(b.t(), g.t())  # (r, N)
        if need[0] and not fold:
            gx = torch.mm(g, wf)  # (N, in); wf is W here
            gx.addmm_(ght.t(), a, alpha=s)
        if need[3]:
            ga = torch.addmm(a, ght, x, beta=0, alpha=s)  # (r, in)
        if need[4]:
            gb = torch.addmm(b.t(), ht, g, beta=0, alpha=s).t()  # (out, r)
        return gx, None, None, ga, gb, None, None


def fast_forward(x, w, bias, a, b, s: float, p: float) -> torch.Tensor:
    """LoRALinear's output for a float Linear base (weight ``w``, ``bias``) on the CPU or a
    GPU, with x, W, A, B of one dtype: fewest kernels and ops. ``s`` is the scaling and
    ``p`` the dropout probability on the LoRA branch (0 in eval mode).

    PEFT runs 5 kernels forward (3 GEMMs, a scaling and an add over (N, out)) and 7
    backward. On a GPU, where MiniGPT's step waits on kernel launches, a small layer
    (N·in·out <= ``MERGED_FORWARD_MAX_MACS``) without dropout runs as one Linear with
    W' = W + s·B·A built per call: forward 2 GEMMs (and a copy of W), backward 4 GEMMs
    (∂x, ∂W', ∂A, ∂B) and 2 scalings of (r, in) and (out, r) tensors. On the CPU, with
    W and b frozen and no dropout, a float32/64 layer small for its rank
    (``CPU_FOLD_MAX_RATIO``, MiniGPT's 128 x 128 at r=8) runs as one Linear with W' too,
    its backward autograd's GEMMs (∂x = g W', ∂W' = gᵀ x, ∂A = s·Bᵀ ∂W', ∂B = s·∂W' Aᵀ,
    no narrow products, no Python node); a larger one runs as ``_LoRAFunction`` with its
    own backward (see there; with nothing to differentiate, one Linear with W').
    Otherwise y = x Wᵀ + b, then y += s·(x Aᵀ) Bᵀ in place (the scaling rides in addmm's
    alpha): 3 GEMMs forward, no pass over an (N, out) tensor; 5 GEMMs backward, 2 scalings
    of (N, r) and (out, r) tensors and the sum of x's two gradients. Autograd derives every
    gradient there; W and b get one only if someone unfroze them.
    """
    drop = p > 0.0
    if not drop and _one_linear(x, w, bias, a, b):
        return F.linear(x, torch.addmm(w, b, a, alpha=s), bias)  # (..., out)
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    if not drop and _use_function(x, w, bias):
        fold = w.dtype in (torch.float32, torch.float64)
        y = _LoRAFunction.apply(x2, w, bias, a, b, s, fold)  # (N, out)
        return y.view(*x.shape[:-1], y.shape[-1])
    xl = F.dropout(x2, p, True) if drop else x2
    y = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias, x2, w.t())  # (N, out)
    y.addmm_(torch.mm(xl, a.t()), b.t(), alpha=s)  # (N, r) @ (r, out), added in place
    return y.view(*x.shape[:-1], y.shape[-1])
