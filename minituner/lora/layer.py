"""LoRA from scratch: a trainable low-rank update on a frozen Linear layer.

A LoRA layer keeps the pretrained weight W (out, in) frozen and learns

    ΔW = scaling · B A,   A: (r, in),  B: (out, r),   y = x Wᵀ + b + scaling · dropout(x) Aᵀ Bᵀ

A starts Kaiming-uniform and B starts at zero, so a fresh adapter leaves every output
unchanged. ``scaling`` is alpha / r, or alpha / √r with rsLoRA, which keeps the size of the
update steady as r grows. The base may be an ``nn.Linear`` or a 4-bit ``NF4Linear``
(QLoRA): any module with ``in_features``, ``out_features``, ``bias`` and
``dequantize_weight()`` is accepted, so this file never imports the quantizer.

Choices worth knowing:

- ``add_lora`` works on any ``nn.Module``. It picks Linear layers by attribute name: the
  short names q, k, v, o, fc_in, fc_out, the groups attn / mlp / all, any other attribute
  name (``lm_head``), or a full path (``blocks.0.attn.q_proj``). It freezes everything that
  is not LoRA. Names from a group that a model lacks are skipped; a name given explicitly
  must exist.
- ``LoRALinear.merge()`` adds ΔW to the base weight in place and ``unmerge()`` subtracts it
  (exact up to float rounding). Both are idempotent. In-place merging is refused for a 4-bit
  base and for a weight tied to another module (MiniGPT's ``lm_head`` shares the token
  embedding); ``merge_lora(model)`` handles both by building new plain Linears.
- Adapters are saved as ``adapter.safetensors`` + ``adapter_config.json``; nothing is ever
  unpickled. Parameters are counted once even when tied.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from minituner.io import atomic_write_text, save_tensors

TARGET_ALIASES: dict[str, str] = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "fc_in": "fc_in",
    "fc_out": "fc_out",
}
TARGET_GROUPS: dict[str, list[str]] = {
    "attn": ["q", "k", "v", "o"],
    "mlp": ["fc_in", "fc_out"],
    "all": ["q", "k", "v", "o", "fc_in", "fc_out"],
}
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_FORMAT, _VERSION = "minituner-lora", 1
# LoRALinear on a GPU folds ΔW into the weight for layers up to this many multiply-adds
# (tokens x in x out): ~4 µs of an H200's float32 GEMM, about one kernel launch
MERGED_FORWARD_MAX_MACS = 1 << 27
# On the CPU the narrow LoRA products ((r, N) @ (N, in) and the like) ran at about 1/5 of
# the rate of a full (N, in) @ (in, out) GEMM in `bench_lora_peft.py --profile` on the 2-core
# machine, so a layer folds W + s·B·A into one Linear (∂W' = gᵀ x: N·in·out multiply-adds,
# instead of ~2·r·N·(in + out) in narrow products) while in·out <= this ratio · r·(in + out)
CPU_FOLD_MAX_RATIO = 10


def is_linear_like(module: object) -> bool:
    """True for an ``nn.Linear`` or a frozen 4-bit stand-in such as ``NF4Linear``."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Module)
        and isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int)
        and hasattr(module, "bias")
        and callable(getattr(module, "dequantize_weight", None))
    )


def _check_hparams(r, alpha, dropout, rslora, in_features: int, out_features: int, where: str):
    """Raises ValueError naming the bad value and the allowed range."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise ValueError(f"LoRA rank r must be a whole number >= 1, got {r!r}")
    limit = min(in_features, out_features)
    if not 1 <= r <= limit:
        raise ValueError(
            f"LoRA rank r={r} does not fit {where} (in_features={in_features}, "
            f"out_features={out_features}); r must be between 1 and {limit}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"LoRA alpha must be finite, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if not isinstance(rslora, bool):
        raise ValueError(f"rslora must be True or False, got {rslora!r}")


def _has_float_weight(base: nn.Module) -> bool:
    w = getattr(base, "weight", None)
    return (
        isinstance(w, torch.Tensor)
        and w.is_floating_point()
        and tuple(w.shape) == (base.out_features, base.in_features)
    )


def _fold_delta(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether LoRALinear runs as one Linear with W + s·B·A: on a GPU, for a small layer."""
    return x.is_cuda and x.numel() * weight.shape[0] <= MERGED_FORWARD_MAX_MACS


def _cpu_folds(weight: torch.Tensor, r: int) -> bool:
    """Whether a CPU layer with a frozen float32/64 base runs as one Linear with W + s·B·A."""
    out_f, in_f = weight.shape
    return in_f * out_f <= CPU_FOLD_MAX_RATIO * r * (in_f + out_f)


def _use_function(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether LoRALinear runs as ``_LoRAFunction``: on the CPU, with W and b frozen."""
    return x.is_cpu and not weight.requires_grad and (bias is None or not bias.requires_grad)


def _one_linear(x, weight, bias, a, b) -> bool:
    """Whether LoRALinear (without dropout) runs as one Linear with W + s·B·A and autograd's
    backward: a small layer on a GPU; on the CPU, with W and b frozen, a float32/64 layer
    small for its rank, or one with nothing to differentiate."""
    if _fold_delta(x, weight):
        return True
    if weight.dtype not in (torch.float32, torch.float64) or not _use_function(x, weight, bias):
        return False
    needs_grad = x.requires_grad or a.requires_grad or b.requires_grad
    return _cpu_folds(weight, a.shape[0]) or not (torch.is_grad_enabled() and needs_grad)


class _LoRAFunction(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ for a frozen W and b, with a hand-written backward.

    On the CPU what LoRA costs is its narrow products ((r, N) = (r, in) @ (in, N) and the
    like): each reads a whole (N, in) or (N, out) tensor, often no longer in cache, at a small
    fraction of the GEMM rate (``benchmarks/bench_lora_peft.py --profile`` lists them). Each
    is laid out with r rows, (r, N), the faster layout there. With ``fold`` (float32 /
    float64) the update rides in the frozen GEMMs through W' = W + s·B·A, built per call
    ((out, r) @ (r, in)), and backward's g B rides in the GEMM for ∂x:

        forward   y = x W'ᵀ + b,  hᵀ = A xᵀ (r, N)                        2 GEMMs
        backward  [∂x | gh] = g [W' | B]  (N, in + r),                    1 GEMM
                  ∂A = s·ghᵀ x,  ∂B = s·(hᵀ g)ᵀ                           2 GEMMs

    (ghᵀ = Bᵀ gᵀ alone where ∂x is not needed; ∂x is then a column slice, not contiguous).
    The forward keeps y = x W'ᵀ + b as the frozen Linear computes it, so a zero B gives the
    base's output bit for bit. Without ``fold`` (bfloat16 / float16, where W' would round
    away a small ΔW) y and ∂x get the update in place instead: y += s·h Bᵀ, ∂x += s·gh A.
    The scaling s rides in the GEMMs' alpha. PEFT runs 3 GEMMs and 2 passes over an (N, out)
    tensor forward, 5 GEMMs, a scaling and an add over (N, ·) tensors backward.
    """

    @staticmethod
    def forward(ctx, x, w, bias, a, b, s: float, fold: bool):
        # x: (N, in), w: (out, in), bias: (out,) or None, a: (r, in), b: (out, r)
        wf = torch.addmm(w, b, a, alpha=s) if fold else w  # (out, in)
        y = torch.mm(x, wf.t()) if bias is None else torch.addmm(bias, x, wf.t())  # (N, out)
        ht = torch.mm(a, x.t())  # (r, N)
        if not fold:
            y.addmm_(ht.t(), b.t(), alpha=s)
        ctx.save_for_backward(x, wf, a, b, ht)
        ctx.s, ctx.fold = s, fold
        return y

    @staticmethod
    def backward(ctx, g):
        # g: (N, out)
        x, wf, a, b, ht = ctx.saved_tensors
        s, need, fold = ctx.s, ctx.needs_input_grad, ctx.fold
        gx = ga = gb = ght = None
        if need[0] and fold:
            ge = torch.mm(g, torch.cat([wf, b], 1))  # (N, in + r)
            gx, ght = ge[:, : x.shape[1]], ge[:, x.shape[1] :].t()  # (N, in), (r, N)
        elif need[3] or need[0]:
            ght = torch.mm(b.t(), g.t())  # (r, N)
        if need[0] and not fold:
            gx = torch.mm(g, wf)  # (N, in); wf is W here
            gx.addmm_(ght.t(), a, alpha=s)
        if need[3]:
            ga = torch.addmm(a, ght, x, beta=0, alpha=s)  # (r, in)
        if need[4]:
            gb = torch.addmm(b.t(), ht, g, beta=0, alpha=s).t()  # (out, r)
        return gx, None, None, ga, gb, None, None


class LoRALinear(nn.Module):
    """A frozen Linear-like ``base`` plus a trainable update scaling · B A.

    Args:
        base: ``nn.Linear`` or ``NF4Linear``-like module; it is frozen (requires_grad False).
        r: rank, 1 <= r <= min(in_features, out_features).
        alpha: > 0; ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``rslora``).
        dropout: in [0, 1), applied to the input of the LoRA branch only.
        rslora: use rank-stabilized scaling.
        dtype: dtype of ``lora_A`` / ``lora_B`` (float32); they live on the base's device.

    Raises:
        ValueError: if ``base`` is not Linear-like or a hyperparameter is out of range.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
        *,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not is_linear_like(base):
            raise ValueError(
                "LoRALinear needs an nn.Linear or an NF4Linear-like base (in_features, "
                f"out_features, bias, dequantize_weight()), got {type(base).__name__}"
            )
        _check_hparams(r, alpha, dropout, rslora, base.in_features, base.out_features, "the layer")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.dropout, self.rslora = int(r), float(alpha), float(dropout), rslora
        self.scaling = self.alpha / (math.sqrt(self.r) if rslora else self.r)
        tensors = [*base.parameters(), *base.buffers()]
        device = tensors[0].device if tensors else None
        self.lora_A = nn.Parameter(
            torch.empty(self.r, self.in_features, device=device, dtype=dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, self.r, device=device, dtype=dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False
        self.weight_is_tied = False  # add_lora sets it when base.weight is shared elsewhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)  # (..., out); already contains ΔW
        # direct dict reads: nn.Module.__getattr__ costs more than the small kernels here
        base, a, b = self._modules["base"], self._parameters["lora_A"], self._parameters["lora_B"]
        drop = self.dropout > 0.0 and self.training
        if type(base) is nn.Linear and x.dtype is base.weight.dtype is a.dtype is b.dtype:
            if (x.is_cuda or x.is_cpu) and not torch.is_autocast_enabled(
                "cuda" if x.is_cuda else "cpu"
            ):
                return self._fast_forward(x, base, a, b, drop)
        y = self.base(x)  # (..., out): a 4-bit base, mixed dtypes or autocast
        if drop:
            x = F.dropout(x, self.dropout, True)
        # scale the narrow (..., r) tensor, not the (..., out) one: cheaper forward and backward
        h = F.linear(x.to(a.dtype), a) * self.scaling  # (..., r)
        return y + F.linear(h, b).to(y.dtype)  # (..., out)

    def _fast_forward(self, x, base: nn.Linear, a, b, drop: bool) -> torch.Tensor:
        """Float Linear base on the CPU or a GPU, x, W, A, B of one dtype: fewest kernels and ops.

        PEFT runs 5 kernels forward (3 GEMMs, a scaling and an add over (N, out)) and 7
        backward. On a GPU, where MiniGPT's step waits on kernel launches, a small layer
        (N·in·out <= ``MERGED_FORWARD_MAX_MACS``) without dropout runs as one Linear with
        W' = W + s·B·A built per call: forward 2 GEMMs (and a copy of W), backward 4 GEMMs
        (∂x, ∂W', ∂A, ∂B) and 2 scalings of (r, in) and (out, r) tensors. On the CPU, with
        W and b frozen and no dropout, a float32/64 layer small for its rank
        (``CPU_FOLD_MAX_RATIO``, MiniGPT's 128 x 128 at r=8) runs as one Linear with W' too,
        its backward autograd's GEMMs (∂x = g W', ∂W' = gᵀ x, ∂A = s·Bᵀ ∂W', ∂B = s·∂W' Aᵀ,
        no narrow products, no Python node); a larger one runs as ``_LoRAFunction`` with its
        own backward (see there; with nothing to differentiate, one Linear with W').
        Otherwise y = x Wᵀ + b, then y += s·(x Aᵀ) Bᵀ in place (the scaling rides in addmm's
        alpha): 3 GEMMs
        forward, no pass over an (N, out) tensor; 5 GEMMs backward, 2 scalings of (N, r) and
        (out, r) tensors and the sum of x's two gradients. Autograd derives every gradient
        there; W and b get one only if someone unfroze them.
        """
        w, bias, s = base.weight, base.bias, self.scaling
        if not drop and _one_linear(x, w, bias, a, b):
            return F.linear(x, torch.addmm(w, b, a, alpha=s), bias)  # (..., out)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        if not drop and _use_function(x, w, bias):
            fold = w.dtype in (torch.float32, torch.float64)
            y = _LoRAFunction.apply(x2, w, bias, a, b, s, fold)  # (N, out)
            return y.view(*x.shape[:-1], y.shape[-1])
        xl = F.dropout(x2, self.dropout, True) if drop else x2
        y = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias, x2, w.t())  # (N, out)
        y.addmm_(torch.mm(xl, a.t()), b.t(), alpha=s)  # (N, r) @ (r, out), added in place
        return y.view(*x.shape[:-1], y.shape[-1])

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A, shape (out_features, in_features), differentiable."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW to ``base.weight`` in place; forward then runs the base alone.

        A no-op when already merged. While merged, no gradient reaches lora_A / lora_B;
        change them only after ``unmerge()``.

        Raises:
            ValueError: for a 4-bit base or a weight tied to another module.
        """
        if self.merged:
            return
        if not _has_float_weight(self.base):
            raise ValueError(
                f"refusing to merge in place into a 4-bit base ({type(self.base).__name__}): "
                "adding ΔW would mean re-quantizing and losing most of the update. Use "
                "merge_lora(model), which dequantizes W and builds a float32 nn.Linear with W + ΔW"
            )
        if self.weight_is_tied:
            raise ValueError(
                "refusing to merge in place: this layer's weight is tied to another module "
                "(e.g. the token embedding), which would change too. Use merge_lora(model)"
            )
        w = self.base.weight
        w.add_(self.delta_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from ``base.weight`` again (a no-op when not merged)."""
        if not self.merged:
            return
        w = self.base.weight
        w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A new frozen ``nn.Linear`` holding W + ΔW; this layer is left untouched.

        A float base keeps its dtype; a 4-bit base is dequantized and the result is float32.
        """
        if _has_float_weight(self.base):
            w = self.base.weight
            dtype, w = w.dtype, w.float()
        else:
            dtype, w = torch.float32, self.base.dequantize_weight().float()
        if not self.merged:
            w = w + self.delta_weight().float()
        bias = self.base.bias
        lin = nn.Linear(
            self.in_features, self.out_features, bias=bias is not None, device=w.device, dtype=dtype
        )
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
        return lin.requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:.4g}, "
            f"dropout={self.dropout:g}, rslora={self.rslora}, merged={self.merged}"
        )


# ---------------------------------------------------------------------------- targets


def _expand_targets(targets: str | Iterable[str]) -> dict[str, bool]:
    """Attribute names (or paths) -> strict; names that come from a group are not strict."""
    if isinstance(targets, str):
        items: list = [targets]
    elif isinstance(targets, (list, tuple)):
        items = list(targets)
    else:
        raise ValueError(
            "targets must be a list of names or a comma-separated string like 'q,v', "
            f"got {type(targets).__name__}"
        )
    out: dict[str, bool] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"target names must be strings, got {item!r}")
        for name in filter(None, (part.strip() for part in item.split(","))):
            if name in TARGET_GROUPS:
                for alias in TARGET_GROUPS[name]:
                    out.setdefault(TARGET_ALIASES[alias], False)
            else:
                out[TARGET_ALIASES.get(name, name)] = True
    if not out:
        raise ValueError(
            "no LoRA targets given; name at least one of q, k, v, o, fc_in, fc_out, "
            "a group (attn, mlp, all) or another Linear attribute name"
        )
    return out


def resolve_targets(targets: str | Iterable[str]) -> list[str]:
    """Expand ``"q,v"`` / ``["attn", "fc_in"]`` to attribute names, in order, without repeats.

    Short names and groups are expanded; any other name is kept as given (an attribute
    name or a full module path), since ``add_lora`` works on any model.

    Raises:
        ValueError: for an empty target list or a name that is not a string.
    """
    return list(_expand_targets(targets))


def _leaf(path: str) -> str:
    return path.rpartition(".")[2]


def _layers(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, LoRALinear]]:
    """(plain Linear-like layers, LoRA layers) by path; never looks inside a LoRA layer."""
    plain: dict[str, nn.Module] = {}
    lora: dict[str, LoRALinear] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, LoRALinear):
                lora[path] = child
            elif is_linear_like(child):
                plain[path] = child
            else:
                visit(child, path)

    visit(model, "")
    return plain, lora


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by module path (e.g. ``blocks.0.attn.q_proj``)."""
    return _layers(model)[1]


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _tied_ids(model: nn.Module) -> set[int]:
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {i for i, n in counts.items() if n > 1}


def _wrap(model: nn.Module, path: str, r, alpha, dropout, rslora, tied: set[int]) -> None:
    layer = LoRALinear(model.get_submodule(path), r, alpha, dropout, rslora)
    w = getattr(layer.base, "weight", None)
    layer.weight_is_tied = isinstance(w, torch.Tensor) and id(w) in tied
    _set_submodule(model, path, layer)


def _freeze_all_but_lora(model: nn.Module) -> None:
    keep = {id(p) for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def add_lora(
    model: nn.Module,
    targets: str | Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    rslora: bool = False,
) -> list[str]:
    """Wrap each targeted Linear of ``model`` (in place) in a ``LoRALinear``; freeze the rest.

    Returns the adapted module paths, e.g. ``["blocks.0.attn.q_proj", ...]``. Nothing in
    the model changes when a ValueError is raised.

    Raises:
        ValueError: for no targets, an explicit name that is no Linear of the model (the
            message lists the Linear names available), a layer that already has LoRA, no
            layer matched at all, or a hyperparameter out of range.
    """
    wanted = _expand_targets(targets)
    plain, lora = _layers(model)
    available = ", ".join(sorted({_leaf(p) for p in [*plain, *lora]})) or "(none)"
    model_name = type(model).__name__
    for path in lora:
        if _leaf(path) in wanted or path in wanted:
            raise ValueError(f"LoRA already added to {path}")
    for name, strict in wanted.items():
        if strict and not any(_leaf(p) == name or p == name for p in plain):
            kinds = sorted({type(m).__name__ for p, m in model.named_modules() if _leaf(p) == name})
            what = (
                f"is a {'/'.join(kinds)} in {model_name}, not an nn.Linear"
                if kinds
                else f"matches no module of {model_name}"
            )
            raise ValueError(
                f"target {name!r} {what}; Linear attribute names available: {available}"
            )
    hits = [p for p in plain if _leaf(p) in wanted or p in wanted]
    if not hits:
        raise ValueError(
            f"targets {list(wanted)} matched no Linear layer of {model_name}; "
            f"Linear attribute names available: {available}"
        )
    for path in hits:  # validate everything before changing anything
        layer = plain[path]
        _check_hparams(r, alpha, dropout, rslora, layer.in_features, layer.out_features, path)
    tied = _tied_ids(model)
    for path in hits:
        _wrap(model, path, r, alpha, dropout, rslora, tied)
    _freeze_all_but_lora(model)
    return hits


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by a plain frozen ``nn.Linear`` holding W + ΔW, in place.

    Returns ``model`` itself. A 4-bit (NF4) base is dequantized: its merged layer is a
    float32 ``nn.Linear`` (W + ΔW cannot be stored in 4 bits without losing the update).
    Tied weights are not touched: the merged layer gets its own copy.
    """
    for path, layer in lora_layers(model).items():
        _set_submodule(model, path, layer.merged_linear())
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, keyed like ``model.state_dict()`` (``<path>.lora_A``).

    The tensors are detached views of the live parameters, not copies.
    """
    out: dict[str, torch.Tensor] = {}
    for path, layer in lora_layers(model).items():
        out[f"{path}.lora_A"] = layer.lora_A.detach()
        out[f"{path}.lora_B"] = layer.lora_B.detach()
    return out


# ------------------------------------------------------------------------ save / load


def save_adapter(path: str | os.PathLike, model: nn.Module, config: dict | None = None) -> Path:
    """Write ``path/adapter.safetensors`` and ``path/adapter_config.json``; return ``path``.

    The JSON records r, alpha, rslora, dropout (null where layers differ), the targeted
    attribute names, every adapted module path with its in/out features and
    hyperparameters, and ``config`` (any JSON-serializable dict of the caller's). Each file
    is written to a temporary file in the same folder and renamed into place.

    Raises:
        ValueError: if the model has no LoRA layers, ``config`` is not a JSON-serializable
            dict, or ``path`` is a file.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save; call add_lora(model, ...) first")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")

    def uniform(key: str):
        values = {getattr(layer, key) for layer in layers.values()}
        return values.pop() if len(values) == 1 else None

    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        **{key: uniform(key) for key in ("r", "alpha", "rslora", "dropout")},
        "targets": sorted({_leaf(p) for p in layers}),
        "modules": {
            p: {
                "in_features": m.in_features,
                "out_features": m.out_features,
                **{key: getattr(m, key) for key in ("r", "alpha", "rslora", "dropout")},
            }
            for p, m in layers.items()
        },
        "config": config,
    }
    try:
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"config cannot be written as JSON: {e}") from e
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot save an adapter to {out}: it is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    save_tensors(out / ADAPTER_WEIGHTS, tensors)
    atomic_write_text(out / ADAPTER_CONFIG, text)
    return out


def _read_meta(folder: Path) -> dict:
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise ValueError(f"no adapter at {folder}: {ADAPTER_CONFIG} is missing")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not a readable adapter config: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{file} is not a minituner LoRA adapter config")
    if meta.get("version") != _VERSION:
        raise ValueError(f"{file} has version {meta.get('version')!r}; this code reads {_VERSION}")
    modules = meta.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"{file} lists no adapted modules")
    for p, m in modules.items():
        try:
            in_f, out_f = m["in_features"], m["out_features"]
            if not (isinstance(in_f, int) and isinstance(out_f, int) and in_f > 0 and out_f > 0):
                raise ValueError(f"bad in/out features {in_f!r}, {out_f!r}")
            _check_hparams(m["r"], m["alpha"], m["dropout"], m["rslora"], in_f, out_f, p)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{file}: bad entry for {p}: {e}") from e
    return meta


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    file = folder / ADAPTER_WEIGHTS
    if not file.is_file():
        raise ValueError(f"no adapter at {folder}: {ADAPTER_WEIGHTS} is missing")
    try:
        return load_file(file, device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{file} is not a readable safetensors file: {msg}") from e


def _shape(t) -> str:
    return f"({', '.join(str(int(s)) for s in t)})"


def load_adapter(path: str | os.PathLike, model: nn.Module) -> dict:
    """Load an adapter saved by ``save_adapter`` into ``model`` (in place).

    A model without LoRA gets LoRA layers at the saved paths first (everything else frozen,
    as in ``add_lora``); a model that has LoRA must have it at exactly those paths, with the
    same shapes, alpha and rslora. Returns the saved JSON config (user config under "config").

    Raises:
        ValueError: for a missing or corrupt file, a tensor holding NaN, inf or no floats
            (the message names the file and the tensor), or a model that does not match;
            the message says what differs. The model is unchanged when this is raised.
    """
    folder = Path(path)
    meta = _read_meta(folder)
    tensors = _read_tensors(folder)
    modules: dict[str, dict] = meta["modules"]
    for p, m in modules.items():
        for key, shape in (
            ("lora_A", (m["r"], m["in_features"])),
            ("lora_B", (m["out_features"], m["r"])),
        ):
            t = tensors.get(f"{p}.{key}")
            if t is None or tuple(t.shape) != shape:
                got = "missing" if t is None else _shape(t.shape)
                raise ValueError(
                    f"{folder}: {ADAPTER_WEIGHTS} does not match {ADAPTER_CONFIG}: "
                    f"{p}.{key} is {got}, the config says {_shape(shape)}"
                )
            if not t.is_floating_point():
                raise ValueError(
                    f"{folder / ADAPTER_WEIGHTS}: tensor {p}.{key} holds {t.dtype} values, "
                    "not floating point"
                )
            if not bool(torch.isfinite(t).all()):  # a diverged or damaged adapter
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(
                    f"{folder / ADAPTER_WEIGHTS}: tensor {p}.{key} holds {bad} NaN or infinite "
                    "values; the adapter is unusable"
                )

    plain, lora = _layers(model)
    problems: list[str] = []
    if lora:
        problems += [
            f"adapter has {p} but the model has no LoRA layer there"
            for p in modules
            if p not in lora
        ]
        problems += [
            f"the model has LoRA on {p} but the adapter does not" for p in lora if p not in modules
        ]
    else:
        for p in modules:
            if p not in plain:
                try:
                    kind = type(model.get_submodule(p)).__name__
                    problems.append(
                        f"adapter has {p} but in the model that is a {kind}, not a Linear"
                    )
                except AttributeError:
                    problems.append(f"adapter has {p} but the model has no such layer")
    for p, m in modules.items():
        layer = lora.get(p) if lora else plain.get(p)
        if layer is None:
            continue
        want_a, want_b = (m["r"], layer.in_features), (layer.out_features, m["r"])
        if p in lora:
            want_a, want_b = tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)
            if layer.merged:
                problems.append(f"{p} is merged; call unmerge() before loading an adapter")
            for key in ("alpha", "rslora"):
                if m[key] != getattr(layer, key):
                    problems.append(
                        f"{p}: adapter {key} is {m[key]}, the model's is {getattr(layer, key)}"
                    )
        for key, want in (("lora_A", want_a), ("lora_B", want_b)):
            got = tuple(tensors[f"{p}.{key}"].shape)
            if got != want:
                problems.append(
                    f"{p}: adapter {key} is {_shape(got)}, model expects {_shape(want)}"
                )
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ValueError(f"cannot load adapter {folder}: " + "; ".join(problems[:6]) + more)

    if not lora:
        tied = _tied_ids(model)
        for p, m in modules.items():
            _wrap(model, p, m["r"], m["alpha"], m["dropout"], m["rslora"], tied)
        _freeze_all_but_lora(model)
        lora = lora_layers(model)
    with torch.no_grad():
        for p, layer in lora.items():
            layer.lora_A.copy_(tensors[f"{p}.lora_A"])
            layer.lora_B.copy_(tensors[f"{p}.lora_B"])
    return meta


# ------------------------------------------------------------------------- accounting


def count_parameters(model: nn.Module) -> dict:
    """Trainable and total parameter counts, overall and per module.

    ``per_module`` lists, for each module that owns parameters directly, its name and
    counts (a LoRA layer shows up twice: its own lora_A/lora_B and ``<path>.base``). A
    parameter shared by several modules (tied weights) is counted once, under the first
    module that owns it, so the totals equal ``sum(p.numel() for p in model.parameters())``.
    Buffers (e.g. packed 4-bit codes kept as buffers) are not parameters and are not counted.
    """
    seen: set[int] = set()
    per_module = []
    for name, module in model.named_modules():
        fresh = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        if not fresh:
            continue
        seen.update(id(p) for p in fresh)
        per_module.append(
            {
                "name": name,
                "trainable": sum(p.numel() for p in fresh if p.requires_grad),
                "total": sum(p.numel() for p in fresh),
            }
        )
    return {
        "trainable": sum(m["trainable"] for m in per_module),
        "total": sum(m["total"] for m in per_module),
        "per_module": per_module,
    }
