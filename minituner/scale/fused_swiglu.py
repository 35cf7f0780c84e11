"""The gated MLP's activation, silu(gate) · up, in one Triton kernel each way.

Eagerly this is silu (one pass), the product (another), and backward three more (the two
product gradients, silu's backward), each over (tokens, 11008) at 7B. Here one kernel
reads gate and up and writes h; backward one kernel reads the gradient, gate and up and
writes both input gradients, with eager's roundings to the compute dtype:

    forward   s = gate · sigmoid(gate)        float32, rounded
              h = s · up                      rounded
    backward  gs = gh · up (rounded),  gu = gh · s (rounded)
              ggate = gs · σ · (1 + gate · (1 - σ)),  σ = sigmoid(gate)

Nothing but gate and up is saved (s is recomputed in the backward kernel). With
``free_inputs`` the backward writes the two gradients over gate and up (each element is
read before it is written), as Liger-Kernel's SwiGLU does: at 7B that is two (tokens,
11008) tensors fewer allocated during the MLP's backward (by construction; its effect
on the peak is measured by ``benchmarks/bench_7b_qlora.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minituner.nf4.backends import tl, triton, triton_runs_on

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 2048  # elements per program


def fused_applies(gate: torch.Tensor, up: torch.Tensor) -> bool:
    return (
        triton is not None
        and triton_runs_on(gate)
        and gate.dtype in _DTYPES
        and gate.dtype == up.dtype
        and gate.shape == up.shape
    )


if triton is not None:

    @triton.jit
    def _swiglu_fwd(g_ptr, u_ptr, h_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(h_ptr.dtype.element_ty).to(tl.float32)
        tl.store(h_ptr + offs, (s * u).to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd(gh_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        gh = tl.load(gh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        s = (g * sig).to(du_ptr.dtype.element_ty).to(tl.float32)
        gs = (gh * u).to(dg_ptr.dtype.element_ty).to(tl.float32)
        tl.store(du_ptr + offs, (gh * s).to(du_ptr.dtype.element_ty), mask=mask)
        dg = gs * sig * (1.0 + g * (1.0 - sig))
        tl.store(dg_ptr + offs, dg.to(dg_ptr.dtype.element_ty), mask=mask)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, compute, free_inputs):
        ctx.free_inputs = free_inputs and gate.is_contiguous() and up.is_contiguous()
        gate, up = gate.contiguous(), up.contiguous()
        h = torch.empty_like(gate)
        n = gate.numel()
        if compute:
            _swiglu_fwd[(triton.cdiv(n, BLOCK),)](gate, up, h, n, BLOCK=BLOCK, num_warps=4)
        ctx.save_for_backward(gate, up)
        return h

    @staticmethod
    def backward(ctx, gh):
        gate, up = ctx.saved_tensors
        gh = gh.to(gate.dtype).contiguous()
        if ctx.free_inputs:  # each program reads its gate, up elements, then overwrites them
            dg, du = gate, up
        else:
            dg, du = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _swiglu_bwd[(triton.cdiv(n, BLOCK),)](gh, gate, up, dg, du, n, BLOCK=BLOCK, num_warps=4)
        return dg, du, None, None


def swiglu(
    gate: torch.Tensor,
    up: torch.Tensor,
    fused: bool = True,
    compute: bool = True,
    free_inputs: bool = False,
) -> torch.Tensor:
    """silu(gate) * up: fused where :func:`fused_applies` (and ``fused``), else eager.

    ``compute=False`` (fused path only) saves gate and up for the backward pass but skips
    the product: for a checkpoint's recompute whose h nobody reads (the result is then
    uninitialised). ``free_inputs=True`` (fused path only) lets the backward write its
    gradients over gate and up: the caller promises that nothing reads them after this
    node's backward and that the backward runs once (a checkpointed layer: its backward
    gets the recompute's gate and up, which serve that one backward)."""
    if fused and fused_applies(gate, up) and gate.numel() > 0:
        return _SwiGLU.apply(gate, up, compute, free_inputs)
    return F.silu(gate) * up
