"""Knowing, inside a checkpointed layer, whether this call is the backward's recompute.

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant) runs a layer twice:
once in the forward pass, keeping only its inputs, and again in the backward pass to
rebuild the tensors its autograd nodes saved. The recompute needs those saved tensors and
nothing else: it stops as soon as the last of them is rebuilt (PyTorch's early stop), but
a node that computes its output before its saved tensors are packed still pays for the
output. :func:`recomputing` lets such a node skip work whose result only the forward pass
uses (``minituner.scale.llama`` skips the SwiGLU product under a plain NF4 down
projection, and the down projection's base GEMM under a LoRA one).

Pass :func:`contexts` as ``checkpoint(..., context_fn=contexts)``: the forward pass runs
under a flag that :func:`checkpointed` reads, the recompute under that one and a flag that
:func:`recomputing` reads (per thread: the backward runs on autograd's own threads).

Which flag a node reads depends on what it decides. The backward of a non-reentrant
checkpoint runs the forward pass's autograd nodes, with the tensors they saved rebuilt by
the recompute: a setting stored on a node's ``ctx`` must be decided in the forward pass,
where :func:`recomputing` is False. :func:`checkpointed` is True in both passes, so a node
can learn there that what it saves will be the recompute's tensors, read by its backward
alone (``minituner.scale.fused_swiglu``'s ``free_inputs``). Work a pass skips is decided in
that pass: :func:`recomputing`.
"""

from __future__ import annotations

import contextlib
import threading

_STATE = threading.local()


def recomputing() -> bool:
    """True while a checkpointed layer is being recomputed for the backward pass."""
    return getattr(_STATE, "on", False)


def checkpointed() -> bool:
    """True in either pass of a checkpointed layer: its forward pass and its recompute."""
    return getattr(_STATE, "inside", False)


@contextlib.contextmanager
def _flags(recompute: bool):
    previous = recomputing(), checkpointed()
    _STATE.on, _STATE.inside = recompute, True
    try:
        yield
    finally:
        _STATE.on, _STATE.inside = previous


def contexts():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: (forward, recompute)."""
    return _flags(recompute=False), _flags(recompute=True)
