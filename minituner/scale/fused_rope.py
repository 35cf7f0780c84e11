"""Rotary position embedding in one Triton kernel each way, on the projection's layout.

The eager :func:`minituner.scale.llama.apply_rotary` widens q (or k) to float32, splits it
in halves, builds the rotated copy with a concatenation, multiplies twice, adds and
narrows back: six passes over the tensor forward and more backward (the issue's 15 ms of
concatenations and most of its copies at batch 8 x 512). Here one kernel reads the
projection's output (B, T, C) = (B, T, H, D) once and writes the rotated one, per
position t and pair (j, j + D/2) of every head:

    forward   o₁ = x₁ cos₁ - x₂ sin₁,   o₂ = x₂ cos₂ + x₁ sin₂    (float32, rounded once)
    backward  g₁ = d₁ cos₁ + d₂ sin₂,   g₂ = d₂ cos₂ - d₁ sin₁    (rotation by -angle)

the eager arithmetic term for term (no fused multiply-add), so the two agree to the
rounding of x's dtype. The output stays (B, T, C), so the heads view
(B, H, T, D) that attention takes is a transpose, never a copy. The input may be a column
slice of a wider projection output (q and k out of one q, k, v GEMM): read in place.
"""

from __future__ import annotations

import torch

from minituner.nf4.backends import tl, triton, triton_runs_on

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rotary_tables(
    head_dim: int, n_pos: int, theta: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, float32 (n_pos, head_dim), for the rotate-half convention."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    )
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (n_pos, head_dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (..., T, D) by position angles; float32 inside."""
    h = x.float()
    x1, x2 = h.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (h * cos + rotated * sin).to(x.dtype)


def fused_applies(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Triton present, x (B, T, C) on a device it runs on, float32 tables (T, D)."""
    return (
        triton is not None
        and triton_runs_on(x)
        and x.dim() == 3
        and x.dtype in _DTYPES
        and cos.dtype == torch.float32
        and x.shape[1] == cos.shape[0]
    )


if triton is not None:

    @triton.jit
    def _rope(
        x_ptr, cos_ptr, sin_ptr, out_ptr, T, C, x_row_stride,
        H: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_J: tl.constexpr,
        BACKWARD: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)  # b * T + t
        t = row % T
        h = tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1) heads
        j = tl.arange(0, BLOCK_J)[None, :]  # (1, BLOCK_J) pair index
        mask = (h < H) & (j < HALF)
        col = h * (2 * HALF) + j  # (BLOCK_H, BLOCK_J)
        first = row * C + col  # in the (B, T, C) output
        src = row * x_row_stride + col  # in x, whose rows may be wider (a q, k, v slice)
        x1 = tl.load(x_ptr + src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + src + HALF, mask=mask, other=0.0).to(tl.float32)
        jm = j < HALF
        c1 = tl.load(cos_ptr + t * 2 * HALF + j, mask=jm, other=0.0)
        c2 = tl.load(cos_ptr + t * 2 * HALF + HALF + j, mask=jm, other=0.0)
        s1 = tl.load(sin_ptr + t * 2 * HALF + j, mask=jm, other=0.0)
        s2 = tl.load(sin_ptr + t * 2 * HALF + HALF + j, mask=jm, other=0.0)
        if BACKWARD:
            o1 = x1 * c1 + x2 * s2
            o2 = x2 * c2 - x1 * s1
        else:
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
        tl.store(out_ptr + first, o1.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + first + HALF, o2.to(out_ptr.dtype.element_ty), mask=mask)


def _row_stride(x: torch.Tensor) -> int | None:
    """The distance between consecutive (b, t) rows of x (B, T, C) when its rows are
    contiguous and evenly spaced (contiguous x, or a column slice of a wider (B, T, 3C)
    projection output); None otherwise."""
    B, T, C = x.shape
    if x.stride(2) != 1:
        return None
    if T > 1:
        stride = x.stride(1)
        even = B == 1 or x.stride(0) == T * stride
    else:  # one position: rows are batch entries
        stride = x.stride(0) if B > 1 else C
        even = True
    return stride if even and stride >= C else None


def _run(x: torch.Tensor, cos, sin, n_heads: int, backward: bool) -> torch.Tensor:
    B, T, C = x.shape
    stride = _row_stride(x)
    if stride is None:
        x = x.contiguous()
        stride = C
    out = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    half = C // n_heads // 2
    bh, bj = triton.next_power_of_2(n_heads), triton.next_power_of_2(half)
    _rope[(B * T,)](
        x, cos, sin, out, T, C, stride, H=n_heads, HALF=half, BLOCK_H=bh, BLOCK_J=bj,
        BACKWARD=backward, num_warps=max(1, min(8, bh * bj // 256)), enable_fp_fusion=False,
    )  # fmt: skip
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, n_heads):
        ctx.save_for_backward(cos, sin)
        ctx.n_heads = n_heads
        return _run(x, cos, sin, n_heads, backward=False)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _run(grad, cos, sin, ctx.n_heads, backward=True), None, None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int) -> torch.Tensor:
    """x (B, T, C) with every head's (T, D) slice rotated by the (T, D) tables; (B, T, C).

    One Triton kernel each way where :func:`fused_applies`, else the eager rotation of
    :func:`minituner.scale.llama.apply_rotary`'s arithmetic on the heads view.
    """
    cos, sin = cos[: x.shape[1]], sin[: x.shape[1]]
    if fused_applies(x, cos) and x.numel() > 0:
        return _Rotary.apply(x, cos.contiguous(), sin.contiguous(), n_heads)
    B, T, C = x.shape
    heads = x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)
    return apply_rotary(heads, cos, sin).transpose(1, 2).reshape(B, T, C)
