"""RMSNorm in one Triton kernel each way, for the frozen norms of a QLoRA model.

The eager norm of :class:`minituner.scale.llama.RMSNorm` (Hugging Face's order: normalize
in float32, round to the input's dtype, multiply by the weight) runs as a cast, the
norm, a cast back and a multiply forward, and about as many kernels again backward, each
a full pass over the (tokens, hidden) activations. Here one pass reads x and writes y:

    forward   h = x · rsqrt(mean(x²) + eps)   float32, rounded to x's dtype
              y = w · h                        in x's dtype
    backward  gh = w · gy                      (rounded to x's dtype, as eager)
              gx = rstd · (gh - h · mean(gh · h))   float32, rounded to x's dtype

The weight is frozen in QLoRA (no gradient is computed for it; :func:`rms_norm` falls back
to the eager path when it requires one). The per-row rstd (float32) is saved for the
backward pass, not the normalized activations. Same function as the eager path: the
results agree to the rounding of x's dtype (``tests/scale/test_fused_kernels.py``).

In a pre-norm decoder x feeds both its norm and the residual add, so autograd adds two
gradients for x: the norm's and the residual's, one more pass that reads two (tokens,
hidden) tensors and writes a third. :func:`rms_norm_residual` returns the norm and x
itself (as the residual to add), from one node whose backward kernel adds the residual's
gradient while it writes the norm's:

    backward  gx = rstd · (gh - h · mean(gh · h)) + g_residual   (float32, rounded once)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minituner.nf4.backends import tl, triton, triton_runs_on

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def eager_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference: normalize in float32, round to x's dtype, then scale."""
    h = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return weight * h.to(x.dtype)


def fused_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Triton present, x on a device it runs on, weight frozen and of x's dtype."""
    return (
        triton is not None
        and triton_runs_on(x)
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and not weight.requires_grad
        and x.shape[-1] <= 65536
    )


if triton is not None:

    @triton.jit
    def _rms_fwd(
        x_ptr, w_ptr, y_ptr, rstd_ptr, n_cols, y_ld, n_spare, eps,
        BLOCK: tl.constexpr, SPARE: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        h = (x * rstd).to(y_ptr.dtype.element_ty)  # rounded as eager's h.to(x.dtype)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        y = (w.to(tl.float32) * h.to(tl.float32)).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + row * y_ld + cols, y, mask=mask)  # rows y_ld apart
        if SPARE > 0:  # zeros in the n_spare columns after the norm
            sp = tl.arange(0, SPARE)
            zero = tl.zeros((SPARE,), dtype=y_ptr.dtype.element_ty)
            tl.store(y_ptr + row * y_ld + n_cols + sp, zero, mask=sp < n_spare)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _rms_bwd(
        gy_ptr, x_ptr, w_ptr, rstd_ptr, gx_ptr, gr_ptr, n_cols, gy_ld,
        BLOCK: tl.constexpr, RESIDUAL: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        gy = tl.load(gy_ptr + row * gy_ld + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        gh = (gy * w).to(gx_ptr.dtype.element_ty).to(tl.float32)  # eager rounds w · gy
        h = x * rstd
        dot = tl.sum(gh * h, axis=0) / n_cols
        gx = rstd * (gh - h * dot)
        if RESIDUAL:  # + the residual branch's gradient of x, before the one rounding
            gx += tl.load(gr_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(gx_ptr + row * n_cols + cols, gx.to(gx_ptr.dtype.element_ty), mask=mask)


def _warps(block: int) -> int:
    return max(1, min(16, block // 512))


def _forward(ctx, x, weight, eps, spare: int) -> torch.Tensor:
    """y (..., C + spare): the norm in the first C columns, zeros in the rest."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C).contiguous()  # (N, C)
    # made in its final shape: a view of a tensor made here would be an output that the
    # consumer may not write in place (qlora_group writes the spare columns)
    y = x2.new_empty((*x.shape[:-1], C + spare))  # (..., C + spare), rows C + spare apart
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(C)
    spare_block = triton.next_power_of_2(spare) if spare else 0
    _rms_fwd[(x2.shape[0],)](
        x2, weight, y, rstd, C, C + spare, spare, eps,
        BLOCK=block, SPARE=spare_block, num_warps=_warps(block),
    )  # fmt: skip
    ctx.save_for_backward(x2, weight, rstd)
    ctx.x_shape = x.shape
    return y


def _backward(ctx, gy, g_residual=None) -> torch.Tensor:
    """gx (x's shape): the norm's input gradient (from the first C columns of gy), plus
    ``g_residual`` where given."""
    x2, weight, rstd = ctx.saved_tensors
    C = x2.shape[-1]
    gy2 = gy.reshape(-1, gy.shape[-1]).to(x2.dtype)  # (N, C + spare)
    if gy2.stride(-1) != 1:
        gy2 = gy2.contiguous()
    gr = gy2 if g_residual is None else g_residual.reshape(-1, C).to(x2.dtype).contiguous()
    gx = torch.empty_like(x2)
    block = triton.next_power_of_2(C)
    _rms_bwd[(x2.shape[0],)](
        gy2, x2, weight, rstd, gx, gr, C, gy2.stride(0),
        BLOCK=block, RESIDUAL=g_residual is not None, num_warps=_warps(block),
    )  # fmt: skip
    return gx.view(ctx.x_shape)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, spare):
        return _forward(ctx, x, weight, eps, spare)

    @staticmethod
    def backward(ctx, gy):
        return _backward(ctx, gy), None, None, None


class _RMSNormResidual(torch.autograd.Function):
    """(norm(x), x): x comes back as a view, so the residual's gradient reaches this
    node's backward, which adds it in the norm's kernel."""

    @staticmethod
    def forward(ctx, x, weight, eps, spare):
        return _forward(ctx, x, weight, eps, spare), x

    @staticmethod
    def backward(ctx, gy, g_residual):
        if gy is None:  # only the residual was used
            return g_residual, None, None, None
        return _backward(ctx, gy, g_residual), None, None, None


def _check_spare(spare: int) -> None:
    if not isinstance(spare, int) or isinstance(spare, bool) or spare < 0:
        raise ValueError(f"spare must be a non-negative int, got {spare!r}")


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fused: bool = True, spare: int = 0
) -> torch.Tensor:
    """RMSNorm of x (..., C) with a (C,) weight: one Triton kernel each way where
    :func:`fused_applies` (and ``fused``), else :func:`eager_rms_norm`.

    ``spare`` > 0 returns (..., C + spare): the norm in the first C columns and ``spare``
    zero columns for the consumer to write, so that it can append to its input without a
    copy (:func:`minituner.lora.qlora_group.qlora_group` puts its LoRA products there).
    Their gradient is ignored."""
    _check_spare(spare)
    if fused and fused_applies(x, weight) and x.numel() > 0:
        return _RMSNorm.apply(x, weight, eps, spare)
    y = eager_rms_norm(x, weight, eps)
    return F.pad(y, (0, spare)) if spare else y


def rms_norm_residual(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fused: bool = True, spare: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x, weight, eps, spare=spare), x)`` for a pre-norm block that adds x
    back as its residual: use the second tensor for that add. Where the fused kernel
    applies, both come from one node whose backward writes the norm's input gradient plus
    the residual's in one pass (no separate add); elsewhere the second is x itself."""
    _check_spare(spare)
    if fused and fused_applies(x, weight) and x.numel() > 0:
        return _RMSNormResidual.apply(x, weight, eps, spare)
    y = eager_rms_norm(x, weight, eps)
    return (F.pad(y, (0, spare)) if spare else y), x
