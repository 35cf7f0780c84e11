"""Predicted training memory: what a method trains, and what that costs in bytes.

Pure functions over :class:`minituner.memory.shapes.ModelShape`; nothing here trains, and every
output is JSON-friendly. :func:`lora_params`, :func:`linear_params` and
:func:`trainable_params` count parameters; :func:`predict_memory` gives the bytes of a
training step by category (weights, NF4 storage, LoRA, gradients, optimizer,
activations), :func:`trainable_state_bytes` the per-parameter state the source chapter
counts. :mod:`minituner.memory.measure` counts the same categories on a live model, and the
tests hold the two equal to the byte.

Byte conventions (per element) used by :func:`predict_memory`:

============  =======  ==========  =============  ==================  ===========
precision     weights  full grads  AdamW m and v  LoRA A, B (+grads)  activations
============  =======  ==========  =============  ==================  ===========
``"fp32"``    4        4           4 + 4          4                   4
``"mixed"``   2        2           4 + 4          4                   2
``"bf16"``    2        2           2 + 2          2                   2
============  =======  ==========  =============  ==================  ===========

"mixed" is the source chapter's convention for full fine-tuning: half-precision weights and
gradients, fp32 Adam moments, no fp32 master copy (PyTorch AMP with fp32 weights has the
``"fp32"`` state sizes). Gradients have the dtype of the parameter they belong to. PyTorch's
AdamW also keeps a float32 scalar ``step`` per trained tensor (4 B each); it is counted in
``optimizer`` so that the prediction equals the live CPU accounting to the byte. Frozen
non-Linear parameters (embeddings, norms, biases) are stored in the weight precision.
"""

from __future__ import annotations

from collections.abc import Iterable

from minituner.memory.shapes import LinearShape, ModelShape
from minituner.methods import check_method
from minituner.nf4.format import DEFAULT_BLOCK_SIZE, QLORA_DOUBLE_QUANT
from minituner.nf4.storage import nf4_numel_bytes


def lora_params(in_f: int, out_f: int, r: int) -> int:
    """Trainable parameters of a rank-r LoRA on Linear(in_f, out_f): A (r, in) + B (out, r)."""
    return r * (in_f + out_f)


def linear_params(in_f: int, out_f: int, bias: bool = False) -> int:
    """Parameters of nn.Linear(in_f, out_f): the weight (out, in) plus the bias (out)."""
    return in_f * out_f + (out_f if bias else 0)


def _targeted_linears(shape: ModelShape, targets) -> list[LinearShape]:
    chosen = set(shape.short_targets(targets))
    return [lin for lin in shape.layer_linears if lin.target in chosen] * shape.n_layers


def trainable_params(
    shape: ModelShape, method: str, r: int = 8, targets: Iterable[str] | str = ("q", "v")
) -> int:
    """Trainable parameters: every parameter for "full"; the LoRA A and B of every targeted
    Linear in every layer for "lora" and "qlora" (targets and r are ignored for "full")."""
    check_method(method)
    if method == "full":
        return shape.total_params()
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    return sum(
        lora_params(x.in_features, x.out_features, r) for x in _targeted_linears(shape, targets)
    )


PRECISIONS: dict[str, dict[str, int]] = {
    # bytes per element: base weights (and full-FT grads), AdamW m and v each, LoRA A/B
    # (and their grads), activations
    "fp32": {"weight": 4, "adam": 4, "lora": 4, "act": 4},
    "mixed": {"weight": 2, "adam": 4, "lora": 4, "act": 2},
    "bf16": {"weight": 2, "adam": 2, "lora": 2, "act": 2},
}
STEP_BYTES = 4  # AdamW's per-tensor `step`, a float32 scalar tensor
LOGIT_LOSS_BYTES = 4  # the loss' log-softmax over the vocabulary, kept in fp32


def _activation_bytes(
    shape: ModelShape, batch: int, seq: int, act: int, lora_per_layer: int, ckpt: bool
) -> int:
    C, F, L = shape.d_model, shape.d_ff, shape.n_layers
    mlp = 4 * F if shape.gated_mlp else 2 * F
    per_layer = 9 * C + mlp + shape.n_heads * seq + lora_per_layer
    head = 2 * C + shape.vocab
    kept = L * C + per_layer if ckpt else L * per_layer
    return batch * seq * ((kept + head) * act + shape.vocab * LOGIT_LOSS_BYTES)


def predict_memory(
    shape: ModelShape,
    method: str,
    r: int = 8,
    targets: Iterable[str] | str = ("q", "v"),
    batch: int = 1,
    seq: int = 512,
    precision: str = "mixed",
    double_quant: bool = QLORA_DOUBLE_QUANT,
    block_size: int = DEFAULT_BLOCK_SIZE,
    activation_checkpointing: bool = False,
) -> dict:
    """Predicted training memory in bytes, by category.

    With P_w the bytes per weight, P_a per Adam moment and P_l per LoRA element (see the
    module table for ``precision``), N the total parameters, T the number of parameter
    tensors, N_l = Σ r·(in + out) over targeted Linears, T_l = 2 per targeted Linear:

    * ``weights``: N·P_w for "full" and "lora"; for "qlora" every parameter except the
      quantized Linear weights (embeddings, norms, biases, an untied lm_head stay in P_w);
    * ``nf4``: "qlora" only: Σ :func:`minituner.nf4.storage.nf4_numel_bytes` over every
      transformer-layer Linear weight -- the layers ``quantize_model_nf4`` replaces: packed
      codes ⌈n/2⌉ B, absmax 4 B per block of ``block_size`` or, double-quantized, 1 B per
      block + 4 B per 256 blocks + a 4 B mean (≈ 4.127 bits a weight, 4.5 without);
    * ``lora``: N_l·P_l ("lora", "qlora");
    * ``gradients``: N·P_w for "full", N_l·P_l otherwise;
    * ``optimizer``: AdamW m and v, 2·N·P_a + 4·T for "full", 2·N_l·P_a + 4·T_l otherwise
      (the 4 B per tensor is PyTorch's float32 ``step``);
    * ``activations`` -- an ESTIMATE (``activations_is_estimate`` is True): tensors
      saved for the backward, batch·seq·[(L·a + 2C + V)·P_act + 4V] with, per layer and
      token, a = 9C + 2F (4F for a gated MLP) + n_heads·seq + r per targeted Linear:
      9C = both norms' inputs and outputs (4C), q, k, v (3C), the attention output (C),
      the residual sum (C); 2F = fc_in's output and the GELU output (gated: gate, up,
      act(gate), product); n_heads·seq = the attention probabilities (no fused kernel);
      r = each LoRA branch's A·x; with activation checkpointing only each
      layer's input (C) plus one layer's full set (a) are kept, L·C + a in place of L·a;
      4V is the fp32 log-softmax of the loss. Dropout masks and temporaries are ignored;
    * ``states_total``: everything except activations (exact given the conventions);
    * ``total``: ``states_total`` + ``activations``.
    """
    check_method(method)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if batch < 0 or seq < 0:
        raise ValueError("batch and seq must be >= 0")
    p = PRECISIONS[precision]
    tensors = shape.param_tensors()
    n_total = sum(t.numel for t in tensors)
    weights = nf4 = lora = 0
    for t in tensors:
        if method == "qlora" and t.kind == "linear":
            nf4 += nf4_numel_bytes(t.numel, block_size, double_quant)
        else:
            weights += t.numel * p["weight"]
    lora_per_layer = 0
    if method == "full":
        gradients = n_total * p["weight"]
        optimizer = 2 * n_total * p["adam"] + STEP_BYTES * len(tensors)
    else:
        targeted = _targeted_linears(shape, targets)
        n_lora = trainable_params(shape, method, r, targets)
        lora = n_lora * p["lora"]
        gradients = n_lora * p["lora"]
        optimizer = 2 * n_lora * p["adam"] + STEP_BYTES * 2 * len(targeted)
        lora_per_layer = r * len(targeted) // shape.n_layers
    activations = _activation_bytes(
        shape, batch, seq, p["act"], lora_per_layer, activation_checkpointing
    )
    states = weights + nf4 + lora + gradients + optimizer
    return {
        "weights": weights,
        "gradients": gradients,
        "optimizer": optimizer,
        "lora": lora,
        "nf4": nf4,
        "activations": activations,
        "activations_is_estimate": True,
        "states_total": states,
        "total": states + activations,
    }


def trainable_state_bytes(n_params: int, precision: str = "mixed", lora: bool = False) -> int:
    """Per-parameter training state of ``n_params`` trained parameters: the parameter, its
    gradient and AdamW m and v (4 buffers), step counters left out. A frozen base is not
    included. This is the quantity the chapter's one-Linear example counts."""
    p = PRECISIONS[precision]
    own = p["lora"] if lora else p["weight"]
    return n_params * (2 * own + 2 * p["adam"])
