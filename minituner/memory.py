"""Parameter and memory math: what a method trains and what it costs in bytes.

Pure functions over tensors, configs and dicts. Nothing here trains or imports Streamlit;
every output is JSON-friendly (ints, floats, strings, lists, dicts).

* **Parameter math** -- :func:`lora_params`, :func:`linear_params`, :class:`ModelShape`,
  :data:`SHAPES`, :func:`trainable_params`.
* **Memory** -- :func:`predict_memory` (a formula), :func:`measured_memory_cpu` (exact
  accounting of live tensors), :func:`measure_cuda_step` (CUDA peak), :func:`seed_figures`
  (the source chapter's figures next to the exact ones), :func:`format_bytes`,
  :func:`breakdown_table`.

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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from minituner.model import GPTConfig
from minituner.nf4 import bits_per_param, nf4_numel_bytes

# ---------------------------------------------------------------------------------------
# Parameter math
# ---------------------------------------------------------------------------------------


def lora_params(in_f: int, out_f: int, r: int) -> int:
    """Trainable parameters of a rank-r LoRA on Linear(in_f, out_f): A (r, in) + B (out, r)."""
    return r * (in_f + out_f)


def linear_params(in_f: int, out_f: int, bias: bool = False) -> int:
    """Parameters of nn.Linear(in_f, out_f): the weight (out, in) plus the bias (out)."""
    return in_f * out_f + (out_f if bias else 0)


@dataclass(frozen=True)
class LinearShape:
    """One Linear of a transformer layer: attribute name, short target name, in, out."""

    name: str
    target: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor of a model shape. ``kind``: embedding|norm|linear|bias|lm_head."""

    name: str
    numel: int
    kind: str
    target: str | None = None


ATTN_TARGETS = ("q", "k", "v", "o")


@dataclass
class ModelShape:
    """The parameter layout of a decoder-only transformer, enough for parameter/memory math.

    Each layer has ``n_norms_per_layer`` norms (LayerNorm: weight + bias; RMSNorm when
    ``norm_bias`` is False: weight only), attention q, k, v, o (d_model → d_model) and an
    MLP: fc_in (d_model → d_ff) and fc_out, or for a gated (LLaMA) MLP gate_proj and up_proj
    (d_model → d_ff) and down_proj. ``layer_linears`` is derived from these unless given.
    Token embeddings (vocab × d_model), learned positions (``n_positions`` × d_model; 0
    for rotary), a final norm, and an lm_head that is either tied to the embedding or a
    separate Linear(d_model, vocab) without bias.
    """

    name: str
    d_model: int
    d_ff: int
    n_layers: int
    n_heads: int
    vocab: int
    gated_mlp: bool = False
    tie_embeddings: bool = True
    bias: bool = False
    n_positions: int = 0
    norm_bias: bool = True
    n_norms_per_layer: int = 2
    layer_linears: tuple[LinearShape, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_linears:
            C, F = self.d_model, self.d_ff
            attn = [LinearShape(f"{t}_proj", t, C, C) for t in ATTN_TARGETS]
            if self.gated_mlp:
                mlp = [
                    LinearShape("gate_proj", "gate", C, F),
                    LinearShape("up_proj", "up", C, F),
                    LinearShape("down_proj", "down", F, C),
                ]
            else:
                mlp = [LinearShape("fc_in", "fc_in", C, F), LinearShape("fc_out", "fc_out", F, C)]
            self.layer_linears = tuple(attn + mlp)

    @classmethod
    def from_gpt_config(cls, cfg, name: str = "minigpt") -> ModelShape:
        """The shape of ``MiniGPT(cfg)`` (a :class:`minituner.model.GPTConfig`)."""
        return cls(
            name=name,
            d_model=cfg.n_embd,
            d_ff=cfg.mlp_ratio * cfg.n_embd,
            n_layers=cfg.n_layer,
            n_heads=cfg.n_head,
            vocab=cfg.vocab_size,
            gated_mlp=False,
            tie_embeddings=True,
            bias=cfg.bias,
            n_positions=cfg.block_size,
            norm_bias=True,
        )

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Target groups: attn, mlp, all (short names)."""
        attn = tuple(lin.target for lin in self.layer_linears if lin.target in ATTN_TARGETS)
        mlp = tuple(lin.target for lin in self.layer_linears if lin.target not in ATTN_TARGETS)
        return {"attn": attn, "mlp": mlp, "all": attn + mlp}

    def resolve_targets(self, targets: Iterable[str] | str) -> tuple[str, ...]:
        """Short target names selected by ``targets`` (short names, attribute names, groups).

        On a gated MLP, ``fc_in`` stands for gate and up, ``fc_out`` for down, so a choice
        made for MiniGPT carries over. Like ``lora.add_lora``, a string may list several
        names separated by commas (``"q,v"``). Raises ValueError naming the choices, or for
        an empty selection.
        """
        items = [targets] if isinstance(targets, str) else list(targets)
        targets = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
        if not targets:
            raise ValueError("no targets given; name at least one Linear or group")
        by_attr = {lin.name: lin.target for lin in self.layer_linears}
        short = [lin.target for lin in self.layer_linears]
        aliases = {"fc_in": ("gate", "up"), "fc_out": ("down",)} if self.gated_mlp else {}
        chosen: set[str] = set()
        for t in targets:
            if t in self.groups:
                chosen.update(self.groups[t])
            elif t in short:
                chosen.add(t)
            elif t in by_attr:
                chosen.add(by_attr[t])
            elif t in aliases:
                chosen.update(aliases[t])
            else:
                names = sorted(set(short) | set(by_attr) | set(self.groups) | set(aliases))
                raise ValueError(f"unknown target {t!r} for {self.name}; choose from {names}")
        return tuple(s for s in short if s in chosen)

    def linears(self) -> list[tuple[str, int, int]]:
        """Every Linear weight as (name, in, out); lm_head last when it is not tied."""
        out = [
            (f"layers.{i}.{lin.name}", lin.in_features, lin.out_features)
            for i in range(self.n_layers)
            for lin in self.layer_linears
        ]
        if not self.tie_embeddings:
            out.append(("lm_head", self.d_model, self.vocab))
        return out

    def param_tensors(self) -> list[ParamTensor]:
        """Every parameter tensor (a tied lm_head is the embedding, listed once)."""
        C = self.d_model
        norm = ["weight", "bias"] if self.norm_bias else ["weight"]
        ts = [ParamTensor("tok_emb", self.vocab * C, "embedding")]
        if self.n_positions:
            ts.append(ParamTensor("pos_emb", self.n_positions * C, "embedding"))
        for i in range(self.n_layers):
            for j in range(self.n_norms_per_layer):
                ts += [ParamTensor(f"layers.{i}.norm_{j}.{p}", C, "norm") for p in norm]
            for lin in self.layer_linears:
                prefix = f"layers.{i}.{lin.name}"
                ts.append(
                    ParamTensor(
                        f"{prefix}.weight", lin.in_features * lin.out_features, "linear", lin.target
                    )
                )
                if self.bias:
                    ts.append(ParamTensor(f"{prefix}.bias", lin.out_features, "bias", lin.target))
        ts += [ParamTensor(f"norm_f.{p}", C, "norm") for p in norm]
        if not self.tie_embeddings:
            ts.append(ParamTensor("lm_head.weight", C * self.vocab, "lm_head"))
        return ts

    def total_params(self) -> int:
        return sum(t.numel for t in self.param_tensors())


SHAPES: dict[str, ModelShape] = {
    # GPTConfig()'s defaults (the "default" preset, vocab 64, block 96). For a trained model
    # use ModelShape.from_gpt_config(model.config): its vocabulary and block size can differ.
    "minigpt": ModelShape.from_gpt_config(GPTConfig()),
    "gpt2-small": ModelShape(
        name="gpt2-small",
        d_model=768,
        d_ff=3072,
        n_layers=12,
        n_heads=12,
        vocab=50257,
        tie_embeddings=True,
        bias=True,
        n_positions=1024,
        norm_bias=True,
    ),
    "llama-7b": ModelShape(
        name="llama-7b",
        d_model=4096,
        d_ff=11008,
        n_layers=32,
        n_heads=32,
        vocab=32000,
        gated_mlp=True,
        tie_embeddings=False,
        bias=False,
        n_positions=0,
        norm_bias=False,
    ),
}

METHODS = ("full", "lora", "qlora")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _targeted_linears(shape: ModelShape, targets) -> list[LinearShape]:
    chosen = set(shape.resolve_targets(targets))
    return [lin for lin in shape.layer_linears if lin.target in chosen] * shape.n_layers


def trainable_params(
    shape: ModelShape, method: str, r: int = 8, targets: Iterable[str] | str = ("q", "v")
) -> int:
    """Trainable parameters: every parameter for "full"; the LoRA A and B of every targeted
    Linear in every layer for "lora" and "qlora" (targets and r are ignored for "full")."""
    _check_method(method)
    if method == "full":
        return shape.total_params()
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    return sum(
        lora_params(x.in_features, x.out_features, r) for x in _targeted_linears(shape, targets)
    )


# ---------------------------------------------------------------------------------------
# Memory prediction
# ---------------------------------------------------------------------------------------

PRECISIONS: dict[str, dict[str, int]] = {
    # bytes per element: base weights (and full-FT grads), AdamW m and v each, LoRA A/B
    # (and their grads), activations
    "fp32": {"weight": 4, "adam": 4, "lora": 4, "act": 4},
    "mixed": {"weight": 2, "adam": 4, "lora": 4, "act": 2},
    "bf16": {"weight": 2, "adam": 2, "lora": 2, "act": 2},
}
STEP_BYTES = 4  # AdamW's per-tensor `step`, a float32 scalar tensor
LOGIT_LOSS_BYTES = 4  # the loss' log-softmax over the vocabulary, kept in fp32


def nf4_bits_per_param(block_size: int = 64, double_quant: bool = True) -> float:
    """Storage bits per quantized weight: 4 + 32/block without double quantization;
    4 + 8/block + 32/(block·256) with it (4.5 and ≈ 4.127 for blocks of 64). Padding of
    the last block and the one float32 mean per tensor are left out; the exact per-tensor
    bytes come from :func:`minituner.nf4.nf4_numel_bytes`."""
    return bits_per_param(block_size, double_quant)


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
    double_quant: bool = True,
    block_size: int = 64,
    activation_checkpointing: bool = False,
) -> dict:
    """Predicted training memory in bytes, by category.

    With P_w the bytes per weight, P_a per Adam moment and P_l per LoRA element (see the
    module table for ``precision``), N the total parameters, T the number of parameter
    tensors, N_l = Σ r·(in + out) over targeted Linears, T_l = 2 per targeted Linear:

    * ``weights``: N·P_w for "full" and "lora"; for "qlora" every parameter except the
      quantized Linear weights (embeddings, norms, biases, an untied lm_head stay in P_w);
    * ``nf4``: "qlora" only: Σ :func:`minituner.nf4.nf4_numel_bytes` over every
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
    _check_method(method)
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


# ---------------------------------------------------------------------------------------
# Measured memory
# ---------------------------------------------------------------------------------------


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) bytes of ``t`` inside its storage (a strided view: the span it covers)."""
    if t.numel() == 0:
        return (0, 0)
    size = t.element_size()
    start = t.storage_offset() * size
    extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
    return start, start + extent * size


def _uncovered(span: tuple[int, int], covered: list[tuple[int, int]]) -> int:
    """Bytes of ``span`` outside the (disjoint, merged) intervals ``covered``."""
    lo, hi = span
    inside = sum(max(0, min(hi, b) - max(lo, a)) for a, b in covered)
    return hi - lo - inside


def _merge(covered: list[tuple[int, int]], span: tuple[int, int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted([*covered, span]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _is_nf4_module(module: torch.nn.Module) -> bool:
    # NF4Linear, or any quantized Linear stand-in (the duck type lora.py accepts as a base)
    return not isinstance(module, torch.nn.Linear) and callable(
        getattr(module, "dequantize_weight", None)
    )


def measured_memory_cpu(model: torch.nn.Module, optimizer=None) -> dict:
    """Exact bytes of the live tensors of ``model`` (and ``optimizer``), by category.

    A tensor's bytes are numel × element size (a strided view: the bytes it spans). Bytes
    are counted once even when tensors share them (tied weights, views, shared buffers),
    in the first category that meets them:
    ``nf4`` (parameters and buffers of an ``NF4Linear`` other than its bias: packed codes,
    absmax and its double-quantization state), ``lora`` (parameters named ``lora_*``),
    ``weights`` (every other parameter and buffer), ``gradients`` (``.grad`` of the
    parameters) and ``optimizer`` (every tensor in the optimizer state: AdamW's m, v and
    step). Measure after ``optimizer.step()`` and before ``zero_grad()``.

    Also gives ``total`` (the sum of those five), ``storage_slack`` (bytes that the
    underlying storages hold beyond these tensors, e.g. a buffer that is a slice of a
    larger padded allocation; 0 when every tensor owns its storage) and the parameter
    counts ``n_params`` and ``n_trainable``. Works on any device.
    """
    covered: dict[int, list[tuple[int, int]]] = {}  # storage -> byte intervals counted
    sizes: dict[int, int] = {}
    out = {"weights": 0, "lora": 0, "nf4": 0, "gradients": 0, "optimizer": 0}

    def add(category: str, t: torch.Tensor | None) -> None:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return
        storage = t.untyped_storage()
        sid = storage.data_ptr() or id(storage)
        sizes[sid] = storage.nbytes()
        span = _byte_span(t)
        have = covered.get(sid, [])
        out[category] += _uncovered(span, have)
        covered[sid] = _merge(have, span)

    for module in model.modules():
        nf4 = _is_nf4_module(module)
        for name, t in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            if nf4 and name != "bias":
                add("nf4", t)
            elif name.startswith("lora_"):
                add("lora", t)
            else:
                add("weights", t)
    for p in model.parameters():
        add("gradients", p.grad)
    if optimizer is not None:
        for state in optimizer.state.values():
            for t in state.values():
                add("optimizer", t)
    params = {id(p): p for p in model.parameters()}.values()
    out["total"] = sum(out.values())
    out["storage_slack"] = sum(
        sizes[sid] - sum(b - a for a, b in spans) for sid, spans in covered.items()
    )
    out["n_params"] = sum(p.numel() for p in params)
    out["n_trainable"] = sum(p.numel() for p in params if p.requires_grad)
    return out


def measure_cuda_step(fn: Callable[[], object], device=None) -> int:
    """Peak bytes allocated on CUDA while ``fn()`` runs (one training step, say).

    Resets the peak statistics, runs ``fn`` and returns ``torch.cuda.max_memory_allocated``,
    which includes what was already allocated before the step (weights, optimizer state).
    Raises RuntimeError when CUDA is not available.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("measure_cuda_step needs a CUDA device")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


# ---------------------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------------------

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float, digits: int = 1, binary: bool = True) -> str:
    """Human-readable size: ``format_bytes(98304) == "96.0 KiB"``; ``binary=False`` gives
    powers of 1000 (kB, MB, GB)."""
    base, units = (1024, _BINARY) if binary else (1000, _DECIMAL)
    sign = "-" if n < 0 else ""
    v = abs(float(n))
    i = 0
    while v >= base and i < len(units) - 1:
        v /= base
        i += 1
    if i == 0:
        return f"{sign}{int(v)} B"
    return f"{sign}{v:.{digits}f} {units[i]}"


CATEGORIES = ("weights", "nf4", "lora", "gradients", "optimizer", "activations")


def breakdown_table(
    predicted: Mapping | None = None,
    measured: Mapping | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> list[dict]:
    """Long-format rows for a stacked bar chart: one row per (source, category) present.

    Each row: ``source`` ("predicted"/"measured"), ``category``, ``bytes``, ``label``
    (:func:`format_bytes`), ``fraction`` of that source's total over ``categories`` and
    ``estimate`` (True for predicted activations).
    """
    rows = []
    for source, d in (("predicted", predicted), ("measured", measured)):
        if d is None:
            continue
        total = sum(int(d.get(c, 0)) for c in categories)
        for c in categories:
            if c not in d:
                continue
            b = int(d[c])
            rows.append(
                {
                    "source": source,
                    "category": c,
                    "bytes": b,
                    "label": format_bytes(b),
                    "fraction": b / total if total else 0.0,
                    "estimate": source == "predicted" and c == "activations",
                }
            )
    return rows


# ---------------------------------------------------------------------------------------
# The source chapter's figures
# ---------------------------------------------------------------------------------------

GiB, MiB, KiB = 2**30, 2**20, 2**10
SEED_7B_PARAMS = 7e9  # the chapter's round parameter count


def _fig(claim: str, seed: float, exact: float, unit: str, note: str = "", **extra) -> dict:
    rel = (exact - seed) / seed if seed else 0.0
    return {
        "claim": claim,
        "seed": seed,
        "exact": exact,
        "unit": unit,
        "rel_diff": rel,
        "note": note,
        **extra,
    }


def seed_figures() -> dict[str, dict]:
    """Each figure of the source chapter next to the exact figure this module computes.

    ``seed`` is the chapter's rounded number, ``exact`` ours, both in ``unit``; where the
    chapter's own convention reproduces its figure, ``seed_convention`` gives that value.
    Why they differ:

    * The chapter uses 7 × 10⁹ parameters for "a 7B model" and divides bytes by 10⁹ while
      writing "GiB". The real LLaMA-7B shape (``SHAPES["llama-7b"]``) has 6,738,415,616
      parameters, and a GiB is 2³⁰ bytes: 7e9 × 12 B = 84 "GiB", but 6.74e9 × 12 B is
      75.3 GiB. Both are listed.
    * "590K × 4 buffers … ~4.7 MiB" for Linear(768, 768) counts 2 B per buffer (the
      weight, its gradient, Adam m and v, all half precision: ``precision="bf16"``):
      4,718,592 B, which is 4.72 MB or 4.5 MiB. The LoRA figure, 12,288 × 8 B, is
      exactly 96 KiB. (In this module's "mixed" convention, fp32 Adam, these are 6.75 MiB
      and 192 KiB.)
    * The MLP and "7B, all Linears" LoRA counts in the chapter are rounded loosely
      (30 M and 50 M); the exact sums are 18.9 M for its 4096/16384 example and 20.0 M
      (0.30 %) for LLaMA-7B with q, k, v, o, gate, up, down at r = 8.
    * "14 GiB" LoRA and "3.6 GiB" QLoRA include no activations; ours are the
      ``states_total`` of :func:`predict_memory` with LoRA r = 8 on q and v, fp32 LoRA
      and Adam; QLoRA keeps embeddings and lm_head in bf16 and quantizes the layer Linears
      with double quantization.
    """
    f: dict[str, dict] = {}
    p768, l768 = linear_params(768, 768), lora_params(768, 768, 8)
    f["linear768_full_params"] = _fig("Linear(768,768) full FT trainable", 590e3, p768, "params")
    f["linear768_lora8_params"] = _fig("Linear(768,768) LoRA r=8 trainable", 12e3, l768, "params")
    full_b = trainable_state_bytes(p768, "bf16")
    lora_b = trainable_state_bytes(l768, "bf16", lora=True)
    f["linear768_full_state"] = _fig(
        "Linear(768,768) full FT state (4 buffers x 2 B)",
        4.7,
        full_b / MiB,
        "MiB",
        "the chapter's 4.7 is 4,718,592 B in decimal MB",
        seed_convention=full_b / 1e6,
        mixed_fp32_adam=trainable_state_bytes(p768, "mixed") / MiB,
    )
    f["linear768_lora8_state"] = _fig(
        "Linear(768,768) LoRA r=8 state (4 buffers x 2 B)",
        96,
        lora_b / KiB,
        "KiB",
        seed_convention=lora_b / KiB,
        mixed_fp32_adam=trainable_state_bytes(l768, "mixed", lora=True) / KiB,
    )
    f["linear768_ratio"] = _fig("Linear(768,768) full / LoRA r=8", 50, p768 / l768, "x")

    p4k = linear_params(4096, 4096)
    f["linear4096_full_params"] = _fig("Linear(4096,4096) full FT", 16.78e6, p4k, "params")
    for r, seed in ((8, 65e3), (16, 131e3)):
        n = lora_params(4096, 4096, r)
        f[f"linear4096_lora{r}_params"] = _fig(f"Linear(4096,4096) LoRA r={r}", seed, n, "params")
        f[f"linear4096_lora{r}_ratio"] = _fig(
            f"Linear(4096,4096) full / LoRA r={r}", 256 if r == 8 else 128, p4k / n, "x"
        )

    # The chapter's 32-layer example: q, k, v, o all (4096, 4096); MLP 4096 -> 16384 -> 4096.
    ex = ModelShape("seed-32x4096", 4096, 16384, 32, 32, 32000, bias=False, norm_bias=False)
    attn_full = sum(
        i * o for n, i, o in ex.linears() if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
    )
    attn_lora = trainable_params(ex, "lora", 8, "attn")
    f["attn32_full_params"] = _fig("32 layers x q,k,v,o full FT", 2.15e9, attn_full, "params")
    f["attn32_lora8_params"] = _fig("32 layers x q,k,v,o LoRA r=8", 8.3e6, attn_lora, "params")
    f["attn32_lora8_percent"] = _fig(
        "LoRA r=8 / full, attention (< 0.4 %)", 0.4, 100 * attn_lora / attn_full, "%"
    )
    mlp_full = linear_params(4096, 16384) + linear_params(16384, 4096)
    mlp_lora = trainable_params(ex, "lora", 8, "mlp") // ex.n_layers
    f["mlp_layer_full_params"] = _fig("one layer's MLP full", 134e6, mlp_full, "params")
    f["mlp_layer_lora8_params"] = _fig("one layer's MLP LoRA r=8", 328e3, mlp_lora, "params")
    f["mlp_layer_ratio"] = _fig("MLP full / LoRA r=8", 408, mlp_full / mlp_lora, "x")
    all_full = sum(i * o for _, i, o in ex.linears())
    all_lora = trainable_params(ex, "lora", 8, "all")
    f["layers32_full_params"] = _fig("32 layers attn + MLP full", 7e9, all_full, "params")
    f["layers32_lora8_params"] = _fig(
        "32 layers attn + MLP LoRA r=8", 30e6, all_lora, "params", "the chapter rounds up"
    )

    llama = SHAPES["llama-7b"]
    n7 = llama.total_params()
    l7 = trainable_params(llama, "lora", 8, "all")
    f["llama7b_params"] = _fig("7B model parameters", SEED_7B_PARAMS, n7, "params")
    f["llama7b_lora8_all_params"] = _fig("7B LoRA r=8, every layer Linear", 50e6, l7, "params")
    f["llama7b_lora8_all_percent"] = _fig("7B LoRA r=8 trainable share", 0.7, 100 * l7 / n7, "%")

    full = predict_memory(llama, "full", precision="mixed")
    p = PRECISIONS["mixed"]
    for key, seed, per_param in (
        ("weights", 14, p["weight"]),
        ("gradients", 14, p["weight"]),
        ("optimizer", 56, 2 * p["adam"]),
        ("states_total", 84, 2 * p["weight"] + 2 * p["adam"]),
    ):
        f[f"llama7b_full_{key}"] = _fig(
            f"7B full FT, mixed precision: {key}",
            seed,
            full[key] / GiB,
            "GiB",
            seed_convention=SEED_7B_PARAMS * per_param / 1e9,
        )
    lora = predict_memory(llama, "lora", r=8, targets=("q", "v"), precision="mixed")
    f["llama7b_lora_total"] = _fig(
        "7B LoRA r=8 (q, v): base fp16 + LoRA + Adam",
        14,
        lora["states_total"] / GiB,
        "GiB",
        seed_convention=SEED_7B_PARAMS * 2 / 1e9,
    )
    f["llama7b_lora_params_bytes"] = _fig("7B LoRA weights", 7, lora["lora"] / MiB, "MiB")
    f["llama7b_lora_adam_bytes"] = _fig("7B Adam for LoRA", 56, lora["optimizer"] / MiB, "MiB")
    q = predict_memory(llama, "qlora", r=8, targets=("q", "v"), precision="mixed")
    f["llama7b_qlora_nf4_base"] = _fig(
        "7B NF4 base",
        3.5,
        q["nf4"] / GiB,
        "GiB",
        "ours: layer Linears only, with double-quant absmax; embeddings stay bf16",
        seed_convention=SEED_7B_PARAMS * 0.5 / 1e9,
    )
    f["llama7b_qlora_total"] = _fig("7B QLoRA total", 3.6, q["states_total"] / GiB, "GiB")
    f["nf4_base_saving"] = _fig(
        "NF4 vs 16-bit base weights", 4, 16 / nf4_bits_per_param(64, True), "x"
    )
    return f
