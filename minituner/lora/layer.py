"""LoRALinear: a trainable low-rank update on a frozen Linear layer.

A LoRA layer keeps the pretrained weight W (out, in) frozen and learns

    ΔW = scaling · B A,   A: (r, in),  B: (out, r),   y = x Wᵀ + b + scaling · dropout(x) Aᵀ Bᵀ

A starts Kaiming-uniform and B starts at zero, so a fresh adapter leaves every output
unchanged. ``scaling`` is alpha / r, or alpha / √r with rsLoRA, which keeps the size of the
update steady as r grows. The base may be an ``nn.Linear`` or a 4-bit ``NF4Linear``
(QLoRA): any module with ``in_features``, ``out_features``, ``bias`` and
``dequantize_weight()`` is accepted, so this file never imports the quantizer.

``merge()`` adds ΔW to the base weight in place and ``unmerge()`` subtracts it (exact up
to float rounding). Both are idempotent. In-place merging is refused for a 4-bit base and
for a weight tied to another module (MiniGPT's ``lm_head`` shares the token embedding);
``merged_linear()`` (used by ``minituner.lora.inject.merge_lora``) builds a new plain
Linear instead. The hyper-parameter rules are :func:`minituner.lora.targets.check_hparams`;
which kernels a float layer runs is :mod:`minituner.lora.fast_path`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minituner.lora.fast_path import fast_forward
from minituner.lora.targets import check_hparams


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


def _has_float_weight(base: nn.Module) -> bool:
    w = getattr(base, "weight", None)
    return (
        isinstance(w, torch.Tensor)
        and w.is_floating_point()
        and tuple(w.shape) == (base.out_features, base.in_features)
    )


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
        check_hparams(r, alpha, dropout, rslora, base.in_features, base.out_features, "the layer")
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
        p = self.dropout if self.training else 0.0
        if type(base) is nn.Linear and x.dtype is base.weight.dtype is a.dtype is b.dtype:
            if (x.is_cuda or x.is_cpu) and not torch.is_autocast_enabled(
                "cuda" if x.is_cuda else "cpu"
            ):
                return fast_forward(x, base.weight, base.bias, a, b, self.scaling, p)
        y = self.base(x)  # (..., out): a 4-bit base, mixed dtypes or autocast
        if p > 0.0:
            x = F.dropout(x, p, True)
        # scale the narrow (..., r) tensor, not the (..., out) one: cheaper forward and backward
        h = F.linear(x.to(a.dtype), a) * self.scaling  # (..., r)
        # added in the wider of the two dtypes and rounded once, as PEFT does: a bfloat16
        # base with float32 adapters rounds the sum, not the LoRA branch and then the sum
        return (y + F.linear(h, b)).to(y.dtype)  # (..., out)

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
