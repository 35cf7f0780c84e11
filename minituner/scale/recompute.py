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
as it is, the recompute under a flag that :func:`recomputing` reads (per thread: the
backward runs on autograd's own threads).
"""

from __future__ import annotations

import contextlib
import threading

_STATE = threading.local()


def recomputing() -> bool:
    """True while a checkpointed layer is being recomputed for the backward pass."""
    return getattr(_STATE, "on", False)


@contextlib.contextmanager
def _recompute():
    previous = recomputing()
    _STATE.on = True
    try:
        yield
    finally:
        _STATE.on = previous


def contexts():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: (forward, recompute)."""
    return contextlib.nullcontext(), _recompute()
