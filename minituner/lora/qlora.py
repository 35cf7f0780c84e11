"""A QLoRA Linear (NF4 base + LoRA) as one autograd node: fewer, larger kernels.

``LoRALinear(NF4Linear)`` evaluated module by module under bf16 autocast runs, in the
forward pass, the NF4 dequantize and the base matmul, then casts x to float32 (the LoRA
parameters' dtype) and back to bf16, casts A, multiplies x Aᵀ, scales it, casts B,
multiplies by Bᵀ and adds the result to the base output: about eleven kernels, most of
them elementwise passes over (tokens, features) tensors; the backward pass has more.
:func:`qlora_linear` computes the same function as

    forward   hs = s · x Aᵀ           (one GEMM: the scaling rides in its alpha)
              y  = hs Bᵀ (+ residual)  (one small GEMM: a residual rides in its beta = 1)
              y += x Wᵀ                (W dequantized into x's dtype, not kept; beta = 1)
    backward  ghs = g B
              dB  = gᵀ hs,  dA = s · ghsᵀ x
              dx  = s · ghs A + g W    (W dequantized again; the add rides in beta = 1)

six kernels forward (two are the casts of the small A and B) and eight backward, in x's
dtype (the compute dtype under autocast), with float32 accumulation inside every GEMM. It
rounds fewer times than the module path (the scaling and the add are not separate bf16
operations), so the two agree to bf16 rounding, not bit for bit; in float32 they agree to
float32 rounding (``tests/test_llama.py``).

Where the fused path does not apply (a merged adapter, dropout in training, a base that
is not a bias-free NF4Linear, dtypes that autocast would treat differently)
:func:`qlora_linear` calls the module as it is. Forward hooks registered on the LoRA
module do not run on the fused path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from minituner.lora.layer import LoRALinear
from minituner.nf4.linear import NF4Linear, nf4_linear_residual


class GemmOrder:
    """Which GEMM writes a fused node's output (this node's and :mod:`qlora_group`'s).

    ``base_first = False``: the small LoRA GEMM writes y (or dx) and the large base GEMM
    adds into it (beta = 1). ``True``: the base GEMM writes it (beta = 0) and the small
    LoRA GEMM adds (K = r, one read and write of y). cuBLAS on Hopper runs its beta = 1
    kernels slower than beta = 0 ones at the 7B shapes, so the second order can win
    although it makes one more pass over y; ``benchmarks/bench_7b_qlora.py --variants``
    times both in one run. A residual keeps the first order (it rides in the same beta)."""

    base_first = False


def _scaled_mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha · a @ b as one GEMM (beta = 0: the empty output is never read)."""
    return a.new_empty((a.shape[0], b.shape[1])).addmm_(a, b, beta=0, alpha=alpha)


class _QLoRAMatMul(torch.autograd.Function):
    """y = x Wᵀ + s · (x Aᵀ) Bᵀ (+ residual) for an NF4 ``layer``; shapes x (..., in),
    A (r, in), B (out, r), y and residual (..., out). Saves x, the dtype-cast A and B and
    hs (N, r), never W.

    The small LoRA GEMM writes y first (adding the residual on the way) and the large base
    GEMM adds into it (beta = 1), so y is written by one small pass and the base GEMM's
    epilogue, not by the base GEMM and then read and written again by two adds. With
    ``base=False`` (the output is not needed: a checkpoint's recompute) only hs is made and
    saved; the returned tensor is uninitialised."""

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, layer: NF4Linear, scaling: float, residual, base):
        dt = x.dtype
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        a, b = lora_a.to(dt), lora_b.to(dt)  # (r, in), (out, r)
        hs = _scaled_mm(x2, a.t(), scaling)  # (N, r)
        ctx.save_for_backward(x2, a, b, hs)
        ctx.layer, ctx.scaling, ctx.x_shape = layer, scaling, x.shape
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        out_shape = (*x.shape[:-1], b.shape[0])
        if not base:
            return x2.new_empty(out_shape)
        if residual is None and GemmOrder.base_first:
            y = torch.mm(x2, layer.dequantize_weight(dt).t())  # (N, out): x Wᵀ, beta = 0
            return y.addmm_(hs, b.t()).view(out_shape)  # += hs Bᵀ
        if residual is None:
            y = torch.mm(hs, b.t())  # (N, out)
        else:
            y = torch.addmm(residual.reshape(-1, b.shape[0]), hs, b.t())  # residual + hs Bᵀ
        y.addmm_(x2, layer.dequantize_weight(dt).t())  # y += x Wᵀ
        return y.view(out_shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x2, a, b, hs = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)  # (N, out)
        ghs = torch.mm(g, b)  # (N, r)
        gx = ga = gb = None
        if need_b:
            gb = torch.mm(g.t(), hs).to(ctx.param_dtypes[1])  # (out, r)
        if need_a:
            ga = _scaled_mm(ghs.t(), x2, s).to(ctx.param_dtypes[0])  # (r, in)
        if need_x and GemmOrder.base_first:
            gx = torch.mm(g, ctx.layer.dequantize_weight(x2.dtype))  # (N, in): g W
            gx = gx.addmm_(ghs, a, alpha=s).view(ctx.x_shape)  # += s · ghs A
        elif need_x:
            gx = _scaled_mm(ghs, a, s)  # (N, in): s · ghs A
            gx.addmm_(g, ctx.layer.dequantize_weight(x2.dtype))  # += g W
            gx = gx.view(ctx.x_shape)
        g_res = grad if ctx.needs_input_grad[5] else None
        return gx, ga, gb, None, None, g_res, None


def fused_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`qlora_linear` takes the fused path for ``module`` on ``x``: an
    unmerged ``LoRALinear`` over a bias-free ``NF4Linear``, no dropout drawn, and x in the
    dtype the module path would compute in (autocast's dtype under autocast, else the
    LoRA parameters' dtype)."""
    if not isinstance(module, LoRALinear) or module.merged:
        return False
    if not isinstance(module.base, NF4Linear) or module.base.bias is not None:
        return False
    if module.dropout > 0.0 and module.training:
        return False
    if x.dim() < 1 or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return x.dtype == torch.get_autocast_dtype(device)
    return x.dtype == module.lora_A.dtype == module.lora_B.dtype


def qlora_linear(
    module: nn.Module,
    x: torch.Tensor,
    fused: bool = True,
    residual: torch.Tensor | None = None,
    base: bool = True,
) -> torch.Tensor:
    """``module(x)`` (plus ``residual`` if given), computed by the fused QLoRA node where
    :func:`fused_applies` (and ``fused``), else by calling the module.

    On the fused path the residual is added inside the GEMMs (it must have the output's
    shape and x's dtype; otherwise it is added afterwards), and ``base=False`` skips the
    base GEMM when the caller will not use the output (a checkpoint's recompute: the node
    still saves what its backward needs; the output is then uninitialised)."""
    if fused and fused_applies(module, x):
        out_shape = (*x.shape[:-1], module.lora_B.shape[0])
        if residual is not None and (
            residual.dtype != x.dtype or tuple(residual.shape) != out_shape
        ):
            y = _QLoRAMatMul.apply(
                x, module.lora_A, module.lora_B, module.base, module.scaling, None, True
            )
            return y + residual
        return _QLoRAMatMul.apply(
            x, module.lora_A, module.lora_B, module.base, module.scaling, residual, base
        )
    if residual is None:
        return module(x)
    if isinstance(module, NF4Linear):
        return nf4_linear_residual(module, x, residual)
    return residual + module(x)
