"""The head and the cross-entropy as one autograd node: no float32 logits, no recompute.

The eager head of :class:`minituner.scale.llama.LlamaQLoRA` computes the logits (tokens x
32000) in chunks, widens them to float32, takes log-softmax and the loss, and under
checkpointing recomputes all of it in the backward pass before the softmax gradient and
the GEMM back to the hidden states. Since the head is frozen, everything the backward
pass needs can be computed in the forward one, chunk by chunk of rows:

    logits = h_c Wᵀ                          (one GEMM, the compute dtype)
    loss_i = logsumexp(logits_i) - logits_i[y_i]      float32, in one Triton kernel that
    grad_i = softmax(logits_i) - onehot(y_i)          overwrites the logits with grad
    dh_c   = grad_c W                        (one GEMM)

and only dh (tokens x hidden, the size of one activation) is kept; the backward pass
scales it by the incoming gradient. Rows labelled -100 count 0 and get no gradient; a
label outside [0, vocab) gives a NaN loss (the eager path raises). The loss agrees with
the eager float32 cross-entropy to float32 rounding of the same compute-dtype logits; the
gradient is rounded to the compute dtype once before its GEMM, as the eager path's is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minituner.nf4.backends import tl, triton, triton_runs_on

IGNORE_INDEX = -100
CHUNK = 1024  # rows of logits alive at a time (1024 x 32000 bf16: 62.5 MiB)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_applies(h: torch.Tensor, weight: torch.Tensor) -> bool:
    """Triton present, h on a device it runs on, a frozen weight of h's dtype."""
    return (
        triton is not None
        and triton_runs_on(h)
        and h.dtype in _DTYPES
        and weight.dtype == h.dtype
        and not weight.requires_grad
    )


if triton is not None:

    @triton.jit
    def _ce_rows(
        logits_ptr, labels_ptr, loss_ptr, V: tl.constexpr, BLOCK: tl.constexpr, IGNORE: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * V
        label = tl.load(labels_ptr + row).to(tl.int64)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        for start in range(0, V, BLOCK):  # online max and sum of exponentials
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        ignored = label == IGNORE
        valid = (label >= 0) & (label < V)
        target = tl.load(base + label, mask=valid, other=0.0).to(tl.float32)
        loss = tl.where(ignored, 0.0, tl.where(valid, lse - target, float("nan")))
        tl.store(loss_ptr + row, loss)
        keep = tl.where(ignored, 0.0, 1.0)
        for start in range(0, V, BLOCK):  # overwrite the logits with their gradient
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)) * keep
            tl.store(base + cols, g.to(logits_ptr.dtype.element_ty), mask=cols < V)


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, labels, chunk):
        N, C = h.shape
        V = weight.shape[0]
        dh = torch.empty_like(h)  # (N, C)
        losses = torch.empty(N, dtype=torch.float32, device=h.device)
        labels = labels.contiguous()
        # h and weight share a dtype: autocast would change nothing, and it refuses out=
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, N, chunk):
                e = min(N, s + chunk)
                logits = torch.mm(h[s:e], weight.t())  # (n, V), overwritten by its gradient
                _ce_rows[(e - s,)](
                    logits, labels[s:e], losses[s:e], V=V,
                    BLOCK=min(4096, triton.next_power_of_2(V)), IGNORE=IGNORE_INDEX,
                    num_warps=16 if V >= 4096 else 4,
                )  # fmt: skip
                torch.mm(logits, weight, out=dh[s:e])  # (n, C)
        ctx.save_for_backward(dh)
        return losses.sum()

    @staticmethod
    def backward(ctx, grad):
        (dh,) = ctx.saved_tensors
        # a 0-d float32 factor keeps dh's dtype: one kernel, the product taken in float32
        # and rounded once (as dh.float() * grad, then a cast, would in three)
        return dh * grad.to(torch.float32), None, None, None


def eager_cross_entropy_sum(h, weight, labels) -> torch.Tensor:
    """The reference: logits in h's dtype, cross-entropy in float32, summed."""
    logits = F.linear(h, weight)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def linear_cross_entropy_sum(
    h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = CHUNK
) -> torch.Tensor:
    """Summed cross-entropy (float32, 0-d) of the logits h Wᵀ for h (N, C), weight (V, C)
    and labels (N,) (-100: ignored): the fused node where :func:`fused_applies`, else
    :func:`eager_cross_entropy_sum`."""
    if fused_applies(h, weight) and h.shape[0] > 0:
        return _LinearCrossEntropySum.apply(h.contiguous(), weight, labels, chunk)
    return eager_cross_entropy_sum(h, weight, labels)
