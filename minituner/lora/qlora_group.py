"""Several QLoRA projections of one input as one autograd node (q, k, v; gate, up).

A LLaMA layer projects the same normalized x three times in attention (q, k, v) and twice
in the MLP (gate, up). Evaluated one node each (:mod:`minituner.lora.qlora`), every LoRA
branch reads x again for its A product, forward and backward, and the input gradients of
the projections (g_q W_q, g_k W_k, ...) are separate (tokens, hidden) tensors that
autograd then adds up, one elementwise pass per extra projection. :func:`qlora_group`
computes the same functions as

    forward   hs  = x [s A_1; s A_2; ...]ᵀ     (one GEMM for every LoRA branch: x read once)
              y_i = hs_i B_iᵀ;  y_i += x W_iᵀ  (as qlora's node; a plain NF4 part: x W_iᵀ)
    backward  ghs_i = g_i B_i,  dB_i = g_iᵀ hs_i
              dA  = s · ghsᵀ x                 (one GEMM for every LoRA branch)
              dx  = s · ghs A + Σ g_i W_i       (one small GEMM, then each base GEMM adds
                                                into dx: beta = 1, no separate adds)

with the same roundings as the one-node path, so they agree to float32 (or bf16) rounding
(``tests/lora/test_qlora_group.py``). Parts may mix LoRA-wrapped and plain low-memory NF4
Linears (q and v adapted, k not). Where a part is neither, or LoRA branches differ in
scaling or dtype, :func:`qlora_group` evaluates the parts one by one.

Where the caller leaves ``spare`` columns after x (the 7B model's norms do when
``LoRAInK.on``, off: see :class:`LoRAInK`; ``lora_spare`` says how many), the
forward puts each LoRA product inside its base GEMM's K instead
(:func:`_lora_in_k`): hs is written into those columns and y_j = [x | hs] [W_j | 0 | B_j]ᵀ
is one GEMM, so no rank-r GEMM writes y and no base GEMM reads it back (beta = 1); the
backward is the one above, into a gradient with zero spare columns.

With ``one_gemm`` the bases are one (Σout, in) weight: [y_1 ... y_k] = x [W_1; ...; W_k]ᵀ
is one GEMM (the y_i are column slices of its output; each LoRA branch then adds into its
slice), and the backward's Σ g_i W_i is one GEMM of the concatenated gradients. The 7B
model keeps it off (``LlamaAttention.qkv_one_gemm``): on one H100 the (3C, C) GEMM was
0.989x three (C, C) ones forward but 1.058x backward with the concatenation
(``benchmarks/results/gemm_order_h100.txt``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from minituner.lora.layer import LoRALinear
from minituner.lora.qlora import GemmOrder, _scaled_mm, fused_applies, qlora_linear
from minituner.nf4.linear import NF4LinearLowMem


class _QLoRAGroupMatMul(torch.autograd.Function):
    """Outputs y_i = x W_iᵀ (+ s · (x A_iᵀ) B_iᵀ for a LoRA part), shapes (..., out_i).

    ``layers`` are the parts' NF4 bases, ``lora`` says which parts have a LoRA branch,
    ``params`` are (A, B) for those parts in order, ``spare`` the free columns after x
    (0: none; see :func:`qlora_group`). Saves x (where a LoRA part needs it), the
    dtype-cast A's and B's and hs (N, Σr), or with ``spare`` x, which holds hs, and the
    parameters; never a W."""

    @staticmethod
    def forward(ctx, x, layers, lora, scaling, one_gemm, spare, *params):
        dt = x.dtype
        lead, ys, j, col = x.shape[:-1], [], 0, 0
        if spare:  # x (..., in + spare): the LoRA products go into its spare columns
            xe = x.reshape(-1, x.shape[-1])  # (N, in + spare)
            x2 = xe[:, : xe.shape[1] - spare]  # (N, in), rows in + spare apart
            ys = _lora_in_k(xe, x2, layers, lora, scaling, params)
            # x itself: a view of it made here would not unpack after the in-place write
            ctx.save_for_backward(x, *params)
            ctx.layers, ctx.lora, ctx.scaling, ctx.x_shape = layers, lora, scaling, x.shape
            ctx.one_gemm, ctx.spare, ctx.dtype = False, spare, dt
            ctx.param_dtypes = [p.dtype for p in params]
            return tuple(y.view(*lead, y.shape[1]) for y in ys)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        a_s = [p.to(dt) for p in params[0::2]]  # (r_i, in)
        b_s = [p.to(dt) for p in params[1::2]]  # (out_i, r_i)
        a_cat = torch.cat(a_s) if len(a_s) > 1 else (a_s[0] if a_s else None)  # (Σr, in)
        hs = _scaled_mm(x2, a_cat.t(), scaling) if a_s else None  # (N, Σr)
        if one_gemm:  # every base in one (Σout, in) weight, one GEMM; y_i are column slices
            outs = [layer.out_features for layer in layers]
            w_cat = x2.new_empty((sum(outs), x2.shape[1]))  # (Σout, in)
            row = 0
            for layer, n in zip(layers, outs, strict=True):
                layer.dequantize_weight(dt, out=w_cat[row : row + n])
                row += n
            y_all = torch.mm(x2, w_cat.t())  # (N, Σout)
            del w_cat
            row = 0
            for n, has_lora in zip(outs, lora, strict=True):
                y = y_all[:, row : row + n]  # (N, out_i), rows Σout apart
                if has_lora:
                    r = b_s[j].shape[1]
                    y.addmm_(hs[:, col : col + r], b_s[j].t())  # += s (x A_iᵀ) B_iᵀ
                    j, col = j + 1, col + r
                ys.append(y.view(*lead, n))
                row += n
        else:
            for layer, has_lora in zip(layers, lora, strict=True):
                w = layer.dequantize_weight(dt)  # (out_i, in)
                if has_lora and GemmOrder.base_first:  # the base GEMM writes y, LoRA adds
                    r = b_s[j].shape[1]
                    y = torch.mm(x2, w.t()).addmm_(hs[:, col : col + r], b_s[j].t())
                    j, col = j + 1, col + r
                elif has_lora:  # as qlora's node: the small GEMM writes y, the base adds
                    r = b_s[j].shape[1]
                    y = torch.mm(hs[:, col : col + r], b_s[j].t())  # (N, out_i)
                    y.addmm_(x2, w.t())  # += x W_iᵀ
                    j, col = j + 1, col + r
                else:
                    y = torch.mm(x2, w.t())  # (N, out_i)
                ys.append(y.view(*lead, w.shape[0]))
                del w  # freed before the next part's weight is dequantized: one at a time
        # x only serves the A gradients: without a LoRA part it is not kept (at 7B with
        # q,v adapters that is gate,up's (tokens, hidden) input, freed in the recompute)
        ctx.save_for_backward(x2 if a_s else None, a_cat, hs, *b_s)
        ctx.layers, ctx.lora, ctx.scaling, ctx.x_shape = layers, lora, scaling, x.shape
        ctx.one_gemm, ctx.spare, ctx.dtype = one_gemm, 0, dt
        ctx.param_dtypes = [p.dtype for p in params]
        return tuple(ys)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        if ctx.spare:
            x, *params = ctx.saved_tensors
            xe = x.reshape(-1, x.shape[-1])  # (N, in + spare)
            in_f, dt = xe.shape[1] - ctx.spare, xe.dtype
            x2 = xe[:, :in_f]  # (N, in)
            a_s = [p.to(dt) for p in params[0::2]]  # (r_i, in)
            b_s = [p.to(dt) for p in params[1::2]]  # (out_i, r_i)
            a_cat = torch.cat(a_s) if len(a_s) > 1 else a_s[0]  # (Σr, in)
            hs = xe[:, in_f : in_f + a_cat.shape[0]]  # (N, Σr), written by the forward
        else:
            x2, a_cat, hs, *b_s = ctx.saved_tensors
        s, dt = ctx.scaling, ctx.dtype
        gs = [g.reshape(-1, g.shape[-1]).to(dt) for g in grads]  # (N, out_i)
        lora_gs = [g for g, has in zip(gs, ctx.lora, strict=True) if has]
        param_grads: list = []
        ghs = None
        if lora_gs:
            ghs_parts = [torch.mm(g, b) for g, b in zip(lora_gs, b_s, strict=True)]  # (N, r_i)
            ghs = torch.cat(ghs_parts, 1) if len(ghs_parts) > 1 else ghs_parts[0]  # (N, Σr)
            ga = _scaled_mm(ghs.t(), x2, s)  # (Σr, in)
            col = 0
            for k, (g, b) in enumerate(zip(lora_gs, b_s, strict=True)):
                r = b.shape[1]
                gb = torch.mm(g.t(), hs[:, col : col + r])  # (out_i, r)
                param_grads += [
                    ga[col : col + r].to(ctx.param_dtypes[2 * k]),
                    gb.to(ctx.param_dtypes[2 * k + 1]),
                ]
                col += r
        gx = None
        if ctx.needs_input_grad[0] and ctx.one_gemm:  # [g_1 ... g_k] [W_1; ...; W_k]: one GEMM
            in_f = ctx.x_shape[-1]
            w_cat = gs[0].new_empty((sum(g.shape[1] for g in gs), in_f))  # (Σout, in)
            row = 0
            for layer, g in zip(ctx.layers, gs, strict=True):
                layer.dequantize_weight(dt, out=w_cat[row : row + g.shape[1]])
                row += g.shape[1]
            gx = torch.mm(torch.cat(gs, 1), w_cat)  # (N, in)
            del w_cat
            if ghs is not None:
                gx.addmm_(ghs, a_cat, alpha=s)  # += s · ghs A
        elif ctx.needs_input_grad[0] and ctx.spare:  # gx (N, in + spare), spare part 0
            gxe = x2.new_empty((x2.shape[0], x2.shape[1] + ctx.spare))
            gx = gxe[:, : x2.shape[1]]  # (N, in), rows in + spare apart
            gx.addmm_(ghs, a_cat, beta=0, alpha=s)  # s · ghs A
            for layer, g in zip(ctx.layers, gs, strict=True):
                gx.addmm_(g, layer.dequantize_weight(dt))  # += g_i W_i
            gxe[:, x2.shape[1] :].zero_()
            gx = gxe
        elif ctx.needs_input_grad[0]:
            first = not GemmOrder.base_first and ghs is not None
            gx = _scaled_mm(ghs, a_cat, s) if first else None  # (N, in): s · ghs A
            for layer, g in zip(ctx.layers, gs, strict=True):
                w = layer.dequantize_weight(dt)  # (out_i, in)
                gx = torch.mm(g, w) if gx is None else gx.addmm_(g, w)  # += g_i W_i
                del w  # one dequantized weight alive at a time
            if ghs is not None and not first:
                gx.addmm_(ghs, a_cat, alpha=s)  # += s · ghs A
        if gx is not None:
            gx = gx.view(ctx.x_shape)
        return (gx, None, None, None, None, None, *param_grads)


def _lora_in_k(xe, x2, layers, lora, scaling, params) -> list[torch.Tensor]:
    """The group's outputs with each LoRA product inside its base GEMM's K.

    xe (N, in + spare) holds x in its first ``in`` columns; hs = s · x [A_1; ...]ᵀ is
    written into the next Σr (in place: those columns are the caller's to give). The j-th
    LoRA part (its columns start ``off`` after x) is then one GEMM over the first
    in + off + r_j columns, against [W_j | 0 | B_j] (W_j dequantized straight into its
    columns; zeros for the parts before it):

        y_j = [x | hs_1 ... hs_j] [W_j | 0 | B_j]ᵀ = x W_jᵀ + s (x A_jᵀ) B_jᵀ

    one GEMM and one rounding per output, where the two-GEMM node writes y with the
    rank-r product and reads it back in the base GEMM's beta = 1."""
    dt, in_f = xe.dtype, x2.shape[1]
    a_s = [p.to(dt) for p in params[0::2]]  # (r_i, in)
    a_cat = torch.cat(a_s) if len(a_s) > 1 else a_s[0]  # (Σr, in)
    hs = xe[:, in_f : in_f + a_cat.shape[0]]  # (N, Σr), rows in + spare apart
    hs.addmm_(x2, a_cat.t(), beta=0, alpha=scaling)
    ys, j, off = [], 0, 0
    for layer, has_lora in zip(layers, lora, strict=True):
        if not has_lora:
            ys.append(torch.mm(x2, layer.dequantize_weight(dt).t()))  # (N, out_i)
            continue
        b = params[2 * j + 1]  # (out_j, r_j)
        r = b.shape[1]
        k = in_f + off + r
        # rows 16 elements apart: Triton specializes the dequantize kernel's row stride on
        # % 16, and only then can it prove 16-byte stores aligned (on an H100 the dequantize
        # into rows 8 apart took twice the contiguous one's time, 16 apart 1.09x)
        w = xe.new_empty((b.shape[0], -(-k // 16) * 16))[:, :k]
        layer.dequantize_weight(dt, out=w[:, :in_f])
        if off:
            w[:, in_f : in_f + off].zero_()  # the parts before this one: not its product
        w[:, in_f + off :].copy_(b)  # B_j, cast to the compute dtype
        ys.append(torch.mm(xe[:, :k], w.t()))  # (N, out_j)
        del w  # one dequantized weight alive at a time
        j, off = j + 1, off + r
    return ys


def lora_spare(modules, x: torch.Tensor, fused: bool = True, one_gemm: bool = False) -> int:
    """How many spare columns after x (..., in) :func:`qlora_group` would fill with its
    LoRA products (Σr, rounded up to 8 so that rows stay 16-byte aligned): 0 where it
    would not take the one-node path, has no LoRA part, or ``one_gemm`` or
    ``LoRAInK.on`` say otherwise. A caller that makes x can leave that many columns free
    after it (``minituner.scale.fused_rmsnorm.rms_norm``'s ``spare``)."""
    modules = list(modules)
    if not (LoRAInK.on and fused and not one_gemm and group_applies(modules, x)):
        return 0
    ranks = [lo.lora_A.shape[0] for _, lo in (_part(m, x) for m in modules) if lo is not None]
    return -(-sum(ranks) // 8) * 8 if ranks else 0


class LoRAInK:
    """Whether :func:`lora_spare` asks for spare columns (the LoRA products inside the
    base GEMMs' K). Off: on one H100 (``benchmarks/bench_7b_qlora.py --variants
    lora_in_k``, runs 6-8 in ``benchmarks/results/``) the step took 1.011-1.039x the
    two-GEMM node's, its dequantize into rows 8 elements apart twice the contiguous one's
    time. With rows 16 apart (run 9, ``qlora_7b_h100_batch8_lora_in_k16_run9``) that
    dequantize is 18.3 against 16.8 ms a step on all seven and the step 0.985x (q,v:
    1.008x), but the all-seven peak is 5816.7 MiB, over PEFT + Liger's 5778.1 in the same
    run. The tests check its values either way."""

    on = False


def _part(module: nn.Module, x: torch.Tensor):
    """(NF4 base, LoRALinear or None) where ``module`` can join a group, else None."""
    if type(module) is NF4LinearLowMem and module.bias is None:
        return module, None
    if fused_applies(module, x) and type(module.base) is NF4LinearLowMem:
        return module.base, module
    return None


def group_applies(modules, x: torch.Tensor) -> bool:
    """Whether :func:`qlora_group` takes the one-node path: every module a fused-ready
    LoRA over a low-memory NF4 base or such a base alone, one LoRA scaling and parameter
    dtype among them, a gradient to make, and autograd on."""
    if not torch.is_grad_enabled() or len(modules) < 2:
        return False
    parts = [_part(m, x) for m in modules]
    if any(p is None for p in parts) or len({m.in_features for m, _ in parts}) != 1:
        return False
    loras = [lo for _, lo in parts if lo is not None]
    if len({lo.scaling for lo in loras}) > 1:
        return False
    if len({(lo.lora_A.dtype, lo.lora_B.dtype) for lo in loras}) > 1:
        return False
    needs_grad = x.requires_grad or any(
        lo.lora_A.requires_grad or lo.lora_B.requires_grad for lo in loras
    )
    return needs_grad and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def qlora_group(
    modules, x: torch.Tensor, fused: bool = True, one_gemm: bool = False, spare: int = 0
) -> tuple[torch.Tensor, ...]:
    """``tuple(m(x) for m in modules)``, as one node where :func:`group_applies` (and
    ``fused``), else one :func:`minituner.lora.qlora.qlora_linear` each.

    ``spare`` > 0: x is (..., in + spare) and its last ``spare`` columns are free for
    this call to write (finite, such as the zeros a norm with ``spare`` leaves: some CPU
    GEMMs read a strided operand past its last column and multiply by zero; their values
    never reach an output and their gradient is zero); where it is at least
    :func:`lora_spare`, each LoRA product rides in its base GEMM's K (:func:`_lora_in_k`),
    else x's first ``in`` columns are used as usual.

    ``one_gemm`` dequantizes every base into one (Σout, in) weight and runs one base GEMM
    (q, k, v at 7B: one 4096 x 12288 product runs nearer the Tensor Cores' peak than three
    4096²); the outputs are then column slices of one (..., Σout) tensor, not contiguous.
    It holds the whole group's dense weight at once (three 4096² weights: 96 MiB in bf16),
    so it is meant for small groups."""
    modules = list(modules)
    if spare:
        xin = x[..., : x.shape[-1] - spare]  # (..., in)
        want = lora_spare(modules, xin, fused, one_gemm)
        if not want or spare < want:
            return qlora_group(modules, xin, fused, one_gemm)
    if not (fused and group_applies(modules, x)):
        return tuple(qlora_linear(m, x, fused) for m in modules)
    parts = [_part(m, x) for m in modules]
    layers = tuple(base for base, _ in parts)
    lora = tuple(lo is not None for _, lo in parts)
    loras: list[LoRALinear] = [lo for _, lo in parts if lo is not None]
    scaling = loras[0].scaling if loras else 1.0
    params = [t for lo in loras for t in (lo.lora_A, lo.lora_B)]
    return _QLoRAGroupMatMul.apply(x, layers, lora, scaling, bool(one_gemm), spare, *params)
